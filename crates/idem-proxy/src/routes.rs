//! Per-route rules: which requests get which [`Policy`], and the tower service that
//! sends each request to the idempotency layer built for its rule.
//!
//! A pattern is `[METHODS ]PATH`: optional comma-separated methods, then a path whose
//! segments are literal text, `*` or `{name}` (exactly one segment), or a final `**`
//! (the rest of the path, zero or more segments). The query never counts.
//!
//! Requests are matched on their normalised path (R24, see [`view`](crate::view)): what
//! the upstream receives and routes on. On top of that, a rule matches the way the most
//! lenient common frameworks route, so no framework reaches a handler its rule misses:
//! literal segments compare without regard to ASCII case (Express, ASP.NET), a segment's
//! `;parameters` are ignored (Tomcat, Spring), and a trailing `/` never changes which rule
//! matches (Express, Rails). Methods are exact: case variants are refused at the door.
//!
//! ```
//! use http::Method;
//! use idem_proxy::routes::PathPattern;
//!
//! let p: PathPattern = "POST /v1/orders/{id}/refund".parse().unwrap();
//! assert!(p.matches(&Method::POST, "/v1/orders/42/refund"));
//! assert!(!p.matches(&Method::PATCH, "/v1/orders/42/refund"));
//! assert!(!p.matches(&Method::POST, "/v1/orders/42/refund/extra"));
//! let any: PathPattern = "/v1/payments/**".parse().unwrap();
//! assert!(any.matches(&Method::PUT, "/v1/payments/a/b"));
//! assert!(p.matches(&Method::POST, "/V1/Orders;jsessionid=1/42/refund/"));
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use http_body_util::BodyExt as _;
use idem::core::policy::Policy;
use idem::layer::Idempotency;
use idem::{Body, Store};
use tower::ServiceExt as _;
use tower_service::Service;

use crate::forward::Forward;

/// A request pattern: optional methods and a path pattern. See the [module docs](self).
#[derive(Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    methods: Vec<Method>,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

impl FromStr for PathPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let source = s.trim();
        let (methods, path) = match source.split_once(char::is_whitespace) {
            Some((m, p)) => (m, p.trim()),
            None => ("", source),
        };
        if !path.starts_with('/') {
            return Err(format!(
                "pattern `{source}`: the path must start with `/` (e.g. `POST /v1/payments/*`)"
            ));
        }
        let methods = methods
            .split(',')
            .filter(|m| !m.is_empty())
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("pattern `{source}`: `{m}` is not a method"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The literal text in the same normal form as request paths.
        let normal =
            crate::view::normalise_path(path).map_err(|e| format!("pattern `{source}`: {e}"))?;
        let parts: Vec<&str> = trim_trailing_slash(&normal[1..]).split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = match *part {
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => {
                    return Err(format!("pattern `{source}`: `**` may only end the path"));
                }
                "*" => Segment::One,
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => Segment::One,
                p if p.contains(['*', '{', '}']) => {
                    return Err(format!(
                        "pattern `{source}`: segment `{p}` mixes text with `*` or braces; \
                         use `*`, `{{name}}` or `**` as a whole segment"
                    ));
                }
                p => Segment::Literal(p.to_owned()),
            };
            segments.push(seg);
        }
        Ok(Self {
            source: source.to_owned(),
            methods,
            segments,
        })
    }
}

impl PathPattern {
    /// True when a request with this method and path matches.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = trim_trailing_slash(rest).split('/');
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::One => {
                    if parts.next().is_none_or(str::is_empty) {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    let Some(part) = parts.next() else {
                        return false;
                    };
                    let bare = part.split(';').next().unwrap_or(part);
                    if !part.eq_ignore_ascii_case(lit) && !bare.eq_ignore_ascii_case(lit) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// The methods the pattern names (empty: any).
    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// The path part, as written.
    pub fn path(&self) -> &str {
        self.source
            .split_once(char::is_whitespace)
            .map_or(self.source.as_str(), |(_, p)| p.trim())
    }
}

/// `a/b/` as `a/b`: a trailing slash does not change which rule matches.
fn trim_trailing_slash(rest: &str) -> &str {
    rest.strip_suffix('/').unwrap_or(rest)
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl fmt::Debug for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathPattern({:?})", self.source)
    }
}

/// One `[[route]]` rule.
#[derive(Clone, Debug)]
pub struct Route {
    /// Which requests it applies to.
    pub pattern: PathPattern,
    /// The engine settings for them; `None` passes them through untouched
    /// (`enabled = false`).
    pub policy: Option<Policy>,
    /// Where the rule was written, e.g. `idem.toml:12`.
    pub origin: String,
}

/// The first rule matching `method` and `path`, with its index: first match wins.
pub fn find<'a>(routes: &'a [Route], method: &Method, path: &str) -> Option<(usize, &'a Route)> {
    routes
        .iter()
        .enumerate()
        .find(|(_, r)| r.pattern.matches(method, path))
}

/// One line of a route table as the generated documents list it: a rule, or the
/// server-wide settings that requests matching no rule get.
#[derive(Clone, Copy, Debug)]
pub struct Summary<'a> {
    /// The rule; `None` for the server-wide settings, listed last.
    pub route: Option<&'a Route>,
    /// What requests matching it get; `None` for a rule that turns keys off.
    pub policy: Option<&'a Policy>,
}

/// Every rule, in order (first match wins), then the server-wide `policy`: what each
/// request takes, as `idem docs` and the OpenAPI document say.
pub fn summary<'a>(policy: &'a Policy, routes: &'a [Route]) -> impl Iterator<Item = Summary<'a>> {
    routes
        .iter()
        .map(|r| Summary {
            route: Some(r),
            policy: r.policy.as_ref(),
        })
        .chain(std::iter::once(Summary {
            route: None,
            policy: Some(policy),
        }))
}

/// Where a request goes.
#[derive(Clone)]
enum Target<St: Store> {
    Protected(Idempotency<Forward, St>),
    Pass(Forward),
}

/// Sends each request to the idempotency service built for its route (first matching
/// rule), to the upstream untouched for a disabled route, or to the server-wide
/// service. All share one store.
pub struct Dispatch<St: Store> {
    routes: Arc<[(PathPattern, Target<St>)]>,
    default: Idempotency<Forward, St>,
}

impl<St: Store> Clone for Dispatch<St> {
    fn clone(&self) -> Self {
        Self {
            routes: self.routes.clone(),
            default: self.default.clone(),
        }
    }
}

impl<St: Store> fmt::Debug for Dispatch<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatch")
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

impl<St: Store> Dispatch<St> {
    /// A dispatcher over `routes` (each with its service, `None` for pass-through), and
    /// `default` for requests no rule matches.
    pub fn new(
        routes: Vec<(PathPattern, Option<Idempotency<Forward, St>>)>,
        forward: Forward,
        default: Idempotency<Forward, St>,
    ) -> Self {
        let routes = routes
            .into_iter()
            .map(|(p, svc)| {
                let target = match svc {
                    Some(svc) => Target::Protected(svc),
                    None => Target::Pass(forward.clone()),
                };
                (p, target)
            })
            .collect();
        Self { routes, default }
    }
}

impl<St, B> Service<Request<B>> for Dispatch<St>
where
    St: Store,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<idem::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every target is a clone driven with `oneshot`, which polls it ready itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = req.method();
        let path = req.uri().path();
        let target = self
            .routes
            .iter()
            .find(|(p, _)| p.matches(method, path))
            .map(|(_, t)| t);
        match target {
            Some(Target::Protected(svc)) => {
                let call = svc.clone().oneshot(req);
                Box::pin(async move { call.await.map(crate::forward::reason_out) })
            }
            Some(Target::Pass(fwd)) => Box::pin(
                fwd.clone()
                    .oneshot(req.map(|b| Body::new(b.map_err(Into::into)))),
            ),
            None => {
                let call = self.default.clone().oneshot(req);
                Box::pin(async move { call.await.map(crate::forward::reason_out) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathPattern {
        s.parse().unwrap()
    }

    #[test]
    fn exact_one_and_rest() {
        assert!(p("/v1/charges").matches(&Method::POST, "/v1/charges"));
        assert!(!p("/v1/charges").matches(&Method::POST, "/v1/charges/1"));
        assert!(!p("/v1/charges").matches(&Method::POST, "/v1/charge"));
        assert!(p("POST /v1/payments/*").matches(&Method::POST, "/v1/payments/123"));
        assert!(!p("POST /v1/payments/*").matches(&Method::POST, "/v1/payments"));
        assert!(!p("POST /v1/payments/*").matches(&Method::POST, "/v1/payments/"));
        assert!(!p("POST /v1/payments/*").matches(&Method::POST, "/v1/payments/1/x"));
        assert!(!p("POST /v1/payments/*").matches(&Method::PATCH, "/v1/payments/1"));
        assert!(
            p("post,patch /v1/orders/{id}/refund").matches(&Method::PATCH, "/v1/orders/9/refund")
        );
        assert!(p("/v1/**").matches(&Method::GET, "/v1"));
        assert!(p("/v1/**").matches(&Method::GET, "/v1/a/b/c"));
        assert!(!p("/v1/**").matches(&Method::GET, "/v2/a"));
        assert!(p("/**").matches(&Method::GET, "/anything/at/all"));
        assert!(p("/").matches(&Method::GET, "/"));
        assert!(!p("/").matches(&Method::GET, "/a"));
    }

    // R24: a rule matches wherever a lenient framework would route the request to it.
    #[test]
    fn r24_matches_like_the_most_lenient_framework() {
        let pay = p("POST /v1/payments/*");
        for path in [
            "/v1/payments/1/",
            "/V1/PAYMENTS/1",
            "/v1/payments;jsessionid=x/1",
            "/v1/Payments;a=b/1/",
        ] {
            assert!(pay.matches(&Method::POST, path), "{path}");
        }
        for path in [
            "/v1/payments/",
            "/v1/payments",
            "/v1/paymentsx/1",
            "/v1/payments/1/2",
        ] {
            assert!(!pay.matches(&Method::POST, path), "{path}");
        }
        // Patterns are normalised like paths.
        assert!(p("/v1/%70ayments/./*").matches(&Method::POST, "/v1/payments/1"));
        assert!(p("/v1/payments/").matches(&Method::POST, "/v1/payments"));
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "v1/x", "/a/**/b", "/a/b*", "/a/{x", "P@ST /a", "/a%2Fb", "/a/..;/b",
        ] {
            assert!(bad.parse::<PathPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn first_match_wins() {
        let routes = vec![
            Route {
                pattern: p("POST /v1/payments/special"),
                policy: None,
                origin: "a".into(),
            },
            Route {
                pattern: p("/v1/payments/*"),
                policy: None,
                origin: "b".into(),
            },
        ];
        let found = find(&routes, &Method::POST, "/v1/payments/special").unwrap();
        assert_eq!(found.0, 0);
        let found = find(&routes, &Method::PATCH, "/v1/payments/special").unwrap();
        assert_eq!(found.0, 1);
        assert!(find(&routes, &Method::POST, "/v1/other").is_none());
    }
}
