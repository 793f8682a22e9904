//! What a handler behind the layer learns about its request: [`IdempotencyContext`].
//!
//! The layer puts an [`IdempotencyContext`] into every request's extensions. With the
//! `axum` feature it is also an extractor. A protected request (covered method, valid
//! key, record claimed) carries an [`IdempotencyHandle`]: the record's lease, which a
//! handler can use to complete the record itself inside its own database transaction
//! (R21), and to derive keys for calls to other services (R20).
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
//! use idem::postgres::RecoveryPoint;
//! use idem::store::Finish;
//!
//! async fn checkout(ctx: IdempotencyContext) -> Result<Response, Box<dyn std::error::Error>> {
//!     let handle = ctx.handle().ok_or("no key")?;
//!     let store = handle.postgres().ok_or("not postgres")?;
//!     let mut client = store.pool().get().await?;
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

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Response};
use idem_core::headers;
use idem_core::key::IdempotencyKey;
use idem_core::record::{Snapshot, SnapshotBody};
use idem_core::scope::Scope;
use idem_core::store::Lease;

/// The idempotency facts of one request, put into its extensions by the layer.
#[derive(Clone, Debug)]
pub struct IdempotencyContext {
    pub(crate) key: Option<IdempotencyKey>,
    pub(crate) scope: Option<Scope>,
    pub(crate) handle: Option<IdempotencyHandle>,
}

impl IdempotencyContext {
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
    pub fn handle(&self) -> Option<&IdempotencyHandle> {
        self.handle.as_ref()
    }
}

/// Ownership of the in-flight record of the current request, shared between the
/// handler and the layer.
///
/// Cheap to clone; clones share one state.
#[derive(Clone)]
pub struct IdempotencyHandle {
    pub(crate) inner: Arc<HandleInner>,
}

pub(crate) struct HandleInner {
    pub(crate) lease: Lease,
    pub(crate) ttl: Duration,
    pub(crate) deny: Vec<HeaderName>,
    pub(crate) store: Arc<dyn Any + Send + Sync>,
    pub(crate) completed: Mutex<Option<Snapshot>>,
}

impl IdempotencyHandle {
    pub(crate) fn new<St: Any + Send + Sync>(
        lease: Lease,
        ttl: Duration,
        deny: Vec<HeaderName>,
        store: St,
    ) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                lease,
                ttl,
                deny,
                store: Arc::new(store),
                completed: Mutex::new(None),
            }),
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

    /// The layer's store, if it is an `St` (e.g. `PostgresStore` for R21).
    pub fn store<St: Any>(&self) -> Option<&St> {
        self.inner.store.downcast_ref::<St>()
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

    /// Completes the record inside the caller's PostgreSQL transaction (R21): the
    /// snapshot of `response` is written by the same transaction as the business
    /// writes, so either both commit or neither does. On [`Finish::Done`] commit the
    /// transaction and return `response` from the handler; the layer answers the
    /// client that snapshot and does not write the record again. On
    /// [`Finish::Superseded`] the lease was lost (R11): roll back.
    ///
    /// [`Finish::Done`]: idem_core::store::Finish::Done
    /// [`Finish::Superseded`]: idem_core::store::Finish::Superseded
    ///
    /// # Errors
    ///
    /// [`StoreError`](idem_core::store::StoreError) from the database, or
    /// `Backend` when the layer's store is not PostgreSQL.
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub async fn complete_in<C>(
        &self,
        client: &C,
        response: &Response<Bytes>,
    ) -> Result<idem_core::store::Finish, idem_core::store::StoreError>
    where
        C: idem_postgres::tokio_postgres::GenericClient + Sync,
    {
        let store = self.require_postgres()?;
        let snapshot = self.snapshot(response);
        let finish = store
            .complete_in(client, &self.inner.lease, &snapshot, self.inner.ttl)
            .await?;
        if finish == idem_core::store::Finish::Done {
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
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub async fn recovery_point<C>(
        &self,
        client: &C,
    ) -> Result<Option<idem_postgres::RecoveryPoint>, idem_core::store::StoreError>
    where
        C: idem_postgres::tokio_postgres::GenericClient + Sync,
    {
        self.require_postgres()?
            .recovery_point(client, &self.inner.lease)
            .await
    }

    /// Moves this request's operation to `point` inside the caller's transaction
    /// (R20): commit the phase's local writes with it. On
    /// [`Finish::Superseded`](idem_core::store::Finish::Superseded) this request no
    /// longer owns the key (R11): roll back and stop.
    ///
    /// # Errors
    ///
    /// As [`complete_in`](Self::complete_in).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub async fn advance_in<C>(
        &self,
        client: &C,
        point: &idem_postgres::RecoveryPoint,
    ) -> Result<idem_core::store::Finish, idem_core::store::StoreError>
    where
        C: idem_postgres::tokio_postgres::GenericClient + Sync,
    {
        self.require_postgres()?
            .advance_in(client, &self.inner.lease, point, self.inner.ttl)
            .await
    }

    #[cfg(feature = "postgres")]
    fn require_postgres(
        &self,
    ) -> Result<&idem_postgres::PostgresStore, idem_core::store::StoreError> {
        self.postgres().ok_or_else(|| {
            idem_core::store::StoreError::backend(
                "postgres",
                "this needs the layer's store to be PostgreSQL",
            )
        })
    }

    /// The layer's PostgreSQL store, directly or inside an [`AnyStore`](crate::AnyStore).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn postgres(&self) -> Option<&idem_postgres::PostgresStore> {
        if let Some(pg) = self.store::<idem_postgres::PostgresStore>() {
            return Some(pg);
        }
        match self.store::<crate::AnyStore>() {
            Some(crate::AnyStore::Postgres(pg)) => Some(pg),
            _ => None,
        }
    }
}

impl fmt::Debug for IdempotencyHandle {
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
    /// of the handler this is a 500: a wiring mistake, not a client error.
    impl<S: Send + Sync> FromRequestParts<S> for IdempotencyContext {
        type Rejection = (StatusCode, &'static str);

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            parts.extensions.get::<Self>().cloned().ok_or((
                StatusCode::INTERNAL_SERVER_ERROR,
                "IdempotencyContext: no IdempotencyLayer in front of this handler",
            ))
        }
    }

    /// `Option<IdempotencyContext>`: `None` without the layer.
    impl<S: Send + Sync> OptionalFromRequestParts<S> for IdempotencyContext {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<Self>().cloned())
        }
    }
}
