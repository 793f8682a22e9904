//! The accept loop: hyper-util's server with graceful shutdown, in front of the
//! idempotency layer and the forwarder.

use std::future::Future;
use std::time::Duration;

use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use idem::{IdempotencyLayer, Store};
use tokio::net::TcpListener;
use tower::Layer;
use tower::util::MapRequestLayer;

use crate::config::ProxyConfig;
use crate::forward::{Forward, Peer};

/// Serves the proxy on `listener` over `store` until `shutdown` resolves.
///
/// On shutdown it stops accepting, lets open requests finish (and record their
/// results), and waits up to `config.shutdown_grace` for them.
pub async fn serve<St: Store>(
    listener: TcpListener,
    store: St,
    config: ProxyConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let layer = IdempotencyLayer::with_policy(store, config.policy.clone());
    let service = layer.layer(Forward::new(
        config.upstream.clone(),
        config.upstream_timeout,
    ));
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = MapRequestLayer::new(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            req
        })
        .layer(service.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing open requests");
    let grace = config.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "connections still open after the grace period");
    }
    // Requests whose clients left still run to completion and record their result.
    layer.tasks().close();
    if tokio::time::timeout(grace, layer.tasks().wait())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "requests still running after the grace period");
    }
    Ok(())
}
