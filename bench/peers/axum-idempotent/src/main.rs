//! Forwards every request to `UPSTREAM` (host:port) behind axum-idempotent, which keeps the
//! responses in ruts' PostgresStore at `DATABASE_URL`, keyed by the `Idempotency-Key`
//! header. axum-idempotent caches only for a request carrying a session, so clients send
//! `Cookie: session=<22 base64url characters>`.
use axum::{
    Router, body::Body, extract::Request, extract::State, http::StatusCode, response::Response,
};
use axum_idempotent::{IdempotentLayer, IdempotentOptions};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use ruts::store::postgres::{PostgresStore, PostgresStoreBuilder};
use ruts::{CookieOptions, SessionLayer};
use std::{env, sync::Arc};

type Upstream = (Client<HttpConnector, Body>, String);

async fn forward(
    State(upstream): State<Arc<Upstream>>,
    mut req: Request,
) -> Result<Response, StatusCode> {
    let (client, up) = &*upstream;
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = format!("http://{up}{target}")
        .parse()
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    let res = client
        .request(req)
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?;
    Ok(res.map(Body::new))
}

#[tokio::main]
async fn main() {
    let var = |k: &str| env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let pool_size = env::var("PG_POOL").map_or(16, |n| n.parse().expect("PG_POOL"));
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(pool_size);
    let pool = pool
        .connect(&var("DATABASE_URL"))
        .await
        .expect("connect to PostgreSQL");
    let store = PostgresStoreBuilder::new(pool)
        .create_table(true)
        .schema_name("axum_idempotent_peer")
        .unwrap();
    let store = Arc::new(store.build().await.expect("ruts PostgresStore"));
    let options = IdempotentOptions::default()
        .use_idempotency_key_header(Some("Idempotency-Key"), true)
        .expire_after(900);
    let client = Client::builder(TokioExecutor::new()).build_http();
    let app = Router::new()
        .fallback(forward)
        .with_state(Arc::new((client, var("UPSTREAM"))))
        .layer(IdempotentLayer::<PostgresStore>::new(options))
        .layer(SessionLayer::new(store).with_cookie_options(CookieOptions::build().name("session")))
        .layer(tower_cookies::CookieManagerLayer::new());
    let listener = tokio::net::TcpListener::bind(var("LISTEN"))
        .await
        .expect("bind LISTEN");
    axum::serve(listener, app).await.unwrap();
}
