//! The embedded, durable idem store: idempotency records in one [redb] file, the
//! default store of the `idem` proxy (CLI scheme `file:PATH`).
//!
//! [`RedbStore`] implements the [`Store`] contract of `idem_core` by running the
//! record state machine ([`idem_core::store::machine`]) inside redb write
//! transactions. Records survive a restart (R16); expired ones are swept in the
//! background (R14).
//!
//! In a service, through the `idem` crate (feature `redb`, on by default), as
//! `idem::redb`:
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use idem::IdempotencyLayer;
//! use idem::redb::{RedbStore, RedbStoreConfig};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let store = RedbStore::open("/var/lib/orders/idem", RedbStoreConfig::default())?;
//!     let app = Router::new()
//!         .route("/orders", post(|| async { "created" }))
//!         .layer(IdempotencyLayer::new(store));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! The [`Store`] contract, used directly (as a store's implementer or the engine
//! does):
//!
//! ```
//! use std::time::Duration;
//!
//! use idem_core::fingerprint::Fingerprint;
//! use idem_core::record::{OwnerToken, RecordId, Snapshot, SnapshotBody};
//! use idem_core::scope::Scope;
//! use idem_core::store::{Claim, ClaimRequest, Finish, Store, StoreError};
//! use idem_core::IdempotencyKey;
//! use idem_redb::{RedbStore, RedbStoreConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), StoreError> {
//! let dir = std::env::temp_dir().join(format!("idem-redb-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let store = RedbStore::open(&dir, RedbStoreConfig::default())?;
//!
//! // The first request claims the key and runs the operation …
//! let id = RecordId::new(Scope::GLOBAL, IdempotencyKey::new("order-42").unwrap());
//! let req = ClaimRequest {
//!     id,
//!     fingerprint: Fingerprint::from_bytes([7; 32]),
//!     owner: OwnerToken::random(),
//!     lease: Duration::from_secs(60),
//!     waiting: false,
//! };
//! let Claim::Acquired(lease) = store.claim(&req).await? else { unreachable!() };
//! let snapshot = Snapshot {
//!     status: 201_u16.try_into().unwrap(),
//!     reason: None,
//!     headers: Default::default(),
//!     body: SnapshotBody::Full(b"charged"[..].into()),
//! };
//! let ttl = Duration::from_secs(24 * 60 * 60);
//! assert_eq!(store.complete(&lease, &snapshot, ttl).await?, Finish::Done);
//!
//! // … and after a restart, a retry still gets the stored response.
//! drop(store);
//! let store = RedbStore::open(&dir, RedbStoreConfig::default())?;
//! let retry = ClaimRequest { owner: OwnerToken::random(), ..req };
//! assert_eq!(store.claim(&retry).await?, Claim::Completed(snapshot));
//! # drop(store);
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **Atomic.** Each `claim`, `renew`, `complete` and `release` reads the record,
//!   applies the transition and writes the result inside a redb write transaction.
//!   redb runs one write transaction at a time, so of any number of concurrent claims
//!   exactly one acquires (R6), and a late completion is fenced by the owner token
//!   (R11). A claim whose answer changes nothing (a replay, a mismatch, a duplicate in
//!   flight) is answered from a read transaction, which never waits for a writer.
//! - **Durable, with group commit.** A commit that holds a completion or a deletion
//!   fsyncs before it returns, and no caller is answered before the commit holding its
//!   write has returned: once a client has its response, its record survives a crash
//!   or restart (R16). Claims, renewals and releases commit without an fsync of their
//!   own and reach the disk with the next durable commit (or when the store is
//!   closed): a crash (`kill -9`, power loss) loses the in-flight records written since
//!   the last one, so their keys are free at once after the restart rather than one
//!   lease later, though the upstream may still be running the request that claimed
//!   one. None of them was ever told to a client as a result. One writer thread
//!   applies every transition that queued up during the previous commit in a single
//!   transaction, one after another, so concurrent requests share an fsync instead of
//!   paying one each; a transition
//!   whose record does not decode fails alone, and a failed write aborts the whole
//!   batch rather than commit part of it. redb's copy-on-write commits mean a record is
//!   wholly stored or absent, and a value that does not decode is
//!   [`StoreError::Corrupt`], never replayed.
//! - **Refuses a file it cannot trust (R25).** A directory without a database file is a
//!   new store; a file that is empty (0 bytes), not idem's (no format marker, see
//!   [`layout::META`]) or damaged so that redb refuses it (or panics on it) is an
//!   [`OpenError`], never silently an empty store, unless
//!   [`RedbStoreConfig::fresh`] asks to move it aside and start empty. Every stored
//!   record ends with a checksum, so damage to one is [`StoreError::Corrupt`] for that
//!   key alone; [`Store::list`] reports such records instead of failing.
//! - **Bounded.** A background task deletes records whose lease or expiry has passed,
//!   `sweep_batch` records per write transaction every `sweep_interval`, found through
//!   an expiry index instead of a full scan (see [`layout`]).
//!   [`Store::purge_expired`] runs a whole sweep at once.
//! - **Not blocking the runtime.** Writes run on the store's writer thread, reads and
//!   sweeps on tokio's blocking threads.
//!
//! # One process per directory
//!
//! redb locks its file, so a directory is used by one process at a time: a second
//! [`RedbStore::open`] of a held directory fails at once with
//! [`OpenError::DirectoryInUse`] (wrapped in a [`StoreError::Backend`]). Clone the
//! store to share it within a process. Several instances that must behave as one
//! (R18) need a networked store (Redis, PostgreSQL).
//!
//! [`watch`](Store::watch) wakes waiters of this process only, which is all a
//! single-process store needs.
//!
//! [redb]: https://docs.rs/redb

#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
pub mod layout;
mod open;
mod store;
mod writer;

pub use error::OpenError;
pub use store::{RedbStore, RedbStoreConfig};

#[doc(no_inline)]
pub use idem_core::store::{Store, StoreError};
