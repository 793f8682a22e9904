//! `PostgresStore` against a real PostgreSQL: the shared store contract, then what only
//! this store has (migrations, the sweeper, wake-ups across instances, R15, R16, R18,
//! R21).
//!
//! Needs PostgreSQL at `$IDEM_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); the tests fail if it is unreachable.
//! Each test works in a fresh schema that is dropped when the test ends.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use idem_core::record::{OwnerToken, RecordId, State};
use idem_core::store::testkit::{
    self, NotificationProbe, RealTimeFixture, acquired, claim_req, completed, id, snapshot, wait_on,
};
use idem_core::store::{Claim, Finish, Lease, Store, StoreError, Transactional};
use idem_postgres::{ConfigError, PostgresStore, PostgresStoreConfig, RecoveryPoint};
use idem_testkit::postgres::{Schema, client, run_detached, url};
use tokio_postgres::NoTls;

/// A fresh schema, dropped (with everything in it) when the guard drops.
struct PgSchema {
    name: String,
    _guard: Schema,
}

impl PgSchema {
    fn fresh() -> Self {
        let guard = Schema::fresh("idem_t");
        Self {
            name: guard.name().to_owned(),
            _guard: guard,
        }
    }

    fn config(&self) -> PostgresStoreConfig {
        PostgresStoreConfig {
            schema: self.name.clone(),
            // Tests run side by side on one server: leave connections for the others.
            pool_size: 8,
            ..PostgresStoreConfig::default()
        }
    }

    async fn store(&self) -> PostgresStore {
        self.store_with(self.config()).await
    }

    /// Two instances on the schema, both listening (R18).
    async fn two_stores(&self) -> (PostgresStore, PostgresStore) {
        let (a, b) = (self.store().await, self.store().await);
        until_listening(&a).await;
        until_listening(&b).await;
        (a, b)
    }

    async fn store_with(&self, config: PostgresStoreConfig) -> PostgresStore {
        PostgresStore::connect(&url(), config)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {} must be reachable: {e:?}", url()))
    }

    /// `sql` with `{s}` replaced by the quoted schema.
    fn sql(&self, sql: &str) -> String {
        sql.replace("{s}", &format!("\"{}\"", self.name))
    }

    async fn count(&self, client: &tokio_postgres::Client, table: &str) -> i64 {
        client
            .query_one(
                &self.sql(&format!("SELECT count(*) FROM {{s}}.{table}")),
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
}

/// A login role for the test, dropped when the guard drops (declare it before the
/// schema guard, so it outlives the objects it was granted).
struct PgRole {
    name: String,
}

impl PgRole {
    async fn create(client: &tokio_postgres::Client) -> Self {
        let role = Self {
            name: format!("idem_r_{}", &OwnerToken::random().to_hex()[..16]),
        };
        client
            .batch_execute(&format!("CREATE ROLE \"{}\" LOGIN", role.name))
            .await
            .unwrap();
        role
    }
}

impl Drop for PgRole {
    fn drop(&mut self) {
        run_detached(format!("DROP ROLE IF EXISTS \"{}\"", self.name));
    }
}

/// Waits until `store`'s listener is subscribed: a watch taken from then on wakes only on
/// a real notification.
async fn until_listening(store: &PostgresStore) {
    assert!(
        eventually(Duration::from_secs(10), || async { store.is_listening() }).await,
        "the store's listener did not subscribe"
    );
}

/// Polls `check` every 50 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Inserts `n` completed records that expired a second ago, and `live` that have not.
async fn insert_rows(schema: &PgSchema, client: &tokio_postgres::Client, n: i64, live: i64) {
    let insert = schema.sql(
        "INSERT INTO {s}.records (scope, key, fingerprint, owner, state, created_at, ends_at, snapshot)
         SELECT decode(repeat('00', 16), 'hex'), $1::text || g, decode(repeat('01', 32), 'hex'),
                decode(repeat('02', 16), 'hex'), 2, now() - interval '1 hour',
                now() + $2::int8 * interval '1 second', '\\x01'::bytea
         FROM generate_series(1, $3::int8) g",
    );
    client
        .execute(&insert, &[&"dead-", &-1i64, &n])
        .await
        .unwrap();
    client
        .execute(&insert, &[&"live-", &3600i64, &live])
        .await
        .unwrap();
}

/// The shared store contract (R4, R6–R11, R13, R14), one named test per property.
mod contract {
    use super::*;
    use idem_core::store::testkit::RealTimeFixture;

    idem_core::store_tests!(async {
        let schema = PgSchema::fresh();
        let store = schema.store().await;
        RealTimeFixture::new(store, Duration::from_millis(400), schema)
    });

    // R4, R6–R14: the store follows the shared model on random histories, on the
    // database's clock (a fresh schema per history).
    idem_core::store_model_test!(
        async {
            let schema = PgSchema::fresh();
            let store = schema.store().await;
            RealTimeFixture::new(store, Duration::from_millis(400), schema)
        },
        16
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_apply_once() {
    let schema = PgSchema::fresh();
    let store = schema.store().await;
    assert_eq!(store.migrate().await.unwrap(), 0);
    assert_eq!(store.migrate().await.unwrap(), 0);
    let again = schema.store().await;
    assert_eq!(again.migrate().await.unwrap(), 0);
    let c = client().await;
    assert_eq!(schema.count(&c, "idem_migrations").await, 4);
    let rows = c
        .query(&schema.sql("SELECT version FROM {s}.idem_migrations"), &[])
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_of_a_fresh_schema_all_succeed() {
    let schema = PgSchema::fresh();
    let config = schema.config();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move { PostgresStore::connect(&url(), config).await })
        })
        .collect();
    let mut stores = Vec::new();
    for t in tasks {
        stores.push(t.await.unwrap().expect("every migrator succeeds"));
    }
    let c = client().await;
    assert_eq!(schema.count(&c, "idem_migrations").await, 4);
    assert_eq!(schema.count(&c, "records").await, 0);
    // And the result works from every store.
    let id = id("migrated");
    let _lease = acquired(&stores[0], &id).await;
    assert!(matches!(
        stores[3].claim(&claim_req(&id, 1)).await.unwrap(),
        Claim::InFlight { .. }
    ));
}

// A role that may only read and write the records starts with `migrate: true` once
// the schema is in place: an up-to-date schema needs no DDL privileges.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_to_date_schema_needs_no_ddl_privileges() {
    let c = client().await;
    let role = PgRole::create(&c).await;
    let schema = PgSchema::fresh();
    let _owner = schema.store().await;
    c.batch_execute(&schema.sql(&format!(
        "GRANT USAGE ON SCHEMA {{s}} TO \"{r}\";
         GRANT SELECT ON {{s}}.idem_migrations TO \"{r}\";
         GRANT SELECT, INSERT, UPDATE, DELETE ON {{s}}.records TO \"{r}\";
         GRANT SELECT, INSERT, UPDATE, DELETE ON {{s}}.recovery_points TO \"{r}\";",
        r = role.name
    )))
    .await
    .unwrap();
    let limited_url = url().replacen(
        "postgres://postgres@",
        &format!("postgres://{}@", role.name),
        1,
    );
    assert_ne!(limited_url, url(), "the test URL names the user postgres");
    let store = PostgresStore::connect(&limited_url, schema.config())
        .await
        .unwrap();
    assert_eq!(store.migrate().await.unwrap(), 0);
    let id = id("limited");
    completed(&store, &id, b"ok", Duration::from_secs(60)).await;
    drop(store);
    // The same role cannot create a missing schema: that is an error, not a panic.
    let missing = PgSchema::fresh();
    assert!(
        PostgresStore::connect(&limited_url, missing.config())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn invalid_settings_are_refused_before_connecting() {
    for bad in ["Idem", "idem; DROP TABLE x", "\"idem\"", "pg_catalog", ""] {
        let config = PostgresStoreConfig {
            schema: bad.to_owned(),
            ..PostgresStoreConfig::default()
        };
        match PostgresStore::connect(&url(), config).await {
            Err(StoreError::Backend { source, .. }) => {
                assert!(
                    matches!(source.downcast_ref(), Some(ConfigError::Schema(_))),
                    "{source:?}"
                );
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    let config = PostgresStoreConfig {
        pool_size: 0,
        ..PostgresStoreConfig::default()
    };
    assert!(PostgresStore::connect(&url(), config).await.is_err());
    assert!(
        PostgresStore::connect("postgres://[::1", PostgresStoreConfig::default())
            .await
            .is_err()
    );
}

// R14
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r14_sweeper_deletes_expired_rows() {
    let schema = PgSchema::fresh();
    let store = schema
        .store_with(PostgresStoreConfig {
            sweep_interval: Duration::from_millis(200),
            sweep_batch: 16,
            ..schema.config()
        })
        .await;
    let c = client().await;
    insert_rows(&schema, &c, 100, 5).await;
    // Records completed through the store expire and go too.
    for i in 0..10 {
        let id = id(&format!("sweep{i}"));
        completed(&store, &id, b"x", Duration::from_millis(100)).await;
    }
    let live = id("sweep-live");
    let _live = acquired(&store, &live).await;
    // 116 rows were written; the sweeper (every 200 ms) may already be at work, so only
    // the end state is asserted: the 6 live rows stay, the 110 expired ones go.
    assert!(
        eventually(Duration::from_secs(10), || async {
            schema.count(&c, "records").await == 6
        })
        .await,
        "the sweeper left {} rows",
        schema.count(&c, "records").await
    );
    assert!(store.lookup(&live).await.unwrap().is_some());
}

// R14
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r14_concurrent_sweeps_are_safe() {
    let schema = PgSchema::fresh();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(
            schema
                .store_with(PostgresStoreConfig {
                    sweep_interval: Duration::ZERO,
                    sweep_batch: 37,
                    ..schema.config()
                })
                .await,
        );
    }
    let c = client().await;
    insert_rows(&schema, &c, 2000, 30).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        for store in &stores {
            let store = store.clone();
            tasks.push(tokio::spawn(
                async move { store.purge_expired().await.unwrap() },
            ));
        }
    }
    let mut removed = 0;
    for t in tasks {
        removed += t.await.unwrap();
    }
    // Short batches (rows locked by another sweeper) may end a sweep early; one more
    // pass finishes the job.
    removed += stores[0].purge_expired().await.unwrap();
    assert_eq!(removed, 2000);
    assert_eq!(schema.count(&c, "records").await, 30);
    assert_eq!(stores[1].purge_expired().await.unwrap(), 0);
}

// R10, R18
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r10_watch_wakes_across_instances() {
    let schema = PgSchema::fresh();
    let (a, b) = schema.two_stores().await;
    testkit::r10_watch_wakes_across_instances(&a, &b).await;
}

// R10: after the listener's connection is killed it reconnects, wakes every waiter
// (notifications may have been missed), and hears notifications again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r10_listener_reconnects_and_wakes_waiters() {
    let schema = PgSchema::fresh();
    let app = schema.name.clone();
    let listener_url = format!("{}?application_name={app}", url());
    let a = PostgresStore::connect(&listener_url, schema.config())
        .await
        .unwrap();
    let b = schema.store().await;
    until_listening(&a).await;
    let id = id("reconnect");
    let lease = acquired(&b, &id).await;
    let mut watch = a.watch(&id);
    let c = client().await;
    // The pool shares the application name; terminate every such backend.
    let killed: i64 = c
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1);
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .expect("the reconnect woke the waiter");
    until_listening(&a).await;
    let mut watch = a.watch(&id);
    wait_on(&a, &id).await;
    let _ = b
        .complete(&lease, &snapshot(b"ok"), Duration::from_secs(60))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("notifications flow again");
    // The store's pool recovers from its killed connections too.
    assert!(
        eventually(Duration::from_secs(5), || async {
            matches!(a.claim(&claim_req(&id, 1)).await, Ok(Claim::Completed(_)))
        })
        .await
    );
}

// The listener and sweeper stop with the last handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn background_tasks_stop_when_the_store_drops() {
    let schema = PgSchema::fresh();
    let app = schema.name.clone();
    let store = PostgresStore::connect(
        &format!("{}?application_name={app}", url()),
        schema.config(),
    )
    .await
    .unwrap();
    until_listening(&store).await;
    let c = client().await;
    let sessions = || async {
        c.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    assert!(sessions().await >= 2, "pool and listener connections");
    let clone = store.clone();
    drop(store);
    assert!(clone.is_listening());
    drop(clone);
    assert!(
        eventually(Duration::from_secs(10), || async { sessions().await == 0 }).await,
        "connections left behind"
    );
}

// R18: concurrent duplicates spread over several instances run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r18_claims_over_instances_acquire_once() {
    let schema = PgSchema::fresh();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(schema.store().await);
    }
    for round in 0..5 {
        let id = id(&format!("spread{round}"));
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let store = stores[i % stores.len()].clone();
                let req = claim_req(&id, 1);
                tokio::spawn(async move { store.claim(&req).await.unwrap() })
            })
            .collect();
        let mut acquired = 0;
        for t in tasks {
            match t.await.unwrap() {
                Claim::Acquired(_) => acquired += 1,
                Claim::InFlight { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(acquired, 1);
    }
}

// R15
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r15_unreachable_database_is_an_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let config = PostgresStoreConfig {
        migrate: false,
        connect_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(1),
        ..PostgresStoreConfig::default()
    };
    let store = PostgresStore::connect(&url, config.clone()).await.unwrap();
    let id = id("down");
    let answer = tokio::time::timeout(Duration::from_secs(5), store.claim(&claim_req(&id, 1)))
        .await
        .expect("a refused connection answers within the timeout");
    assert!(
        matches!(answer, Err(StoreError::Unavailable(_))),
        "{answer:?}"
    );
    assert!(store.lookup(&id).await.is_err());
    assert!(store.purge_expired().await.is_err());
    assert!(!store.is_listening());
    let migrating = PostgresStore::connect(
        &url,
        PostgresStoreConfig {
            migrate: true,
            ..config
        },
    )
    .await;
    // At startup the error names the store and where it was looked for.
    let Err(StoreError::Unavailable(source)) = migrating else {
        panic!("expected Unavailable, got {migrating:?}");
    };
    let source = source
        .downcast::<idem_core::store::ConnectError>()
        .expect("a ConnectError");
    assert_eq!(source.store, "postgres");
    assert_eq!(source.address, format!("127.0.0.1:{port}/test"));
    assert_eq!(
        source.to_string(),
        format!("cannot connect to the postgres store at 127.0.0.1:{port}/test")
    );
}

// R15: a statement that cannot finish in time is a Timeout, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r15_slow_statement_times_out() {
    let schema = PgSchema::fresh();
    let store = schema
        .store_with(PostgresStoreConfig {
            statement_timeout: Duration::from_millis(300),
            ..schema.config()
        })
        .await;
    let id = id("locked");
    let lease = acquired(&store, &id).await;
    let mut c = client().await;
    let tx = c.transaction().await.unwrap();
    // A lock that blocks reads too: a claim on a live record only reads (claim.sql).
    tx.execute(
        &schema.sql("LOCK TABLE {s}.records IN ACCESS EXCLUSIVE MODE"),
        &[],
    )
    .await
    .unwrap();
    let started = Instant::now();
    let answer = store.claim(&claim_req(&id, 1)).await;
    assert!(matches!(answer, Err(StoreError::Timeout)), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    tx.rollback().await.unwrap();
    assert_eq!(store.release(&lease).await.unwrap(), Finish::Done);
}

// R16: a damaged record is an error, never a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r16_corrupt_records_are_never_replayed() {
    let schema = PgSchema::fresh();
    let store = schema.store().await;
    testkit::r16_damaged_record_is_never_replayed(&store, async |_| {
        let c = client().await;
        c.execute(
            &schema.sql("UPDATE {s}.records SET snapshot = '\\x0900'::bytea"),
            &[],
        )
        .await
        .unwrap();
    })
    .await;
}

// R16, R25: the table checks nothing (migration 0004), so every column a row holds is
// read as hostile: a malformed one is a corrupt record, never an answer or a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r16_malformed_columns_are_corrupt_never_trusted() {
    let schema = PgSchema::fresh();
    let store = schema.store().await;
    let c = client().await;
    let checks: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = $1::text::regclass AND contype = 'c'",
            &[&schema.sql("{s}.records")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(checks, 0, "migration 0004 leaves no CHECK constraint");
    let damage = [
        ("fingerprint", "SET fingerprint = '\\x0707'::bytea"),
        ("state", "SET state = 3"),
        ("snapshot", "SET snapshot = NULL"),
    ];
    for (n, (what, set)) in damage.into_iter().enumerate() {
        let id = id(&format!("malformed-{n}"));
        let lease = acquired(&store, &id).await;
        let done = store
            .complete(&lease, &snapshot(b"charged"), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(done, Finish::Done);
        c.execute(
            &schema.sql(&format!("UPDATE {{s}}.records {set} WHERE key = $1::text")),
            &[&id.key().as_str()],
        )
        .await
        .unwrap();
        let claim = store.claim(&claim_req(&id, 1)).await;
        assert!(
            matches!(claim, Err(StoreError::Corrupt(_))),
            "{what}: {claim:?}"
        );
        let lookup = store.lookup(&id).await;
        assert!(
            matches!(lookup, Err(StoreError::Corrupt(_))),
            "{what}: {lookup:?}"
        );
    }
}

/// In `tx`: runs `insert` (the application's write) and completes `lease` with the
/// response `charged` (R21).
async fn charge_and_complete(
    store: &PostgresStore,
    tx: &tokio_postgres::Transaction<'_>,
    insert: &str,
    lease: &Lease,
) {
    tx.execute(insert, &[]).await.unwrap();
    let done = store
        .complete_in(tx, lease, &snapshot(b"charged"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done, Finish::Done);
}

// R21: the record completes with the caller's transaction, or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r21_complete_in_the_callers_transaction() {
    let schema = PgSchema::fresh();
    let (store, other) = schema.two_stores().await;
    let c = client().await;
    c.batch_execute(&schema.sql("CREATE TABLE {s}.charges (amount int NOT NULL)"))
        .await
        .unwrap();
    let id = id("tx");
    let lease = acquired(&store, &id).await;
    let ttl = Duration::from_secs(60);
    let insert = schema.sql("INSERT INTO {s}.charges (amount) VALUES (100)");

    // Rolled back: neither the charge nor the completion happened.
    {
        let mut conn = store.pool().get().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        charge_and_complete(&store, &tx, &insert, &lease).await;
        tx.rollback().await.unwrap();
    }
    assert_eq!(schema.count(&c, "charges").await, 0);
    assert!(matches!(
        other.lookup(&id).await.unwrap().unwrap().state,
        State::InFlight { .. }
    ));

    // Committed: both, and waiters elsewhere wake at the commit.
    let mut watch = other.watch(&id);
    wait_on(&other, &id).await;
    let mut conn = store.pool().get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    charge_and_complete(&store, &tx, &insert, &lease).await;
    // Not visible before the commit.
    assert!(matches!(
        other.lookup(&id).await.unwrap().unwrap().state,
        State::InFlight { .. }
    ));
    tx.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("the commit woke the waiter");
    assert_eq!(schema.count(&c, "charges").await, 1);
    assert_eq!(
        other.claim(&claim_req(&id, 1)).await.unwrap(),
        Claim::Completed(snapshot(b"charged"))
    );

    // A plain client works too, and a late owner is fenced as usual (R11).
    assert_eq!(
        store
            .complete_in(&c, &lease, &snapshot(b"again"), ttl)
            .await
            .unwrap(),
        Finish::Superseded
    );
}

// The statements' reasoning assumes READ COMMITTED; the store pins it, and its
// statement timeout, on its connections whatever the server's defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pooled_connections_carry_the_store_settings() {
    let schema = PgSchema::fresh();
    let url = format!(
        "{}?options=-c%20default_transaction_isolation%3Dserializable",
        url()
    );
    let store = PostgresStore::connect(
        &url,
        PostgresStoreConfig {
            statement_timeout: Duration::from_millis(1500),
            ..schema.config()
        },
    )
    .await
    .unwrap();
    let conn = store.pool().get().await.unwrap();
    let show = |name: &'static str| {
        let conn = &conn;
        async move {
            conn.query_one(&format!("SHOW {name}"), &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert_eq!(
        show("default_transaction_isolation").await,
        "read committed"
    );
    assert_eq!(show("statement_timeout").await, "1500ms");
}

/// Claims `id` with fingerprint `n` and a lease of `lease`.
async fn acquire_for(store: &PostgresStore, id: &RecordId, n: u8, lease: Duration) -> Lease {
    let mut req = claim_req(id, n);
    req.lease = lease;
    match store.claim(&req).await.unwrap() {
        Claim::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// Advances `lease` to `point` in a transaction that also writes a row to `app`.
async fn advance(
    schema: &PgSchema,
    store: &PostgresStore,
    lease: &Lease,
    point: &RecoveryPoint,
) -> Finish {
    let mut c = store.pool().get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute(
        &schema.sql("INSERT INTO {s}.app (step) VALUES ($1)"),
        &[&point.step],
    )
    .await
    .unwrap();
    let finish = store
        .advance_in(&*tx, lease, point, Duration::from_secs(60))
        .await
        .unwrap();
    if finish == Finish::Done {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    finish
}

async fn point_of(store: &PostgresStore, lease: &Lease) -> Option<RecoveryPoint> {
    let c = store.pool().get().await.unwrap();
    store.recovery_point(&**c, lease).await.unwrap()
}

/// A store in a fresh schema with an application table `app`, and its first phase:
/// `key` claimed with `lease` and advanced to `point`.
struct FirstPhase {
    schema: PgSchema,
    store: PostgresStore,
    id: RecordId,
    lease: Lease,
    point: RecoveryPoint,
}

/// A store in `schema`, with an application table `app` for the phases' own writes.
async fn with_app_table(schema: &PgSchema) -> PostgresStore {
    let store = schema.store().await;
    client()
        .await
        .batch_execute(&schema.sql("CREATE TABLE {s}.app (step text NOT NULL)"))
        .await
        .unwrap();
    store
}

impl FirstPhase {
    async fn run(key: &str, lease: Duration, point: RecoveryPoint) -> Self {
        let schema = PgSchema::fresh();
        let store = with_app_table(&schema).await;
        let id = id(key);
        let lease = acquire_for(&store, &id, 1, lease).await;
        assert_eq!(point_of(&store, &lease).await, None);
        assert_eq!(advance(&schema, &store, &lease, &point).await, Finish::Done);
        Self {
            schema,
            store,
            id,
            lease,
            point,
        }
    }

    /// Claims the record again with fingerprint `n` (and a 10 s lease).
    async fn retry(&self, n: u8) -> Lease {
        acquire_for(&self.store, &self.id, n, Duration::from_secs(10)).await
    }

    /// Releases the first lease, claims again with fingerprint `n`: the recovery point
    /// the retry resumes from.
    async fn release_and_retry(&self, n: u8) -> Option<RecoveryPoint> {
        assert_eq!(self.store.release(&self.lease).await.unwrap(), Finish::Done);
        let retry = self.retry(n).await;
        point_of(&self.store, &retry).await
    }
}

// R20: a recovery point commits with the phase's writes and outlives a crash: the
// lease ends, the sweeper deletes the dead record, a retry claims afresh and resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r20_recovery_point_survives_lease_end_and_sweep() {
    let point = RecoveryPoint::with_data("order_created", b"{\"order\":7}".to_vec());
    let first = FirstPhase::run("r20-sweep", Duration::from_millis(100), point).await;
    // The owner "crashes": its lease ends and the sweeper removes the record.
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.store.purge_expired().await.unwrap();
    let c = client().await;
    assert_eq!(first.schema.count(&c, "records").await, 0);

    let retry = first.retry(1).await;
    assert_eq!(point_of(&first.store, &retry).await, Some(first.point));
    assert_eq!(first.schema.count(&c, "app").await, 1);
}

// R20: a release (e.g. a 5xx after a committed phase) keeps the progress too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r20_recovery_point_survives_release() {
    let point = RecoveryPoint::new("charged");
    let first = FirstPhase::run("r20-release", Duration::from_secs(10), point).await;
    assert_eq!(first.release_and_retry(1).await, Some(first.point.clone()));
}

// R20, R11: after a takeover the old owner cannot advance (its phase rolls back), and
// the new owner resumes from the last committed point.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r20_advance_is_fenced_by_owner() {
    let p1 = RecoveryPoint::new("order_created");
    let first = FirstPhase::run("r20-fence", Duration::from_millis(100), p1).await;
    let FirstPhase {
        schema,
        store,
        lease: old,
        ..
    } = &first;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let new = first.retry(1).await;
    assert!(new.taken_over);
    let late = RecoveryPoint::new("charged");
    assert_eq!(advance(schema, store, old, &late).await, Finish::Superseded);
    let c = client().await;
    assert_eq!(
        schema.count(&c, "app").await,
        1,
        "the late phase rolled back"
    );
    assert_eq!(point_of(store, &new).await, Some(first.point.clone()));
    // A completed record cannot be advanced either.
    assert_eq!(
        store
            .complete(&new, &snapshot(b"done"), Duration::from_secs(60))
            .await
            .unwrap(),
        Finish::Done
    );
    assert_eq!(
        advance(schema, store, &new, &late).await,
        Finish::Superseded
    );
}

// R9, R20: committed progress binds the key to its payload. After a release (a 5xx
// once a phase committed) and after a crash (lease ended, record swept), a claim with
// another fingerprint is a mismatch and writes nothing; the same payload resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r09_r20_progress_binds_the_key_to_its_payload() {
    let schema = PgSchema::fresh();
    let store = with_app_table(&schema).await;
    let c = client().await;
    let id = id("r20-fp");
    let first = acquire_for(&store, &id, 1, Duration::from_millis(300)).await;
    let point = RecoveryPoint::new("order_created");
    assert_eq!(advance(&schema, &store, &first, &point).await, Finish::Done);

    // Released: no record, only the progress.
    assert_eq!(store.release(&first).await.unwrap(), Finish::Done);
    assert_eq!(schema.count(&c, "records").await, 0);
    assert_eq!(
        store.claim(&claim_req(&id, 2)).await.unwrap(),
        Claim::Mismatch
    );
    assert_eq!(
        schema.count(&c, "records").await,
        0,
        "a mismatch writes nothing"
    );

    // Crashed: the same payload's retry owns the record, its lease ends, the sweeper
    // removes it; another payload is still refused.
    let retry = acquire_for(&store, &id, 1, Duration::from_millis(100)).await;
    assert_eq!(point_of(&store, &retry).await, Some(point.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.purge_expired().await.unwrap();
    assert_eq!(schema.count(&c, "records").await, 0);
    assert_eq!(
        store.claim(&claim_req(&id, 2)).await.unwrap(),
        Claim::Mismatch
    );

    let resumed = acquire_for(&store, &id, 1, Duration::from_secs(10)).await;
    assert_eq!(point_of(&store, &resumed).await, Some(point));
    let recorded: Vec<u8> = c
        .query_one(
            &schema.sql("SELECT fingerprint FROM {s}.recovery_points"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, resumed.fingerprint.as_bytes());
}

// R9, R20: the binding ends with the progress: once the recovery point expired, the key
// is free for another payload, which starts from the first phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r09_r20_expired_progress_frees_the_key() {
    let schema = PgSchema::fresh();
    let store = with_app_table(&schema).await;
    let id = id("r20-fp-expiry");
    let first = acquire_for(&store, &id, 1, Duration::from_secs(10)).await;
    let mut c = store.pool().get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    let point = RecoveryPoint::new("order_created");
    let finish = store
        .advance_in(&*tx, &first, &point, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(finish, Finish::Done);
    tx.commit().await.unwrap();
    drop(c);
    assert_eq!(store.release(&first).await.unwrap(), Finish::Done);
    assert_eq!(
        store.claim(&claim_req(&id, 2)).await.unwrap(),
        Claim::Mismatch
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = acquire_for(&store, &id, 2, Duration::from_secs(10)).await;
    assert_eq!(point_of(&store, &other).await, None);
    let next = RecoveryPoint::new("order_created");
    assert_eq!(advance(&schema, &store, &other, &next).await, Finish::Done);
}

// R9, R20, R11: a takeover that read no progress while the dead owner's last phase was
// still committing (simulated by writing that point after the takeover) cannot
// overwrite it: its own phase finds the live point of another payload, writes nothing
// and rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r09_r20_advance_never_overwrites_another_payloads_progress() {
    let schema = PgSchema::fresh();
    let store = with_app_table(&schema).await;
    let c = client().await;
    let id = id("r20-fp-race");
    let dead = acquire_for(&store, &id, 1, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = acquire_for(&store, &id, 2, Duration::from_secs(10)).await;
    assert!(other.taken_over);
    c.execute(
        &schema.sql(
            "INSERT INTO {s}.recovery_points
                 (scope, key, fingerprint, step, data, updated_at, expires_at)
             VALUES ($1, $2, $3, 'order_created', NULL, now(), now() + interval '1 hour')",
        ),
        &[
            &dead.id.scope().as_bytes().as_slice(),
            &dead.id.key().as_str(),
            &dead.fingerprint.as_bytes().as_slice(),
        ],
    )
    .await
    .unwrap();

    let late = RecoveryPoint::new("order_created");
    assert_eq!(
        advance(&schema, &store, &other, &late).await,
        Finish::Superseded
    );
    assert_eq!(schema.count(&c, "app").await, 0, "the phase rolled back");
    let step: String = c
        .query_one(
            &schema.sql("SELECT step FROM {s}.recovery_points WHERE fingerprint = $1"),
            &[&dead.fingerprint.as_bytes().as_slice()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(step, "order_created");
}

/// The same contract on the store wrapped for encryption at rest.
mod sealed {
    use super::*;
    use idem_core::store::Sealed;
    use idem_core::store::testkit::{RealTimeFixture, sealing_keys};

    idem_core::store_tests!(sealed: async {
        let schema = PgSchema::fresh();
        let store = Sealed::new(schema.store().await, sealing_keys());
        RealTimeFixture::new(store, Duration::from_millis(400), schema)
    });

    /// The table holds the keyed digest and ciphertext only: every column of every row,
    /// read as text, shows neither the raw key nor the response.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn table_holds_neither_key_nor_response() {
        let schema = PgSchema::fresh();
        let store = Sealed::new(schema.store().await, sealing_keys());
        let rid = id("raw-key-visible");
        completed(&store, &rid, b"BODY-MARKER-pg", Duration::from_secs(60)).await;
        let client = client().await;
        let rows = client
            .query(&schema.sql("SELECT r::text FROM {s}.records r"), &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        let row: String = rows[0].get(0);
        for needle in [rid.key().as_str(), "BODY-MARKER-pg", "application/json"] {
            assert!(!row.contains(needle), "{needle} in {row}");
            assert!(
                !row.contains(&idem_testkit::hex(needle.as_bytes())),
                "{needle} (hex) in {row}"
            );
        }
        // Still replays through the sealed store.
        assert_eq!(
            store.claim(&claim_req(&rid, 1)).await.unwrap(),
            Claim::Completed(snapshot(b"BODY-MARKER-pg"))
        );
    }
}

/// A connection of the test's own that listens on a store's channel.
struct Probe {
    listener: tokio_postgres::Client,
    channel: String,
    messages: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
}

impl Probe {
    /// Listens on the channel of the store in `schema` (config.rs: the schema's name,
    /// then `.records`).
    async fn listen(schema: &PgSchema) -> Self {
        let channel = format!("{}.records", schema.name);
        let (listener, mut connection) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        let _ = tx.send(n);
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
        });
        listener
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .unwrap();
        Self {
            listener,
            channel,
            messages,
        }
    }
}

impl NotificationProbe for Probe {
    async fn send_marker(&mut self, marker: &str) {
        self.listener
            .execute("SELECT pg_notify($1, $2)", &[&self.channel, &marker])
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Vec<u8> {
        self.messages
            .recv()
            .await
            .expect("the listening connection is open")
            .payload()
            .as_bytes()
            .to_vec()
    }

    /// The store notifies with the record's id in hex.
    fn record_of(payload: &[u8]) -> Option<RecordId> {
        RecordId::from_hex(std::str::from_utf8(payload).ok()?)
    }
}

// R10: a completion or release that nobody waits for sends no notification (NOTIFY
// serialises every committing transaction of the cluster); one that a waiting duplicate
// asked about does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r10_only_awaited_records_notify() {
    let schema = PgSchema::fresh();
    let store = schema.store().await;
    let mut probe = Probe::listen(&schema).await;
    let fixture = RealTimeFixture::new(store, Duration::from_secs(10), ());
    testkit::r10_only_awaited_records_notify(&fixture, &mut probe).await;
}

// R8, R9, R10: a claim that changes nothing (a replay, a mismatch, a duplicate in
// flight) writes nothing: no WAL is generated by a run of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r08_claims_that_change_nothing_write_nothing() {
    let schema = PgSchema::fresh();
    let store = schema.store().await;
    let done = id("replayed");
    completed(&store, &done, b"ok", Duration::from_secs(60)).await;
    let flying = id("flying");
    let _lease = acquired(&store, &flying).await;
    let c = client().await;
    // Other sessions of this cluster may write meanwhile; a few tries find a quiet
    // window in which only our claims run.
    let lsn = async || -> String {
        c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .unwrap()
            .get(0)
    };
    let mut quiet = false;
    for _ in 0..20 {
        let before = lsn().await;
        for _ in 0..20 {
            assert!(matches!(
                store.claim(&claim_req(&done, 1)).await.unwrap(),
                Claim::Completed(_)
            ));
            assert_eq!(
                store.claim(&claim_req(&done, 2)).await.unwrap(),
                Claim::Mismatch
            );
            assert!(matches!(
                store.claim(&claim_req(&flying, 1)).await.unwrap(),
                Claim::InFlight { .. }
            ));
        }
        if lsn().await == before {
            quiet = true;
            break;
        }
    }
    assert!(
        quiet,
        "60 claims that change nothing wrote WAL in every try"
    );
}
