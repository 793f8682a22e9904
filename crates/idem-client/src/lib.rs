//! A [`reqwest-middleware`](reqwest_middleware) middleware for calling an API protected by
//! idempotency keys (such as one behind `idem serve`): every logical write gets a fresh
//! `Idempotency-Key`, and every retry of it the same key, so a retry after a timeout, a
//! reset connection or a 5xx can never run the operation twice.
//!
//! ```no_run
//! use idem_client::IdempotencyMiddleware;
//! use reqwest_middleware::ClientBuilder;
//!
//! # async fn charge() -> Result<(), reqwest_middleware::Error> {
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(IdempotencyMiddleware::new())
//!     .build();
//! // One charge: one key, sent again with every retry until an answer that is final.
//! let resp = client
//!     .post("http://127.0.0.1:8080/charges")
//!     .body(r#"{"amount": 100}"#)
//!     .send()
//!     .await?;
//! // A retry that found the charge already done gets its stored answer, marked so.
//! let replayed = resp.headers().contains_key("idempotent-replayed");
//! println!("{} (replayed: {replayed})", resp.status());
//! # Ok(())
//! # }
//! ```
//!
//! # What is retried
//!
//! Covered methods (POST and PATCH by default) are retried, with the same key, on
//! connection errors (refused, reset, closed before the answer), timeouts, 409 (idem:
//! the first request with this key is still running) and 5xx (idem: 502/504 the API
//! failed and the key was released; 503 idem's store is down), with exponential backoff
//! and full jitter ([`Backoff`]) or the server's `Retry-After` (delta-seconds or
//! HTTP-date, at most the backoff cap). Success, 422 (the key was already used with
//! another payload) and other 4xx are final and returned at once. When the attempts run
//! out the last answer or error is returned.
//!
//! A key the caller set is kept; a body that cannot be cloned (a stream) is sent once.
//! Other methods pass through untouched unless [`IdempotencyMiddlewareBuilder::methods`] covers them.
//!
//! # Feature flags
//!
//! - `native-tls` (default): HTTPS through the platform's TLS library (OpenSSL on Linux),
//!   reqwest's `native-tls`.
//! - `rustls-tls`: HTTPS through rustls, reqwest's `rustls`.
//!
//! Without either, plain `http://` only. The middleware itself does not depend on the
//! choice; the features only switch reqwest's.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod middleware;

pub use backoff::Backoff;
pub use middleware::{
    IDEMPOTENCY_KEY, IdempotencyMiddleware, IdempotencyMiddlewareBuilder, Retry, RetryReason,
};
pub use reqwest_middleware;
