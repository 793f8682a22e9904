//! What a handler behind the layer learns about its request: [`IdempotencyContext`].
//!
//! The layer puts an [`IdempotencyContext`] into every request's extensions. With the
//! `axum` feature it is also an extractor. A protected request (covered method, valid
//! key, record claimed) carries an [`IdempotencyHandle`]: the record's lease, and the
//! key to derive keys for calls to other services from ([R20](crate::contract#r20)).
//!
//! The context comes in two types. `IdempotencyContext` names no store and serves every
//! layer. `IdempotencyContext<St>`, with `St` the layer's store type, also holds the
//! store: when `St` is [`Transactional`] (PostgreSQL, and so `Sealed<PostgresStore>`
//! and `AnyStore`), its handle completes the record inside the handler's own database
//! transaction ([R21](crate::contract#r21)) and keeps the recovery points of multi-step
//! work ([R20](crate::contract#r20)). Asking for the context of another store type than
//! the layer's is a 500 (a wiring mistake).
//!
//! # Atomic phases and transactional completion (PostgreSQL)
//!
//! Each phase commits its local writes with the next recovery point; a retry after a
//! crash resumes at the first phase that did not commit; the last phase completes the
//! record in its own transaction, and the layer answers the client exactly that
//! snapshot without writing the record again ([R20](crate::contract#r20),
//! [R21](crate::contract#r21)).
//!
//! What the phases produce travels in a [`Progress<T>`]: `T` is the handler's own serde
//! type, read once with [`IdempotencyHandle::progress`] and written whole, with each
//! phase's name, by [`IdempotencyHandle::advance`]. So the order id phase 1 inserted is
//! still there in phase 3, after any number of crashes, without packing bytes by hand.
//! While a recovery point exists, the key stays bound to the payload that made it: a
//! request with another body under that key is refused ([R9](crate::contract#r9), 422),
//! even after the first attempt answered a 5xx and released the key.
//!
//! **Where a call to another service goes.** Between transactions, never inside one:
//! make the call before opening the transaction that records its answer, holding no
//! pooled connection during it, with a key derived from the request's
//! ([`IdempotencyHandle::derived_key`]), so a retry of the phase repeats the call and
//! the other service answers it as the same operation. Inside an open transaction the
//! round trip would hold a pooled connection, the transaction's locks and, after
//! [`advance`](IdempotencyHandle::advance), the record's row lock, for as long as the
//! other service takes; a slow service would then exhaust the pool.
//!
//! `pool.get()` gives deadpool's `Object`, which dereferences to deadpool's
//! `ClientWrapper`, which dereferences to `tokio_postgres::Client`: `&**client` is that
//! client, and `&*tx` the `tokio_postgres::Transaction` the store writes in.
//!
//! ```no_run
//! # #[cfg(all(feature = "axum", feature = "postgres"))] mod doc {
//! use axum::body::Bytes;
//! use axum::http::{Response, StatusCode};
//! use axum::response::IntoResponse;
//! use axum::{Router, routing::post};
//! use idem::postgres::{PostgresStore, PostgresStoreConfig};
//! use idem::context::Finish;
//! use idem::{IdempotencyContext, IdempotencyLayer};
//! use serde::{Deserialize, Serialize};
//!
//! /// What the phases keep: phase 1's order id and phase 2's charge reach phase 3.
//! #[derive(Default, Serialize, Deserialize)]
//! struct Checkout {
//!     order_id: Option<i64>,
//!     charge_id: Option<String>,
//! }
//!
//! /// The handler's error: a 500, so the layer releases the key (R7) and a retry
//! /// with the same body resumes at the last committed phase.
//! struct Failed(String);
//!
//! impl<E: std::fmt::Display> From<E> for Failed {
//!     fn from(e: E) -> Self {
//!         Self(e.to_string())
//!     }
//! }
//!
//! impl IntoResponse for Failed {
//!     fn into_response(self) -> axum::response::Response {
//!         (StatusCode::INTERNAL_SERVER_ERROR, self.0).into_response()
//!     }
//! }
//!
//! /// The bank's client, which sends `key` as the bank's `Idempotency-Key`.
//! async fn charge_at_bank(key: &str) -> Result<String, Failed> {
//!     # let _ = key;
//!     Ok("ch_1".to_owned())
//! }
//!
//! // Behind `IdempotencyLayer` over a `PostgresStore`; with `Sealed<PostgresStore>`,
//! // name that type here and use `handle.store().get_ref().pool()`.
//! async fn checkout(
//!     ctx: IdempotencyContext<PostgresStore>,
//! ) -> Result<axum::response::Response, Failed> {
//!     // `None` only when the request runs unprotected (no key, or a store failure
//!     // under fail-open, R15).
//!     let handle = ctx.handle().ok_or(Failed("no idempotency key".into()))?;
//!     let pool = handle.store().pool();
//!     let mut progress = handle.progress::<Checkout, _>(&**pool.get().await?).await?;
//!     loop {
//!         match progress.step() {
//!             // Phase 1: local writes only.
//!             None => {
//!                 let mut client = pool.get().await?;
//!                 let tx = client.transaction().await?;
//!                 let row = tx
//!                     .query_one(
//!                         "INSERT INTO orders (key) VALUES ($1) RETURNING id",
//!                         &[&handle.key().as_str()],
//!                     )
//!                     .await?;
//!                 progress.data.order_id = Some(row.try_get(0)?);
//!                 if handle.advance(&*tx, &mut progress, "order_created").await? != Finish::Done {
//!                     return Err(Failed("the key was taken over".into())); // rolled back
//!                 }
//!                 tx.commit().await?;
//!             }
//!             // Phase 2: the bank first, with no transaction open and no connection
//!             // held; then a short transaction that records its answer.
//!             Some("order_created") => {
//!                 let charge_id = charge_at_bank(&handle.derived_key("charge")).await?;
//!                 progress.data.charge_id = Some(charge_id);
//!                 let mut client = pool.get().await?;
//!                 let tx = client.transaction().await?;
//!                 if handle.advance(&*tx, &mut progress, "charged").await? != Finish::Done {
//!                     return Err(Failed("the key was taken over".into()));
//!                 }
//!                 tx.commit().await?;
//!             }
//!             // Phase 3: the ledger entry, with the record completed in the same
//!             // transaction (R21).
//!             Some("charged") => {
//!                 let (Some(order_id), Some(charge_id)) =
//!                     (progress.data.order_id, progress.data.charge_id.as_deref())
//!                 else {
//!                     return Err(Failed("progress without its data".into()));
//!                 };
//!                 let mut client = pool.get().await?;
//!                 let tx = client.transaction().await?;
//!                 tx.execute(
//!                     "INSERT INTO ledger (order_id, charge_id) VALUES ($1, $2)",
//!                     &[&order_id, &charge_id],
//!                 )
//!                 .await?;
//!                 let response = Response::builder()
//!                     .status(StatusCode::CREATED)
//!                     .header("content-type", "application/json")
//!                     .body(Bytes::from(format!("{{\"order\":{order_id}}}")))?;
//!                 if handle.complete_in(&*tx, &response).await? != Finish::Done {
//!                     return Err(Failed("the key was taken over".into()));
//!                 }
//!                 tx.commit().await?;
//!                 return Ok(response.map(axum::body::Body::from));
//!             }
//!             Some(other) => return Err(Failed(format!("unknown step {other}"))),
//!         }
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let store = PostgresStore::connect(
//!         "postgres://app@db.internal:5432/app",
//!         PostgresStoreConfig::default(),
//!     )
//!     .await?;
//!     let layer = IdempotencyLayer::builder(store).require_key(true).build()?;
//!     let app = Router::new().route("/checkout", post(checkout)).layer(layer);
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! # }
//! ```
//!
//! How the layer treats a transactional completion: after the handler returns, it reads
//! the record once; completed (the transaction committed) → it answers the snapshot
//! given to [`IdempotencyHandle::complete_in`] and neither completes nor releases the
//! record; still in flight (the transaction rolled back) → it finishes as for any
//! response (store it or release it, [R7](crate::contract#r7)).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use idem_core::key::IdempotencyKey;
use idem_core::policy::Policy;
use idem_core::record::Snapshot;
use idem_core::scope::Scope;
/// What [`IdempotencyHandle::complete_in`], [`advance_in`](IdempotencyHandle::advance_in)
/// and [`advance`](IdempotencyHandle::advance) answer, and the untyped recovery point.
pub use idem_core::store::{Finish, RecoveryPoint};
use idem_core::store::{Lease, StoreError, Transactional};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The idempotency facts of one request, put into its extensions by the layer: as
/// `IdempotencyContext` for any layer, and as `IdempotencyContext<St>` with the layer's
/// store `St` (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct IdempotencyContext<St = ()> {
    pub(crate) key: Option<IdempotencyKey>,
    pub(crate) scope: Option<Scope>,
    pub(crate) handle: Option<IdempotencyHandle<St>>,
}

impl<St> IdempotencyContext<St> {
    pub(crate) fn unprotected() -> Self {
        Self {
            key: None,
            scope: None,
            handle: None,
        }
    }

    /// The request's key, when it is covered and carries one.
    pub fn key(&self) -> Option<&IdempotencyKey> {
        self.key.as_ref()
    }

    /// The request's scope ([R4](crate::contract#r4)), when it is covered and carries a
    /// key.
    pub fn scope(&self) -> Option<&Scope> {
        self.scope.as_ref()
    }

    /// The handle of the record this request owns, when it is protected. `None` for a
    /// request that passes through ([R2](crate::contract#r2), [R3](crate::contract#r3))
    /// or runs unprotected after a store failure under fail-open
    /// ([R15](crate::contract#r15)).
    pub fn handle(&self) -> Option<&IdempotencyHandle<St>> {
        self.handle.as_ref()
    }
}

impl<St: Clone> IdempotencyContext<St> {
    /// The same context naming no store, as every layer's handlers can take it.
    pub(crate) fn untyped(&self) -> IdempotencyContext {
        IdempotencyContext {
            key: self.key.clone(),
            scope: self.scope,
            handle: self.handle.as_ref().map(IdempotencyHandle::untyped),
        }
    }
}

/// Ownership of the in-flight record of the current request, shared between the
/// handler and the layer; with the layer's store `St` when the context names it.
///
/// Cheap to clone; clones (typed or not) share one state.
#[derive(Clone)]
pub struct IdempotencyHandle<St = ()> {
    inner: Arc<HandleInner>,
    store: St,
}

struct HandleInner {
    lease: Lease,
    policy: Arc<Policy>,
    completed: Mutex<Option<Snapshot>>,
}

impl<St> IdempotencyHandle<St> {
    pub(crate) fn new(lease: Lease, policy: Arc<Policy>, store: St) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                lease,
                policy,
                completed: Mutex::new(None),
            }),
            store,
        }
    }

    fn untyped(&self) -> IdempotencyHandle {
        IdempotencyHandle {
            inner: Arc::clone(&self.inner),
            store: (),
        }
    }

    /// The request's key.
    pub fn key(&self) -> &IdempotencyKey {
        self.inner.lease.id.key()
    }

    /// The lease: record id, fingerprint and owner token that fences every write
    /// ([R11](crate::contract#r11)).
    pub fn lease(&self) -> &Lease {
        &self.inner.lease
    }

    /// How long the completed record lives ([R14](crate::contract#r14)).
    pub fn ttl(&self) -> Duration {
        self.inner.policy.ttl()
    }

    /// The layer's store (`()` in a context that names none), e.g. a `PostgresStore`
    /// whose pool holds the handler's transactions.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// A key for a call to another service made in step `step` of this request
    /// ([R20](crate::contract#r20)): `"{key}:{step}"`. Stable across retries of the
    /// same request, distinct per step, so the other service deduplicates each step on
    /// its own.
    pub fn derived_key(&self, step: &str) -> String {
        format!("{}:{step}", self.key().as_str())
    }

    /// The snapshot the layer would store for `response`: its status, its storable
    /// headers ([R19](crate::contract#r19)) and its body, or no body when it may not be
    /// replayed to other callers ([R4](crate::contract#r4)).
    pub fn snapshot(&self, response: &Response<Bytes>) -> Snapshot {
        self.inner.policy.snapshot(
            response.status(),
            response.headers(),
            response.extensions(),
            Ok(response.body().clone()),
        )
    }

    /// Records that the handler completed the record itself with `snapshot` (e.g. by a
    /// store-specific transactional completion). The layer then answers the client
    /// exactly that snapshot, once it sees the record completed in the store, and does
    /// not complete or release it again.
    pub fn mark_completed(&self, snapshot: Snapshot) {
        *self
            .inner
            .completed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(snapshot);
    }

    /// The snapshot given to [`mark_completed`](Self::mark_completed), if any.
    pub fn completed(&self) -> Option<Snapshot> {
        self.inner
            .completed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Completes the record inside the caller's transaction on `client`
    /// ([R21](crate::contract#r21)): the snapshot of `response` is written by the same
    /// transaction as the business writes, so either both commit or neither does. On
    /// [`Finish::Done`] commit the transaction and return `response` from the handler;
    /// the layer answers the client that snapshot and does not write the record again.
    /// On [`Finish::Superseded`] the lease was lost ([R11](crate::contract#r11)): roll
    /// back.
    ///
    /// # Errors
    ///
    /// [`StoreError`] from the database (then roll back), or
    /// [`StoreError::Unsupported`] from an `AnyStore` that is not PostgreSQL.
    pub async fn complete_in<C>(
        &self,
        client: &C,
        response: &Response<Bytes>,
    ) -> Result<Finish, StoreError>
    where
        C: ?Sized + Sync,
        St: Transactional<C>,
    {
        let snapshot = self.snapshot(response);
        let finish = self
            .store
            .complete_in(client, &self.inner.lease, &snapshot, self.ttl())
            .await?;
        if finish == Finish::Done {
            self.mark_completed(snapshot);
        }
        Ok(finish)
    }

    /// The last recovery point of this request's operation
    /// ([R20](crate::contract#r20)), read on `client`: `None` means start at the first
    /// phase. Only progress made by a request with the same fingerprint is returned.
    ///
    /// # Errors
    ///
    /// As [`complete_in`](Self::complete_in).
    pub async fn recovery_point<C>(&self, client: &C) -> Result<Option<RecoveryPoint>, StoreError>
    where
        C: ?Sized + Sync,
        St: Transactional<C>,
    {
        self.store.recovery_point(client, &self.inner.lease).await
    }

    /// Moves this request's operation to `point` inside the caller's transaction
    /// ([R20](crate::contract#r20)): commit the phase's local writes with it. On
    /// [`Finish::Superseded`] this request no longer owns the key
    /// ([R11](crate::contract#r11)): roll back and stop.
    ///
    /// # Errors
    ///
    /// As [`complete_in`](Self::complete_in).
    pub async fn advance_in<C>(
        &self,
        client: &C,
        point: &RecoveryPoint,
    ) -> Result<Finish, StoreError>
    where
        C: ?Sized + Sync,
        St: Transactional<C>,
    {
        self.store
            .advance_in(client, &self.inner.lease, point, self.ttl())
            .await
    }
}

impl<St> IdempotencyHandle<St> {
    /// The progress of this request's multi-step operation
    /// ([R20](crate::contract#r20)), read on `client`, with the data the committed
    /// phases kept decoded as `T`: at [`step`](Progress::step) `None` and
    /// `T::default()` when no phase committed yet (or only a request with another
    /// payload did, which the layer refuses, [R9](crate::contract#r9)).
    ///
    /// Read it once, before the first phase, on any client of the store's database
    /// (`&**client` for a pooled one); the phases then move it along with
    /// [`advance`](Self::advance).
    ///
    /// # Errors
    ///
    /// [`ProgressError::Store`] as for [`complete_in`](Self::complete_in);
    /// [`ProgressError::Data`] when the stored data does not decode as `T` (e.g. it was
    /// written by [`advance_in`](Self::advance_in) with other bytes, or by a version of
    /// the handler with another type).
    pub async fn progress<T, C>(&self, client: &C) -> Result<Progress<T>, ProgressError>
    where
        T: DeserializeOwned + Default,
        C: ?Sized + Sync,
        St: Transactional<C>,
    {
        let Some(point) = self.recovery_point(client).await? else {
            return Ok(Progress {
                step: None,
                data: T::default(),
            });
        };
        let data = match point.data.as_deref() {
            None => T::default(),
            Some(bytes) => serde_json::from_slice(bytes).map_err(|source| ProgressError::Data {
                step: point.step.clone(),
                source,
            })?,
        };
        Ok(Progress {
            step: Some(point.step),
            data,
        })
    }

    /// Ends the phase `step` inside the caller's transaction
    /// ([R20](crate::contract#r20)): writes `step` and all of `progress.data` (as JSON)
    /// as the new recovery point, so they commit together with the phase's local
    /// writes. On [`Finish::Done`], `progress` is at `step`: commit the transaction,
    /// and if the commit fails, stop (a retry reads what did commit). On
    /// [`Finish::Superseded`] this request no longer owns the key
    /// ([R11](crate::contract#r11)): roll back and stop.
    ///
    /// The data is the whole of `T`, not a delta: what phase 1 put into it is still
    /// there in phase 3, and after a crash [`progress`](Self::progress) returns it as
    /// the last phase that committed left it.
    ///
    /// # Errors
    ///
    /// As [`progress`](Self::progress); [`ProgressError::Data`] when `T` does not
    /// serialize as JSON (a map with non-string keys, a failing `Serialize` impl).
    pub async fn advance<T, C>(
        &self,
        client: &C,
        progress: &mut Progress<T>,
        step: &str,
    ) -> Result<Finish, ProgressError>
    where
        T: Serialize,
        C: ?Sized + Sync,
        St: Transactional<C>,
    {
        let data = serde_json::to_vec(&progress.data).map_err(|source| ProgressError::Data {
            step: step.to_owned(),
            source,
        })?;
        let finish = self
            .advance_in(client, &RecoveryPoint::with_data(step, data))
            .await?;
        if finish == Finish::Done {
            progress.step = Some(step.to_owned());
        }
        Ok(finish)
    }
}

/// Where a multi-step operation stands ([R20](crate::contract#r20)): the last phase
/// that committed, and the data every phase so far kept, typed. From
/// [`IdempotencyHandle::progress`], moved along by [`IdempotencyHandle::advance`].
///
/// `T` is the handler's own record of what the phases produced (ids of rows they
/// inserted, the answers of foreign calls), usually a struct of `Option`s with
/// `#[derive(Default, Serialize, Deserialize)]`; it is stored as JSON in the recovery
/// point (sealed with it under `Sealed`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress<T> {
    step: Option<String>,
    /// What the committed phases kept. A phase sets its fields before
    /// [`IdempotencyHandle::advance`]; later phases and retries read them.
    pub data: T,
}

impl<T> Progress<T> {
    /// The last phase that committed, `None` before the first.
    pub fn step(&self) -> Option<&str> {
        self.step.as_deref()
    }
}

/// Why the typed progress of a multi-step operation could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProgressError {
    /// The store failed (roll back and answer an error; the record is released,
    /// [R7](crate::contract#r7)).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The recovery data of `step` does not (de)serialize as the handler's type.
    #[error("recovery data of step {step:?}: {source}")]
    Data {
        /// The step whose data it is.
        step: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

impl<St> fmt::Debug for IdempotencyHandle<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyHandle")
            .field("lease", &self.inner.lease)
            .field("ttl", &self.ttl())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "axum")]
mod extract {
    use axum::extract::{FromRequestParts, OptionalFromRequestParts};
    use http::StatusCode;
    use http::request::Parts;

    use super::IdempotencyContext;

    /// Extracts the context the layer put into the request. Without the layer in front
    /// of the handler, or behind a layer over another store than `St`, this is a 500: a
    /// wiring mistake, not a client error.
    impl<S: Send + Sync, St: Clone + Send + Sync + 'static> FromRequestParts<S>
        for IdempotencyContext<St>
    {
        type Rejection = (StatusCode, String);

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            parts.extensions.get::<Self>().cloned().ok_or_else(|| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "{}: no IdempotencyLayer over this store in front of this handler",
                        std::any::type_name::<Self>()
                    ),
                )
            })
        }
    }

    /// `Option<IdempotencyContext<St>>`: `None` without the layer.
    impl<S: Send + Sync, St: Clone + Send + Sync + 'static> OptionalFromRequestParts<S>
        for IdempotencyContext<St>
    {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<Self>().cloned())
        }
    }
}
