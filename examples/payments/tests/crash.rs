//! Crash tests of the checkout (R20, R21): for each phase boundary, crash there, retry
//! with the same key, and check that exactly one order, bank charge, ledger entry and
//! receipt exist and that every successful answer is the same; over the PostgreSQL
//! store as it is and sealed (encryption at rest: nothing of the phases in the clear).
//!
//! Needs PostgreSQL at `$IDEM_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); fails if it is unreachable.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use idem::postgres::{PgTransactional, PostgresStore, PostgresStoreConfig};
use idem::{Sealed, SealingKeys};
use idem_testkit::Client;
use idem_testkit::postgres::{self, Schema, url};
use payments::{Bank, Boundary, Payments};
use tokio::net::TcpListener;

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The store the layer runs over, made from the PostgreSQL store.
trait Layered {
    type Store: PgTransactional;
    /// Whether records and recovery points are encrypted at rest.
    const SEALED: bool;
    fn over(pg: PostgresStore) -> Self::Store;
}

/// The PostgreSQL store as it is.
struct Plain;
impl Layered for Plain {
    type Store = PostgresStore;
    const SEALED: bool = false;
    fn over(pg: PostgresStore) -> PostgresStore {
        pg
    }
}

/// Sealed: records and recovery points encrypted.
struct Encrypted;
impl Layered for Encrypted {
    type Store = Sealed<PostgresStore>;
    const SEALED: bool = true;
    fn over(pg: PostgresStore) -> Sealed<PostgresStore> {
        Sealed::new(pg, SealingKeys::new([("k1", [7; 32])]).unwrap())
    }
}

async fn world<L: Layered>() -> (Schema, PostgresStore, Bank, Payments, Client) {
    let schema = Schema::fresh("pay");
    let store = PostgresStore::connect(
        &url(),
        PostgresStoreConfig {
            schema: schema.name().to_owned(),
            pool_size: 4,
            ..PostgresStoreConfig::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("PostgreSQL at {} must be reachable: {e:?}", url()));
    let bank = Bank::default();
    let bank_addr = serve(bank.router().unwrap()).await;
    let payments = Payments::new(store.pool().clone(), schema.name(), bank_addr);
    payments.migrate().await.unwrap();
    let addr = serve(payments.router(L::over(store.clone())).unwrap()).await;
    (schema, store, bank, payments, Client::new(addr))
}

/// How many rows `table` of `schema` holds.
async fn rows(store: &PostgresStore, schema: &Schema, table: &str) -> i64 {
    let c = store.pool().get().await.unwrap();
    postgres::count(&c, schema.name(), table).await
}

async fn assert_once(store: &PostgresStore, schema: &Schema, bank: &Bank, why: &str) {
    for table in ["orders", "ledger", "receipts"] {
        assert_eq!(rows(store, schema, table).await, 1, "{why}: {table}");
    }
    assert_eq!(bank.charges(), 1, "{why}: bank");
}

/// Over a sealed store, the store's tables hold neither the steps of the recovery
/// points nor their data, the charge, nor the key in the clear (R20 with encryption at
/// rest), in text or hex.
async fn assert_sealed_at_rest(store: &PostgresStore, schema: &Schema, why: &str) {
    let raw = postgres::store_rows_as_text(&store.pool().get().await.unwrap(), schema.name()).await;
    for clear in ["order_created", "charged", "ledgered", "ch_1", "cart-1"] {
        assert!(!raw.contains(clear), "{why}: {clear} in {raw}");
        let hex = idem_testkit::hex(clear.as_bytes());
        assert!(!raw.contains(&hex), "{why}: {clear} (hex) in {raw}");
    }
}

// R20: the happy path runs every phase once; the retry replays (R8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20_checkout_runs_once() {
    checkout_runs_once::<Plain>().await;
}

// R20 over a sealed store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20_checkout_runs_once_sealed() {
    checkout_runs_once::<Encrypted>().await;
}

async fn checkout_runs_once<L: Layered>() {
    let (schema, store, bank, _payments, client) = world::<L>().await;
    let first = client.post("/checkout", "cart-1", "{\"amount\":100}").await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert_eq!(
        first.body,
        "{\"receipt\":\"cart-1\",\"order\":1,\"charge\":\"ch_1\"}"
    );
    let again = client.post("/checkout", "cart-1", "{\"amount\":100}").await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_once(&store, &schema, &bank, "happy path").await;
}

// R20, R21: a crash at each phase boundary, then retries with the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20_crash_at_each_boundary_then_retry() {
    crash_at_each_boundary_then_retry::<Plain>().await;
}

// R20, R21 over a sealed store: recovery points and the transactional completion are
// sealed and read back through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20_crash_at_each_boundary_then_retry_sealed() {
    crash_at_each_boundary_then_retry::<Encrypted>().await;
}

async fn crash_at_each_boundary_then_retry<L: Layered>() {
    for boundary in Boundary::ALL {
        let (schema, store, bank, payments, client) = world::<L>().await;
        payments.crash_at(boundary);
        let crashed = client.post("/checkout", "cart-1", "{\"amount\":100}").await;
        assert_eq!(
            crashed.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{boundary:?}"
        );

        // The abandoned record is released in the background: 409 until then (R10).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let ok = loop {
            let r = client.post("/checkout", "cart-1", "{\"amount\":100}").await;
            if r.status != StatusCode::CONFLICT {
                break r;
            }
            assert!(tokio::time::Instant::now() < deadline, "{boundary:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(ok.status, StatusCode::CREATED, "{boundary:?}: {ok:?}");
        assert_eq!(
            ok.body, "{\"receipt\":\"cart-1\",\"order\":1,\"charge\":\"ch_1\"}",
            "{boundary:?}"
        );
        let replay = client.post("/checkout", "cart-1", "{\"amount\":100}").await;
        assert!(replay.replayed(), "{boundary:?}");
        assert_eq!(replay.status, ok.status, "{boundary:?}");
        assert_eq!(replay.body, ok.body, "{boundary:?}");
        assert_once(&store, &schema, &bank, &format!("{boundary:?}")).await;
        if L::SEALED {
            assert_sealed_at_rest(&store, &schema, &format!("{boundary:?}")).await;
        }
    }
}

// R9, R20: a crash between phases, then a retry with another body under the same key:
// refused with 422 while the first body's progress exists, even once the crashed
// attempt's record is gone; the same body then resumes and completes, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r09_r20_crash_then_other_payload_is_refused_same_resumes() {
    crash_then_other_payload_is_refused::<Plain>().await;
}

// The same over a sealed store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r09_r20_crash_then_other_payload_is_refused_same_resumes_sealed() {
    crash_then_other_payload_is_refused::<Encrypted>().await;
}

async fn crash_then_other_payload_is_refused<L: Layered>() {
    for boundary in [Boundary::OrderCreated, Boundary::Charged] {
        let (schema, store, bank, payments, client) = world::<L>().await;
        payments.crash_at(boundary);
        let crashed = client.post("/checkout", "cart-1", "{\"amount\":100}").await;
        assert_eq!(crashed.status, StatusCode::INTERNAL_SERVER_ERROR);

        // Wait until the crashed attempt's record is released: only its progress is
        // left to bind the key.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rows(&store, &schema, "records").await != 0 {
            assert!(tokio::time::Instant::now() < deadline, "{boundary:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let other = client.post("/checkout", "cart-1", "{\"amount\":999}").await;
        assert_eq!(
            other.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{boundary:?}: {other:?}"
        );
        assert_eq!(rows(&store, &schema, "orders").await, 1);

        let resumed = client.post("/checkout", "cart-1", "{\"amount\":100}").await;
        assert_eq!(
            resumed.status,
            StatusCode::CREATED,
            "{boundary:?}: {resumed:?}"
        );
        assert_eq!(
            resumed.body, "{\"receipt\":\"cart-1\",\"order\":1,\"charge\":\"ch_1\"}",
            "{boundary:?}"
        );
        // Completed: the other body is still a mismatch (R9), the same one replays (R8).
        let other = client.post("/checkout", "cart-1", "{\"amount\":999}").await;
        assert_eq!(
            other.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{boundary:?}"
        );
        assert_once(&store, &schema, &bank, &format!("{boundary:?}")).await;
    }
}
