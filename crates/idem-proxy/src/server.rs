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
use crate::routes::Dispatch;

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
    let forward = Forward::new(config.upstream.clone(), config.upstream_timeout)
        .with_problem_base(config.policy.problem_base().cloned());
    // One layer (engine) per rule, all over the one store; the first matching rule
    // picks the layer, so every rule runs through the same engine code.
    let layer = IdempotencyLayer::with_policy(store.clone(), config.policy.clone());
    let mut layers = vec![layer.clone()];
    let mut routes = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let svc = route.policy.as_ref().map(|policy| {
            let l = IdempotencyLayer::with_policy(store.clone(), policy.clone());
            layers.push(l.clone());
            l.layer(
                forward
                    .clone()
                    .with_problem_base(policy.problem_base().cloned()),
            )
        });
        routes.push((route.pattern.clone(), svc));
    }
    let service = Dispatch::new(routes, forward.clone(), layer.layer(forward));
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
    for layer in &layers {
        layer.tasks().close();
    }
    let all = async {
        for layer in &layers {
            layer.tasks().wait().await;
        }
    };
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!(?grace, "requests still running after the grace period");
    }
    Ok(())
}

/// A proxy started by [`spawn`]; dropping it shuts the proxy down.
#[derive(Debug)]
pub struct Running {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Shuts down gracefully and waits until the server, and with it the store handle
    /// it held, is gone.
    pub async fn stop(mut self) -> std::io::Result<()> {
        drop(self.stop.take());
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

/// Starts the proxy on `addr` (port 0 picks a free one) on a task of its own.
pub async fn spawn<St: Store>(
    addr: std::net::SocketAddr,
    store: St,
    config: ProxyConfig,
) -> std::io::Result<Running> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, store, config, async move {
        let _ = stopped.await;
    }));
    Ok(Running {
        addr,
        stop: Some(stop),
        task: Some(task),
    })
}
