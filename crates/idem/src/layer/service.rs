use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, header};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use idem_core::engine::{Begin, Disposition, Inspect, Ticket};
use idem_core::record::NotRetained;
use idem_core::{Problem, ProblemKind, Store};
use tokio::sync::oneshot;
use tower_service::Service;

use super::ResponseFuture;
use super::layer::Shared;
use crate::body::{Body, BoxError};

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

fn problem(p: &Problem) -> Response<Body> {
    respond(p.to_response())
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
    let (parts, body) = req.into_parts();
    let pending = match engine.inspect(&parts) {
        Inspect::Pass => {
            let resp = inner
                .call(Request::from_parts(parts, Body::new(body)))
                .await?;
            return Ok(resp.map(Body::new));
        }
        Inspect::Reject(p) => return Ok(problem(&p)),
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
        return Ok(problem(&too_large(limit, pending.id())));
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Ok(problem(&too_large(limit, pending.id())));
        }
        Err(e) => {
            tracing::debug!(error = %e, "request body unreadable");
            return Ok(problem(&Problem::new(
                ProblemKind::BadRequestBody,
                "the request body could not be read; nothing was processed",
            )));
        }
    };

    match engine.begin(pending, &parts, &bytes).await {
        Begin::Respond(resp) => Ok(respond(resp)),
        Begin::Unprotected => {
            let resp = inner
                .call(Request::from_parts(parts, Body::full(bytes)))
                .await?;
            Ok(resp.map(Body::new))
        }
        Begin::Execute(ticket) => {
            // Run the exchange and its recording on a task of its own (R6): dropping this
            // future (the client went away) does not cancel them.
            let (tx, rx) = oneshot::channel();
            let task_shared = shared.clone();
            let req = Request::from_parts(parts, Body::full(bytes));
            shared.tracker.spawn(async move {
                let result = execute(&task_shared, inner, req, ticket).await;
                let _ = tx.send(result);
            });
            match rx.await {
                Ok(result) => result,
                Err(_) => Ok(problem(&Problem::new(
                    ProblemKind::Internal,
                    "the request's task ended without an answer",
                ))),
            }
        }
    }
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
                        return Ok(problem(&Problem::new(
                            ProblemKind::UpstreamUnavailable,
                            "the upstream's response broke off; the request may be retried with the same key",
                        )));
                    }
                }
            }
            let bytes = buf.freeze();
            engine.complete(ticket, &head, Ok(bytes.clone())).await;
            Ok(Response::from_parts(head, Body::full(bytes)))
        }
    }
}
