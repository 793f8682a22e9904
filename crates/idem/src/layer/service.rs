use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::{Request, Response, header};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use idem_core::engine::{Begin, Disposition, Inspect, Ticket};
use idem_core::policy::Policy;
use idem_core::record::{NotRetained, Record, Snapshot, SnapshotBody, State};
use idem_core::{Problem, ProblemKind, Store};
use tokio::sync::oneshot;
use tower_service::Service;

use super::ResponseFuture;
use super::layer::Shared;
use crate::body::{Body, BoxError};
use crate::context::{IdempotencyContext, IdempotencyHandle};

/// The middleware made by [`IdempotencyLayer`](super::IdempotencyLayer).
///
/// A protected request runs on a task of its own, so a client that disconnects cannot
/// cancel it: the upstream exchange finishes and its result is recorded (R6). Hence the
/// inner service must be `Clone + Send + 'static`.
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
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            inner: Box::pin(handle(self.shared.clone(), inner, req)),
        }
    }
}

fn respond(resp: Response<Bytes>) -> Response<Body> {
    resp.map(Body::full)
}

/// Renders a problem under the policy's `type` base (R17).
fn problem(policy: &Policy, p: Problem) -> Response<Body> {
    respond(
        p.with_type_base(policy.problem_base().cloned())
            .to_response(),
    )
}

async fn handle<S, St, ReqB, ResB>(
    shared: Arc<Shared<St>>,
    mut inner: S,
    req: Request<ReqB>,
) -> Result<Response<Body>, S::Error>
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
    let (mut parts, body) = req.into_parts();
    let pending = match engine.inspect(&parts) {
        Inspect::Pass => {
            parts.extensions.insert(IdempotencyContext::unprotected());
            let resp = inner
                .call(Request::from_parts(parts, Body::new(body)))
                .await?;
            return Ok(resp.map(Body::new));
        }
        Inspect::Reject(p) => return Ok(problem(engine.policy(), p)),
        Inspect::Protect(pending) => pending,
    };

    // R13: the body is needed for the fingerprint; refuse it above the limit before
    // anything is stored.
    let limit = engine.policy().max_request_body();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(problem(engine.policy(), too_large(limit, pending.id())));
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Ok(problem(engine.policy(), too_large(limit, pending.id())));
        }
        Err(e) => {
            tracing::debug!(error = %e, "request body unreadable");
            return Ok(problem(
                engine.policy(),
                Problem::new(
                    ProblemKind::BadRequestBody,
                    "the request body could not be read; nothing was processed",
                ),
            ));
        }
    };

    let id = pending.id().clone();
    match engine.begin(pending, &parts, &bytes).await {
        Begin::Respond(resp) => Ok(respond(resp)),
        Begin::Unprotected => {
            parts.extensions.insert(IdempotencyContext {
                key: Some(id.key().clone()),
                scope: Some(*id.scope()),
                handle: None,
            });
            let resp = inner
                .call(Request::from_parts(parts, Body::full(bytes)))
                .await?;
            Ok(resp.map(Body::new))
        }
        Begin::Execute(ticket) => {
            // Run the exchange and its recording on a task of its own (R6): dropping this
            // future (the client went away) does not cancel them.
            let policy = engine.policy();
            let handle = IdempotencyHandle::new(
                ticket.lease().clone(),
                policy.ttl(),
                policy.deny_headers().to_vec(),
                engine.store().clone(),
            );
            parts.extensions.insert(IdempotencyContext {
                key: Some(id.key().clone()),
                scope: Some(*id.scope()),
                handle: Some(handle.clone()),
            });
            let (tx, rx) = oneshot::channel();
            let task_shared = shared.clone();
            let req = Request::from_parts(parts, Body::full(bytes));
            let lease = ticket.lease().clone();
            shared.tracker.spawn(async move {
                let run = execute(&task_shared, inner, req, ticket, &handle);
                let result = match AssertUnwindSafe(run).catch_unwind().await {
                    Ok(result) => result,
                    Err(_) => {
                        // The service panicked. Release the key (fenced by owner: a
                        // record it already completed stays) before the 500 leaves, so
                        // an immediate retry runs again instead of meeting a 409 (R7).
                        let _ = task_shared.engine.store().release(&lease).await;
                        Ok(problem(task_shared.engine.policy(), Problem::new(
                            ProblemKind::Internal,
                            "the service failed while handling the request; it may be retried with the same key",
                        )))
                    }
                };
                let _ = tx.send(result);
            });
            match rx.await {
                Ok(result) => result,
                Err(_) => Ok(problem(
                    engine.policy(),
                    Problem::new(
                        ProblemKind::Internal,
                        "the request's task ended without an answer",
                    ),
                )),
            }
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
    resp
}

fn too_large(limit: usize, id: &idem_core::record::RecordId) -> Problem {
    Problem::new(
        ProblemKind::RequestTooLarge,
        format!("the request body exceeds {limit} bytes; nothing was processed or stored"),
    )
    .with_key(id.key())
}

/// Calls the inner service as the record's owner, then completes or releases the record
/// before the response leaves (R7, R12, R13, R19).
async fn execute<S, St, ResB>(
    shared: &Shared<St>,
    mut inner: S,
    req: Request<Body>,
    ticket: Ticket<St>,
    handle: &IdempotencyHandle,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResB>>,
    St: Store,
    ResB: HttpBody<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let engine = &shared.engine;
    let resp = match inner.call(req).await {
        Ok(resp) => resp,
        Err(e) => {
            engine.release(ticket).await;
            return Err(e);
        }
    };
    // R21: the handler completed the record in its own transaction. Once the store
    // shows it completed (the transaction committed), answer exactly that snapshot and
    // leave the record alone; otherwise (rolled back) finish as usual.
    // The stored snapshot is answered (not the handler's copy), so the client gets
    // byte for byte what every replay will get.
    if let Some(snapshot) = handle.completed() {
        match engine.store().lookup(&handle.lease().id).await {
            Ok(Some(Record {
                state: State::Completed {
                    snapshot: stored, ..
                },
                ..
            })) => {
                ticket.disown();
                return Ok(from_snapshot(stored));
            }
            Ok(_) => {
                tracing::warn!("record completed in a transaction that did not commit");
            }
            Err(e) => {
                // Unknown: do not risk a second write; the lease lapses if the
                // transaction did not commit, as after a crash (R11).
                tracing::warn!(error = %e, "could not check a transactional completion");
                ticket.disown();
                return Ok(from_snapshot(snapshot));
            }
        }
    }
    let (head, body) = resp.into_parts();
    let mut body = Body::new(body);
    match engine.disposition(&head) {
        Disposition::Release => {
            engine.release(ticket).await;
            Ok(Response::from_parts(head, body))
        }
        Disposition::Stream => {
            engine
                .complete(ticket, &head, Err(NotRetained::Streamed))
                .await;
            Ok(Response::from_parts(head, body))
        }
        Disposition::Buffer(limit) => {
            let mut buf = BytesMut::new();
            loop {
                match body.frame().await {
                    None => break,
                    Some(Ok(frame)) => {
                        // Trailers are not stored; data frames are.
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        if buf.len() + data.len() > limit {
                            // R13: the operation ran, so the record completes; the
                            // client still receives everything.
                            buf.extend_from_slice(&data);
                            engine
                                .complete(ticket, &head, Err(NotRetained::TooLarge))
                                .await;
                            return Ok(Response::from_parts(
                                head,
                                Body::prefixed(buf.freeze(), body),
                            ));
                        }
                        buf.extend_from_slice(&data);
                    }
                    Some(Err(e)) => {
                        // The answer was lost midway: release so a retry may run again
                        // (the upstream's own key check guards the rare double, R12).
                        let e: BoxError = e;
                        tracing::warn!(error = %e, "upstream response body failed");
                        engine.release(ticket).await;
                        return Ok(problem(
                            engine.policy(),
                            Problem::new(
                                ProblemKind::UpstreamUnavailable,
                                "the upstream's response broke off; the request may be retried with the same key",
                            ),
                        ));
                    }
                }
            }
            let bytes = buf.freeze();
            engine.complete(ticket, &head, Ok(bytes.clone())).await;
            Ok(Response::from_parts(head, Body::full(bytes)))
        }
    }
}
