//! R21 through the layer: the handler completes the record in its own PostgreSQL
//! transaction. Needs PostgreSQL at `$IDEM_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); fails if it is unreachable. Each test
//! works in a fresh schema, dropped at the end.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use http::StatusCode;
use idem::IdempotencyContext;
use idem::IdempotencyLayer;
use idem::postgres::{PostgresStore, PostgresStoreConfig};
use idem::store::Finish;
use idem_testkit::Client;

use idem_testkit::postgres::{Schema, url};

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
        let client = store.pool().get().await.unwrap();
        client
            .query_one(
                &format!("SELECT count(*) FROM \"{}\".charges", self.name),
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
}

#[derive(Clone)]
struct App {
    schema: String,
    /// Roll the transaction back after completing in it (a failing business check).
    roll_back: bool,
}

/// Writes a charge and completes the record in one transaction (R21).
async fn charge(State(app): State<App>, ctx: IdempotencyContext) -> Response {
    let handle = ctx.handle().expect("protected");
    let store = handle.postgres().expect("postgres store");
    let mut client = store.pool().get().await.unwrap();
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

fn app(store: PostgresStore, schema: &str, roll_back: bool) -> Router {
    Router::new()
        .route("/charges", post(charge))
        .with_state(App {
            schema: schema.to_owned(),
            roll_back,
        })
        .layer(IdempotencyLayer::new(store))
}

// R21: the business write and the completion commit together; the client receives
// exactly the stored snapshot, and the retry replays it without running again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r21_completion_commits_with_business_write() {
    let (schema, store) = PgSchema::fresh().await;
    let front = serve(app(store.clone(), &schema.name, false)).await;
    let client = Client::new(front.addr);

    let first = client.post("/charges", "order-1", "{\"amount\":100}").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.header("x-charge"), Some("ch_order-1"));
    assert_eq!(first.body, "{\"charged\":100}");
    assert!(!first.replayed());
    assert_eq!(schema.charges(&store).await, 1);

    let retry = client.post("/charges", "order-1", "{\"amount\":100}").await;
    assert!(retry.replayed());
    assert_eq!(retry.status, first.status);
    assert_eq!(retry.header("x-charge"), first.header("x-charge"));
    assert_eq!(retry.header("content-type"), first.header("content-type"));
    assert_eq!(retry.body, first.body);
    assert_eq!(schema.charges(&store).await, 1);
}

// R21: a transaction that rolls back takes the completion with it: no charge, no
// record, and the layer finishes with the handler's own answer (503 releases, R7),
// so a retry runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r21_rolled_back_completion_is_not_recorded() {
    let (schema, store) = PgSchema::fresh().await;
    let front = serve(app(store.clone(), &schema.name, true)).await;
    let client = Client::new(front.addr);

    let first = client.post("/charges", "order-2", "{}").await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(schema.charges(&store).await, 0);
    let id = idem::record::RecordId::new(
        idem::scope::ScopeSource::default().scope(&http::HeaderMap::new()),
        idem::IdempotencyKey::new("order-2").unwrap(),
    );
    assert_eq!(idem::Store::lookup(&store, &id).await.unwrap(), None);

    // The retry (same roll-back app) runs the handler again rather than replaying.
    let again = client.post("/charges", "order-2", "{}").await;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!again.replayed());
}
