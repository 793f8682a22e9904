//! The `Store` contract every backend implements, and the memory store.
//!
//! # Contract
//!
//! A store keeps at most one [`Record`] per [`RecordId`] and offers these operations,
//! each atomic with respect to every other operation on the same id, from any number of
//! tasks, processes or machines sharing the store:
//!
//! - [`Store::claim`]: if no *live* record exists (absent, completed past its expiry,
//!   or in flight past its lease), create an in-flight record with the request's
//!   fingerprint, owner token and lease, and answer [`Claim::Acquired`]. Otherwise, if the
//!   live record's fingerprint differs, answer [`Claim::Mismatch`] and change nothing
//!   (R9); if it is completed, answer [`Claim::Completed`] with its snapshot (R8); if it
//!   is in flight, answer [`Claim::InFlight`] with the time left on its lease (R10).
//!   Exactly one of any number of concurrent claims on an id acquires it (R6, R18).
//!   A claim that answers `InFlight` to a request that will wait
//!   ([`ClaimRequest::waiting`]) also makes sure, in the same atomic step, that the
//!   record's completion, release or deletion wakes this id's watchers on every
//!   instance; a store may skip that notification for records nobody waits on (R10).
//! - [`Store::renew`], [`Store::complete`], [`Store::release`]: only when the record is
//!   still in flight under the lease's owner token do they extend the lease, store the
//!   snapshot (keeping the fingerprint, state `completed`, expiry `now + ttl`), or delete
//!   the record; otherwise they change nothing and answer [`Finish::Superseded`] (R11
//!   fencing). A completion is all or nothing (R16).
//! - [`Store::lookup`]: the live record, if any.
//! - [`Store::watch`]: a [`Watch`] that wakes when the record may have been completed
//!   or released. It may wake spuriously and, for networked stores, may miss a wake-up;
//!   callers re-check with `claim` and poll with a bounded interval. Waiting holds no
//!   pooled connection.
//! - [`Store::list`]: the live records matching a [`ListFilter`], in [`RecordId`] order
//!   (scope bytes, then key bytes), at most `limit` of them, starting after the
//!   filter's cursor; [`ListPage::next`] is the cursor of the next page. A stored
//!   record that does not decode is reported in [`ListPage::corrupt`] (it takes a place
//!   on the page) instead of failing the page, so one damaged record hides no other.
//!   For on-call inspection, not the request path: it may read the whole store.
//! - [`Store::delete`]: removes the record whatever its state or owner, answers the live
//!   record it removed (if any), and wakes watchers as a release does, so a waiting
//!   duplicate claims afresh. An in-flight owner whose record was deleted is
//!   superseded: its completion changes nothing.
//! - Expired records are removed by the store on its own (native expiry or a
//!   background sweep), so storage is bounded by live records (R14);
//!   [`Store::purge_expired`] runs one sweep now.
//!
//! Expected races are values ([`Claim`], [`Finish`]); only infrastructure failures are
//! [`StoreError`]s.
//!
//! A store whose database can hold the caller's own transaction also implements
//! [`Transactional`] (R20, R21).

use std::future::Future;
use std::time::Duration;

use crate::clock::Millis;
use crate::fingerprint::Fingerprint;
use crate::record::{Corrupt, OwnerToken, Record, RecordId, Snapshot, State};
use crate::scope::Scope;

pub mod machine;
pub mod memory;
pub mod sealed;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod transactional;
mod watch;

pub use memory::{MemoryStore, MemoryStoreConfig};
pub use sealed::{KeyListError, Sealed, SealingKeys};
pub use transactional::{RecoveryPoint, Transactional};
pub use watch::{WaitHub, Watch};

/// A boxed error from a backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What [`Store::claim`] is asked.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// The record.
    pub id: RecordId,
    /// The request's fingerprint.
    pub fingerprint: Fingerprint,
    /// The token the new owner will present.
    pub owner: OwnerToken,
    /// How long the lease lasts unless renewed.
    pub lease: Duration,
    /// The caller waits for the record if it is in flight (R10 `wait` mode), so the
    /// store must wake it when the record completes or is released. Networked stores
    /// notify other instances only for records a waiter asked about: a completion with
    /// nobody waiting sends nothing.
    pub waiting: bool,
}

/// Proof of ownership of an in-flight record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The record.
    pub id: RecordId,
    /// Its fingerprint, kept on completion.
    pub fingerprint: Fingerprint,
    /// The owner token that fences completion and release.
    pub owner: OwnerToken,
    /// True when an in-flight record whose lease had ended was taken over (R11).
    pub taken_over: bool,
}

/// The answer to a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Claim {
    /// The caller owns the record and runs the operation.
    Acquired(Lease),
    /// Another request owns it; its lease has this long left.
    InFlight {
        /// Time left on the owner's lease.
        retry_after: Duration,
    },
    /// Done before: replay this.
    Completed(Snapshot),
    /// The key was used with a different request.
    Mismatch,
}

/// The answer to renew, complete or release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Finish {
    /// Applied.
    Done,
    /// The lease's owner no longer owns the record (taken over, released or expired):
    /// nothing was changed.
    Superseded,
}

/// Which states [`Store::list`] answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateFilter {
    /// In flight and completed.
    #[default]
    Any,
    /// Only in-flight records (a request running, or stuck until its lease ends).
    InFlight,
    /// Only completed records.
    Completed,
}

/// What [`Store::list`] is asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListFilter {
    /// Which states.
    pub state: StateFilter,
    /// Only records created strictly before this instant.
    pub created_before: Option<Millis>,
    /// Only records of this scope.
    pub scope: Option<Scope>,
    /// The cursor: only records whose id sorts after this one ([`ListPage::next`]).
    pub after: Option<RecordId>,
    /// The most records answered (at least one is asked for).
    pub limit: usize,
}

impl Default for ListFilter {
    /// Every live record, 100 per page.
    fn default() -> Self {
        Self {
            state: StateFilter::Any,
            created_before: None,
            scope: None,
            after: None,
            limit: 100,
        }
    }
}

impl ListFilter {
    /// True when a live record `id` with `record` belongs on the page at `now`,
    /// cursor included: what every store evaluates, in Rust or in its own query.
    pub fn matches(&self, id: &RecordId, record: &Record, now: Millis) -> bool {
        let state = matches!(
            (&self.state, &record.state),
            (StateFilter::Any, _)
                | (StateFilter::InFlight, State::InFlight { .. })
                | (StateFilter::Completed, State::Completed { .. })
        );
        state
            && record.is_live(now)
            && self.created_before.is_none_or(|t| record.created_at < t)
            && self.scope.is_none_or(|s| *id.scope() == s)
            && self.after.as_ref().is_none_or(|a| id > a)
    }

    /// The page size asked for, at least 1.
    pub fn page_size(&self) -> usize {
        self.limit.max(1)
    }
}

/// A stored record that does not decode, as [`Store::list`] reports it: never
/// replayed, and never a reason to fail the whole page (R16, R25).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptRecord {
    /// The record's id, or `None` when the stored id is itself damaged.
    pub id: Option<RecordId>,
    /// Why it does not decode.
    pub why: Corrupt,
}

/// One page of [`Store::list`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// The records, in id order.
    pub records: Vec<(RecordId, Record)>,
    /// The cursor for the next page ([`ListFilter::after`]) when more records may follow.
    pub next: Option<RecordId>,
    /// The stored records in this page's range that do not decode, in id order. A
    /// corrupt record's state and age are unknown, so it is reported whatever the
    /// filter's state and `created_before` say; it counts toward the page's limit.
    pub corrupt: Vec<CorruptRecord>,
}

impl ListPage {
    /// A page of at most `filter.page_size()` records out of matching `records` in any
    /// order: sorts them and sets [`ListPage::next`] if some were left over.
    pub fn from_matches(mut records: Vec<(RecordId, Record)>, filter: &ListFilter) -> Self {
        records.sort_by(|a, b| a.0.cmp(&b.0));
        Self::from_sorted(records, filter)
    }

    /// Like [`ListPage::from_matches`], for `records` already in id order.
    pub fn from_sorted(mut records: Vec<(RecordId, Record)>, filter: &ListFilter) -> Self {
        let limit = filter.page_size();
        let more = records.len() > limit;
        records.truncate(limit);
        let next = if more {
            records.last().map(|(id, _)| id.clone())
        } else {
            None
        };
        Self {
            records,
            next,
            corrupt: Vec::new(),
        }
    }

    /// Like [`ListPage::from_sorted`], for matching entries in id order that may not
    /// have decoded: the page holds at most `filter.page_size()` entries, good or
    /// corrupt, and the cursor is the last of them, so every entry is reported on
    /// exactly one page.
    pub fn from_sorted_entries(
        mut entries: Vec<(RecordId, Result<Record, Corrupt>)>,
        filter: &ListFilter,
    ) -> Self {
        let limit = filter.page_size();
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next = if more {
            entries.last().map(|(id, _)| id.clone())
        } else {
            None
        };
        let mut page = Self {
            next,
            ..Self::default()
        };
        for (id, entry) in entries {
            match entry {
                Ok(record) => page.records.push((id, record)),
                Err(why) => page.corrupt.push(CorruptRecord { id: Some(id), why }),
            }
        }
        page
    }
}

/// An infrastructure failure: the store could not answer (R15).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot be reached.
    #[error("store unavailable")]
    Unavailable(#[source] BoxError),
    /// The store did not answer in time.
    #[error("store timed out")]
    Timeout,
    /// The store refuses new records (the memory store at capacity).
    #[error("store is full")]
    Full,
    /// A stored record does not decode; it is never replayed.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// The store lacks a capability asked of it, e.g. a write inside a PostgreSQL
    /// transaction ([`Transactional`]) asked of a store chosen at run time that is not
    /// PostgreSQL.
    #[error("the {store} store does not support {capability}")]
    Unsupported {
        /// Which store.
        store: &'static str,
        /// What it was asked to do.
        capability: &'static str,
    },
    /// Any other backend error.
    #[error("{store} store error")]
    Backend {
        /// Which store.
        store: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// A backend error of `store`.
    pub fn backend(store: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            store,
            source: source.into(),
        }
    }

    /// This error as a store's connect answers it: an [`Unavailable`](Self::Unavailable)
    /// gets a [`ConnectError`] naming `store` and `address` as its source, so a service
    /// that cannot start says which store it could not reach, and where; any other
    /// error is returned as it is.
    #[must_use]
    pub fn at_connect(self, store: &'static str, address: impl Into<String>) -> Self {
        match self {
            Self::Unavailable(source) => Self::Unavailable(Box::new(ConnectError {
                store,
                address: address.into(),
                source,
            })),
            other => other,
        }
    }
}

/// A store that could not be reached when it was opened: the source of the
/// [`StoreError::Unavailable`] its connect answers (see [`StoreError::at_connect`]).
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to the {store} store at {address}")]
pub struct ConnectError {
    /// Which store, e.g. `"postgres"`.
    pub store: &'static str,
    /// Where it was looked for, without credentials, e.g. `127.0.0.1:5432`.
    pub address: String,
    /// Why it could not be reached.
    #[source]
    pub source: BoxError,
}

/// A place to keep idempotency records. See the module docs for the contract.
///
/// Stores are cheap handles: clones share one store.
pub trait Store: Clone + Send + Sync + 'static {
    /// Claims the record for a new owner, or says why not.
    fn claim(&self, req: &ClaimRequest) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Extends the owner's lease to `now + lease_for`.
    fn renew(
        &self,
        lease: &Lease,
        lease_for: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send;

    /// Stores the snapshot and marks the record completed, expiring `ttl` from now.
    fn complete(
        &self,
        lease: &Lease,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send;

    /// Deletes the owner's in-flight record so the operation may run again.
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<Finish, StoreError>> + Send;

    /// The live record, if any.
    fn lookup(
        &self,
        id: &RecordId,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;

    /// The live records matching `filter`, one page in id order (see the contract).
    fn list(
        &self,
        filter: &ListFilter,
    ) -> impl Future<Output = Result<ListPage, StoreError>> + Send;

    /// Removes the record whatever its state and wakes its watchers; answers the live
    /// record removed, if any.
    fn delete(
        &self,
        id: &RecordId,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;

    /// A handle that wakes when the record may have changed.
    fn watch(&self, id: &RecordId) -> Watch;

    /// Removes expired records now; answers how many were removed.
    fn purge_expired(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
