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
use idem::postgres::deadpool_postgres::Pool;
use idem::postgres::{PgTransactional, PostgresStore, RecoveryPoint};
use idem::store::Finish;
use idem::{IdempotencyContext, IdempotencyLayer};
use idem_testkit::Client;

use super::r21_postgres::{PgSchema, sealed};
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
                !raw.contains(&idem_testkit::hex(clear.as_bytes())),
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
        let c = store.pool().get().await.unwrap();
        c.batch_execute(&format!(
            "CREATE TABLE \"{s}\".orders (key text PRIMARY KEY);
             CREATE TABLE \"{s}\".ledger (key text PRIMARY KEY, charge text NOT NULL);
             CREATE TABLE \"{s}\".receipts (key text PRIMARY KEY, charge text NOT NULL);",
            s = schema.name
        ))
        .await
        .unwrap();
        drop(c);
        let app = App {
            pool: store.pool().clone(),
            schema: schema.name.clone(),
            bank: Bank::default(),
            crash_at: Arc::new(Mutex::new(Some(boundary))),
        };
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
