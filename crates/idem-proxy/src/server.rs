//! The accept loop: hyper-util's server with graceful shutdown, in front of the
//! idempotency layer and the forwarder.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::server::graceful::Watcher;
use hyper_util::service::TowerToHyperService;
use idem::{
    Body, BoxError, IdempotencyLayer, Store,
    core::{Policy, Problem, ProblemKind},
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::{Layer, ServiceExt};

use crate::config::{MIN_HEADER_BYTES, ProxyConfig, Runtime};
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
    // The reloader runs as long as the listener.
    let (acceptor, reloader) = match tls.listener {
        Some((cert, server)) => (
            Some(tokio_rustls::TlsAcceptor::from(server)),
            Some(AbortOnDrop(cert.watch())),
        ),
        None => (None, None),
    };
    let stack = Stack::new(&store, &config, tls.upstream)?;
    let conns = Conns::new(&config, acceptor, stack.policy());
    let bounds = config.connections;
    // Beyond the limit, connections wait in the listen backlog until one closes.
    let slots = Arc::new(Semaphore::new(
        bounds.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let graceful = GracefulShutdown::new();
    // Who serves the connections: this runtime, or the worker threads.
    let by = match config.runtime {
        Runtime::WorkStealing => By::Here(Box::new(conns.with(stack.service()))),
        Runtime::Workers => By::Workers(Workers::start(&stack, &conns)?),
    };
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
        let accepted = Accepted {
            stream,
            peer,
            slot,
            watcher: graceful.watcher(),
        };
        match &by {
            By::Here(serving) => serving.spawn(accepted),
            By::Workers(workers) => workers.hand(accepted),
        }
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
    // Requests whose clients left still run to completion and record their result
    // (on the worker runtimes too, which run until this is done).
    for layer in &stack.layers {
        layer.tasks().close();
    }
    let all = async {
        for layer in &stack.layers {
            layer.tasks().wait().await;
        }
    };
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!(?grace, "requests still running after the grace period");
    }
    if let By::Workers(workers) = by {
        workers.stop().await;
    }
    Ok(())
}

/// Who serves the accepted connections.
enum By<St: Store> {
    /// Tasks of the runtime that accepts them (`--runtime work-stealing`).
    Here(Box<Serving<St>>),
    /// The worker threads (`--runtime workers`).
    Workers(Workers),
}

/// The service stack of the proxy without its forwarder: one layer (engine) per rule,
/// all over the one store. Each runtime that serves connections builds its service
/// from it with a forwarder (and so an upstream connection pool) of its own; the
/// engines are shared.
struct Stack<St: Store> {
    /// The server-wide layer first, then one per rule with a policy of its own.
    layers: Vec<IdempotencyLayer<St>>,
    /// Each rule: its pattern, and its layer unless it passes through.
    routes: Vec<(crate::routes::PathPattern, Option<IdempotencyLayer<St>>)>,
    door: Door,
    upstream: crate::forward::Upstream,
    upstream_timeout: Duration,
    upstream_tls: Option<Arc<rustls::ClientConfig>>,
}

impl<St: Store> Stack<St> {
    fn new(
        store: &St,
        config: &ProxyConfig,
        upstream_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> std::io::Result<Self> {
        // The first matching rule picks the layer, so every rule runs through the same
        // engine code.
        let mut layers = vec![layer_for(store, &config.policy)?];
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let svc = match &route.policy {
                Some(policy) => {
                    let l = layer_for(store, policy)?;
                    layers.push(l.clone());
                    Some(l)
                }
                None => None,
            };
            routes.push((route.pattern.clone(), svc));
        }
        let door = Door::new(config, layers[0].engine().shared_policy());
        Ok(Self {
            layers,
            routes,
            door,
            upstream: config.upstream.clone(),
            upstream_timeout: config.upstream_timeout,
            upstream_tls,
        })
    }

    /// The server-wide policy, with which the proxy renders its answers for requests no
    /// rule with a policy of its own matches.
    fn policy(&self) -> Arc<Policy> {
        self.layers[0].engine().shared_policy()
    }

    /// The whole service, with a forwarder of its own.
    fn service(&self) -> Service<St> {
        let forward = match &self.upstream_tls {
            Some(client) => Forward::with_tls(
                self.upstream.clone(),
                self.upstream_timeout,
                Arc::clone(client),
            ),
            None => Forward::new(self.upstream.clone(), self.upstream_timeout),
        }
        .with_policy(self.policy());
        let routes = self
            .routes
            .iter()
            .map(|(pattern, svc)| {
                // Each rule's forwarder renders its answers with the rule's policy.
                let svc = svc.as_ref().map(|layer| {
                    layer.layer(forward.clone().with_policy(layer.engine().shared_policy()))
                });
                (pattern.clone(), svc)
            })
            .collect();
        // R24: every request is normalised once before the rules, the key, the scope or
        // the fingerprint look at it.
        self.door.layer(Dispatch::new(
            routes,
            forward.clone(),
            self.layers[0].layer(forward),
        ))
    }
}

/// The proxy's service, as each connection runs it.
type Service<St> = crate::view::Admitted<Dispatch<St>>;

/// A client connection just accepted, with its connection slot and its part in the
/// graceful shutdown.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    watcher: Watcher,
}

/// How client connections are served, whatever runtime runs them.
#[derive(Clone)]
struct Conns {
    builder: auto::Builder<TokioExecutor>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    limits: conn::Limits,
    read_timeout: Duration,
    /// The answers of the proxy's own before a rule is chosen, as the server-wide
    /// policy renders them.
    policy: Arc<Policy>,
}

impl Conns {
    fn new(
        config: &ProxyConfig,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
        policy: Arc<Policy>,
    ) -> Self {
        let bounds = config.connections;
        // hyper refuses smaller buffers (it would panic); the flag checks this too.
        let max_header_bytes = bounds.max_header_bytes.max(MIN_HEADER_BYTES);
        let mut builder = auto::Builder::new(TokioExecutor::new());
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
        Self {
            builder,
            acceptor,
            limits: conn::Limits {
                read_timeout: config.request_read_timeout,
                idle_timeout: bounds.idle_timeout,
            },
            read_timeout: config.request_read_timeout,
            policy,
        }
    }

    /// These settings with the service that answers the requests.
    fn with<St: Store>(&self, service: Service<St>) -> Serving<St> {
        Serving {
            conns: self.clone(),
            service,
        }
    }
}

/// Serves client connections with one service, on the runtime that calls
/// [`spawn`](Self::spawn).
struct Serving<St: Store> {
    conns: Conns,
    service: Service<St>,
}

impl<St: Store> Serving<St> {
    /// Serves `accepted` on a task of the current runtime; `done` is dropped when the
    /// connection ends.
    fn spawn(&self, accepted: Accepted) {
        self.spawn_with(accepted, ());
    }

    fn spawn_with<G: Send + 'static>(&self, accepted: Accepted, done: G) {
        let Accepted {
            stream,
            peer,
            slot,
            watcher,
        } = accepted;
        let Conns {
            builder,
            acceptor,
            limits,
            read_timeout,
            policy,
        } = &self.conns;
        let (read_timeout, over_tls) = (*read_timeout, acceptor.is_some());
        let _ = stream.set_nodelay(true);
        let activity = conn::Activity::new();
        let io = conn::Watched::new(stream, Arc::clone(&activity));
        let watchdog = conn::watchdog(Arc::clone(&activity), *limits);
        let service = self.service.clone();
        let policy = Arc::clone(policy);
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
        let Some(acceptor) = acceptor else {
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), svc)
                .into_owned();
            let conn = watcher.watch(conn);
            tokio::spawn(async move {
                let _slot = slot;
                let _done = done;
                tokio::select! {
                    biased;
                    ended = conn => if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    },
                    () = watchdog => tracing::debug!(%peer, "connection closed: no request in time, idle, or not reading"),
                }
            });
            return;
        };
        // The handshake runs under the watchdog too: one that stalls is cut off by the
        // read timeout from the accept, as a head that does not arrive (R25).
        let handshake = acceptor.accept(io);
        let builder = builder.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _done = done;
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
}

/// `--runtime workers`: one thread per core, each running a single-threaded runtime
/// that serves the connections handed to it with a service (and so an upstream pool)
/// of its own.
struct Workers {
    workers: Vec<Worker>,
}

/// One worker thread, as the accept loop sees it.
struct Worker {
    /// Where new connections go.
    hand: tokio::sync::mpsc::UnboundedSender<Handed>,
    /// Its open connections, to hand the next one to the least busy worker.
    open: Arc<AtomicUsize>,
    /// Dropped to stop it, once its connections and requests are done.
    stop: tokio::sync::oneshot::Sender<()>,
    /// Resolves when its runtime is gone (and with it every store handle it held).
    gone: tokio::sync::oneshot::Receiver<()>,
}

/// A connection on its way to a worker, out of the accepting runtime's reactor.
struct Handed {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    watcher: Watcher,
    /// Counts it among its worker's open connections until dropped.
    open: Open,
}

/// Counts a worker's open connection until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts one worker per core.
    fn start<St: Store>(stack: &Stack<St>, conns: &Conns) -> std::io::Result<Self> {
        let count = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let mut workers = Vec::with_capacity(count);
        for n in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (hand, mut handed) = tokio::sync::mpsc::unbounded_channel::<Handed>();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (went, gone) = tokio::sync::oneshot::channel::<()>();
            let serving = conns.with(stack.service());
            std::thread::Builder::new()
                .name(format!("idem-worker-{n}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let accept = async {
                            while let Some(h) = handed.recv().await {
                                // Registered with this thread's runtime from here on.
                                match TcpStream::from_std(h.stream) {
                                    Ok(stream) => serving.spawn_with(
                                        Accepted {
                                            stream,
                                            peer: h.peer,
                                            slot: h.slot,
                                            watcher: h.watcher,
                                        },
                                        h.open,
                                    ),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "cannot take a connection");
                                    }
                                }
                            }
                            std::future::pending::<()>().await;
                        };
                        tokio::select! {
                            () = accept => {},
                            _ = stopped => {},
                        }
                    });
                    // Connections still open past the grace period end here.
                    drop(runtime);
                    let _ = went.send(());
                })?;
            workers.push(Worker {
                hand,
                open: Arc::new(AtomicUsize::new(0)),
                stop,
                gone,
            });
        }
        Ok(Self { workers })
    }

    /// Hands `accepted` to the worker with the fewest open connections.
    fn hand(&self, accepted: Accepted) {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            return;
        };
        let Accepted {
            stream,
            peer,
            slot,
            watcher,
        } = accepted;
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a worker");
                return;
            }
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        let handed = Handed {
            stream,
            peer,
            slot,
            watcher,
            open: Open(Arc::clone(&worker.open)),
        };
        if worker.hand.send(handed).is_err() {
            tracing::warn!("a worker thread is gone: connection dropped");
        }
    }

    /// Stops every worker and waits until each runtime is gone.
    async fn stop(self) {
        for worker in self.workers {
            drop(worker.hand);
            drop(worker.stop);
            let _ = worker.gone.await;
        }
    }
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
