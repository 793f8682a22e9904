//! A checkout service built on `idem` as a library: axum + PostgreSQL.
//!
//! `POST /checkout` with an `Idempotency-Key` runs four atomic phases (R20):
//! create the order → charge at the bank (a separate service that itself honours
//! `Idempotency-Key`, called with a key derived from the request's) → write the ledger
//! entry → write the receipt and complete the idempotency record in the same
//! transaction (R21). Each phase commits its local writes with the next recovery
//! point, so a retry after a crash resumes where the crashed attempt stopped, and
//! nothing happens twice. [`Payments::crash_at`] injects a crash at a phase boundary
//! for the crash tests.
//!
//! What the phases produce (the order id, the bank's charge id) travels in a typed
//! [`Progress`], stored as JSON with each recovery point. The bank is called between
//! transactions, holding no pooled connection; the phase's short transaction then
//! records its answer. While the checkout's progress exists, its key is bound to the
//! request's body: a retry with another body is refused (R9, 422), even after a crash.
//!
//! The layer runs over any store that writes in the service's PostgreSQL transactions
//! ([`PgTransactional`]): the `PostgresStore` itself, or `Sealed<PostgresStore>` for
//! encryption at rest; the handler names it as `IdempotencyContext<St>`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{self, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idem::context::Finish;
use idem::postgres::PgTransactional;
use idem::postgres::deadpool_postgres::{Pool, Transaction};
use idem::{
    ConfigError, IdempotencyContext, IdempotencyHandle, IdempotencyLayer, MemoryStore, Progress,
};
use serde::{Deserialize, Serialize};

/// A phase boundary where [`Payments::crash_at`] can inject a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boundary {
    /// After the order committed.
    OrderCreated,
    /// After the bank charged, before the charge was recorded.
    ChargedNotRecorded,
    /// After the charge was recorded.
    Charged,
    /// After the ledger entry committed.
    Ledgered,
    /// After the receipt and the idempotency record committed.
    Completed,
}

impl Boundary {
    /// Every boundary, in order.
    pub const ALL: [Self; 5] = [
        Self::OrderCreated,
        Self::ChargedNotRecorded,
        Self::Charged,
        Self::Ledgered,
        Self::Completed,
    ];
}

/// The fake bank: `POST /charges` answers a new charge id; it sits behind its own
/// `IdempotencyLayer` (memory store, key required), so a retried charge with the same
/// key is replayed, not charged again.
#[derive(Clone, Debug, Default)]
pub struct Bank {
    charges: Arc<AtomicU64>,
}

impl Bank {
    /// How many charges the bank executed.
    pub fn charges(&self) -> u64 {
        self.charges.load(Ordering::SeqCst)
    }

    /// The bank's routes.
    ///
    /// # Errors
    ///
    /// None in practice: the layer's settings are constants.
    pub fn router(&self) -> Result<Router, ConfigError> {
        let bank = self.clone();
        let layer = IdempotencyLayer::builder(MemoryStore::new())
            .require_key(true)
            .build()?;
        Ok(Router::new()
            .route(
                "/charges",
                post(move || async move {
                    let n = bank.charges.fetch_add(1, Ordering::SeqCst) + 1;
                    (StatusCode::CREATED, format!("ch_{n}"))
                }),
            )
            .layer(layer))
    }
}

/// The checkout service's state.
#[derive(Clone, Debug)]
pub struct Payments {
    pool: Pool,
    schema: String,
    bank: SocketAddr,
    http: Client<HttpConnector, Full<Bytes>>,
    crash: Arc<Mutex<Option<Boundary>>>,
}

/// What went wrong in a phase: the handler answers 500 and the record is released,
/// so a retry resumes at the last committed phase.
#[derive(Debug)]
pub struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Self(e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.0).into_response()
    }
}

impl Payments {
    /// A service whose tables live in `schema` of the database of `pool` (the one the
    /// idempotency store uses) and whose bank listens at `bank`.
    pub fn new(pool: Pool, schema: &str, bank: SocketAddr) -> Self {
        Self {
            pool,
            schema: schema.to_owned(),
            bank,
            http: Client::builder(TokioExecutor::new()).build_http(),
            crash: Arc::new(Mutex::new(None)),
        }
    }

    /// Crashes (panics) the next request that reaches `boundary`, once.
    pub fn crash_at(&self, boundary: Boundary) {
        *self.crash.lock().unwrap_or_else(PoisonError::into_inner) = Some(boundary);
    }

    fn boundary(&self, here: Boundary) {
        let mut crash = self.crash.lock().unwrap_or_else(PoisonError::into_inner);
        if *crash == Some(here) {
            *crash = None;
            drop(crash);
            // The injected crash of the tests: the layer answers 500 and releases.
            panic!("injected crash at {here:?}");
        }
    }

    fn sql(&self, sql: &str) -> String {
        sql.replace("{s}", &format!("\"{}\"", self.schema))
    }

    /// Creates the business tables.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn migrate(&self) -> Result<(), Failure> {
        let client = self.pool.get().await?;
        client
            .batch_execute(&self.sql(
                "CREATE TABLE IF NOT EXISTS {s}.orders (id bigserial PRIMARY KEY, key text NOT NULL UNIQUE);
                 CREATE TABLE IF NOT EXISTS {s}.ledger (order_id bigint PRIMARY KEY, charge text NOT NULL);
                 CREATE TABLE IF NOT EXISTS {s}.receipts (order_id bigint PRIMARY KEY, charge text NOT NULL);",
            ))
            .await?;
        Ok(())
    }

    /// The service: `POST /checkout` behind the idempotency layer over `store`, a
    /// store over the database of the service's pool.
    ///
    /// # Errors
    ///
    /// None in practice: the layer's settings are constants.
    pub fn router<St: PgTransactional>(&self, store: St) -> Result<Router, ConfigError> {
        let layer = IdempotencyLayer::builder(store).require_key(true).build()?;
        Ok(Router::new()
            .route("/checkout", post(checkout::<St>))
            .with_state(self.clone())
            .layer(layer))
    }

    /// Charges at the bank under `key`; the bank replays a retried charge.
    async fn charge(&self, key: &str) -> Result<String, Failure> {
        let req = http::Request::post(format!("http://{}/charges", self.bank))
            .header("idempotency-key", key)
            // The shop's credential at the bank, which scopes the bank's keys (R4).
            .header("authorization", "Bearer shop-at-bank")
            .body(Full::new(Bytes::from_static(b"{\"amount\":100}")))?;
        let resp = self.http.request(req).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(Failure(format!("bank answered {}", resp.status())));
        }
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8(body.to_vec())?)
    }
}

/// What the phases of one checkout keep (R20): phase 1's order id and phase 2's charge
/// id reach the later phases, and a retry after a crash, through the recovery point.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkout {
    order_id: Option<i64>,
    charge: Option<String>,
}

/// Ends a phase: its writes in `tx` commit together with the recovery point `step` and
/// everything `progress` holds.
async fn commit_phase<St: PgTransactional>(
    handle: &IdempotencyHandle<St>,
    tx: Transaction<'_>,
    progress: &mut Progress<Checkout>,
    step: &str,
) -> Result<(), Failure> {
    if handle.advance(&*tx, progress, step).await? != Finish::Done {
        // This request no longer owns the key (R11): the transaction rolls back on drop.
        return Err(Failure("the key was taken over".into()));
    }
    tx.commit().await?;
    Ok(())
}

/// The checkout: one atomic phase per arm, in order. Each phase takes a pooled
/// connection for its own short transaction only; the bank is called with none held.
async fn checkout<St: PgTransactional>(
    State(app): State<Payments>,
    ctx: IdempotencyContext<St>,
) -> Result<Response, Failure> {
    // `None` only for a request that runs unprotected (R15 fail-open); the route
    // requires a key (R3).
    let handle: &IdempotencyHandle<St> = ctx.handle().ok_or(Failure("no key".into()))?;
    let key = handle.key().as_str().to_owned();
    // deadpool's `Object` derefs to its `ClientWrapper`, which derefs to the
    // `tokio_postgres::Client` the store reads on: `&**client`.
    let mut progress: Progress<Checkout> = handle.progress(&**app.pool.get().await?).await?;
    loop {
        match progress.step() {
            // 1. The order.
            None => {
                let mut client = app.pool.get().await?;
                let tx = client.transaction().await?;
                let row = tx
                    .query_one(
                        &app.sql("INSERT INTO {s}.orders (key) VALUES ($1) RETURNING id"),
                        &[&key],
                    )
                    .await?;
                progress.data.order_id = Some(row.try_get(0)?);
                commit_phase(handle, tx, &mut progress, "order_created").await?;
                app.boundary(Boundary::OrderCreated);
            }
            // 2. The charge, at the bank, under a key derived from the request's: the
            //    call is made outside any transaction, then recorded in a short one.
            Some("order_created") => {
                let charge = app.charge(&handle.derived_key("charge")).await?;
                app.boundary(Boundary::ChargedNotRecorded);
                progress.data.charge = Some(charge);
                let mut client = app.pool.get().await?;
                let tx = client.transaction().await?;
                commit_phase(handle, tx, &mut progress, "charged").await?;
                app.boundary(Boundary::Charged);
            }
            // 3. The ledger entry for phase 1's order and phase 2's charge.
            Some("charged") => {
                let (order, charge) = ids(&progress.data)?;
                let mut client = app.pool.get().await?;
                let tx = client.transaction().await?;
                tx.execute(
                    &app.sql("INSERT INTO {s}.ledger (order_id, charge) VALUES ($1, $2)"),
                    &[&order, &charge],
                )
                .await?;
                commit_phase(handle, tx, &mut progress, "ledgered").await?;
                app.boundary(Boundary::Ledgered);
            }
            // 4. The receipt, and the idempotency record in the same transaction (R21).
            Some("ledgered") => {
                let (order, charge) = ids(&progress.data)?;
                let mut client = app.pool.get().await?;
                let tx = client.transaction().await?;
                tx.execute(
                    &app.sql("INSERT INTO {s}.receipts (order_id, charge) VALUES ($1, $2)"),
                    &[&order, &charge],
                )
                .await?;
                let response = http::Response::builder()
                    .status(StatusCode::CREATED)
                    .header("content-type", "application/json")
                    .body(Bytes::from(format!(
                        "{{\"receipt\":\"{key}\",\"order\":{order},\"charge\":\"{charge}\"}}"
                    )))?;
                if handle.complete_in(&*tx, &response).await? != Finish::Done {
                    return Err(Failure("the key was taken over".into()));
                }
                tx.commit().await?;
                app.boundary(Boundary::Completed);
                return Ok(response.map(Body::from));
            }
            Some(other) => return Err(Failure(format!("unknown step {other}"))),
        }
    }
}

/// The order and charge ids the first two phases kept.
fn ids(data: &Checkout) -> Result<(i64, &str), Failure> {
    match (data.order_id, data.charge.as_deref()) {
        (Some(order), Some(charge)) => Ok((order, charge)),
        _ => Err(Failure(format!("progress without its ids: {data:?}"))),
    }
}
