//! `idem keys get|list|delete`: on-call inspection of idempotency records ("I was charged
//! twice", "my request is stuck"), through a running proxy's admin API (`--admin URL
//! --token T`, `admin_api`) or straight at the store (`--store URL`, the same URLs as
//! `serve`, `direct`).
//!
//! Output is a human table ([`print`]), or with `--json` the admin API's JSON
//! ([`crate::admin::record_json`]). A record that does not exist is
//! [`NotFound`] (exit code 1); every other failure is one line and exit code 2.

mod admin_api;
mod command;
mod direct;
mod print;
mod query;

pub use command::run;
pub use query::NotFound;
