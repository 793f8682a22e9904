//! R20 through the layer: a checkout in atomic phases (order → bank charge → ledger →
//! receipt + completion, R21), crashed at every phase boundary and retried with the
//! same key, over `PostgresStore` and `Sealed<PostgresStore>`. Needs PostgreSQL (see
//! `r21_postgres`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use http::StatusCode;
use idem::core::store::Finish;
use idem::postgres::deadpool_postgres::Pool;
use idem::postgres::{PgTransactional, PostgresStore, RecoveryPoint};
use idem::{IdempotencyContext, IdempotencyLayer, Progress};
use idem_testkit::Client;

use super::r21_postgres::{PgSchema, bytea_hex, sealed};
use super::serve;

/// A foreign service that honours idempotency keys: one charge per key.
#[derive(Clone, Default)]
struct Bank {
    charges: Arc<Mutex<HashMap<String, String>>>,
}

impl Bank {
    fn charge(&self, key: &str) -> String {
        let mut charges = self.charges.lock().unwrap();
        let n = charges.len();
        charges
            .entry(key.to_owned())
            .or_insert_with(|| format!("ch_{n}"))
            .clone()
    }
}

#[derive(Clone)]
struct App {
    pool: Pool,
    schema: String,
    bank: Bank,
    /// The phase boundary at which the next request crashes (once).
    crash_at: Arc<Mutex<Option<&'static str>>>,
}

impl App {
    /// The app over `store`'s pool, after creating its tables (`ddl`, with `{s}` for
    /// the schema); its next request crashes at `crash_at`.
    async fn with_tables(
        store: &PostgresStore,
        schema: &PgSchema,
        ddl: &str,
        crash_at: &'static str,
    ) -> Self {
        let app = Self {
            pool: store.pool().clone(),
            schema: schema.name.clone(),
            bank: Bank::default(),
            crash_at: Arc::new(Mutex::new(Some(crash_at))),
        };
        let client = store.pool().get().await.unwrap();
        client.batch_execute(&app.sql(ddl)).await.unwrap();
        app
    }

    fn boundary(&self, name: &'static str) {
        let mut crash = self.crash_at.lock().unwrap();
        if *crash == Some(name) {
            *crash = None;
            drop(crash);
            panic!("injected crash at {name}");
        }
    }

    fn sql(&self, sql: &str) -> String {
        sql.replace("{s}", &format!("\"{}\"", self.schema))
    }
}

/// The checkout, one atomic phase per arm; each commits its local writes with the
/// next recovery point, so a retry resumes at the first phase that did not commit.
async fn checkout<St: PgTransactional>(
    State(app): State<App>,
    ctx: IdempotencyContext<St>,
) -> Response {
    let handle = ctx.handle().expect("protected");
    let key = handle.key().as_str().to_owned();
    let mut client = app.pool.get().await.unwrap();
    let mut point = handle.recovery_point(&**client).await.unwrap();
    loop {
        let step = point.as_ref().map(|p| p.step.clone());
        let tx = client.transaction().await.unwrap();
        let next = match step.as_deref() {
            // Phase 1: create the order.
            None => {
                tx.execute(
                    &app.sql("INSERT INTO {s}.orders (key) VALUES ($1)"),
                    &[&key],
                )
                .await
                .unwrap();
                RecoveryPoint::new("order_created")
            }
            // Phase 2: charge at the bank under a derived key, keep the charge id.
            Some("order_created") => {
                let charge = app.bank.charge(&handle.derived_key("charge"));
                app.boundary("charged_not_recorded");
                RecoveryPoint::with_data("charged", charge.into_bytes())
            }
            // Phase 3: the ledger entry for the charge.
            Some("charged") => {
                let charge = String::from_utf8(point.clone().unwrap().data.unwrap()).unwrap();
                tx.execute(
                    &app.sql("INSERT INTO {s}.ledger (key, charge) VALUES ($1, $2)"),
                    &[&key, &charge],
                )
                .await
                .unwrap();
                RecoveryPoint::with_data("ledgered", charge.into_bytes())
            }
            // Phase 4: the receipt, completed with the record in the same transaction.
            Some("ledgered") => {
                let charge = String::from_utf8(point.clone().unwrap().data.unwrap()).unwrap();
                tx.execute(
                    &app.sql("INSERT INTO {s}.receipts (key, charge) VALUES ($1, $2)"),
                    &[&key, &charge],
                )
                .await
                .unwrap();
                let response = http::Response::builder()
                    .status(StatusCode::CREATED)
                    .header("content-type", "application/json")
                    .body(Bytes::from(format!(
                        "{{\"receipt\":\"{key}\",\"charge\":\"{charge}\"}}"
                    )))
                    .unwrap();
                assert_eq!(
                    handle.complete_in(&*tx, &response).await.unwrap(),
                    Finish::Done
                );
                tx.commit().await.unwrap();
                app.boundary("completed");
                return response.map(Body::from);
            }
            Some(other) => unreachable!("unknown step {other}"),
        };
        assert_eq!(handle.advance_in(&*tx, &next).await.unwrap(), Finish::Done);
        tx.commit().await.unwrap();
        app.boundary(match next.step.as_str() {
            "order_created" => "order_created",
            "charged" => "charged",
            _ => "ledgered",
        });
        point = Some(next);
    }
}

async fn count(store: &PostgresStore, schema: &str, table: &str) -> i64 {
    let c = store.pool().get().await.unwrap();
    c.query_one(&format!("SELECT count(*) FROM \"{schema}\".{table}"), &[])
        .await
        .unwrap()
        .get(0)
}

// R20: for every phase boundary, a crash there and a retry with the same key leave
// exactly one order, bank charge, ledger entry and receipt, and every successful
// answer is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20_crash_at_each_phase_boundary_resumes() {
    crash_at_each_phase_boundary_resumes(|pg| pg, |_, _| async {}).await;
}

// R20 through `Sealed<PostgresStore>`: the recovery points the phases commit are
// sealed as completions are, and read back through the sealed store; the tables hold
// neither the steps nor their data in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20_crash_at_each_phase_boundary_resumes_sealed() {
    crash_at_each_phase_boundary_resumes(sealed, |schema, pg| async move {
        let raw = schema.raw_rows(&pg).await;
        assert_eq!(schema.count(&pg, "recovery_points").await, 1, "{raw}");
        for clear in ["order_created", "charged", "ledgered", "ch_0", "cart-1"] {
            assert!(!raw.contains(clear), "{clear}: {raw}");
            assert!(
                !raw.contains(&bytea_hex(clear.as_bytes())),
                "{clear}: {raw}"
            );
        }
    })
    .await;
}

/// The crash test over the layer's store `layer_store(pg)`; `check` runs at the end of
/// each boundary's run.
async fn crash_at_each_phase_boundary_resumes<St, Check, Checked>(
    layer_store: impl Fn(PostgresStore) -> St,
    check: Check,
) where
    St: PgTransactional,
    Check: Fn(PgSchema, PostgresStore) -> Checked,
    Checked: std::future::Future<Output = ()>,
{
    for boundary in [
        "order_created",
        "charged_not_recorded",
        "charged",
        "ledgered",
        "completed",
    ] {
        let (schema, store) = PgSchema::fresh().await;
        let app = App::with_tables(
            &store,
            &schema,
            "CREATE TABLE {s}.orders (key text PRIMARY KEY);
             CREATE TABLE {s}.ledger (key text PRIMARY KEY, charge text NOT NULL);
             CREATE TABLE {s}.receipts (key text PRIMARY KEY, charge text NOT NULL);",
            boundary,
        )
        .await;
        let router = Router::new()
            .route("/checkout", post(checkout::<St>))
            .with_state(app.clone())
            .layer(IdempotencyLayer::new(layer_store(store.clone())));
        let front = serve(router).await;
        let client = Client::new(front.addr);

        let crashed = client.post("/checkout", "cart-1", "{\"amount\":100}").await;
        assert_eq!(
            crashed.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{boundary}"
        );

        // Retry with the same key until the abandoned record is released (409 until
        // then, R10), then once more for the replay.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let ok = loop {
            let r = client.post("/checkout", "cart-1", "{\"amount\":100}").await;
            if r.status != StatusCode::CONFLICT {
                break r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{boundary}: still 409"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(ok.status, StatusCode::CREATED, "{boundary}: {ok:?}");
        let replay = client.post("/checkout", "cart-1", "{\"amount\":100}").await;
        assert!(replay.replayed(), "{boundary}");
        assert_eq!(replay.body, ok.body, "{boundary}");

        for table in ["orders", "ledger", "receipts"] {
            assert_eq!(
                count(&store, &schema.name, table).await,
                1,
                "{boundary}: {table}"
            );
        }
        assert_eq!(
            app.bank.charges.lock().unwrap().len(),
            1,
            "{boundary}: bank"
        );
        assert_eq!(
            ok.body, "{\"receipt\":\"cart-1\",\"charge\":\"ch_0\"}",
            "{boundary}"
        );
        drop(front);
        check(schema, store).await;
    }
}

/// What the typed checkout's phases keep (R20).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Kept {
    order_id: Option<i64>,
    charge: Option<String>,
}

/// A two-phase checkout on the typed progress: the order (phase 1, keeps its id), then
/// the bank call between transactions and the ledger entry with the completion (R21),
/// which reads phase 1's order id from the progress.
async fn typed_checkout<St: PgTransactional>(
    State(app): State<App>,
    ctx: IdempotencyContext<St>,
) -> Response {
    let handle = ctx.handle().expect("protected");
    let mut progress: Progress<Kept> = handle
        .progress(&**app.pool.get().await.unwrap())
        .await
        .unwrap();
    loop {
        match progress.step() {
            None => {
                let mut client = app.pool.get().await.unwrap();
                let tx = client.transaction().await.unwrap();
                let row = tx
                    .query_one(
                        &app.sql("INSERT INTO {s}.orders (key) VALUES ($1) RETURNING id"),
                        &[&handle.key().as_str()],
                    )
                    .await
                    .unwrap();
                progress.data.order_id = Some(row.get(0));
                let finish = handle.advance(&*tx, &mut progress, "ordered").await;
                assert_eq!(finish.unwrap(), Finish::Done);
                tx.commit().await.unwrap();
                app.boundary("ordered");
            }
            Some("ordered") => {
                let charge = app.bank.charge(&handle.derived_key("charge"));
                let order = progress.data.order_id.expect("phase 1's order id");
                let mut client = app.pool.get().await.unwrap();
                let tx = client.transaction().await.unwrap();
                tx.execute(
                    &app.sql("INSERT INTO {s}.ledger (order_id, charge) VALUES ($1, $2)"),
                    &[&order, &charge],
                )
                .await
                .unwrap();
                let response = http::Response::builder()
                    .status(StatusCode::CREATED)
                    .body(Bytes::from(format!("order {order}, {charge}")))
                    .unwrap();
                let finish = handle.complete_in(&*tx, &response).await.unwrap();
                assert_eq!(finish, Finish::Done);
                tx.commit().await.unwrap();
                return response.map(Body::from);
            }
            Some(other) => unreachable!("unknown step {other}"),
        }
    }
}

// R9, R20 through the layer: a crash after phase 1, then the same key with another
// body is refused (422) while the first body's progress exists, also once the crashed
// attempt's record is gone; the same body then resumes at phase 2 with phase 1's order
// id from the typed progress, and nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r09_r20_crash_then_other_payload_is_refused_and_same_resumes() {
    let (schema, store) = PgSchema::fresh().await;
    let app = App::with_tables(
        &store,
        &schema,
        "CREATE TABLE {s}.orders (id bigserial PRIMARY KEY, key text NOT NULL UNIQUE);
         CREATE TABLE {s}.ledger (order_id bigint PRIMARY KEY, charge text NOT NULL);",
        "ordered",
    )
    .await;
    let router = Router::new()
        .route("/checkout", post(typed_checkout::<PostgresStore>))
        .with_state(app.clone())
        .layer(IdempotencyLayer::new(store.clone()));
    let front = serve(router).await;
    let client = Client::new(front.addr);

    let crashed = client.post("/checkout", "cart-9", "{\"amount\":100}").await;
    assert_eq!(crashed.status, StatusCode::INTERNAL_SERVER_ERROR);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while schema.count(&store, "records").await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let other = client.post("/checkout", "cart-9", "{\"amount\":999}").await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{other:?}");
    assert_eq!(
        schema.count(&store, "records").await,
        0,
        "refused, not claimed"
    );

    let resumed = client.post("/checkout", "cart-9", "{\"amount\":100}").await;
    assert_eq!(resumed.status, StatusCode::CREATED, "{resumed:?}");
    assert_eq!(resumed.body, "order 1, ch_0");
    let replay = client.post("/checkout", "cart-9", "{\"amount\":100}").await;
    assert!(replay.replayed());
    assert_eq!(replay.body, resumed.body);
    assert_eq!(count(&store, &schema.name, "orders").await, 1);
    assert_eq!(count(&store, &schema.name, "ledger").await, 1);
    assert_eq!(app.bank.charges.lock().unwrap().len(), 1);
}
