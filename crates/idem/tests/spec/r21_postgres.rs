//! R21 through the layer: the handler completes the record in its own PostgreSQL
//! transaction, over `PostgresStore` as it is and sealed (`Sealed<PostgresStore>`, and
//! the proxy's `Sealed<AnyStore>`). Needs PostgreSQL at `$IDEM_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`); fails if it is unreachable.
//! Each test works in a fresh schema, dropped at the end.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use http::StatusCode;
use idem::core::record::RecordId;
use idem::core::store::testkit::{claim_req, sealing_keys, snapshot};
use idem::core::store::{Claim, Finish, Sealed, Store, StoreError, Transactional};
use idem::postgres::deadpool_postgres::Pool;
use idem::postgres::{PgTransactional, PostgresStore, PostgresStoreConfig};
use idem::{AnyStore, IdempotencyContext, IdempotencyLayer};
use idem_testkit::Client;

use idem_testkit::postgres::{self, Schema, url};

use super::serve;

/// A fresh schema holding the store's tables and the app's `charges`.
pub(crate) struct PgSchema {
    pub(crate) name: String,
    _guard: Schema,
}

impl PgSchema {
    pub(crate) async fn fresh() -> (Self, PostgresStore) {
        let guard = Schema::fresh("idem_l");
        let schema = Self {
            name: guard.name().to_owned(),
            _guard: guard,
        };
        let store = PostgresStore::connect(
            &url(),
            PostgresStoreConfig {
                schema: schema.name.clone(),
                pool_size: 4,
                ..PostgresStoreConfig::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} must be reachable: {e:?}", url()));
        let client = store.pool().get().await.unwrap();
        client
            .batch_execute(&format!(
                "CREATE TABLE \"{}\".charges (key text PRIMARY KEY, amount int NOT NULL)",
                schema.name
            ))
            .await
            .unwrap();
        (schema, store)
    }

    async fn charges(&self, store: &PostgresStore) -> i64 {
        self.count(store, "charges").await
    }

    pub(crate) async fn count(&self, store: &PostgresStore, table: &str) -> i64 {
        postgres::count(&store.pool().get().await.unwrap(), &self.name, table).await
    }

    /// Every row the store's tables hold, as text, for checks of what is in the clear.
    pub(crate) async fn raw_rows(&self, store: &PostgresStore) -> String {
        postgres::store_rows_as_text(&store.pool().get().await.unwrap(), &self.name).await
    }
}

/// Encryption at rest over `store`, with the test keys.
fn sealed<S: Store>(store: S) -> Sealed<S> {
    Sealed::new(store, sealing_keys())
}

#[derive(Clone)]
struct App {
    pool: Pool,
    schema: String,
    /// Roll the transaction back after completing in it (a failing business check).
    roll_back: bool,
}

/// Writes a charge and completes the record in one transaction (R21).
async fn charge<St: PgTransactional>(
    State(app): State<App>,
    ctx: IdempotencyContext<St>,
) -> Response {
    let handle = ctx.handle().expect("protected");
    let mut client = app.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(
        &format!(
            "INSERT INTO \"{}\".charges (key, amount) VALUES ($1, 100)",
            app.schema
        ),
        &[&handle.key().as_str()],
    )
    .await
    .unwrap();
    let response = http::Response::builder()
        .status(StatusCode::CREATED)
        .header("x-charge", format!("ch_{}", handle.key().as_str()))
        .header("content-type", "application/json")
        .body(Bytes::from_static(b"{\"charged\":100}"))
        .unwrap();
    assert_eq!(
        handle.complete_in(&*tx, &response).await.unwrap(),
        Finish::Done
    );
    if app.roll_back {
        tx.rollback().await.unwrap();
        return http::Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(Body::from("rolled back"))
            .unwrap();
    }
    tx.commit().await.unwrap();
    response.map(Body::from)
}

/// The charges app behind a layer over `store`, writing through `pg`'s pool.
fn app<St: PgTransactional>(
    store: St,
    pg: &PostgresStore,
    schema: &str,
    roll_back: bool,
) -> Router {
    Router::new()
        .route("/charges", post(charge::<St>))
        .with_state(App {
            pool: pg.pool().clone(),
            schema: schema.to_owned(),
            roll_back,
        })
        .layer(IdempotencyLayer::new(store))
}

/// The record of `key` in the test client's scope.
fn record_id(key: &str) -> RecordId {
    RecordId::new(
        idem_testkit::client::credential_scope(),
        idem::core::IdempotencyKey::new(key).unwrap(),
    )
}

/// R21: the business write and the completion commit together; the client receives
/// exactly the stored snapshot, and the retry replays it without running again.
async fn completion_commits_with_business_write<St: PgTransactional>(
    schema: &PgSchema,
    pg: &PostgresStore,
    store: St,
) {
    let front = serve(app(store.clone(), pg, &schema.name, false)).await;
    let client = Client::new(front.addr);

    let first = client.post("/charges", "order-1", "{\"amount\":100}").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.header("x-charge"), Some("ch_order-1"));
    assert_eq!(first.body, "{\"charged\":100}");
    assert!(!first.replayed());
    assert_eq!(schema.charges(pg).await, 1);

    let retry = client.post("/charges", "order-1", "{\"amount\":100}").await;
    assert!(retry.replayed());
    assert_eq!(retry.status, first.status);
    assert_eq!(retry.header("x-charge"), first.header("x-charge"));
    assert_eq!(retry.header("content-type"), first.header("content-type"));
    assert_eq!(retry.body, first.body);
    assert_eq!(schema.charges(pg).await, 1);
    // Through the layer's own store, the record reads back as it was completed.
    let Some(record) = store.lookup(&record_id("order-1")).await.unwrap() else {
        panic!("the record is completed");
    };
    assert!(matches!(
        record.state,
        idem::core::record::State::Completed { .. }
    ));
}

// R21
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r21_completion_commits_with_business_write() {
    let (schema, pg) = PgSchema::fresh().await;
    completion_commits_with_business_write(&schema, &pg, pg.clone()).await;
}

// R21 through `Sealed<PostgresStore>`: the handler's transaction writes the sealed
// snapshot, which the layer and every replay open; the table holds neither the response
// nor the key in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r21_completion_commits_through_a_sealed_store() {
    let (schema, pg) = PgSchema::fresh().await;
    completion_commits_with_business_write(&schema, &pg, sealed(pg.clone())).await;
    let raw = schema.raw_rows(&pg).await;
    assert_eq!(schema.count(&pg, "records").await, 1, "{raw}");
    for clear in [
        &b"charged"[..],
        b"ch_order-1",
        b"order-1",
        b"application/json",
    ] {
        assert!(!raw.contains(&idem_testkit::hex(clear)), "{raw}");
        assert!(!raw.contains(std::str::from_utf8(clear).unwrap()), "{raw}");
    }
}

// R21 through the proxy's store type, `Sealed<AnyStore>` over PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r21_completion_commits_through_a_sealed_any_store() {
    let (schema, pg) = PgSchema::fresh().await;
    let store = sealed(AnyStore::Postgres(pg.clone()));
    completion_commits_with_business_write(&schema, &pg, store).await;
}

/// R21: a transaction that rolls back takes the completion with it: no charge, no
/// record, and the layer finishes with the handler's own answer (503 releases, R7),
/// so a retry runs again.
async fn rolled_back_completion_is_not_recorded<St: PgTransactional>(
    schema: &PgSchema,
    pg: &PostgresStore,
    store: St,
) {
    let front = serve(app(store.clone(), pg, &schema.name, true)).await;
    let client = Client::new(front.addr);

    let first = client.post("/charges", "order-2", "{}").await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(schema.charges(pg).await, 0);
    assert_eq!(store.lookup(&record_id("order-2")).await.unwrap(), None);
    assert_eq!(schema.count(pg, "records").await, 0);

    // The retry (same roll-back app) runs the handler again rather than replaying.
    let again = client.post("/charges", "order-2", "{}").await;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!again.replayed());
}

// R21
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r21_rolled_back_completion_is_not_recorded() {
    let (schema, pg) = PgSchema::fresh().await;
    rolled_back_completion_is_not_recorded(&schema, &pg, pg.clone()).await;
}

// R21, sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r21_rolled_back_completion_is_not_recorded_sealed() {
    let (schema, pg) = PgSchema::fresh().await;
    rolled_back_completion_is_not_recorded(&schema, &pg, sealed(pg.clone())).await;
}

// R21: an `AnyStore` that is not PostgreSQL answers a typed "unsupported", sealed or
// not, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r21_any_store_without_postgres_is_unsupported() {
    let (_schema, pg) = PgSchema::fresh().await;
    let memory = AnyStore::from_url("memory").await.unwrap();
    let id = record_id("order-3");
    let Claim::Acquired(lease) = memory.claim(&claim_req(&id, 1)).await.unwrap() else {
        panic!("a new key is acquired");
    };
    let mut client = pg.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let ttl = Duration::from_secs(60);
    let answers = [
        memory
            .complete_in(&*tx, &lease, &snapshot(b"x"), ttl)
            .await
            .map(drop),
        sealed(memory.clone())
            .complete_in(&*tx, &lease, &snapshot(b"x"), ttl)
            .await
            .map(drop),
        memory.recovery_point(&*tx, &lease).await.map(drop),
    ];
    for answer in answers {
        assert!(
            matches!(
                answer,
                Err(StoreError::Unsupported {
                    store: "memory",
                    ..
                })
            ),
            "{answer:?}"
        );
    }
    assert!(matches!(
        memory.lookup(&id).await.unwrap().map(|r| r.state),
        Some(idem::core::record::State::InFlight { .. })
    ));
}
