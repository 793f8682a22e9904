//! CORS headers on idem's own answers and replays, so a browser client can read them.
//!
//! A page's `fetch()` reads a cross-origin response only when it carries
//! `Access-Control-Allow-Origin` for the page's origin, and reads a response header only
//! when `Access-Control-Expose-Headers` names it. The API behind idem sets these on its
//! own responses; idem's answers (409, 422, 503 …) and replays are made by idem, so it
//! sets them there for the origins an operator allows. Preflight requests (`OPTIONS`)
//! are not idem's: they reach the API, which answers them as it always did.

use std::fmt;
use std::str::FromStr;

use http::{HeaderMap, HeaderValue, header};

/// The headers idem adds to what a browser may read on its answers: the replay marker
/// (R8) and the wait before a retry (R10, R15).
pub const EXPOSED: &[&str] = &["Idempotent-Replayed", "Retry-After"];

/// The browser origins allowed to read idem's own answers and replays: none (the
/// default), a list of origins (`https://app.example.com`), or `*` for any.
///
/// An allowed request `Origin` is echoed in `Access-Control-Allow-Origin` (never `*`,
/// so requests with credentials work too); every answer of a configured list says
/// `Vary: Origin`.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use idem_core::cors::CorsOrigins;
///
/// let cors: CorsOrigins = "https://app.example.com".parse().unwrap();
/// let mut h = HeaderMap::new();
/// cors.apply(Some(&HeaderValue::from_static("https://app.example.com")), &mut h);
/// assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
/// assert_eq!(h["access-control-expose-headers"], "Idempotent-Replayed, Retry-After");
/// assert_eq!(h["vary"], "Origin");
///
/// assert!("app.example.com".parse::<CorsOrigins>().is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorsOrigins {
    any: bool,
    origins: Vec<String>,
}

impl CorsOrigins {
    /// The origins in `list`: each `*` or `scheme://host[:port]` (`http` or `https`, no
    /// path), compared without regard to case.
    ///
    /// # Errors
    ///
    /// The first entry that is not an origin, in one line.
    pub fn new<I, S>(list: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Self::default();
        for item in list {
            let item = item.as_ref().trim();
            if item == "*" {
                out.any = true;
                continue;
            }
            let lower = item.to_ascii_lowercase();
            let host = lower
                .strip_prefix("https://")
                .or_else(|| lower.strip_prefix("http://"));
            let ok = host.is_some_and(|h| {
                !h.is_empty()
                    && h.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                    })
            });
            if !ok {
                return Err(format!(
                    "`{item}` is not an origin like https://app.example.com (or `*`)"
                ));
            }
            out.origins.push(lower);
        }
        Ok(out)
    }

    /// Whether no origin is allowed (idem adds no CORS header).
    pub fn is_empty(&self) -> bool {
        !self.any && self.origins.is_empty()
    }

    /// Whether a request from `origin` may read idem's answers.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        self.any || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// Adds the CORS headers to `headers`, the head of an answer to a request from
    /// `origin`: `Vary: Origin` when any origin is configured; for an allowed origin,
    /// that origin in `Access-Control-Allow-Origin` and [`EXPOSED`] added to the
    /// `Access-Control-Expose-Headers` already there (a replay keeps what the API
    /// exposed).
    pub fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        add_vary_origin(headers);
        let Some(origin) = origin.filter(|o| self.allows(o)) else {
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        let mut exposed: Vec<String> = tokens(headers, &header::ACCESS_CONTROL_EXPOSE_HEADERS);
        if !exposed.iter().any(|t| t == "*") {
            for name in EXPOSED {
                if !exposed.iter().any(|t| t.eq_ignore_ascii_case(name)) {
                    exposed.push((*name).to_owned());
                }
            }
        }
        if let Ok(v) = HeaderValue::from_str(&exposed.join(", ")) {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}

/// The comma-separated tokens of every `name` line, trimmed, empty ones dropped.
fn tokens(headers: &HeaderMap, name: &header::HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(ToOwned::to_owned)
        .collect()
}

/// Adds `Origin` to `Vary`, unless it is there or `Vary` is `*`.
fn add_vary_origin(headers: &mut HeaderMap) {
    let mut vary = tokens(headers, &header::VARY);
    if vary
        .iter()
        .any(|t| t == "*" || t.eq_ignore_ascii_case("origin"))
    {
        return;
    }
    vary.push("Origin".to_owned());
    if let Ok(v) = HeaderValue::from_str(&vary.join(", ")) {
        headers.insert(header::VARY, v);
    }
}

impl FromStr for CorsOrigins {
    type Err = String;

    /// A comma-separated list, as [`CorsOrigins::new`] takes.
    fn from_str(s: &str) -> Result<Self, String> {
        Self::new(s.split(',').filter(|i| !i.trim().is_empty()))
    }
}

impl fmt::Display for CorsOrigins {
    /// The list as [`FromStr`] reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<&str> = self.origins.iter().map(String::as_str).collect();
        if self.any {
            items.insert(0, "*");
        }
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn nothing_is_added_without_origins() {
        let mut h = HeaderMap::new();
        CorsOrigins::default().apply(Some(&origin("https://a.example")), &mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn an_allowed_origin_is_echoed_and_the_markers_exposed() {
        let cors = CorsOrigins::new(["https://A.example", "http://127.0.0.1:8000"]).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::VARY, origin("Accept-Encoding"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            origin("X-Request-Id"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            origin("https://other.example"),
        );
        cors.apply(Some(&origin("http://127.0.0.1:8000")), &mut h);
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            h[header::ACCESS_CONTROL_EXPOSE_HEADERS],
            "X-Request-Id, Idempotent-Replayed, Retry-After"
        );
        assert_eq!(h[header::VARY], "Accept-Encoding, Origin");
        // Applying twice changes nothing.
        let before = h.clone();
        cors.apply(Some(&origin("http://127.0.0.1:8000")), &mut h);
        assert_eq!(h, before);
        // Case does not matter.
        assert!(cors.allows(&origin("https://a.example")));
    }

    #[test]
    fn another_origin_gets_only_vary() {
        let cors: CorsOrigins = "https://a.example".parse().unwrap();
        for o in [Some(origin("https://evil.example")), None] {
            let mut h = HeaderMap::new();
            cors.apply(o.as_ref(), &mut h);
            assert_eq!(h.len(), 1, "{h:?}");
            assert_eq!(h[header::VARY], "Origin");
        }
        let any: CorsOrigins = "*".parse().unwrap();
        let mut h = HeaderMap::new();
        any.apply(Some(&origin("https://evil.example")), &mut h);
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://evil.example"
        );
    }

    #[test]
    fn origins_parse_and_show() {
        for bad in [
            "a.example",
            "https://",
            "ftp://a.example",
            "https://a.example/x",
            "null",
        ] {
            assert!(bad.parse::<CorsOrigins>().is_err(), "{bad}");
        }
        let cors: CorsOrigins = "*, https://a.example:8443".parse().unwrap();
        assert_eq!(cors.to_string(), "*,https://a.example:8443");
        assert_eq!(cors.to_string().parse::<CorsOrigins>(), Ok(cors));
    }
}
