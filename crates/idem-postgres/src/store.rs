//! [`PostgresStore`]: the [`Store`] contract on PostgreSQL.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use idem_core::fingerprint::Fingerprint;
use idem_core::record::{Corrupt, OwnerToken, Record, RecordId, Snapshot, State};
use idem_core::scope::Scope;
use idem_core::store::{
    Claim, ClaimRequest, Finish, Lease, ListFilter, ListPage, StateFilter, Store, StoreError,
    WaitHub, Watch,
};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{PostgresStoreConfig, Schema, millis};
use crate::error::{self, STORE};
use crate::listener::Listener;
use crate::migrate;
use crate::sql::Sql;

/// `records.state` of an in-flight record.
const IN_FLIGHT: i16 = 1;
/// `records.state` of a completed record.
const COMPLETED: i16 = 2;

/// How often a claim re-runs when a concurrent writer created the record after the
/// statement's snapshot (see `sql/claim.sql`). Each retry sees a newer snapshot; more
/// than one or two would take a storm of claims and releases on one key.
const CLAIM_ATTEMPTS: usize = 8;

/// A [`Store`] on PostgreSQL, shared by any number of idem instances (R18).
///
/// Records live in `<schema>.records`, one row per `(scope, key)`. Every transition is
/// one SQL statement whose comments (in the crate's `sql/` directory) state the race it
/// closes; all time comes from the database's clock. Waiting duplicates are woken by
/// LISTEN/NOTIFY over one dedicated connection per store, and a background task
/// deletes expired records in batches (R14). Both stop when the last clone of the
/// store is dropped.
///
/// Clones share one pool, one listener and one sweeper.
#[derive(Clone)]
pub struct PostgresStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pool: Pool,
    schema: Schema,
    pub(crate) sql: Sql,
    pub(crate) channel: String,
    timeout: Duration,
    sweep_batch: u32,
    hub: WaitHub,
    listening: Arc<AtomicBool>,
    /// Cancels the listener and the sweeper when the last handle drops.
    _stop: DropGuard,
}

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://` URL or a libpq
    /// `key=value` string) and, when `config.migrate` is set, applies the embedded
    /// migrations. Starts the notification listener and the sweeper, so it must be
    /// called inside a tokio runtime.
    ///
    /// With `migrate: false` nothing is contacted here: pooled connections open on
    /// first use and the listener connects in the background, so a store can be built
    /// while the database is down and reports [`StoreError::Unavailable`] per call
    /// until it is back (R15).
    ///
    /// TLS is set in the URL as for libpq: `sslmode` (`disable`, `prefer` (the
    /// default), `require`, `verify-ca`, `verify-full`), `sslrootcert`, and `sslcert`
    /// with `sslkey` for a client certificate; see [`tls`](crate::tls).
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] wrapping a [`ConfigError`](crate::ConfigError) for an
    /// unusable setting or URL; an error from [`migrate`](Self::migrate), where a
    /// database that cannot be reached is [`StoreError::Unavailable`] whose source, a
    /// [`ConnectError`](idem_core::store::ConnectError), names the store and the
    /// address (`host:port/database`).
    pub async fn connect(url: &str, config: PostgresStoreConfig) -> Result<Self, StoreError> {
        let schema = config
            .validate()
            .map_err(|e| StoreError::backend(STORE, e))?;
        let (mut pg, tls) =
            crate::tls::parse_url(url).map_err(|e| StoreError::backend(STORE, e))?;
        pg.connect_timeout(config.connect_timeout);
        let address = address(&pg);
        // The server gives up on statements nobody waits for any more, and every
        // statement's reasoning (sql/*.sql) assumes READ COMMITTED, whatever the
        // server's default. Appended, so they override the same settings in the URL.
        let session = format!(
            r"-c statement_timeout={} -c default_transaction_isolation=read\ committed",
            millis(config.statement_timeout)
        );
        let options = match pg.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {session}"),
            _ => session,
        };
        pg.options(options);
        let mut listener_pg = pg.clone();
        if pg.get_application_name().is_none() {
            pg.application_name("idem");
            listener_pg.application_name("idem listener");
        }

        let manager = Manager::from_config(
            pg,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.statement_timeout))
            .build()
            .map_err(|e| StoreError::backend(STORE, e))?;

        let stop = CancellationToken::new();
        let hub = WaitHub::new();
        let listening = Arc::new(AtomicBool::new(false));
        let store = Self {
            inner: Arc::new(Inner {
                pool,
                sql: Sql::new(&schema),
                channel: schema.channel(),
                schema,
                timeout: config.statement_timeout,
                sweep_batch: config.sweep_batch,
                hub: hub.clone(),
                listening: listening.clone(),
                _stop: stop.clone().drop_guard(),
            }),
        };
        if config.migrate {
            store
                .migrate()
                .await
                .map_err(|e| e.at_connect(STORE, address))?;
        }
        tokio::spawn(
            Listener {
                config: listener_pg,
                tls,
                channel: store.inner.channel.clone(),
                hub,
                listening,
                ping_timeout: config.statement_timeout,
                stop: stop.clone(),
            }
            .run(),
        );
        if !config.sweep_interval.is_zero() {
            tokio::spawn(sweep(
                Arc::downgrade(&store.inner),
                config.sweep_interval,
                stop,
            ));
        }
        Ok(store)
    }

    /// Applies the embedded migrations that the schema lacks, creating the schema if
    /// needed; answers how many were applied (0 when up to date). Safe to run from
    /// several instances at once: they take turns on an advisory lock.
    ///
    /// # Errors
    ///
    /// Any [`StoreError`] from the database, such as a role without the privileges to
    /// create the schema or its tables.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let mut client = self.inner.pool.get().await.map_err(error::pool)?;
        migrate::run(&mut client, &self.inner.schema).await
    }

    /// The connection pool, for work that belongs with the store's database, such as
    /// a transaction that also completes a record
    /// ([`Transactional::complete_in`](idem_core::store::Transactional::complete_in)).
    /// Its connections carry the configured `statement_timeout` and default to READ
    /// COMMITTED; `SET LOCAL statement_timeout` or an explicit isolation level
    /// changes either for one transaction.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        self.inner.schema.name()
    }

    /// Whether the notification listener is connected and subscribed right now. While
    /// it is not, waiters are woken only by their own poll interval.
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::SeqCst)
    }

    /// Runs `op` within the operation timeout.
    async fn timed<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.inner.timeout, op)
            .await
            .unwrap_or(Err(StoreError::Timeout))
    }

    /// One prepared statement on a pooled connection, within the operation timeout.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.timed(async {
            let client = self.inner.pool.get().await.map_err(error::pool)?;
            let statement = client.prepare_cached(sql).await.map_err(error::pg)?;
            client.query(&statement, params).await.map_err(error::pg)
        })
        .await
    }
}

impl Inner {
    fn store(self: &Arc<Self>) -> PostgresStore {
        PostgresStore {
            inner: Arc::clone(self),
        }
    }
}

/// The parameters of complete.sql, shared by the pooled path and `complete_in`.
pub(crate) struct CompleteParams<'a> {
    scope: &'a [u8],
    key: &'a str,
    owner: Vec<u8>,
    snapshot: Vec<u8>,
    ttl: i64,
}

impl<'a> CompleteParams<'a> {
    pub(crate) fn new(lease: &'a Lease, snapshot: &Snapshot, ttl: Duration) -> Self {
        Self {
            scope: lease.id.scope().as_bytes(),
            key: lease.id.key().as_str(),
            owner: owner_bytes(lease.owner).to_vec(),
            snapshot: snapshot.encode(),
            ttl: millis(ttl),
        }
    }

    pub(crate) fn params<'p>(&'p self, channel: &'p String) -> [&'p (dyn ToSql + Sync); 6] {
        [
            &self.scope,
            &self.key,
            &self.owner,
            &self.snapshot,
            &self.ttl,
            channel,
        ]
    }
}

fn owner_bytes(owner: OwnerToken) -> [u8; 16] {
    owner.get().to_be_bytes()
}

/// One row back from a fenced statement means it applied.
pub(crate) fn finish(rows: &[Row]) -> Finish {
    if rows.is_empty() {
        Finish::Superseded
    } else {
        Finish::Done
    }
}

fn fingerprint(bytes: &[u8]) -> Result<Fingerprint, Corrupt> {
    <[u8; 32]>::try_from(bytes)
        .map(Fingerprint::from_bytes)
        .map_err(|_| Corrupt("fingerprint is not 32 bytes"))
}

fn epoch_ms(ms: i64) -> Result<u64, Corrupt> {
    u64::try_from(ms).map_err(|_| Corrupt("time before the UNIX epoch"))
}

fn snapshot(bytes: Option<&[u8]>) -> Result<Snapshot, Corrupt> {
    Snapshot::decode(bytes.ok_or(Corrupt("completed record without a snapshot"))?)
}

/// Where `pg` points, for errors: `host:port,…/database`, without credentials.
fn address(pg: &tokio_postgres::Config) -> String {
    let ports = pg.get_ports();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                tokio_postgres::config::Host::Unix(dir) => {
                    format!("{}/.s.PGSQL.{port}", dir.display())
                }
            }
        })
        .collect();
    format!("{}/{}", hosts.join(","), pg.get_dbname().unwrap_or(""))
}

/// The answer to a claim from the row claim.sql returned: the same decision as
/// `idem_core::store::machine::claim`, whose write the statement already made.
fn claim_answer(row: &Row, req: &ClaimRequest) -> Result<Claim, StoreError> {
    if row.try_get::<_, bool>("acquired").map_err(error::pg)? {
        return Ok(Claim::Acquired(Lease {
            id: req.id.clone(),
            fingerprint: req.fingerprint,
            owner: req.owner,
            taken_over: row.try_get("taken_over").map_err(error::pg)?,
        }));
    }
    live_record(row, req)
}

/// The answer to a claim from the live record peek.sql read, when it needs no write:
/// `None` for a caller that will wait on an in-flight record of its own payload that
/// no waiter marked yet (R10), which claim.sql marks and answers.
fn live_answer(row: &Row, req: &ClaimRequest) -> Result<Option<Claim>, StoreError> {
    let unmarked = !row.try_get::<_, bool>("watched").map_err(error::pg)?;
    let answer = live_record(row, req)?;
    if req.waiting && unmarked && matches!(answer, Claim::InFlight { .. }) {
        return Ok(None);
    }
    Ok(Some(answer))
}

/// A claim's answer from a live record that is not the caller's (columns `state`,
/// `fingerprint`, `left_ms`, `snapshot`): the same decision as
/// `idem_core::store::machine::claim`.
fn live_record(row: &Row, req: &ClaimRequest) -> Result<Claim, StoreError> {
    if fingerprint(row.try_get("fingerprint").map_err(error::pg)?)? != req.fingerprint {
        return Ok(Claim::Mismatch);
    }
    match row.try_get::<_, i16>("state").map_err(error::pg)? {
        COMPLETED => Ok(Claim::Completed(snapshot(
            row.try_get("snapshot").map_err(error::pg)?,
        )?)),
        IN_FLIGHT => {
            let left: i64 = row.try_get("left_ms").map_err(error::pg)?;
            // A live record has time left (the statement rounds up); never say zero.
            let left = u64::try_from(left).unwrap_or(0).max(1);
            Ok(Claim::InFlight {
                retry_after: Duration::from_millis(left),
            })
        }
        _ => Err(Corrupt("unknown record state").into()),
    }
}

/// The record lookup.sql returned.
fn record(row: &Row) -> Result<Record, StoreError> {
    let fingerprint = fingerprint(row.try_get("fingerprint").map_err(error::pg)?)?;
    let created_at = epoch_ms(row.try_get("created_ms").map_err(error::pg)?)?;
    let ends_at = epoch_ms(row.try_get("ends_ms").map_err(error::pg)?)?;
    let state = match row.try_get::<_, i16>("state").map_err(error::pg)? {
        IN_FLIGHT => {
            let owner: &[u8] = row.try_get("owner").map_err(error::pg)?;
            let owner =
                <[u8; 16]>::try_from(owner).map_err(|_| Corrupt("owner token is not 16 bytes"))?;
            State::InFlight {
                owner: OwnerToken::from_u128(u128::from_be_bytes(owner)),
                lease_until: ends_at,
            }
        }
        COMPLETED => State::Completed {
            snapshot: snapshot(row.try_get("snapshot").map_err(error::pg)?)?,
            expires_at: ends_at,
        },
        _ => return Err(Corrupt("unknown record state").into()),
    };
    Ok(Record {
        fingerprint,
        created_at,
        state,
    })
}

impl Store for PostgresStore {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        let scope = req.id.scope().as_bytes().as_slice();
        let key = req.id.key().as_str();
        let fingerprint = req.fingerprint.as_bytes().as_slice();
        let owner = owner_bytes(req.owner);
        let owner = owner.as_slice();
        let lease = millis(req.lease);
        let waiting = req.waiting;
        self.timed(async {
            let client = self.inner.pool.get().await.map_err(error::pool)?;
            // A replay, a mismatch, a duplicate in flight: a read, no write (peek.sql).
            let peek = client
                .prepare_cached(&self.inner.sql.peek)
                .await
                .map_err(error::pg)?;
            let live = client
                .query_opt(&peek, &[&scope, &key, &fingerprint])
                .await
                .map_err(error::pg)?;
            match live {
                Some(row) => {
                    if let Some(answer) = live_answer(&row, req)? {
                        return Ok(answer);
                    }
                    // A waiter must mark the record first: claim.sql does, in one step.
                }
                None => {
                    // Nothing live: most often a new key, which one plain insert claims.
                    let insert = client
                        .prepare_cached(&self.inner.sql.insert)
                        .await
                        .map_err(error::pg)?;
                    let inserted = client
                        .query_opt(&insert, &[&scope, &key, &fingerprint, &owner, &lease])
                        .await
                        .map_err(error::pg)?;
                    if inserted.is_some() {
                        return Ok(Claim::Acquired(Lease {
                            id: req.id.clone(),
                            fingerprint: req.fingerprint,
                            owner: req.owner,
                            taken_over: false,
                        }));
                    }
                    // A dead record to take over, a concurrent claim's, or another
                    // payload's progress: claim.sql decides.
                }
            }
            let statement = client
                .prepare_cached(&self.inner.sql.claim)
                .await
                .map_err(error::pg)?;
            for _ in 0..CLAIM_ATTEMPTS {
                let row = client
                    .query_opt(
                        &statement,
                        &[&scope, &key, &fingerprint, &owner, &lease, &waiting],
                    )
                    .await
                    .map_err(error::pg)?;
                if let Some(row) = row {
                    return claim_answer(&row, req);
                }
                // The record changed after this statement's snapshot was taken
                // (claim.sql): ask again, with a newer snapshot.
            }
            Err(StoreError::backend(
                STORE,
                "claim kept losing races with concurrent writers of the same key",
            ))
        })
        .await
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<Finish, StoreError> {
        let owner = owner_bytes(lease.owner);
        let rows = self
            .query(
                &self.inner.sql.renew,
                &[
                    &lease.id.scope().as_bytes().as_slice(),
                    &lease.id.key().as_str(),
                    &owner.as_slice(),
                    &millis(lease_for),
                ],
            )
            .await?;
        Ok(finish(&rows))
    }

    async fn complete(
        &self,
        lease: &Lease,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        let p = CompleteParams::new(lease, snapshot, ttl);
        let rows = self
            .query(&self.inner.sql.complete, &p.params(&self.inner.channel))
            .await?;
        Ok(finish(&rows))
    }

    async fn release(&self, lease: &Lease) -> Result<Finish, StoreError> {
        let owner = owner_bytes(lease.owner);
        let rows = self
            .query(
                &self.inner.sql.release,
                &[
                    &lease.id.scope().as_bytes().as_slice(),
                    &lease.id.key().as_str(),
                    &owner.as_slice(),
                    &self.inner.channel,
                ],
            )
            .await?;
        Ok(finish(&rows))
    }

    async fn lookup(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let rows = self
            .query(
                &self.inner.sql.lookup,
                &[&id.scope().as_bytes().as_slice(), &id.key().as_str()],
            )
            .await?;
        rows.first().map(record).transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<ListPage, StoreError> {
        let state: Option<i16> = match filter.state {
            StateFilter::Any => None,
            StateFilter::InFlight => Some(IN_FLIGHT),
            StateFilter::Completed => Some(COMPLETED),
        };
        let created_before = filter
            .created_before
            .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
        let scope = filter.scope.map(|s| s.as_bytes().to_vec());
        let after_scope = filter.after.as_ref().map(|a| a.scope().as_bytes().to_vec());
        let after_key = filter.after.as_ref().map(|a| a.key().as_str());
        // One more than the page, to know whether another page follows.
        let limit = i64::try_from(filter.page_size()).unwrap_or(i64::MAX - 1) + 1;
        let rows = self
            .query(
                &self.inner.sql.list,
                &[
                    &state,
                    &created_before,
                    &scope,
                    &after_scope,
                    &after_key,
                    &limit,
                ],
            )
            .await?;
        let records = rows
            .iter()
            .map(|row| {
                let scope: &[u8] = row.try_get("scope").map_err(error::pg)?;
                let scope =
                    <[u8; 16]>::try_from(scope).map_err(|_| Corrupt("scope is not 16 bytes"))?;
                let key: &str = row.try_get("key").map_err(error::pg)?;
                let key = idem_core::IdempotencyKey::new(key)
                    .map_err(|_| Corrupt("stored key is not a valid key"))?;
                let id = RecordId::new(Scope::from_bytes(scope), key);
                // A record that does not decode is reported, not a failure of the page:
                // one damaged record must not hide the others (R16).
                match record(row) {
                    Ok(record) => Ok((id, Ok(record))),
                    Err(StoreError::Corrupt(why)) => Ok((id, Err(why))),
                    Err(e) => Err(e),
                }
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(ListPage::from_sorted_entries(records, filter))
    }

    async fn delete(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let rows = self
            .query(
                &self.inner.sql.delete,
                &[
                    &id.scope().as_bytes().as_slice(),
                    &id.key().as_str(),
                    &self.inner.channel,
                ],
            )
            .await?;
        // This process's watchers wake at once; the notification wakes the others.
        self.inner.hub.notify(id);
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        if !row.try_get::<_, bool>("live").map_err(error::pg)? {
            return Ok(None);
        }
        record(row).map(Some)
    }

    fn watch(&self, id: &RecordId) -> Watch {
        self.inner.hub.watch(id)
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let points = self.purge_sql(&self.inner.sql.sweep_recovery).await?;
        if points > 0 {
            tracing::debug!(removed = points, "swept expired recovery points");
        }
        self.purge_sql(&self.inner.sql.sweep).await
    }
}

impl PostgresStore {
    /// Runs a batched sweep statement until a batch comes back short; answers how many
    /// rows it deleted.
    async fn purge_sql(&self, sql: &str) -> Result<u64, StoreError> {
        let batch = i64::from(self.inner.sweep_batch);
        let mut total = 0;
        loop {
            let deleted = self
                .timed(async {
                    let client = self.inner.pool.get().await.map_err(error::pool)?;
                    let statement = client.prepare_cached(sql).await.map_err(error::pg)?;
                    client
                        .execute(&statement, &[&batch])
                        .await
                        .map_err(error::pg)
                })
                .await?;
            total += deleted;
            // A short batch means nothing expired is left, or the rest is locked by
            // another instance's sweep or by a claim taking it over.
            if deleted < u64::from(self.inner.sweep_batch) {
                return Ok(total);
            }
        }
    }
}

/// The background sweep: every `every`, delete expired records until a batch comes
/// back short. Holds only a weak handle between runs, so it does not keep the store
/// alive; stops on `stop`.
async fn sweep(inner: Weak<Inner>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        match inner.store().purge_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "swept expired idem records"),
            Err(e) => tracing::warn!(error = %e, "idem postgres sweep failed"),
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.inner.pool.status();
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.schema)
            .field("pool_size", &status.size)
            .field("pool_available", &status.available)
            .field("listening", &self.is_listening())
            .field("watched", &self.inner.hub.watched())
            .finish()
    }
}
