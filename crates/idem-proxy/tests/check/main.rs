//! The operator tools against real endpoints: `idem check URL` (the binary) against
//! `idem serve` on each store, against a plain hop with no idempotency, and against
//! endpoints with planted defects, each reported by the check of its rule and nothing
//! else ([`conformance`]); `idem docs` OpenAPI output checked by a validator
//! ([`openapi`]).
//!
//! Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (user postgres,
//! database test), and python3 to install the OpenAPI validator
//! (scripts/openapi-validate.sh); unreachable services fail the tests.

#[path = "../common/mod.rs"]
mod common;

mod broken;
mod conformance;
mod openapi;
