//! `idem serve`: an idempotency-key reverse proxy in front of any HTTP API.
//!
//! The proxy is the `idem` crate's [`IdempotencyLayer`](idem::IdempotencyLayer) in front
//! of a [`Forward`](forward::Forward) service on hyper, so the library and the
//! proxy share one engine path. Every `idem serve` setting is described once, in
//! [`settings`]; [`run()`] is what the `idem` binary runs, one function per subcommand.
//! This library half exists so tests (and embedders) can run the proxy in-process:
//!
//! ```no_run
//! use idem::MemoryStore;
//! use idem_proxy::config::ProxyConfig;
//!
//! # #[tokio::main] async fn main() -> anyhow::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let config = ProxyConfig::new("http://127.0.0.1:3000".parse()?);
//! idem_proxy::serve(listener, MemoryStore::new(), config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod check;
pub mod check_store;
pub mod cli;
pub mod config;
pub mod conformance;
mod conn;
pub mod demo;
pub mod docs;
pub mod file;
pub mod forward;
pub mod keys;
pub mod openapi;
mod pool;
pub mod routes;
pub mod run;
pub mod server;
pub mod settings;
#[cfg(feature = "otel")]
pub mod telemetry;
mod text;
mod throttle;
mod tls;
pub mod view;

pub use run::run;
pub use server::{Running, serve, spawn};
