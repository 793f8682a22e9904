use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use idem_core::engine::{
    Answer, Begin, Completion, Disposition, Inspect, Pending, Ticket, Unkeyed,
};
use idem_core::policy::Policy;
use idem_core::record::{NotRetained, Record, Snapshot, SnapshotBody, State};
use idem_core::{Problem, ProblemKind, Store};
use tower_service::Service;

use super::ResponseFuture;
use super::decision::Decision;
use super::future::Step;
use super::layer::Shared;
use crate::body::{Body, BoxError};
use crate::context::{IdempotencyContext, IdempotencyHandle};

/// The middleware made by [`IdempotencyLayer`](super::IdempotencyLayer).
///
/// A client that disconnects cannot cancel a protected request once it owns its record:
/// the exchange moves to a task of its own, finishes and its result is recorded
/// ([R6](crate::contract#r6)). Hence the inner service must be `Clone + Send +
/// 'static`.
pub struct Idempotency<S, St: Store> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<St>>,
}

impl<S, St: Store> Idempotency<S, St> {
    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, St: Store> Clone for Idempotency<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, St: Store> fmt::Debug for Idempotency<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, St, ReqB, ResB> Service<Request<ReqB>> for Idempotency<S, St>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    ReqB: HttpBody<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: HttpBody<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The service that was polled ready goes into the future; a clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        // The key is known from the head (`Ok`), or (R23) only once the body is read.
        let keyed = match self.shared.engine.inspect(&parts) {
            // Not protected: called at once, and awaited in a future of its own size,
            // not in the protected path's.
            Inspect::Pass => {
                return ResponseFuture::new(Box::pin(pass::<_, St, _, _>(&mut inner, parts, body)));
            }
            Inspect::Reject(answer) => {
                let mut decision = Decision::start(&parts.method, &parts.uri);
                let origin = parts.headers.get(header::ORIGIN);
                let policy = self.shared.engine.policy();
                let resp = answered(policy, origin, answer, &mut decision);
                return ResponseFuture::new(Box::pin(std::future::ready(Step::Done(Ok(resp)))));
            }
            Inspect::Protect(pending) => Ok(pending),
            Inspect::ProtectByBody(unkeyed) => Err(unkeyed),
        };
        let shared = self.shared.clone();
        ResponseFuture::new(Box::pin(handle(shared, inner, parts, body, keyed)))
    }
}

/// Gives the handler its context twice: naming the layer's store, so a handler can
/// reach what the store can do (its [`Transactional`](idem_core::store::Transactional)
/// writes), and naming none, for handlers that need only the key.
fn provide<St: Store>(extensions: &mut http::Extensions, ctx: IdempotencyContext<St>) {
    extensions.insert(ctx.untyped());
    extensions.insert(ctx);
}

/// Sends an answer of the engine (a problem or a replay), with the CORS headers that
/// let a browser at `origin` read it, noting it in the decision log.
fn answered(
    policy: &Policy,
    origin: Option<&HeaderValue>,
    answer: Answer,
    decision: &mut Decision,
) -> Response<Body> {
    decision.store = answer.decided.store_time;
    decision.log(
        answer.decided.outcome,
        Some(answer.response.status().as_u16()),
    );
    let mut resp = answer.response;
    policy.cors(origin, resp.headers_mut());
    resp.map(Body::full)
}

/// Renders a problem of the layer's own (a failure while executing) under the
/// policy's `type` base and shape ([R17](crate::contract#r17)), as the engine renders
/// its answers, readable by a browser at `origin`.
fn problem(policy: &Policy, origin: Option<&HeaderValue>, p: &Problem) -> Response<Body> {
    policy.answer(origin, p).map(Body::full)
}

/// Forwards a request the layer does not protect (R2, R3), with a context that says so.
fn pass<S, St, ReqB, ResB>(
    inner: &mut S,
    mut parts: http::request::Parts,
    body: ReqB,
) -> impl Future<Output = Step<S::Error>> + use<S, St, ReqB, ResB>
where
    S: Service<Request<Body>, Response = Response<ResB>>,
    St: Store,
    ReqB: HttpBody<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: HttpBody<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    provide::<St>(&mut parts.extensions, IdempotencyContext::unprotected());
    let called = inner.call(Request::from_parts(parts, Body::new(body)));
    async move { Step::Done(called.await.map(|r| r.map(Body::new))) }
}

/// A request the engine protects, keyed by its head or (R23) to be keyed by its body.
async fn handle<S, St, ReqB, ResB>(
    shared: Arc<Shared<St>>,
    mut inner: S,
    mut parts: http::request::Parts,
    body: ReqB,
    keyed: Result<Pending, Unkeyed>,
) -> Step<S::Error>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    ReqB: HttpBody<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: HttpBody<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let engine = &shared.engine;
    let policy = engine.policy();
    let origin = parts.headers.get(header::ORIGIN).cloned();
    let origin = origin.as_ref();
    let mut decision = Decision::start(&parts.method, &parts.uri);
    if let Ok(pending) = &keyed {
        decision.identify(pending.id(), engine.policy().scope());
    }
    let key = keyed.as_ref().ok().map(|p| p.id().key());

    // R13: the body is needed for the fingerprint; refuse it above the limit before
    // anything is stored.
    let limit = engine.policy().max_request_body();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Step::Done(Ok(answered(
            policy,
            origin,
            engine.too_large(key),
            &mut decision,
        )));
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Step::Done(Ok(answered(
                policy,
                origin,
                engine.too_large(key),
                &mut decision,
            )));
        }
        Err(e) => {
            tracing::debug!(error = %e, "request body unreadable");
            return Step::Done(Ok(answered(
                policy,
                origin,
                engine.unreadable_body(),
                &mut decision,
            )));
        }
    };
    let pending = match keyed {
        Ok(pending) => pending,
        Err(unkeyed) => match engine.key_in_body(unkeyed, &parts, &bytes) {
            Inspect::Protect(pending) => {
                decision.identify(pending.id(), engine.policy().scope());
                pending
            }
            Inspect::Reject(answer) => {
                return Step::Done(Ok(answered(policy, origin, answer, &mut decision)));
            }
            // No key in the body: forward what was read, unprotected (R3).
            Inspect::Pass | Inspect::ProtectByBody(_) => {
                provide::<St>(&mut parts.extensions, IdempotencyContext::unprotected());
                let resp = inner
                    .call(Request::from_parts(parts, Body::full(bytes)))
                    .await;
                return Step::Done(resp.map(|r| r.map(Body::new)));
            }
        },
    };

    let id = pending.id().clone();
    match engine.begin(pending, &parts, &bytes).await {
        Begin::Respond(answer) => Step::Done(Ok(answered(policy, origin, answer, &mut decision))),
        Begin::Unprotected(decided) => {
            decision.store = decided.store_time;
            provide::<St>(
                &mut parts.extensions,
                IdempotencyContext {
                    key: Some(id.key().clone()),
                    scope: Some(*id.scope()),
                    handle: None,
                },
            );
            let called = tokio::time::Instant::now();
            let resp = inner
                .call(Request::from_parts(parts, Body::full(bytes)))
                .await;
            decision.upstream = Some(called.elapsed());
            let status = resp.as_ref().ok().map(|r| r.status().as_u16());
            decision.log(decided.outcome, status);
            Step::Done(resp.map(|r| r.map(Body::new)))
        }
        Begin::Execute(ticket) => {
            let decided = ticket.decided();
            decision.store = decided.store_time;
            let handle = IdempotencyHandle::new(
                ticket.lease().clone(),
                engine.shared_policy(),
                engine.store().clone(),
            );
            provide(
                &mut parts.extensions,
                IdempotencyContext {
                    key: Some(id.key().clone()),
                    scope: Some(*id.scope()),
                    handle: Some(handle.clone()),
                },
            );
            let req = Request::from_parts(parts, Body::full(bytes));
            let lease = ticket.lease().clone();
            // Counted by the tracker until it ends, inline or (client gone) on a task of
            // its own, so a graceful shutdown waits for it.
            let running = shared.tracker.token();
            let origin = origin.cloned();
            Step::Execute(Box::pin(async move {
                let _running = running;
                let origin = origin.as_ref();
                let run = execute(&shared, inner, req, ticket, &handle, origin, &mut decision);
                let result = match AssertUnwindSafe(run).catch_unwind().await {
                    Ok(result) => result,
                    Err(_) => {
                        // The service panicked. Release the key (fenced by owner: a
                        // record it already completed stays) before the 500 leaves, so
                        // an immediate retry runs again instead of meeting a 409 (R7).
                        let _ = shared.engine.store().release(&lease).await;
                        decision.record = Some("released");
                        Ok(problem(
                            shared.engine.policy(),
                            origin,
                            &Problem::new(
                                ProblemKind::Internal,
                                "the service failed while handling the request; it may be retried with the same key",
                            ),
                        ))
                    }
                };
                let status = result.as_ref().ok().map(|r| r.status().as_u16());
                decision.log(decided.outcome, status);
                result
            }))
        }
    }
}

/// The response a snapshot stands for (not a replay: no `Idempotent-Replayed`).
fn from_snapshot(snapshot: Snapshot) -> Response<Body> {
    let body = match snapshot.body {
        SnapshotBody::Full(b) => b,
        SnapshotBody::NotRetained(_) => Bytes::new(),
    };
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = snapshot.status;
    *resp.headers_mut() = snapshot.headers;
    if let Some(reason) = snapshot.reason {
        resp.extensions_mut().insert(reason);
    }
    resp
}

/// Calls the inner service as the record's owner, then completes or releases the record
/// before the response leaves ([R7](crate::contract#r7), [R12](crate::contract#r12),
/// [R13](crate::contract#r13), [R19](crate::contract#r19)).
async fn execute<S, St, ResB>(
    shared: &Shared<St>,
    mut inner: S,
    req: Request<Body>,
    ticket: Ticket<St>,
    handle: &IdempotencyHandle<St>,
    origin: Option<&HeaderValue>,
    decision: &mut Decision,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResB>>,
    St: Store,
    ResB: HttpBody<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let engine = &shared.engine;
    let called = tokio::time::Instant::now();
    let resp = inner.call(req).await;
    decision.upstream = Some(called.elapsed());
    let resp = match resp {
        Ok(resp) => resp,
        Err(e) => {
            release(engine, ticket, decision).await;
            return Err(e);
        }
    };
    // R21: the handler completed the record in its own transaction. Once the store
    // shows it completed (the transaction committed), answer exactly that snapshot and
    // leave the record alone; otherwise (rolled back) finish as usual.
    // The stored snapshot is answered (not the handler's copy), so the client gets
    // byte for byte what every replay will get.
    if let Some(snapshot) = handle.completed() {
        let looked = tokio::time::Instant::now();
        let record = engine.lookup(&handle.lease().id).await;
        decision.store += looked.elapsed();
        decision.record = Some("transactional");
        match record {
            Ok(Some(Record {
                state: State::Completed {
                    snapshot: stored, ..
                },
                ..
            })) => {
                ticket.disown();
                // A body kept from replays (a cookie under a shared scope, R4) still
                // reaches the one client it was made for.
                if let SnapshotBody::NotRetained(_) = stored.body {
                    return Ok(resp.map(Body::new));
                }
                return Ok(from_snapshot(stored));
            }
            Ok(_) => {
                decision.record = None;
                tracing::warn!("record completed in a transaction that did not commit");
            }
            Err(e) => {
                // Unknown: do not risk a second write; the lease lapses if the
                // transaction did not commit, as after a crash (R11).
                tracing::warn!(error = %e, "could not check a transactional completion");
                ticket.disown();
                if let SnapshotBody::NotRetained(_) = snapshot.body {
                    return Ok(resp.map(Body::new));
                }
                return Ok(from_snapshot(snapshot));
            }
        }
    }
    let (head, body) = resp.into_parts();
    let mut body = Body::new(body);
    match engine.disposition(&head) {
        Disposition::Hold => Ok(hold(engine, ticket, head.status, origin, decision).await),
        Disposition::Release => {
            release(engine, ticket, decision).await;
            Ok(Response::from_parts(head, body))
        }
        Disposition::Stream => {
            complete(engine, ticket, &head, Err(NotRetained::Streamed), decision).await;
            Ok(Response::from_parts(head, body))
        }
        Disposition::Buffer(limit) => {
            let mut buf = Buffered::default();
            let mut trailers = None;
            loop {
                match body.frame().await {
                    None => break,
                    Some(Ok(frame)) => {
                        // Trailers reach this client but are not stored; data frames
                        // are both (R8).
                        let data = match frame.into_data() {
                            Ok(data) => data,
                            Err(frame) => {
                                trailers = frame.into_trailers().ok().or(trailers);
                                continue;
                            }
                        };
                        buf.push(data);
                        if buf.len() > limit {
                            // R13: the operation ran, so the record completes; the
                            // client still receives everything.
                            complete(engine, ticket, &head, Err(NotRetained::TooLarge), decision)
                                .await;
                            return Ok(Response::from_parts(
                                head,
                                Body::prefixed(buf.into_bytes(), body),
                            ));
                        }
                    }
                    Some(Err(e)) => {
                        // The answer was lost midway: release so a retry may run again
                        // (the upstream's own key check guards the rare double, R12).
                        let e: BoxError = e;
                        tracing::warn!(error = %e, "upstream response body failed");
                        if engine.holds_ambiguous() {
                            // The upstream answered, so it ran: at most once (R22).
                            return Ok(hold(
                                engine,
                                ticket,
                                StatusCode::BAD_GATEWAY,
                                origin,
                                decision,
                            )
                            .await);
                        }
                        release(engine, ticket, decision).await;
                        return Ok(problem(
                            engine.policy(),
                            origin,
                            &Problem::new(
                                ProblemKind::UpstreamUnavailable,
                                "the upstream's response broke off; the request may be retried with the same key",
                            ),
                        ));
                    }
                }
            }
            let bytes = buf.into_bytes();
            complete(engine, ticket, &head, Ok(bytes.clone()), decision).await;
            let body = match trailers {
                None => Body::full(bytes),
                Some(trailers) => Body::with_trailers(bytes, trailers),
            };
            Ok(Response::from_parts(head, body))
        }
    }
}

/// A response body being collected: a body of one frame (the usual case for a small
/// JSON answer) is kept as it came, without a copy.
#[derive(Default)]
struct Buffered {
    first: Bytes,
    more: BytesMut,
}

impl Buffered {
    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if self.first.is_empty() && self.more.is_empty() {
            self.first = data;
        } else {
            if !self.first.is_empty() {
                self.more
                    .extend_from_slice(&std::mem::take(&mut self.first));
            }
            self.more.extend_from_slice(&data);
        }
    }

    fn len(&self) -> usize {
        self.first.len() + self.more.len()
    }

    fn into_bytes(self) -> Bytes {
        if self.more.is_empty() {
            self.first
        } else {
            self.more.freeze()
        }
    }
}

/// [`Engine::release`](idem_core::Engine::release), noted in the decision.
async fn release<St: Store>(
    engine: &idem_core::Engine<St>,
    ticket: Ticket<St>,
    decision: &mut Decision,
) {
    let started = tokio::time::Instant::now();
    engine.release(ticket).await;
    decision.store += started.elapsed();
    decision.record = Some("released");
}

/// [`Engine::hold`](idem_core::Engine::hold), noted in the decision: the answer to send.
async fn hold<St: Store>(
    engine: &idem_core::Engine<St>,
    ticket: Ticket<St>,
    status: StatusCode,
    origin: Option<&HeaderValue>,
    decision: &mut Decision,
) -> Response<Body> {
    let started = tokio::time::Instant::now();
    let (completion, mut resp) = engine.hold(ticket, status).await;
    decision.store += started.elapsed();
    decision.record = Some(recorded(completion, "held"));
    engine.policy().cors(origin, resp.headers_mut());
    resp.map(Body::full)
}

/// How a completion shows in the decision log, `stored` being the name of success.
fn recorded(completion: Completion, stored: &'static str) -> &'static str {
    match completion {
        Completion::Stored => stored,
        Completion::Superseded => "superseded",
        Completion::Failed => "failed",
    }
}

/// [`Engine::complete`](idem_core::Engine::complete), noted in the decision.
async fn complete<St: Store>(
    engine: &idem_core::Engine<St>,
    ticket: Ticket<St>,
    head: &http::response::Parts,
    body: Result<Bytes, NotRetained>,
    decision: &mut Decision,
) {
    let started = tokio::time::Instant::now();
    let completion = engine.complete(ticket, head, body).await;
    decision.store += started.elapsed();
    decision.record = Some(recorded(completion, "stored"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_of_one_frame_is_kept_without_a_copy() {
        let frame = Bytes::from_static(b"{\"id\":1}");
        let mut buf = Buffered::default();
        buf.push(frame.clone());
        buf.push(Bytes::new());
        assert_eq!(buf.len(), frame.len());
        let out = buf.into_bytes();
        assert_eq!(out, frame);
        assert_eq!(out.as_ptr(), frame.as_ptr());
    }

    #[test]
    fn frames_are_joined_in_order() {
        let mut buf = Buffered::default();
        for part in ["", "ab", "", "cd", "e"] {
            buf.push(Bytes::from_static(part.as_bytes()));
        }
        assert_eq!(buf.len(), 5);
        assert_eq!(buf.into_bytes(), Bytes::from_static(b"abcde"));
        assert_eq!(Buffered::default().into_bytes(), Bytes::new());
    }
}
