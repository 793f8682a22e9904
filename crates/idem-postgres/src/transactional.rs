//! [`Transactional`] on PostgreSQL: completions (R21) and recovery points (R20) written
//! by the caller's own transaction, on any tokio-postgres client of the store's
//! database.
//!
//! **Completion.** [`complete_in`](Transactional::complete_in) runs complete.sql on the
//! caller's client: the record becomes completed if and only if the transaction
//! commits, together with the caller's business writes, and waiters on every instance
//! are woken at that commit. Until the transaction ends the record's row stays locked,
//! so concurrent claims of the same key wait for it (within their
//! `statement_timeout`): keep the transaction short after this call. No client-side
//! timeout applies here; the connection's own settings do. Under REPEATABLE READ or
//! SERIALIZABLE a concurrent takeover makes the call fail with a serialization error:
//! roll back, as for any such error.
//!
//! **Recovery points**, Stripe-style atomic phases. A handler whose work spans several
//! steps commits each phase's local writes together with a new [`RecoveryPoint`]
//! ([`advance_in`](Transactional::advance_in)), in one transaction fenced by the
//! record's owner token. A retry after a crash (the lease ended, the record was taken
//! over or swept, or it was released) reads the last point
//! ([`recovery_point`](Transactional::recovery_point)) and resumes there, so phases that
//! committed are not repeated. Points live in their own table (migration 0002) until
//! the record TTL counted from the last advance: a release, a takeover and the
//! sweeper's removal of a dead in-flight record all leave them in place. While a point
//! lives, it binds the key to the payload that made it: a claim with another
//! fingerprint under that key is answered as a mismatch (R9, 422 from the layer) even
//! when no record exists, so another payload never starts a second run beside the
//! first one's committed phases, nor reuses its derived keys; the same payload resumes.
//! On
//! [`Finish::Done`] the record's row stays locked until the transaction ends, so no
//! takeover can interleave with the phase.
//!
//! `client` is a [`tokio_postgres::Transaction`] (or, outside a transaction, a
//! [`tokio_postgres::Client`]) on the store's database; a transaction from
//! [`PostgresStore::pool`] is `&*tx`.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use idem::core::record::Snapshot;
//! # use idem::core::store::{Finish, Lease, Transactional};
//! # use idem::postgres::PostgresStore;
//! # async fn charge(store: PostgresStore, lease: Lease, snapshot: Snapshot)
//! #     -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let mut client = store.pool().get().await?;
//! let tx = client.transaction().await?;
//! tx.execute("INSERT INTO charges (amount) VALUES (100)", &[]).await?;
//! match store.complete_in(&*tx, &lease, &snapshot, Duration::from_secs(86_400)).await? {
//!     Finish::Done => tx.commit().await?,
//!     // The lease was lost (R11): another request owns the key now.
//!     Finish::Superseded => tx.rollback().await?,
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use idem_core::record::Snapshot;
use idem_core::store::{Finish, Lease, RecoveryPoint, Store, StoreError, Transactional};
use tokio_postgres::{Client, GenericClient, Transaction};

use crate::PostgresStore;
use crate::config::millis;
use crate::error;
use crate::store::{CompleteParams, finish};

/// A store that writes in any transaction (and on any client) of its PostgreSQL
/// database: [`PostgresStore`], `Sealed<PostgresStore>`, an `AnyStore` (whose other
/// arms answer `Unsupported`). The bound for code generic over the layer's store, such
/// as a handler taking `IdempotencyContext<St>`.
pub trait PgTransactional:
    Store + Transactional<Client> + for<'a> Transactional<Transaction<'a>>
{
}

impl<S> PgTransactional for S where
    S: Store + Transactional<Client> + for<'a> Transactional<Transaction<'a>>
{
}

impl<C: GenericClient + Sync> Transactional<C> for PostgresStore {
    async fn complete_in(
        &self,
        client: &C,
        lease: &Lease,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        let p = CompleteParams::new(lease, snapshot, ttl);
        let rows = client
            .query(
                self.inner.sql.complete.as_str(),
                &p.params(&self.inner.channel),
            )
            .await
            .map_err(error::pg)?;
        Ok(finish(&rows))
    }

    async fn advance_in(
        &self,
        client: &C,
        lease: &Lease,
        point: &RecoveryPoint,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        let owner = lease.owner.get().to_be_bytes();
        let rows = client
            .query(
                self.inner.sql.advance.as_str(),
                &[
                    &lease.id.scope().as_bytes().as_slice(),
                    &lease.id.key().as_str(),
                    &owner.as_slice(),
                    &lease.fingerprint.as_bytes().as_slice(),
                    &point.step,
                    &point.data,
                    &millis(ttl),
                ],
            )
            .await
            .map_err(error::pg)?;
        Ok(finish(&rows))
    }

    async fn recovery_point(
        &self,
        client: &C,
        lease: &Lease,
    ) -> Result<Option<RecoveryPoint>, StoreError> {
        let row = client
            .query_opt(
                self.inner.sql.recovery.as_str(),
                &[
                    &lease.id.scope().as_bytes().as_slice(),
                    &lease.id.key().as_str(),
                    &lease.fingerprint.as_bytes().as_slice(),
                ],
            )
            .await
            .map_err(error::pg)?;
        row.map(|r| {
            Ok(RecoveryPoint {
                step: r.try_get(0).map_err(error::pg)?,
                data: r.try_get(1).map_err(error::pg)?,
            })
        })
        .transpose()
    }
}
