//! The accept loop: hyper-util's server with graceful shutdown, in front of the
//! idempotency layer and the forwarder.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use idem::{
    Body, BoxError, IdempotencyLayer, Store,
    core::{Policy, Problem, ProblemKind},
};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::{Layer, ServiceExt};

use crate::config::{MIN_HEADER_BYTES, ProxyConfig};
use crate::conn;
use crate::forward::{Forward, OverTls, Peer};
use crate::routes::Dispatch;
use crate::view::Door;

/// Serves the proxy on `listener` over `store` until `shutdown` resolves.
///
/// On shutdown it stops accepting, lets open requests finish (and record their
/// results), and waits up to `config.shutdown_grace` for them. With `config.tls` the
/// listener speaks TLS, and its certificate is reloaded on SIGHUP and when its files
/// change; a TLS file that cannot be used is an `InvalidInput` error before anything
/// is served.
pub async fn serve<St: Store>(
    listener: TcpListener,
    store: St,
    config: ProxyConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let tls = crate::tls::load(&config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    serve_loaded(listener, store, config, tls, shutdown).await
}

/// [`serve`] with its TLS files read already.
pub(crate) async fn serve_loaded<St: Store>(
    listener: TcpListener,
    store: St,
    config: ProxyConfig,
    tls: crate::tls::Loaded,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let forward = match tls.upstream {
        Some(client) => Forward::with_tls(config.upstream.clone(), config.upstream_timeout, client),
        None => Forward::new(config.upstream.clone(), config.upstream_timeout),
    }
    .with_policy(Arc::new(config.policy.clone()));
    // The reloader runs as long as the listener.
    let (acceptor, reloader) = match tls.listener {
        Some((cert, server)) => (
            Some(tokio_rustls::TlsAcceptor::from(server)),
            Some(AbortOnDrop(cert.watch())),
        ),
        None => (None, None),
    };
    // One layer (engine) per rule, all over the one store; the first matching rule
    // picks the layer, so every rule runs through the same engine code.
    let layer = layer_for(&store, &config.policy)?;
    let mut layers = vec![layer.clone()];
    let mut routes = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let svc = match &route.policy {
            Some(policy) => {
                let l = layer_for(&store, policy)?;
                layers.push(l.clone());
                Some(l.layer(forward.clone().with_policy(Arc::new(policy.clone()))))
            }
            None => None,
        };
        routes.push((route.pattern.clone(), svc));
    }
    // R24: every request is normalised once before the rules, the key, the scope or the
    // fingerprint look at it.
    let service =
        Door::new(&config).layer(Dispatch::new(routes, forward.clone(), layer.layer(forward)));
    let read_timeout = config.request_read_timeout;
    let bounds = config.connections;
    let limits = conn::Limits {
        read_timeout,
        idle_timeout: bounds.idle_timeout,
    };
    // The answers of the proxy's own before a rule is chosen, as the server-wide
    // policy renders them.
    let policy = Arc::new(config.policy.clone());
    // hyper refuses smaller buffers (it would panic); the flag checks this too.
    let max_header_bytes = bounds.max_header_bytes.max(MIN_HEADER_BYTES);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let over_tls = acceptor.is_some();
    // The watchdog (conn.rs) times heads from the accept, for both protocols; hyper's
    // own header timer would also close idle keep-alive connections at the read
    // timeout. The read buffer bounds the HTTP/1 head (431 beyond), the header list
    // size the HTTP/2 one.
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(max_header_bytes);
    builder
        .http2()
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    // Beyond the limit, connections wait in the listen backlog until one closes.
    let slots = Arc::new(Semaphore::new(
        bounds.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    'serve: loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => break conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of
                        // spinning; the watchdogs free descriptors as they close
                        // connections, and the next try takes the waiting one.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = &mut shutdown => break 'serve,
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = conn::Activity::new();
        let io = conn::Watched::new(stream, Arc::clone(&activity));
        let watchdog = conn::watchdog(Arc::clone(&activity), limits);
        let service = service.clone();
        let policy = Arc::clone(&policy);
        let svc = tower::service_fn(move |req: Request<Incoming>| {
            let in_flight = activity.begin(req.version() == Version::HTTP_2);
            let origin = req.headers().get(header::ORIGIN).cloned();
            let refused = conn::refused_coding(req.headers())
                .map(|detail| conn::refusal(detail, &policy, origin.as_ref()));
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(Peer(peer));
            if over_tls {
                parts.extensions.insert(OverTls);
            }
            let (body, expired) = ReadDeadline::new(body, read_timeout);
            let service = service.clone();
            let policy = Arc::clone(&policy);
            async move {
                if let Some(resp) = refused {
                    return Ok::<_, std::convert::Infallible>(resp.map(|b| in_flight.track(b)));
                }
                let resp = service.oneshot(Request::from_parts(parts, body)).await?;
                let resp = if expired.load(Ordering::Acquire) {
                    timed_out(read_timeout, &policy, origin.as_ref())
                } else {
                    resp
                };
                Ok(resp.map(|b| in_flight.track(b)))
            }
        });
        let svc = TowerToHyperService::new(svc);
        let Some(acceptor) = &acceptor else {
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), svc)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _slot = slot;
                tokio::select! {
                    biased;
                    ended = conn => if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    },
                    () = watchdog => tracing::debug!(%peer, "connection closed: no request in time, idle, or not reading"),
                }
            });
            continue;
        };
        // The handshake runs under the watchdog too: one that stalls is cut off by the
        // read timeout from the accept, as a head that does not arrive (R25).
        let handshake = acceptor.accept(io);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let served = async move {
                let stream = match handshake.await {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            };
            tokio::select! {
                biased;
                () = served => {},
                () = watchdog => tracing::debug!(%peer, "connection closed: no request in time, idle, or not reading"),
            }
        });
    }
    drop(listener);
    drop(reloader);
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

/// A task stopped when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The layer of one rule. Its policy was checked when the configuration was read, so
/// this fails only if a caller built the [`ProxyConfig`] with an unchecked one.
fn layer_for<St: Store>(store: &St, policy: &Policy) -> std::io::Result<IdempotencyLayer<St>> {
    IdempotencyLayer::builder(store.clone())
        .policy(policy.clone())
        .build()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
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

/// The answer to a request whose body did not arrive within the read timeout. The
/// layer read the body before claiming the key, so nothing was stored; the client may
/// retry with the same key. Rendered as the proxy's policy renders its answers (R17),
/// readable by a browser at `origin`.
fn timed_out(limit: Duration, policy: &Policy, origin: Option<&HeaderValue>) -> Response<Body> {
    let problem = Problem::new(
        ProblemKind::RequestTimeout,
        format!(
            "the request body did not arrive within {}; nothing was processed",
            humantime::format_duration(limit)
        ),
    );
    let mut resp = policy.answer(origin, &problem).map(Body::full);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The request body was not received within the read timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within the read timeout")]
struct ReadTimedOut;

/// A request body that fails with [`ReadTimedOut`] once its deadline passes before it
/// ended, and says so through a shared flag.
struct ReadDeadline {
    body: Incoming,
    /// When the body must have arrived.
    until: Instant,
    /// Armed only once the body makes the request wait: most bodies arrive with the
    /// head, and then no timer is set at all.
    deadline: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
    ended: bool,
}

impl ReadDeadline {
    fn new(body: Incoming, limit: Duration) -> (Self, Arc<AtomicBool>) {
        let expired = Arc::new(AtomicBool::new(false));
        let body = Self {
            body,
            until: Instant::now() + limit,
            deadline: None,
            expired: Arc::clone(&expired),
            ended: false,
        };
        (body, expired)
    }
}

impl ReadDeadline {
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let until = self.until;
        self.deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)))
            .as_mut()
            .poll(cx)
    }
}

impl HttpBody for ReadDeadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame.map_err(Into::into))),
            Poll::Pending => match self.poll_deadline(cx) {
                Poll::Ready(()) => {
                    self.ended = true;
                    self.expired.store(true, Ordering::Release);
                    Poll::Ready(Some(Err(ReadTimedOut.into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
