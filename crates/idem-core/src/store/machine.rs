//! The record state machine as pure functions, for stores that evaluate it in Rust
//! inside their own atomic step (a mutex, a write transaction). Networked stores encode
//! the same transitions in a script or a statement; the shared test kit holds both to
//! one contract.

use std::time::Duration;

use crate::clock::Millis;
use crate::record::{Record, Snapshot, State};
use crate::store::{Claim, ClaimRequest, Finish, Lease};

/// What a transition asks the store to do with the stored record.
#[derive(Debug, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "made and consumed at once inside one store step, never kept or moved around"
)]
pub enum Write {
    /// Leave it as it is.
    Keep,
    /// Replace (or create) it.
    Put(Record),
    /// Delete it.
    Delete,
}

fn ms(d: Duration) -> Millis {
    d.as_millis().try_into().unwrap_or(Millis::MAX)
}

/// R6, R8, R9, R10, R11: the answer to a claim given the stored record, taken by value
/// so that a replay's snapshot moves into the answer rather than being copied.
pub fn claim(existing: Option<Record>, req: &ClaimRequest, now: Millis) -> (Claim, Write) {
    match existing {
        Some(r) if r.is_live(now) => answer(r, req, now),
        dead => {
            let taken_over = matches!(
                dead,
                Some(Record {
                    state: State::InFlight { .. },
                    ..
                })
            );
            let record = Record {
                fingerprint: req.fingerprint,
                created_at: now,
                state: State::InFlight {
                    owner: req.owner,
                    lease_until: now.saturating_add(ms(req.lease)),
                },
            };
            let lease = Lease {
                id: req.id.clone(),
                fingerprint: req.fingerprint,
                owner: req.owner,
                taken_over,
            };
            (Claim::Acquired(lease), Write::Put(record))
        }
    }
}

/// The answer to a claim of a live record, which it leaves as it is.
fn answer(live: Record, req: &ClaimRequest, now: Millis) -> (Claim, Write) {
    let answer = match live {
        r if r.fingerprint != req.fingerprint => Claim::Mismatch,
        Record {
            state: State::Completed { snapshot, .. },
            ..
        } => Claim::Completed(snapshot),
        Record {
            state: State::InFlight { lease_until, .. },
            ..
        } => Claim::InFlight {
            retry_after: Duration::from_millis(lease_until.saturating_sub(now)),
        },
    };
    (answer, Write::Keep)
}

/// True when `existing` is in flight under the lease's owner (fencing, R11). A lease
/// that ran out is still honoured while nobody took the record over.
fn owns(existing: Option<&Record>, lease: &Lease) -> bool {
    matches!(existing, Some(Record { state: State::InFlight { owner, .. }, .. }) if *owner == lease.owner)
}

/// R11: extends the owner's lease.
pub fn renew(
    existing: Option<&Record>,
    lease: &Lease,
    lease_for: Duration,
    now: Millis,
) -> (Finish, Write) {
    match existing {
        Some(r) if owns(existing, lease) => {
            let mut r = r.clone();
            if let State::InFlight { lease_until, .. } = &mut r.state {
                *lease_until = now.saturating_add(ms(lease_for));
            }
            (Finish::Done, Write::Put(r))
        }
        _ => (Finish::Superseded, Write::Keep),
    }
}

/// R7: stores the snapshot under the record's original fingerprint.
pub fn complete(
    existing: Option<&Record>,
    lease: &Lease,
    snapshot: &Snapshot,
    ttl: Duration,
    now: Millis,
) -> (Finish, Write) {
    match existing {
        Some(r) if owns(existing, lease) => (
            Finish::Done,
            Write::Put(Record {
                fingerprint: r.fingerprint,
                created_at: r.created_at,
                state: State::Completed {
                    snapshot: snapshot.clone(),
                    expires_at: now.saturating_add(ms(ttl)),
                },
            }),
        ),
        _ => (Finish::Superseded, Write::Keep),
    }
}

/// R7, R12: deletes the owner's record.
pub fn release(existing: Option<&Record>, lease: &Lease) -> (Finish, Write) {
    if owns(existing, lease) {
        (Finish::Done, Write::Delete)
    } else {
        (Finish::Superseded, Write::Keep)
    }
}
