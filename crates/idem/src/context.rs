//! What a handler behind the layer learns about its request: [`IdempotencyContext`].
//!
//! The layer puts an [`IdempotencyContext`] into every request's extensions. With the
//! `axum` feature it is also an extractor. A protected request (covered method, valid
//! key, record claimed) carries an [`IdempotencyHandle`]: the record's lease, and the
//! key to derive keys for calls to other services from (R20).
//!
//! The context comes in two types. `IdempotencyContext` names no store and serves
//! every layer. `IdempotencyContext<St>`, with `St` the layer's store type, also holds
//! the store: when `St` is [`Transactional`] (PostgreSQL, and so `Sealed<PostgresStore>`
//! and `AnyStore`), its handle completes the record inside the handler's own database
//! transaction (R21) and keeps the recovery points of multi-step work (R20). Asking for
//! the context of another store type than the layer's is a 500 (a wiring mistake).
//!
//! # Atomic phases and transactional completion (PostgreSQL)
//!
//! Each phase commits its local writes with the next recovery point; a retry after a
//! crash resumes at the first phase that did not commit; the last phase completes the
//! record in its own transaction, and the layer answers the client exactly that
//! snapshot without writing the record again:
//!
//! ```no_run
//! # #[cfg(all(feature = "axum", feature = "postgres"))] mod doc {
//! use axum::response::Response;
//! use bytes::Bytes;
//! use idem::IdempotencyContext;
//! use idem::postgres::{PostgresStore, RecoveryPoint};
//! use idem::store::Finish;
//!
//! // Behind `IdempotencyLayer::new(store)` with `store: PostgresStore`; with
//! // `Sealed<PostgresStore>`, name that type here and use `store().get_ref().pool()`.
//! async fn checkout(
//!     ctx: IdempotencyContext<PostgresStore>,
//! ) -> Result<Response, Box<dyn std::error::Error>> {
//!     let handle = ctx.handle().ok_or("no key")?;
//!     let mut client = handle.store().pool().get().await?;
//!     let mut point = handle.recovery_point(&**client).await?;
//!     loop {
//!         let tx = client.transaction().await?;
//!         let next = match point.as_ref().map(|p| p.step.as_str()) {
//!             None => {
//!                 tx.execute("INSERT INTO orders (key) VALUES ($1)", &[&handle.key().as_str()]).await?;
//!                 RecoveryPoint::new("order_created")
//!             }
//!             Some("order_created") => {
//!                 // Call the bank with `handle.derived_key("charge")` here.
//!                 RecoveryPoint::with_data("charged", b"ch_1".to_vec())
//!             }
//!             _ => {
//!                 let response = http::Response::builder()
//!                     .status(201)
//!                     .body(Bytes::from_static(b"{\"receipt\":1}"))?;
//!                 if handle.complete_in(&*tx, &response).await? == Finish::Done {
//!                     tx.commit().await?;
//!                 }
//!                 return Ok(response.map(axum::body::Body::from));
//!             }
//!         };
//!         if handle.advance_in(&*tx, &next).await? != Finish::Done {
//!             return Err("the key was taken over".into()); // rolled back on drop
//!         }
//!         tx.commit().await?;
//!         point = Some(next);
//!     }
//! }
//! # }
//! ```
//!
//! How the layer treats a transactional completion: after the handler returns, it reads
//! the record once; completed (the transaction committed) → it answers the snapshot
//! given to [`IdempotencyHandle::complete_in`] and neither completes nor releases the
//! record; still in flight (the transaction rolled back) → it finishes as for any
//! response (store it or release it, R7).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Response};
use idem_core::headers;
use idem_core::key::IdempotencyKey;
use idem_core::record::{Snapshot, SnapshotBody};
use idem_core::scope::Scope;
use idem_core::store::{Finish, Lease, RecoveryPoint, StoreError, Transactional};

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

    /// The request's scope (R4), when it is covered and carries a key.
    pub fn scope(&self) -> Option<&Scope> {
        self.scope.as_ref()
    }

    /// The handle of the record this request owns, when it is protected. `None` for a
    /// request that passes through (R2, R3) or runs unprotected after a store failure
    /// under fail-open (R15).
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
    ttl: Duration,
    deny: Vec<HeaderName>,
    completed: Mutex<Option<Snapshot>>,
}

impl<St> IdempotencyHandle<St> {
    pub(crate) fn new(lease: Lease, ttl: Duration, deny: Vec<HeaderName>, store: St) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                lease,
                ttl,
                deny,
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

    /// The lease: record id, fingerprint and owner token that fences every write (R11).
    pub fn lease(&self) -> &Lease {
        &self.inner.lease
    }

    /// How long the completed record lives (R14).
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The layer's store (`()` in a context that names none), e.g. a `PostgresStore`
    /// whose pool holds the handler's transactions.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// A key for a call to another service made in step `step` of this request (R20):
    /// `"{key}:{step}"`. Stable across retries of the same request, distinct per step,
    /// so the other service deduplicates each step on its own.
    pub fn derived_key(&self, step: &str) -> String {
        format!("{}:{step}", self.key().as_str())
    }

    /// The snapshot the layer would store for `response`: its status, its storable
    /// headers (R19) and its body.
    pub fn snapshot(&self, response: &Response<Bytes>) -> Snapshot {
        Snapshot {
            status: response.status(),
            reason: None,
            headers: headers::storable(response.headers(), &self.inner.deny),
            body: SnapshotBody::Full(response.body().clone()),
        }
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

    /// Completes the record inside the caller's transaction on `client` (R21): the
    /// snapshot of `response` is written by the same transaction as the business
    /// writes, so either both commit or neither does. On [`Finish::Done`] commit the
    /// transaction and return `response` from the handler; the layer answers the
    /// client that snapshot and does not write the record again. On
    /// [`Finish::Superseded`] the lease was lost (R11): roll back.
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
            .complete_in(client, &self.inner.lease, &snapshot, self.inner.ttl)
            .await?;
        if finish == Finish::Done {
            self.mark_completed(snapshot);
        }
        Ok(finish)
    }

    /// The last recovery point of this request's operation (R20), read on `client`:
    /// `None` means start at the first phase. Only progress made by a request with the
    /// same fingerprint is returned.
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
    /// (R20): commit the phase's local writes with it. On [`Finish::Superseded`] this
    /// request no longer owns the key (R11): roll back and stop.
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
            .advance_in(client, &self.inner.lease, point, self.inner.ttl)
            .await
    }
}

impl<St> fmt::Debug for IdempotencyHandle<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyHandle")
            .field("lease", &self.inner.lease)
            .field("ttl", &self.inner.ttl)
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
