//! The transactional capability of a store (R20, R21): writing a record's completion
//! or its operation's progress inside a transaction the caller holds on the store's
//! own database, together with the caller's business writes.
//!
//! It is a trait beside [`Store`], not a method on it: a store has it or does not, and
//! the type says which. A wrapper keeps it by implementing it whenever what it wraps
//! does: [`Sealed<S>`](super::Sealed) is [`Transactional`] when `S` is, and seals what
//! it writes that way exactly as it seals a completion.
//!
//! The trait is generic over the caller's client type `C` (for PostgreSQL a
//! `tokio_postgres::Transaction` or `Client`), so this crate names no database driver:
//! each store implements it for the client types of its own database.

use std::future::Future;
use std::time::Duration;

use super::{Finish, Lease, Store, StoreError};
use crate::record::Snapshot;

/// The last phase of a multi-step operation that committed, and what it carries to the
/// next phases (e.g. the id of a row it inserted, the answer of a foreign call) (R20).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryPoint {
    /// The phase's name, e.g. `"order_created"`.
    pub step: String,
    /// Bytes the phase chose to keep (often JSON).
    pub data: Option<Vec<u8>>,
}

impl RecoveryPoint {
    /// A point at `step` without data.
    pub fn new(step: impl Into<String>) -> Self {
        Self {
            step: step.into(),
            data: None,
        }
    }

    /// A point at `step` carrying `data`.
    pub fn with_data(step: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self {
            step: step.into(),
            data: Some(data.into()),
        }
    }
}

/// A [`Store`] that writes inside the caller's transaction on `C`, a client of the
/// store's database (R20, R21).
///
/// Every write is fenced by the lease's owner token as [`Store::complete`] is (R11):
/// [`Finish::Superseded`] means this request no longer owns the record, nothing was
/// written, and the caller rolls back. On any error the caller rolls back too.
pub trait Transactional<C: ?Sized + Sync>: Store {
    /// [`Store::complete`] inside the caller's transaction (R21): the record becomes
    /// completed with `snapshot` if and only if the transaction commits, together with
    /// the caller's business writes.
    fn complete_in(
        &self,
        client: &C,
        lease: &Lease,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send;

    /// Moves `lease`'s record to `point` inside the caller's transaction (R20), so the
    /// phase's local writes and the new point commit together or not at all. The point
    /// lives `ttl` from now (the record TTL).
    fn advance_in(
        &self,
        client: &C,
        lease: &Lease,
        point: &RecoveryPoint,
        ttl: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send;

    /// The last recovery point of `lease`'s record made by a request with the same
    /// fingerprint, if any (R20); `None` means start at the first phase.
    fn recovery_point(
        &self,
        client: &C,
        lease: &Lease,
    ) -> impl Future<Output = Result<Option<RecoveryPoint>, StoreError>> + Send;
}
