//! The decisions of R1–R19, independent of any HTTP server or store.
//!
//! A front end (the tower layer) drives one request through three steps:
//!
//! 1. [`Engine::inspect`] the request head: pass it through (R2, R3), refuse it (R1, R3),
//!    or protect it. A body over the limit or unreadable is refused with
//!    [`Engine::too_large`] or [`Engine::unreadable_body`] (R13).
//! 2. [`Engine::begin`] with the buffered body: execute it under a [`Ticket`], replay a
//!    stored response (R8), or refuse it (R9, R10, R15).
//! 3. After the upstream answered, per [`Engine::disposition`]: [`Engine::complete`] the
//!    record with what the client will receive (R7, R13, R19), or [`Engine::release`] it
//!    (R7, R12). Both happen *before* the client gets the response, so a fast retry
//!    sees the record's final state.
//!
//! Every response the engine makes is an [`Answer`]: whole (problems rendered under the
//! policy's problem base, R17) and carrying its [`Outcome`], counted once when it was
//! decided. A front end sends it as it is and logs the outcome it carries.
//!
//! While a ticket lives its lease is renewed in the background (R11), so a short lease
//! still covers a slow upstream; one task per engine renews every live lease (see
//! `renewal`), so a request costs no task and no timer of its own.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::fingerprint::Fingerprint;
use crate::headers;
use crate::key::{IdempotencyKey, KeyError};
use crate::metrics::{self, Outcome, StoreOp, timed};
use crate::policy::{AmbiguousFailure, KeySource, OnConcurrent, Policy, StoreFailure, Unscoped};
use crate::problem::{Problem, ProblemKind};
use crate::record::{NotRetained, OwnerToken, Record, RecordId, Snapshot, SnapshotBody};
use crate::renewal::{Registration, Renewals};
use crate::retry_hint::HoldTime;
use crate::store::{Claim, ClaimRequest, Finish, Lease, Store, StoreError};
use bytes::Bytes;
use http::{HeaderValue, Response, request, response};

/// The header that marks a replayed response (R8).
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A response extension saying that the request may have reached the system the
/// service called before the failure this response reports (a connection that broke
/// or timed out after the request was sent): whether the operation ran is unknown.
///
/// The proxy's forwarder marks its 502/504 answers this way; a handler may too. On a
/// route that holds such keys ([`AmbiguousFailure::Hold`]) the engine keeps the
/// record in an *outcome unknown* state instead of releasing it (R22).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MayHaveRun;

/// How long a client is told to wait after a store failure (R15).
const STORE_RETRY_AFTER: Duration = Duration::from_secs(2);

/// The engine: a store and a policy.
pub struct Engine<St> {
    store: St,
    policy: Arc<Policy>,
    renewals: Renewals<St>,
    /// How long claims were recently held: the 409's `Retry-After` hint (R10).
    held: Arc<HoldTime>,
}

/// What to do with a request, judged from its head.
#[derive(Debug)]
pub enum Inspect {
    /// Not covered, or no key and none required: forward untouched (R2, R3).
    Pass,
    /// Protect it: buffer the body, then call [`Engine::begin`].
    Protect(Pending),
    /// The key is in the body (R23): buffer it, then ask [`Engine::key_in_body`].
    ProtectByBody(Unkeyed),
    /// Refuse it with this answer (R1, R3); do not call the upstream.
    Reject(Answer),
}

/// A covered request with a valid key, waiting for its body.
#[derive(Debug, Clone)]
pub struct Pending {
    id: RecordId,
}

impl Pending {
    /// The record this request maps to.
    pub fn id(&self) -> &RecordId {
        &self.id
    }
}

/// A covered request whose key is read from its body (R23), waiting for it.
#[derive(Debug, Clone)]
pub struct Unkeyed {
    scope: Option<crate::scope::Scope>,
}

/// The outcome of [`Engine::begin`].
#[derive(Debug)]
pub enum Begin<St: Store> {
    /// The caller owns the record: forward the request, then complete or release.
    Execute(Ticket<St>),
    /// Answer this stored response (R8) or problem; do not call the upstream.
    Respond(Answer),
    /// The store failed and the policy is fail-open: forward unprotected (R15).
    Unprotected(Decided),
}

/// How the engine decided a request, for logs, traces and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decided {
    /// The outcome, counted once in [`metrics::REQUESTS`] by the engine when it
    /// decided.
    pub outcome: Outcome,
    /// Time spent in the store (claims only; not waiting between them).
    pub store_time: Duration,
}

/// A response the engine gives in place of the upstream's, whole: problem documents
/// are rendered under the policy's problem base ([`Policy::problems`]), and the answer
/// says what it means. A front end sends `response` as it is.
#[derive(Debug)]
pub struct Answer {
    /// The response to send.
    pub response: Response<Bytes>,
    /// How it was decided.
    pub decided: Decided,
}

/// What to do with the upstream's response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Not cacheable (5xx, 408, 429 …): release the record, then answer (R7).
    Release,
    /// Streaming: complete without a body, then pass it through as produced (R19).
    Stream,
    /// Buffer up to this many bytes; complete with the body, or without it when it is
    /// larger (R13).
    Buffer(usize),
    /// The request may have run and the route holds such keys: [`Engine::hold`] the
    /// record and answer what it returns (R22).
    Hold,
}

/// How a completion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The snapshot is stored.
    Stored,
    /// Another owner took the record over; nothing was written (R11).
    Superseded,
    /// Every attempt failed; the record stays in flight until its lease ends (R7).
    Failed,
}

/// Ownership of one in-flight record. Dropping it without completing or releasing
/// releases the record in the background, so no error path leaves a key locked.
pub struct Ticket<St: Store> {
    lease: Option<Lease>,
    store: St,
    renewal: Option<Registration<St>>,
    decided: Decided,
    /// When it was claimed, and where its hold time counts (R10).
    claimed: tokio::time::Instant,
    held: Arc<HoldTime>,
}

impl<St: Store> Ticket<St> {
    /// The lease.
    pub fn lease(&self) -> &Lease {
        // Present until `take` consumes the ticket.
        self.lease
            .as_ref()
            .unwrap_or_else(|| unreachable!("ticket used after finish"))
    }

    /// How the claim went: [`Outcome::Executed`] or [`Outcome::TakenOver`], and the time
    /// the claims took.
    pub fn decided(&self) -> Decided {
        self.decided
    }

    /// Gives up the ticket without completing or releasing the record: renewal stops and
    /// the record is left as it is. For a caller that finished the record itself, e.g.
    /// completed it inside its own database transaction (R21).
    pub fn disown(self) -> Lease {
        self.take()
    }

    fn take(mut self) -> Lease {
        self.renewal = None;
        // Present: only `take` and `drop` remove it, and `take` consumes the ticket.
        self.lease
            .take()
            .unwrap_or_else(|| unreachable!("ticket used after finish"))
    }
}

impl<St: Store> Drop for Ticket<St> {
    fn drop(&mut self) {
        self.renewal = None;
        self.held.record(self.claimed.elapsed());
        // Every ticket counted in by `Engine::ticket` is counted out here, once.
        metrics::in_flight(-1.0);
        if let Some(lease) = self.lease.take() {
            let store = self.store.clone();
            tracing::debug!(outcome = "released", reason = "abandoned", "ticket dropped");
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = timed(StoreOp::Release, store.release(&lease)).await;
                });
            }
        }
    }
}

impl<St: Store> fmt::Debug for Ticket<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("lease", &self.lease)
            .finish()
    }
}

impl<St: Store> Engine<St> {
    /// An engine over `store` with `policy`.
    pub fn new(store: St, policy: Policy) -> Self {
        let renewals = Renewals::new(store.clone(), policy.lease, policy.renew_every());
        Self {
            store,
            policy: Arc::new(policy),
            renewals,
            held: Arc::default(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The policy, shared: for what outlives one call, such as a handler's handle.
    pub fn shared_policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy)
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// Step 1: judge a request by its head (R1–R4, R23).
    pub fn inspect(&self, parts: &request::Parts) -> Inspect {
        let p = &self.policy;
        if !p.methods.contains(&parts.method) {
            return Inspect::Pass;
        }
        let name = match &p.key_source {
            KeySource::Header => &p.header,
            KeySource::NamedHeader(name) => name,
            KeySource::JsonPointer(_) => {
                return Inspect::ProtectByBody(Unkeyed {
                    scope: p.scope.scope(&parts.headers),
                });
            }
        };
        let key = IdempotencyKey::from_headers(&parts.headers, name, p.max_key_len);
        self.keyed(parts, p.scope.scope(&parts.headers), key)
    }

    /// Step 1b, for a request whose key is in its body (R23): judge it once the body
    /// (at most [`Policy::max_request_body`]) is read. Answers [`Inspect::Protect`],
    /// [`Inspect::Reject`], or [`Inspect::Pass`] when the body holds no key (forward the
    /// body read) and none is required.
    pub fn key_in_body(&self, unkeyed: Unkeyed, parts: &request::Parts, body: &[u8]) -> Inspect {
        let p = &self.policy;
        let key = match &p.key_source {
            KeySource::JsonPointer(pointer) => json_key(pointer, body, p.max_key_len),
            KeySource::Header | KeySource::NamedHeader(_) => Ok(None),
        };
        self.keyed(parts, unkeyed.scope, key)
    }

    /// What a covered request gets once its key was looked for.
    fn keyed(
        &self,
        parts: &request::Parts,
        scope: Option<crate::scope::Scope>,
        key: Result<Option<IdempotencyKey>, KeyError>,
    ) -> Inspect {
        let p = &self.policy;
        match key {
            Ok(Some(key)) => match scope {
                Some(scope) => Inspect::Protect(Pending {
                    id: RecordId::new(scope, key),
                }),
                None => self.unscoped(parts),
            },
            Ok(None) if p.require_key => Inspect::Reject(self.refuse(
                &Problem::new(
                    ProblemKind::MissingKey,
                    format!(
                        "{} {} requires {}",
                        parts.method,
                        parts.uri.path(),
                        key_place(p)
                    ),
                ),
                Outcome::MissingKey,
                Duration::ZERO,
            )),
            Ok(None) => Inspect::Pass,
            Err(e) => Inspect::Reject(self.refuse(
                &invalid_key(p, &e),
                Outcome::InvalidKey,
                Duration::ZERO,
            )),
        }
    }

    /// A keyed request without any scope header: never stored under a scope it would
    /// share with other anonymous callers (R4).
    fn unscoped(&self, parts: &request::Parts) -> Inspect {
        let p = &self.policy;
        match p.unscoped {
            Unscoped::Pass => {
                Outcome::Unscoped.record();
                Inspect::Pass
            }
            Unscoped::Refuse => {
                let names: Vec<String> =
                    p.scope.header_names().iter().map(header_display).collect();
                Inspect::Reject(self.refuse(
                    &Problem::new(
                        ProblemKind::UnscopedRequest,
                        format!(
                            "{} {} carries an idempotency key but no `{}` header to say whose \
                             key it is; nothing was processed",
                            parts.method,
                            parts.uri.path(),
                            names.join("` or `"),
                        ),
                    ),
                    Outcome::Unscoped,
                    Duration::ZERO,
                ))
            }
        }
    }

    /// The answer to a protected request whose body exceeds
    /// [`Policy::max_request_body`], before anything is stored (R13); `key` is echoed
    /// when it was known from the head.
    pub fn too_large(&self, key: Option<&IdempotencyKey>) -> Answer {
        let limit = self.policy.max_request_body;
        let mut problem = Problem::new(
            ProblemKind::RequestTooLarge,
            format!("the request body exceeds {limit} bytes; nothing was processed or stored"),
        );
        if let Some(key) = key {
            problem = problem.with_key(key);
        }
        self.refuse(&problem, Outcome::TooLarge, Duration::ZERO)
    }

    /// The answer to a protected request whose body could not be read (the connection
    /// broke while it was sent), before anything is stored.
    pub fn unreadable_body(&self) -> Answer {
        self.refuse(
            &Problem::new(
                ProblemKind::BadRequestBody,
                "the request body could not be read; nothing was processed",
            ),
            Outcome::BadBody,
            Duration::ZERO,
        )
    }

    /// Step 2: claim the record for this request, or answer from it (R5–R10, R15).
    pub async fn begin(&self, pending: Pending, parts: &request::Parts, body: &[u8]) -> Begin<St> {
        let p = &self.policy;
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let fingerprint = Fingerprint::compute(
            p.fingerprint,
            &parts.method,
            path,
            &parts.headers,
            &p.significant_headers,
            body,
        );
        let req = ClaimRequest {
            id: pending.id,
            fingerprint,
            owner: OwnerToken::unique(),
            lease: p.lease,
            waiting: matches!(p.on_concurrent, OnConcurrent::Wait { .. }),
        };
        let (mut watch, deadline) = match p.on_concurrent {
            OnConcurrent::Wait { timeout } => (
                Some(self.store.watch(&req.id)),
                Some(tokio::time::Instant::now() + timeout),
            ),
            OnConcurrent::Conflict => (None, None),
        };
        let mut store_time = Duration::ZERO;
        loop {
            let (claim, took) = timed(StoreOp::Claim, self.store.claim(&req)).await;
            store_time += took;
            let claim = match claim {
                Ok(c) => c,
                Err(e) => return self.store_failed(&req.id, &e, store_time),
            };
            match claim {
                Claim::Acquired(lease) => {
                    let outcome = if lease.taken_over {
                        Outcome::TakenOver
                    } else {
                        Outcome::Executed
                    };
                    outcome.record();
                    let decided = Decided {
                        outcome,
                        store_time,
                    };
                    return Begin::Execute(self.ticket(lease, decided));
                }
                Claim::Completed(snapshot) => {
                    let (response, outcome) = self.replay(&req.id, snapshot);
                    return Begin::Respond(answer(response, outcome, store_time));
                }
                Claim::Mismatch => {
                    let problem = Problem::new(
                        ProblemKind::PayloadMismatch,
                        "this idempotency key was already used with a different request \
                         (method, path, body or significant headers); use a new key for a new operation",
                    )
                    .with_status(p.mismatch_status)
                    .with_key(req.id.key());
                    return Begin::Respond(self.refuse(&problem, Outcome::Mismatch, store_time));
                }
                Claim::InFlight { retry_after } => {
                    let (Some(watch), Some(deadline)) = (watch.as_mut(), deadline) else {
                        return Begin::Respond(self.conflict(&req.id, retry_after, store_time));
                    };
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Begin::Respond(self.conflict(&req.id, retry_after, store_time));
                    }
                    // Sleep until notified, the owner's lease may have ended (a takeover
                    // is then possible), the poll interval, or the deadline.
                    let nap = (retry_after + Duration::from_millis(5))
                        .min(p.wait_poll)
                        .min(deadline - now);
                    metrics::waiters(1.0);
                    let _ = tokio::time::timeout(nap, watch.changed()).await;
                    metrics::waiters(-1.0);
                }
            }
        }
    }

    fn conflict(&self, id: &RecordId, lease_left: Duration, store_time: Duration) -> Answer {
        let problem = Problem::new(
            ProblemKind::InFlight,
            "a request with this idempotency key is still being processed; \
             retry later with the same key to receive its response",
        )
        .with_key(id.key())
        .with_retry_after(self.held.hint(lease_left, self.policy.retry_after_max));
        self.refuse(&problem, Outcome::Conflict, store_time)
    }

    fn store_failed(&self, id: &RecordId, e: &StoreError, store_time: Duration) -> Begin<St> {
        tracing::warn!(error = %e, scope = %self.policy.scope.log(id.scope()), "idempotency store failed");
        match self.policy.store_failure {
            StoreFailure::FailOpen => {
                Outcome::FailOpen.record();
                Begin::Unprotected(Decided {
                    outcome: Outcome::FailOpen,
                    store_time,
                })
            }
            StoreFailure::FailClosed => Begin::Respond(self.refuse(
                &store_problem(e).with_key(id.key()),
                Outcome::StoreError,
                store_time,
            )),
        }
    }

    /// The answer refusing a request with `problem`, rendered under the policy's
    /// problem base.
    fn refuse(&self, problem: &Problem, outcome: Outcome, store_time: Duration) -> Answer {
        answer(self.policy.problems.render(problem), outcome, store_time)
    }

    /// The response replaying a snapshot (R8), or 410 when its body was not kept
    /// (R13), with its outcome.
    fn replay(&self, id: &RecordId, snapshot: Snapshot) -> (Response<Bytes>, Outcome) {
        match snapshot.body {
            SnapshotBody::Full(body) => {
                let mut resp = Response::new(body);
                *resp.status_mut() = snapshot.status;
                *resp.headers_mut() = snapshot.headers;
                if let Some(reason) = snapshot.reason {
                    resp.extensions_mut().insert(reason);
                }
                resp.headers_mut()
                    .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
                (resp, Outcome::Replayed)
            }
            SnapshotBody::NotRetained(reason) => {
                let why = match reason {
                    NotRetained::TooLarge => "its body exceeded the storable size",
                    NotRetained::Streamed => "it was streamed",
                    NotRetained::SetCookie => {
                        "it set a cookie, and responses are not replayed with cookies to \
                         callers who share one scope"
                    }
                    NotRetained::StoreFull => "the idempotency store had no room for it",
                    NotRetained::OutcomeUnknown => {
                        return (
                            self.outcome_unknown(id, snapshot.status, true),
                            Outcome::OutcomeUnknown,
                        );
                    }
                };
                let mut problem = Problem::new(
                    ProblemKind::NotRetained,
                    format!(
                        "the request with this key was already processed (status {}), but its \
                         response was not retained because {why}; it will not run again",
                        snapshot.status.as_u16()
                    ),
                )
                .with_key(id.key());
                problem.original_status = Some(snapshot.status.as_u16());
                let mut resp = self.policy.problems.render(&problem);
                resp.headers_mut()
                    .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
                (resp, Outcome::NotRetained)
            }
        }
    }

    fn ticket(&self, lease: Lease, decided: Decided) -> Ticket<St> {
        metrics::in_flight(1.0);
        Ticket {
            renewal: Some(self.renewals.register(lease.clone())),
            lease: Some(lease),
            store: self.store.clone(),
            decided,
            claimed: tokio::time::Instant::now(),
            held: Arc::clone(&self.held),
        }
    }

    /// What to do with the upstream's response head (R7, R13, R19, R22).
    pub fn disposition(&self, head: &response::Parts) -> Disposition {
        if self.holds_ambiguous() && head.extensions.get::<MayHaveRun>().is_some() {
            Disposition::Hold
        } else if !self.policy.cacheable.contains(head.status) {
            Disposition::Release
        } else if headers::is_streaming(&head.headers, &self.policy.streaming_types) {
            Disposition::Stream
        } else {
            Disposition::Buffer(self.policy.max_stored_body)
        }
    }

    /// Step 3a: stores what the client is about to receive and marks the record
    /// completed. `body` is `None` when it was not retained (too large or streamed).
    /// A failing store is retried briefly; the response is delivered either way (R7).
    pub async fn complete(
        &self,
        ticket: Ticket<St>,
        head: &response::Parts,
        body: Result<Bytes, NotRetained>,
    ) -> Completion {
        let lease = ticket.take();
        let snapshot = self
            .policy
            .snapshot(head.status, &head.headers, &head.extensions, body);
        let mut backoff = Duration::from_millis(10);
        for attempt in 1..=self.policy.completion_attempts {
            let (result, _) = timed(
                StoreOp::Complete,
                self.store.complete(&lease, &snapshot, self.policy.ttl),
            )
            .await;
            match result {
                Ok(Finish::Done) => return Completion::Stored,
                Ok(Finish::Superseded) => {
                    metrics::superseded();
                    tracing::warn!(
                        scope = %self.policy.scope.log(lease.id.scope()),
                        "completion refused: record taken over"
                    );
                    return Completion::Superseded;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "completion failed");
                    if attempt < self.policy.completion_attempts {
                        tokio::time::sleep(backoff).await;
                        backoff *= 4;
                    }
                }
            }
        }
        metrics::completion_failed();
        Completion::Failed
    }

    /// True when the policy holds keys whose request may have run (R22): a response
    /// that broke off after its head was received is then [`hold`](Self::hold)ed too.
    pub fn holds_ambiguous(&self) -> bool {
        self.policy.on_ambiguous_failure == AmbiguousFailure::Hold
    }

    /// Step 3c (R22): the upstream failed after the request may have reached it. The
    /// record completes in the *outcome unknown* state, which every retry is answered
    /// from until its TTL ends or an operator deletes it; the answer, with `status`
    /// (502 or 504), is what the client receives now.
    pub async fn hold(
        &self,
        ticket: Ticket<St>,
        status: http::StatusCode,
    ) -> (Completion, Response<Bytes>) {
        let id = ticket.lease().id.clone();
        let (mut head, ()) = Response::new(()).into_parts();
        head.status = status;
        let completion = self
            .complete(ticket, &head, Err(NotRetained::OutcomeUnknown))
            .await;
        (completion, self.outcome_unknown(&id, status, false))
    }

    /// The `outcome-unknown` problem (R22), marked as a replay when it answers a retry.
    fn outcome_unknown(
        &self,
        id: &RecordId,
        status: http::StatusCode,
        replay: bool,
    ) -> Response<Bytes> {
        let problem = Problem::new(
            ProblemKind::OutcomeUnknown,
            "the upstream failed after it may have received the request, so whether the \
             operation ran is unknown; this key is held and will not run again: look the \
             result up, or use a new key for a new operation",
        )
        .with_status(status)
        .with_key(id.key());
        let mut resp = self.policy.problems.render(&problem);
        if replay {
            resp.headers_mut()
                .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        }
        resp
    }

    /// The live record for `id`, if any, timed like every other store operation.
    pub async fn lookup(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        timed(StoreOp::Lookup, self.store.lookup(id)).await.0
    }

    /// Step 3b: deletes the record so the client may retry (R7, R12).
    pub async fn release(&self, ticket: Ticket<St>) {
        let lease = ticket.take();
        match timed(StoreOp::Release, self.store.release(&lease)).await.0 {
            Ok(Finish::Done) => {}
            Ok(Finish::Superseded) => {
                tracing::warn!(
                    scope = %self.policy.scope.log(lease.id.scope()),
                    "release refused: record taken over"
                );
            }
            Err(e) => {
                // The record stays in flight until its lease ends (R11), which is what
                // a crash would leave: bounded, never a double execution.
                tracing::warn!(error = %e, "release failed; the lease will lapse");
            }
        }
    }
}

impl<St: Store + fmt::Debug> fmt::Debug for Engine<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .field("policy", &self.policy)
            .finish()
    }
}

/// Counts `outcome`, once per answer, and makes the answer.
fn answer(response: Response<Bytes>, outcome: Outcome, store_time: Duration) -> Answer {
    outcome.record();
    Answer {
        response,
        decided: Decided {
            outcome,
            store_time,
        },
    }
}

fn header_display(name: &http::HeaderName) -> String {
    match name.as_str() {
        "idempotency-key" => "Idempotency-Key".to_owned(),
        "authorization" => "Authorization".to_owned(),
        other => other.to_owned(),
    }
}

/// Where the policy reads keys, as a problem's detail names it (R23).
fn key_place(p: &Policy) -> String {
    match &p.key_source {
        KeySource::Header => format!("an `{}` header", header_display(&p.header)),
        KeySource::NamedHeader(name) => format!("a `{}` header", header_display(name)),
        KeySource::JsonPointer(pointer) => format!("a key at `{pointer}` in its JSON body"),
    }
}

fn invalid_key(p: &Policy, e: &KeyError) -> Problem {
    let max_len = p.max_key_len;
    let place = key_place(p);
    let form = match &p.key_source {
        KeySource::JsonPointer(_) => "a string (or an integer)",
        KeySource::Header | KeySource::NamedHeader(_) => "one header, bare or quoted,",
    };
    Problem::new(
        ProblemKind::InvalidKey,
        format!(
            "the key ({place}) is invalid: {e}; send {form} whose value is 1 to {max_len} \
             visible ASCII characters"
        ),
    )
}

/// The key at `pointer` in a JSON `body` (R23): a string as it is, an integer as its
/// decimal text; `None` when the body is not JSON or has nothing there, so the request
/// counts as keyless.
fn json_key(
    pointer: &str,
    body: &[u8],
    max_len: usize,
) -> Result<Option<IdempotencyKey>, KeyError> {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(None);
    };
    match doc.pointer(pointer) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => {
            IdempotencyKey::verbatim(s.as_bytes(), max_len).map(Some)
        }
        Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => {
            IdempotencyKey::verbatim(n.to_string().as_bytes(), max_len).map(Some)
        }
        Some(_) => Err(KeyError::Malformed(
            "the value is not a string or an integer",
        )),
    }
}

/// The problem a store failure answers (R15).
pub fn store_problem(e: &StoreError) -> Problem {
    let detail = match e {
        StoreError::Full => "the idempotency store is full; retry later",
        StoreError::Corrupt(_) => {
            "the stored record for this key is unreadable; it will not be replayed"
        }
        _ => "the idempotency store is unavailable; the request was not processed, retry later",
    };
    Problem::new(ProblemKind::StoreUnavailable, detail).with_retry_after(STORE_RETRY_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use http::Request;

    const BASE: &str = "https://api.example.com/errors";

    fn engine(policy: crate::policy::PolicyBuilder) -> Engine<MemoryStore> {
        Engine::new(MemoryStore::new(), policy.build().unwrap())
    }

    fn post(key: Option<&str>) -> request::Parts {
        let mut req = Request::post("/charges").header("authorization", "Bearer alice");
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn doc(answer: &Answer) -> serde_json::Value {
        serde_json::from_slice(answer.response.body()).unwrap()
    }

    #[track_caller]
    fn assert_answer(answer: &Answer, outcome: Outcome, kind: ProblemKind) {
        assert_eq!(answer.decided.outcome, outcome);
        assert_eq!(answer.response.status(), kind.status());
        assert_eq!(doc(answer)["type"], kind.type_uri_at(BASE));
    }

    fn pending(engine: &Engine<MemoryStore>, parts: &request::Parts) -> Pending {
        match engine.inspect(parts) {
            Inspect::Protect(p) => p,
            other => panic!("expected Protect, got {other:?}"),
        }
    }

    fn anonymous(key: &str) -> request::Parts {
        let req = Request::post("/charges").header("idempotency-key", key);
        req.body(()).unwrap().into_parts().0
    }

    // R4: a keyed request without the scope header is refused by default, with a
    // problem naming the header; nothing is claimed.
    #[tokio::test]
    async fn r04_unscoped_keyed_requests_are_refused_by_default() {
        let engine = engine(Policy::builder().problem_base(BASE));
        let Inspect::Reject(answer) = engine.inspect(&anonymous("k1")) else {
            panic!("an unscoped keyed request is refused");
        };
        assert_answer(&answer, Outcome::Unscoped, ProblemKind::UnscopedRequest);
        let detail = doc(&answer)["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("`Authorization`"), "{detail}");
        // Keyless requests are not concerned: they pass as before (R3).
        let keyless = Request::post("/charges").body(()).unwrap().into_parts().0;
        assert!(matches!(engine.inspect(&keyless), Inspect::Pass));
        // Empty credentials identify no one.
        let mut empty = anonymous("k1");
        empty
            .headers
            .insert("authorization", HeaderValue::from_static(""));
        assert!(matches!(engine.inspect(&empty), Inspect::Reject(_)));
    }

    // R4: configured to pass, an unscoped keyed request is forwarded unprotected.
    #[test]
    fn r04_unscoped_keyed_requests_pass_when_configured() {
        let engine = engine(Policy::builder().unscoped(crate::policy::Unscoped::Pass));
        assert!(matches!(engine.inspect(&anonymous("k1")), Inspect::Pass));
        let shared = engine_with_scope(crate::scope::ScopeSource::none(), false);
        assert!(
            matches!(shared.inspect(&anonymous("k1")), Inspect::Protect(_)),
            "one shared scope is an explicit choice: everyone is scoped"
        );
    }

    fn engine_with_scope(scope: crate::scope::ScopeSource, cookies: bool) -> Engine<MemoryStore> {
        engine(Policy::builder().scope(scope).store_set_cookie(cookies))
    }

    async fn complete_with_cookie(engine: &Engine<MemoryStore>, key: &str) -> Answer {
        let parts = anonymous(key);
        let Begin::Execute(ticket) = engine.begin(pending(engine, &parts), &parts, b"a").await
        else {
            panic!("a new key executes");
        };
        let (head, ()) = Response::builder()
            .status(201)
            .header("set-cookie", "session=alice-secret")
            .body(())
            .unwrap()
            .into_parts();
        let stored = engine
            .complete(ticket, &head, Ok(Bytes::from_static(b"hi")))
            .await;
        assert_eq!(stored, Completion::Stored);
        let Begin::Respond(replay) = engine.begin(pending(engine, &parts), &parts, b"a").await
        else {
            panic!("a completed key answers");
        };
        replay
    }

    // R4: under one shared scope, a response that sets a cookie is not replayed to the
    // other callers unless configured; its cookie is not even stored.
    #[tokio::test]
    async fn r04_set_cookie_is_not_replayed_under_a_shared_scope() {
        let shared = engine_with_scope(crate::scope::ScopeSource::none(), false);
        let replay = complete_with_cookie(&shared, "c1").await;
        assert_eq!(replay.decided.outcome, Outcome::NotRetained);
        assert_eq!(replay.response.status(), 410);
        assert!(replay.response.headers().get("set-cookie").is_none());
        let id = RecordId::new(
            crate::scope::Scope::GLOBAL,
            IdempotencyKey::new("c1").unwrap(),
        );
        let Some(Record {
            state: crate::record::State::Completed { snapshot, .. },
            ..
        }) = shared.lookup(&id).await.unwrap()
        else {
            panic!("the record is completed");
        };
        assert!(snapshot.headers.get("set-cookie").is_none());

        let opted_in = engine_with_scope(crate::scope::ScopeSource::none(), true);
        let replay = complete_with_cookie(&opted_in, "c2").await;
        assert_eq!(replay.decided.outcome, Outcome::Replayed);
        assert_eq!(
            replay.response.headers()["set-cookie"],
            "session=alice-secret"
        );
    }

    // R1, R17: the invalid-key answer states the configured limit.
    #[test]
    fn r01_invalid_key_answer_names_the_configured_limit() {
        let engine = engine(Policy::builder().max_key_len(8).problem_base(BASE));
        let Inspect::Reject(answer) = engine.inspect(&post(Some("123456789"))) else {
            panic!("a 9-character key is over the limit of 8");
        };
        assert_answer(&answer, Outcome::InvalidKey, ProblemKind::InvalidKey);
        let detail = doc(&answer)["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("1 to 8 visible"), "{detail}");
    }

    // R3, R9, R10, R13, R15, R17: every answer the engine makes carries its outcome and
    // renders its problem under the policy's base.
    #[tokio::test]
    async fn r17_every_answer_carries_its_outcome_under_the_problem_base() {
        let engine = engine(Policy::builder().require_key(true).problem_base(BASE));

        let Inspect::Reject(missing) = engine.inspect(&post(None)) else {
            panic!("a key is required");
        };
        assert_answer(&missing, Outcome::MissingKey, ProblemKind::MissingKey);

        let parts = post(Some("k1"));
        let p = pending(&engine, &parts);
        assert_answer(
            &engine.too_large(Some(p.id().key())),
            Outcome::TooLarge,
            ProblemKind::RequestTooLarge,
        );
        assert_answer(
            &engine.unreadable_body(),
            Outcome::BadBody,
            ProblemKind::BadRequestBody,
        );

        let Begin::Execute(ticket) = engine.begin(p, &parts, b"a").await else {
            panic!("a new key executes");
        };
        assert_eq!(ticket.decided().outcome, Outcome::Executed);
        let Begin::Respond(conflict) = engine.begin(pending(&engine, &parts), &parts, b"a").await
        else {
            panic!("a duplicate in flight is refused");
        };
        assert_answer(&conflict, Outcome::Conflict, ProblemKind::InFlight);
        let (head, ()) = Response::new(()).into_parts();
        let _ = engine
            .complete(ticket, &head, Err(NotRetained::TooLarge))
            .await;
        let Begin::Respond(gone) = engine.begin(pending(&engine, &parts), &parts, b"a").await
        else {
            panic!("a completed key answers");
        };
        assert_answer(&gone, Outcome::NotRetained, ProblemKind::NotRetained);
        let Begin::Respond(mismatch) = engine.begin(pending(&engine, &parts), &parts, b"b").await
        else {
            panic!("another payload is refused");
        };
        assert_answer(&mismatch, Outcome::Mismatch, ProblemKind::PayloadMismatch);
    }
}
