//! Recovery points of multi-step handlers (R20), Stripe-style atomic phases.
//!
//! A handler whose work spans several steps commits each phase's local writes together
//! with a new [`RecoveryPoint`] ([`PostgresStore::advance_in`]), in one transaction
//! fenced by the record's owner token. A retry after a crash (the lease ended, the
//! record was taken over or swept, or it was released) reads the last point
//! ([`PostgresStore::recovery_point`]) and resumes there, so phases that committed are
//! not repeated. Points live in their own table (migration 0002) until the record TTL
//! counted from the last advance: a release, a takeover and the sweeper's removal of a
//! dead in-flight record all leave them in place. A request with another payload under
//! the same key (another fingerprint) never sees them (R9).

use std::time::Duration;

use idem_core::store::{Finish, Lease, StoreError};
use tokio_postgres::GenericClient;

use crate::PostgresStore;
use crate::config::millis;
use crate::error;

/// The last phase of a multi-step operation that committed, and what it carries to the
/// next phases (e.g. the id of a row it inserted, the answer of a foreign call).
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

impl PostgresStore {
    /// The last recovery point of `lease`'s record made by a request with the same
    /// fingerprint, if any (R20). Read it right after the layer claimed the record:
    /// `None` means start at the first phase.
    ///
    /// # Errors
    ///
    /// Any [`StoreError`] from the database.
    pub async fn recovery_point<C>(
        &self,
        client: &C,
        lease: &Lease,
    ) -> Result<Option<RecoveryPoint>, StoreError>
    where
        C: GenericClient + Sync,
    {
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

    /// Moves `lease`'s record to `point` inside the caller's transaction (R20), so the
    /// phase's local writes and the new point commit together or not at all. The point
    /// lives `ttl` from now (use the layer's record TTL).
    ///
    /// [`Finish::Superseded`] when the caller no longer owns the record (taken over
    /// after its lease ended, R11, or completed): nothing was written; roll back. On
    /// [`Finish::Done`] the record's row stays locked until the transaction ends, so no
    /// takeover can interleave with the phase.
    ///
    /// # Errors
    ///
    /// Any [`StoreError`] from the database; then roll the transaction back.
    pub async fn advance_in<C>(
        &self,
        client: &C,
        lease: &Lease,
        point: &RecoveryPoint,
        ttl: Duration,
    ) -> Result<Finish, StoreError>
    where
        C: GenericClient + Sync,
    {
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
        Ok(if rows.is_empty() {
            Finish::Superseded
        } else {
            Finish::Done
        })
    }
}
