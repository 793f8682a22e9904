//! A model-based test of the store contract: random histories of claim, complete,
//! release, renew, lookup and passing time, each answer compared with a small model of
//! R4 and R6–R14 written independently of every store.
//!
//! A store crate stamps it with [`crate::store_model_test!`]:
//!
//! ```ignore
//! idem_core::store_model_test!(async { ManualFixture::memory() }, 256);
//! ```
//!
//! # Time
//!
//! On a [`ManualFixture`] time passes only by `advance`, and the model knows every
//! instant exactly. Stores that expire by their server's clock (Redis `PX`, PostgreSQL
//! `clock_timestamp()`) run on a [`RealTimeFixture`]: `advance` sleeps, and the model
//! brackets every store call with [`Instant`]s taken before and after it. A deadline the
//! store set during a call lies in that call's bracket plus the lease or TTL; a later call
//! evaluated it somewhere in its own bracket. The model demands an answer only where
//! every instant in those brackets gives the same one (the record is certainly live, or
//! certainly dead); where the brackets overlap the deadline it accepts either answer and
//! follows the store's choice. Leases and TTLs are a few hundred milliseconds, so almost
//! every step is decided; none is decided by a timing assertion.
//!
//! # Latitude the contract leaves
//!
//! - Renew, complete or release by the owner of a lease that has run out: the record
//!   may be gone (native expiry, a sweep) or still honoured; either answer is accepted.
//! - A completion sent again by the owner that completed the record (the engine retries
//!   a completion whose reply was lost) may answer `Done` (the Redis store does) or
//!   `Superseded`, but must not change the stored snapshot.
//! - `taken_over` may be false where the model saw an expired in-flight record (the
//!   store may have removed it already), never true where there was none.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use super::{Fixture, ManualFixture, RealTimeFixture, id};
use crate::fingerprint::Fingerprint;
use crate::record::{OwnerToken, Record, RecordId, Snapshot, SnapshotBody, State};
use crate::scope::Scope;
use crate::store::{Claim, ClaimRequest, Finish, Lease, Store};

/// How a fixture's store sees time, so the model knows how exactly it can predict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// Time moves only when the fixture advances it; the model knows every instant.
    Manual,
    /// Time is the wall clock; advancing sleeps.
    Real,
}

/// A [`Fixture`] the model test can run on.
pub trait ModelFixture: Fixture {
    /// How the store sees time.
    fn timing(&self) -> Timing;
}

impl<St: Store> ModelFixture for ManualFixture<St> {
    fn timing(&self) -> Timing {
        Timing::Manual
    }
}

impl<St: Store> ModelFixture for RealTimeFixture<St> {
    fn timing(&self) -> Timing {
        Timing::Real
    }
}

/// The number of distinct records a history touches: ids 0 and 1 share a key under two
/// scopes (R4), id 2 has another key.
const RECORDS: u8 = 3;

/// One step of a random history.
#[derive(Clone, Debug)]
pub enum Op {
    /// Claim record `rec` with fingerprint `fp`.
    Claim {
        /// Which record.
        rec: u8,
        /// Which fingerprint.
        fp: u8,
    },
    /// Complete with the `handle`-th lease acquired so far (if any), storing `body`.
    Complete {
        /// Index into the leases acquired so far.
        handle: usize,
        /// The one-byte body stored.
        body: u8,
    },
    /// Release the `handle`-th lease.
    Release {
        /// Index into the leases acquired so far.
        handle: usize,
    },
    /// Renew the `handle`-th lease.
    Renew {
        /// Index into the leases acquired so far.
        handle: usize,
    },
    /// Let time pass: half a lease, just over a lease, or just over a TTL.
    Advance(Span),
    /// Look record `rec` up.
    Lookup {
        /// Which record.
        rec: u8,
    },
}

/// How long an [`Op::Advance`] lets pass, relative to the model's lease and TTL.
#[derive(Clone, Copy, Debug)]
pub enum Span {
    /// Half a lease.
    HalfLease,
    /// A lease and a little.
    Lease,
    /// A TTL and a little.
    Ttl,
}

/// Random histories of up to `max_len` steps.
pub fn history(max_len: usize) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (0..RECORDS, 0u8..2).prop_map(|(rec, fp)| Op::Claim { rec, fp }),
        2 => (0usize..8, any::<u8>()).prop_map(|(handle, body)| Op::Complete { handle, body }),
        1 => (0usize..8).prop_map(|handle| Op::Release { handle }),
        1 => (0usize..8).prop_map(|handle| Op::Renew { handle }),
        2 => prop_oneof![Just(Span::HalfLease), Just(Span::Lease), Just(Span::Ttl)]
            .prop_map(Op::Advance),
        1 => (0..RECORDS).prop_map(|rec| Op::Lookup { rec }),
    ];
    proptest::collection::vec(op, 1..max_len.max(2))
}

/// An interval of model time (since the start of the history) in which something
/// happened: a store call ran, or a deadline lies.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Window {
    from: Duration,
    to: Duration,
}

impl Window {
    fn plus(self, d: Duration) -> Self {
        Self {
            from: self.from + d,
            to: self.to + d,
        }
    }
}

/// Whether a deadline has passed at a call, as far as the model can tell.
#[derive(Debug, PartialEq)]
enum Alive {
    Yes,
    No,
    Either,
}

/// R6, R11, R14: a record is live while `now < deadline`.
fn alive(deadline: Window, call: Window) -> Alive {
    if call.to < deadline.from {
        Alive::Yes
    } else if call.from >= deadline.to {
        Alive::No
    } else {
        Alive::Either
    }
}

/// The reference: what SPEC R6–R14 say a record is.
#[derive(Clone, Debug, PartialEq)]
struct ModelRecord {
    fp: u8,
    /// The owner while in flight.
    owner: Option<u128>,
    /// The stored body once completed.
    body: Option<u8>,
    /// Once completed, the owner that completed it.
    completed_by: Option<u128>,
    /// Lease end while in flight, expiry once completed.
    ends: Window,
}

/// What one step answered, in the model's words.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Acquired,
    InFlight,
    Completed(u8),
    Mismatch,
    Done,
    Superseded,
    Absent,
    LiveInFlight,
    LiveCompleted(u8),
}

fn body_of(s: &Snapshot) -> Result<u8, TestCaseError> {
    match &s.body {
        SnapshotBody::Full(b) if b.len() == 1 => Ok(b[0]),
        other => Err(TestCaseError::fail(format!(
            "a snapshot body the model never stored: {other:?}"
        ))),
    }
}

fn finish(f: Finish) -> Seen {
    match f {
        Finish::Done => Seen::Done,
        Finish::Superseded => Seen::Superseded,
    }
}

/// Model time, as the fixture's store sees it.
struct Timeline {
    timing: Timing,
    start: Instant,
    /// Manual time passed so far.
    manual: Duration,
}

impl Timeline {
    fn now(&self) -> Duration {
        match self.timing {
            Timing::Manual => self.manual,
            Timing::Real => self.start.elapsed(),
        }
    }

    /// Runs one store call and answers the window it ran in.
    async fn call<T>(&self, f: impl Future<Output = T>) -> (T, Window) {
        let from = self.now();
        let out = f.await;
        (
            out,
            Window {
                from,
                to: self.now(),
            },
        )
    }
}

/// The model's lease and TTL for a fixture: long enough on real time that a step is
/// rarely undecided, short enough that a history takes a second or two.
fn durations(timing: Timing) -> (Duration, Duration) {
    match timing {
        Timing::Manual => (Duration::from_secs(1), Duration::from_secs(5)),
        Timing::Real => (Duration::from_millis(200), Duration::from_millis(500)),
    }
}

/// What the step answered and what the model allows, for the failure message.
fn diverged(step: usize, op: &Op, real: &Seen, allowed: &[Seen]) -> TestCaseError {
    TestCaseError::fail(format!(
        "step {step} ({op:?}): the store answered {real:?}, the model allows {allowed:?}"
    ))
}

/// Runs `ops` against the fixture's store and the model; fails at the first answer the
/// model does not allow.
pub async fn check<F: ModelFixture>(fx: &F, ops: &[Op]) -> Result<(), TestCaseError> {
    let store = fx.store();
    let timing = fx.timing();
    let (lease_for, ttl) = durations(timing);
    let mut time = Timeline {
        timing,
        // The model brackets store calls on real time; the stores themselves still read
        // time only through their clock (or their server's).
        #[allow(clippy::disallowed_methods)]
        start: Instant::now(),
        manual: Duration::ZERO,
    };
    // Ids 0 and 1: one key, two scopes (R4); id 2: another key. Unique to this history.
    let ids: Vec<RecordId> = {
        let a = id("model-a");
        let b = RecordId::new(Scope::from_bytes([8; 16]), a.key().clone());
        vec![a, b, id("model-b")]
    };
    let mut model: HashMap<u8, ModelRecord> = HashMap::new();
    let mut leases: Vec<(u8, Lease)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Claim { rec, fp } => {
                let owner = OwnerToken::random();
                let req = ClaimRequest {
                    id: ids[usize::from(rec)].clone(),
                    fingerprint: Fingerprint::from_bytes([fp; 32]),
                    owner,
                    lease: lease_for,
                    waiting: false,
                };
                let (answer, at) = time.call(store.claim(&req)).await;
                let answer = answer.map_err(|e| TestCaseError::fail(format!("claim: {e}")))?;
                let real = match &answer {
                    Claim::Acquired(l) => {
                        if l.taken_over && model.get(&rec).is_none_or(|r| r.owner.is_none()) {
                            return Err(TestCaseError::fail(format!(
                                "step {step} ({op:?}): taken_over without an in-flight record"
                            )));
                        }
                        leases.push((rec, l.clone()));
                        Seen::Acquired
                    }
                    Claim::InFlight { retry_after } => {
                        if retry_after.is_zero() || *retry_after > lease_for + MS {
                            return Err(TestCaseError::fail(format!(
                                "step {step} ({op:?}): retry_after {retry_after:?} outside (0, {lease_for:?}]"
                            )));
                        }
                        Seen::InFlight
                    }
                    Claim::Completed(s) => Seen::Completed(body_of(s)?),
                    Claim::Mismatch => Seen::Mismatch,
                };
                // What a live record answers (R8, R9, R10); None: acquired (R6, R11, R14).
                let live_answer = |r: &ModelRecord| {
                    if r.fp != fp {
                        Seen::Mismatch
                    } else if let Some(b) = r.body {
                        Seen::Completed(b)
                    } else {
                        Seen::InFlight
                    }
                };
                let allowed = match model.get(&rec).map(|r| (r, alive(r.ends, at))) {
                    None | Some((_, Alive::No)) => vec![Seen::Acquired],
                    Some((r, Alive::Yes)) => vec![live_answer(r)],
                    Some((r, Alive::Either)) => vec![Seen::Acquired, live_answer(r)],
                };
                if !allowed.contains(&real) {
                    return Err(diverged(step, op, &real, &allowed));
                }
                if real == Seen::Acquired {
                    model.insert(
                        rec,
                        ModelRecord {
                            fp,
                            owner: Some(owner.get()),
                            body: None,
                            completed_by: None,
                            ends: at.plus(lease_for),
                        },
                    );
                }
            }
            Op::Complete { handle, .. } | Op::Release { handle } | Op::Renew { handle }
                if handle >= leases.len() => {}
            Op::Complete { handle, body } => {
                let (rec, l) = leases[handle].clone();
                let snap = Snapshot {
                    status: StatusCode::OK,
                    reason: None,
                    headers: HeaderMap::new(),
                    body: SnapshotBody::Full(Bytes::from(vec![body])),
                };
                let (answer, at) = time.call(store.complete(&l, &snap, ttl)).await;
                let real =
                    finish(answer.map_err(|e| TestCaseError::fail(format!("complete: {e}")))?);
                let mut allowed = owner_allows(&model, rec, &l, at);
                // A completion sent again by the owner that completed the record (its
                // first reply was lost) may be acknowledged, but changes nothing.
                let again = model.get(&rec).is_some_and(|r| {
                    r.completed_by == Some(l.owner.get()) && alive(r.ends, at) != Alive::No
                });
                if again {
                    allowed.push(Seen::Done);
                }
                if !allowed.contains(&real) {
                    return Err(diverged(step, op, &real, &allowed));
                }
                if real == Seen::Done && !again {
                    let r = model.get_mut(&rec).expect("allowed only when owned");
                    r.owner = None;
                    r.body = Some(body);
                    r.completed_by = Some(l.owner.get());
                    r.ends = at.plus(ttl);
                }
            }
            Op::Renew { handle } => {
                let (rec, l) = leases[handle].clone();
                let (answer, at) = time.call(store.renew(&l, lease_for)).await;
                let real = finish(answer.map_err(|e| TestCaseError::fail(format!("renew: {e}")))?);
                let allowed = owner_allows(&model, rec, &l, at);
                if !allowed.contains(&real) {
                    return Err(diverged(step, op, &real, &allowed));
                }
                if real == Seen::Done {
                    let r = model.get_mut(&rec).expect("allowed only when owned");
                    r.ends = at.plus(lease_for);
                }
            }
            Op::Release { handle } => {
                let (rec, l) = leases[handle].clone();
                let (answer, at) = time.call(store.release(&l)).await;
                let real =
                    finish(answer.map_err(|e| TestCaseError::fail(format!("release: {e}")))?);
                let allowed = owner_allows(&model, rec, &l, at);
                if !allowed.contains(&real) {
                    return Err(diverged(step, op, &real, &allowed));
                }
                if real == Seen::Done {
                    model.remove(&rec);
                }
            }
            Op::Advance(span) => {
                let by = match span {
                    Span::HalfLease => lease_for / 2,
                    Span::Lease => lease_for + 10 * MS,
                    Span::Ttl => ttl + 10 * MS,
                };
                fx.advance(by).await;
                time.manual += by;
            }
            Op::Lookup { rec } => {
                let (answer, at) = time.call(store.lookup(&ids[usize::from(rec)])).await;
                let real = match answer.map_err(|e| TestCaseError::fail(format!("lookup: {e}")))? {
                    None => Seen::Absent,
                    Some(Record {
                        state: State::InFlight { .. },
                        ..
                    }) => Seen::LiveInFlight,
                    Some(Record {
                        state: State::Completed { snapshot, .. },
                        ..
                    }) => Seen::LiveCompleted(body_of(&snapshot)?),
                };
                let live = |r: &ModelRecord| match r.body {
                    Some(b) => Seen::LiveCompleted(b),
                    None => Seen::LiveInFlight,
                };
                let allowed = match model.get(&rec).map(|r| (r, alive(r.ends, at))) {
                    None | Some((_, Alive::No)) => vec![Seen::Absent],
                    Some((r, Alive::Yes)) => vec![live(r)],
                    Some((r, Alive::Either)) => vec![Seen::Absent, live(r)],
                };
                if !allowed.contains(&real) {
                    return Err(diverged(step, op, &real, &allowed));
                }
            }
        }
    }
    Ok(())
}

const MS: Duration = Duration::from_millis(1);

/// R11 fencing: what renew, complete or release by lease `l` may answer. Only the
/// owner of an in-flight record is obeyed; while its lease certainly runs it must be.
/// Once the lease may have ended, the store may already have removed the record (native
/// expiry, a sweep) or may still honour it: either answer is the contract's.
fn owner_allows(model: &HashMap<u8, ModelRecord>, rec: u8, l: &Lease, at: Window) -> Vec<Seen> {
    match model.get(&rec) {
        Some(r) if r.owner == Some(l.owner.get()) => match alive(r.ends, at) {
            Alive::Yes => vec![Seen::Done],
            Alive::No | Alive::Either => vec![Seen::Done, Seen::Superseded],
        },
        _ => vec![Seen::Superseded],
    }
}

/// Runs `cases` random histories of up to 40 steps, each on a fresh fixture from
/// `make`, on one multi-threaded runtime. A divergence panics with proptest's shrunk,
/// minimal history.
pub fn run<F, Fut>(cases: u32, make: impl Fn() -> Fut)
where
    F: ModelFixture,
    Fut: Future<Output = F>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&history(40), |ops| {
        rt.block_on(async {
            let fx = make().await;
            check(&fx, &ops).await
        })
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, ops)) => {
            panic!("the store diverged from the model: {why}\nminimal history: {ops:#?}")
        }
        Err(e) => panic!("{e}"),
    }
}

/// Stamps the model-based test (R4, R6–R14) as one named test for one store.
///
/// `$make` is an expression evaluating to a future of a [`ModelFixture`] (an `async`
/// block), evaluated afresh for each history; `$cases` is the number of histories.
#[macro_export]
macro_rules! store_model_test {
    ($make:expr, $cases:expr) => {
        // R4, R6–R14: every answer of every random history is one the model allows.
        #[test]
        fn r06_r14_store_follows_the_model() {
            $crate::store::testkit::model::run($cases, || $make);
        }
    };
}
