//! Every response the engine makes itself: RFC 9457 problem documents (R17).
//!
//! Each [`ProblemKind`] has one row in one table: status, stable `type` URI and title.
//! Clients branch on `type`, never on the prose in `detail`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// The base of every problem `type` URI; the fragment names a section of
/// `docs/problems.md`, which explains the error to client developers.
/// A deployment can point them at its own copy of that text (`idem docs` prints one)
/// with [`Problem::with_type_base`]; the fragment stays the same.
pub const TYPE_BASE: &str = "https://github.com/idem-rs/idem/blob/main/docs/problems.md#";

/// The media type of problem documents.
pub const CONTENT_TYPE: &str = "application/problem+json";

macro_rules! problem_kinds {
    ($( $(#[$doc:meta])* $variant:ident => ($status:expr, $slug:literal, $title:literal), )*) => {
        /// The errors the engine answers itself, each with a stable `type`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ProblemKind {
            $( $(#[$doc])* $variant, )*
        }

        impl ProblemKind {
            /// Every kind, in table order.
            pub const ALL: &'static [ProblemKind] = &[$(ProblemKind::$variant),*];

            /// The default status of this kind.
            pub fn status(self) -> StatusCode {
                match self { $(ProblemKind::$variant => $status,)* }
            }

            /// The stable slug that ends the `type` URI.
            pub fn slug(self) -> &'static str {
                match self { $(ProblemKind::$variant => $slug,)* }
            }

            /// The short, stable human title.
            pub fn title(self) -> &'static str {
                match self { $(ProblemKind::$variant => $title,)* }
            }
        }
    };
}

problem_kinds! {
    /// The key header is repeated, empty, too long or malformed (R1).
    InvalidKey => (StatusCode::BAD_REQUEST, "invalid-key", "Invalid idempotency key"),
    /// The route requires a key and none was sent (R3).
    MissingKey => (StatusCode::BAD_REQUEST, "missing-key", "Idempotency key required"),
    /// The key was used before with a different request (R9).
    PayloadMismatch => (StatusCode::UNPROCESSABLE_ENTITY, "payload-mismatch", "Idempotency key reused with a different request"),
    /// A request with this key is still being processed (R10).
    InFlight => (StatusCode::CONFLICT, "in-flight", "A request with this idempotency key is in progress"),
    /// The request body exceeds the limit (R13).
    RequestTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request-too-large", "Request body too large"),
    /// The original response was not retained, so it cannot be replayed (R13, R19).
    NotRetained => (StatusCode::GONE, "response-not-retained", "Original response not retained"),
    /// The client did not send its request within the server's read timeout.
    RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request-timeout", "Request not received in time"),
    /// The request body could not be read.
    BadRequestBody => (StatusCode::BAD_REQUEST, "unreadable-body", "Request body could not be read"),
    /// The request could be read more than one way (an encoded `/`, a case variant of a
    /// covered method, a missing or repeated `Host`), so it is refused rather than guessed (R24).
    AmbiguousRequest => (StatusCode::BAD_REQUEST, "ambiguous-request", "Ambiguous request"),
    /// The method asks for something a reverse proxy does not do (`CONNECT`) (R24).
    UnsupportedMethod => (StatusCode::NOT_IMPLEMENTED, "unsupported-method", "Method not supported"),
    /// The idempotency store is unreachable or failing (R15).
    StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "store-unavailable", "Idempotency store unavailable"),
    /// The upstream refused or reset the connection (R12).
    UpstreamUnavailable => (StatusCode::BAD_GATEWAY, "upstream-unavailable", "Upstream unavailable"),
    /// The upstream did not answer in time (R12).
    UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream-timeout", "Upstream timed out"),
    /// A bug in idem itself.
    Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
}

impl ProblemKind {
    /// The full `type` URI.
    pub fn type_uri(self) -> String {
        format!("{TYPE_BASE}{}", self.slug())
    }

    /// The `type` URI under another base: `<base>#<slug>`. A trailing `#` on `base` is
    /// accepted, so `TYPE_BASE` itself gives [`type_uri`](Self::type_uri).
    pub fn type_uri_at(self, base: &str) -> String {
        format!("{}#{}", base.strip_suffix('#').unwrap_or(base), self.slug())
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slug())
    }
}

/// One problem response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What went wrong.
    pub kind: ProblemKind,
    /// The status sent (the kind's default unless configured, e.g. R9's 400).
    pub status: StatusCode,
    /// A human explanation.
    pub detail: String,
    /// The key, echoed when it parsed.
    pub key: Option<String>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// For [`ProblemKind::NotRetained`]: the status the original request got.
    pub original_status: Option<u16>,
    /// The base of the `type` URI when not [`TYPE_BASE`].
    pub type_base: Option<Arc<str>>,
}

impl Problem {
    /// A problem of `kind` with its default status.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            status: kind.status(),
            detail: detail.into(),
            key: None,
            retry_after: None,
            original_status: None,
            type_base: None,
        }
    }

    /// Renders the `type` URI as `<base>#<slug>` (`None`: [`TYPE_BASE`]).
    #[must_use]
    pub fn with_type_base(mut self, base: Option<Arc<str>>) -> Self {
        self.type_base = base;
        self
    }

    /// The `type` URI this problem is rendered with.
    pub fn type_uri(&self) -> String {
        match &self.type_base {
            Some(base) => self.kind.type_uri_at(base),
            None => self.kind.type_uri(),
        }
    }

    /// Echoes the key.
    #[must_use]
    pub fn with_key(mut self, key: impl fmt::Display) -> Self {
        self.key = Some(key.to_string());
        self
    }

    /// Overrides the status.
    #[must_use]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Adds `Retry-After`, rounded up to whole seconds (at least 1).
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.retry_after = Some(secs.max(1));
        self
    }

    /// The JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "type": self.type_uri(),
            "title": self.kind.title(),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(key) = &self.key {
            doc["idempotency_key"] = key.as_str().into();
        }
        if let Some(s) = self.original_status {
            doc["original_status"] = s.into();
        }
        doc
    }

    /// The full HTTP response.
    pub fn to_response(&self) -> Response<Bytes> {
        let body = Bytes::from(self.to_json().to_string());
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.kind.title(),
            self.status,
            self.detail
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // R17
    #[test]
    fn r17_types_are_distinct_and_stable() {
        let mut slugs: Vec<_> = ProblemKind::ALL.iter().map(|k| k.slug()).collect();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), ProblemKind::ALL.len());
        assert_ne!(
            ProblemKind::PayloadMismatch.type_uri(),
            ProblemKind::InFlight.type_uri()
        );
    }

    // R17
    #[test]
    fn r17_response_shape() {
        let p = Problem::new(ProblemKind::InFlight, "busy")
            .with_key("k1")
            .with_retry_after(Duration::from_millis(1500));
        let resp = p.to_response();
        assert_eq!(resp.status(), 409);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        let doc: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(doc["type"], ProblemKind::InFlight.type_uri());
        assert_eq!(doc["status"], 409);
        assert_eq!(doc["idempotency_key"], "k1");
    }

    // R17
    #[test]
    fn r17_type_base_is_configurable() {
        let p = Problem::new(ProblemKind::InFlight, "busy")
            .with_type_base(Some("https://api.example.com/idempotency".into()));
        let doc = p.to_json();
        assert_eq!(doc["type"], "https://api.example.com/idempotency#in-flight");
        assert_eq!(
            ProblemKind::InFlight.type_uri_at(TYPE_BASE),
            ProblemKind::InFlight.type_uri()
        );
    }
}
