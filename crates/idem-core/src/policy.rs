//! Every setting of the engine, with the contract's defaults, validated once.
//!
//! The proxy's CLI and the library's layer builder both produce a [`Policy`]: one source
//! of defaults.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

use crate::cors::CorsOrigins;
use crate::fingerprint::FingerprintMode;
use crate::headers;
use crate::key::DEFAULT_MAX_KEY_LEN;
use crate::problem::{Problem, ProblemTemplates, Problems};
use crate::record::{NotRetained, ReasonPhrase, Snapshot, SnapshotBody};
use crate::scope::ScopeSource;

/// What a duplicate gets while the first request is still running (R10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConcurrent {
    /// 409 with `Retry-After` at once (the default).
    Conflict,
    /// Hold the duplicate until the first completes, then replay; 409 after `timeout`.
    Wait {
        /// How long a duplicate waits at most.
        timeout: Duration,
    },
}

/// What happens when the store cannot be reached (R15).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreFailure {
    /// 503 with `Retry-After`; the upstream is not called (the default).
    #[default]
    FailClosed,
    /// Forward unprotected and count it.
    FailOpen,
}

/// What a keyed request that carries none of the scope headers gets (R4).
///
/// Such a request is *unscoped*: storing it under a scope shared with every other
/// anonymous caller would let one receive another's response, so it never is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unscoped {
    /// 400 with the `unscoped-request` problem; the upstream is not called (the
    /// default).
    #[default]
    Refuse,
    /// Forwarded unprotected, as if it had no key, and counted.
    Pass,
}

impl FromStr for Unscoped {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "refuse" => Ok(Self::Refuse),
            "pass" => Ok(Self::Pass),
            other => Err(format!("`{other}` is not `refuse` or `pass`")),
        }
    }
}

impl fmt::Display for Unscoped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Refuse => "refuse",
            Self::Pass => "pass",
        })
    }
}

/// Parses a byte size as settings and store URLs write it: `1024`, `64KiB`, `1MiB`,
/// `10MB`, `1k`; the error says why, in one line.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 1048576 or 1MiB"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "`{s}`: unknown size unit (use B, KiB, MiB, GiB, kB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Where a request's key is read (R23).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum KeySource {
    /// The key header, [`Policy::header`] (R1, the default): `header`.
    #[default]
    Header,
    /// Another request header, e.g. a webhook sender's delivery id:
    /// `header:X-GitHub-Delivery`.
    NamedHeader(HeaderName),
    /// A JSON pointer (RFC 6901) into a JSON request body, for clients that cannot set
    /// headers: `json:/request_id`. A string is the key as it is; an integer, its
    /// decimal text.
    JsonPointer(String),
}

impl FromStr for KeySource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "header" {
            return Ok(Self::Header);
        }
        if let Some(name) = s.strip_prefix("header:") {
            return HeaderName::from_bytes(name.trim().as_bytes())
                .map(Self::NamedHeader)
                .map_err(|_| format!("`{name}` is not a header name"));
        }
        if let Some(pointer) = s.strip_prefix("json:") {
            let escapes_ok = pointer
                .split('~')
                .skip(1)
                .all(|rest| rest.starts_with('0') || rest.starts_with('1'));
            if !pointer.starts_with('/') || !escapes_ok {
                return Err(format!(
                    "`{pointer}` is not a JSON pointer to a member (RFC 6901: `/request_id`, \
                     `/data/id`; `~0` and `~1` escape `~` and `/`)"
                ));
            }
            return Ok(Self::JsonPointer(pointer.to_owned()));
        }
        Err(format!(
            "`{s}` is not `header`, `header:NAME` or `json:/POINTER`"
        ))
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header => f.write_str("header"),
            Self::NamedHeader(name) => write!(f, "header:{name}"),
            Self::JsonPointer(pointer) => write!(f, "json:{pointer}"),
        }
    }
}

/// What becomes of a key when the upstream failed after the request may have reached
/// it (R12, R22).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AmbiguousFailure {
    /// Release the key: a retry runs the operation again (R12, the default).
    #[default]
    Release,
    /// Hold it: the record keeps an *outcome unknown* state until its TTL ends or an
    /// operator deletes it; retries get the `outcome-unknown` problem, never a re-run
    /// (R22, at most once).
    Hold,
}

impl FromStr for AmbiguousFailure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "release" => Ok(Self::Release),
            "hold" => Ok(Self::Hold),
            other => Err(format!("`{other}` is not `release` or `hold`")),
        }
    }
}

impl fmt::Display for AmbiguousFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Release => "release",
            Self::Hold => "hold",
        })
    }
}

/// A set of HTTP status codes, e.g. the cacheable ones (R7).
///
/// Parsed from a comma list of codes and classes, with `!` removing:
/// `"2xx,3xx,4xx,!408,!409,!425,!429"` (the default).
#[derive(Clone, PartialEq, Eq)]
pub struct StatusSet([u64; 16]);

impl StatusSet {
    /// No status.
    pub const fn empty() -> Self {
        Self([0; 16])
    }

    /// Adds a status (100–999).
    pub fn insert(&mut self, code: u16) {
        if code < 1024 {
            self.0[usize::from(code / 64)] |= 1 << (code % 64);
        }
    }

    /// Removes a status.
    pub fn remove(&mut self, code: u16) {
        if code < 1024 {
            self.0[usize::from(code / 64)] &= !(1 << (code % 64));
        }
    }

    /// True when `status` is in the set.
    pub fn contains(&self, status: StatusCode) -> bool {
        let code = status.as_u16();
        code < 1024 && self.0[usize::from(code / 64)] & (1 << (code % 64)) != 0
    }
}

impl Default for StatusSet {
    fn default() -> Self {
        // Infallible: a constant, tested below.
        "2xx,3xx,4xx,!408,!409,!425,!429"
            .parse()
            .unwrap_or_else(|_| Self::empty())
    }
}

impl FromStr for StatusSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = Self::empty();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (remove, item) = match item.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, item),
            };
            let codes: Vec<u16> =
                if let Some(class) = item.strip_suffix("xx").or_else(|| item.strip_suffix("XX")) {
                    match class.parse::<u16>() {
                        Ok(c @ 1..=5) => (c * 100..c * 100 + 100).collect(),
                        _ => return Err(format!("`{item}` is not a status class (1xx to 5xx)")),
                    }
                } else {
                    match item.parse::<u16>() {
                        Ok(c @ 100..=599) => vec![c],
                        _ => return Err(format!("`{item}` is not a status code (100 to 599)")),
                    }
                };
            for c in codes {
                if remove {
                    set.remove(c);
                } else {
                    set.insert(c);
                }
            }
        }
        Ok(set)
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codes: Vec<u16> = (100..600)
            .filter(|c| StatusCode::from_u16(*c).is_ok_and(|s| self.contains(s)))
            .collect();
        f.debug_tuple("StatusSet").field(&codes).finish()
    }
}

/// A setting that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value is out of range or inconsistent with another.
    #[error("invalid setting `{name}`: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

fn invalid(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: reason.into(),
    }
}

/// The engine's settings. Build one with [`Policy::builder`], or take the defaults.
#[derive(Clone, Debug)]
pub struct Policy {
    pub(crate) header: HeaderName,
    pub(crate) key_source: KeySource,
    pub(crate) max_key_len: usize,
    pub(crate) methods: Vec<Method>,
    pub(crate) require_key: bool,
    pub(crate) scope: ScopeSource,
    pub(crate) unscoped: Unscoped,
    pub(crate) store_set_cookie: bool,
    pub(crate) fingerprint: FingerprintMode,
    pub(crate) significant_headers: Vec<HeaderName>,
    pub(crate) lease: Duration,
    pub(crate) ttl: Duration,
    pub(crate) on_concurrent: OnConcurrent,
    pub(crate) wait_poll: Duration,
    pub(crate) cacheable: StatusSet,
    pub(crate) mismatch_status: StatusCode,
    pub(crate) max_request_body: usize,
    pub(crate) max_stored_body: usize,
    pub(crate) store_failure: StoreFailure,
    pub(crate) on_ambiguous_failure: AmbiguousFailure,
    pub(crate) deny_headers: Vec<HeaderName>,
    pub(crate) streaming_types: Vec<String>,
    pub(crate) completion_attempts: u32,
    pub(crate) problems: Problems,
    pub(crate) retry_after_max: Duration,
    pub(crate) cors_origins: CorsOrigins,
    pub(crate) cors_credentials: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            header: HeaderName::from_static("idempotency-key"),
            key_source: KeySource::Header,
            max_key_len: DEFAULT_MAX_KEY_LEN,
            methods: vec![Method::POST, Method::PATCH],
            require_key: false,
            scope: ScopeSource::default(),
            unscoped: Unscoped::Refuse,
            store_set_cookie: false,
            fingerprint: FingerprintMode::Raw,
            significant_headers: Vec::new(),
            lease: Duration::from_secs(60),
            ttl: Duration::from_secs(24 * 3600),
            on_concurrent: OnConcurrent::Conflict,
            // Waiters are woken by the store's notifications (and all of them after a
            // reconnect, when messages may have been lost) and when the owner's lease
            // ends; the poll is only the last resort, so it can be rare: 1000 waiters
            // cost 200 store round trips a second, not 1000.
            wait_poll: Duration::from_secs(5),
            cacheable: StatusSet::default(),
            mismatch_status: StatusCode::UNPROCESSABLE_ENTITY,
            max_request_body: 1 << 20,
            max_stored_body: 1 << 20,
            store_failure: StoreFailure::FailClosed,
            on_ambiguous_failure: AmbiguousFailure::Release,
            deny_headers: Vec::new(),
            streaming_types: vec!["text/event-stream".to_owned()],
            completion_attempts: 3,
            problems: Problems::default(),
            retry_after_max: Duration::from_secs(10),
            cors_origins: CorsOrigins::default(),
            cors_credentials: false,
        }
    }
}

impl Policy {
    /// A builder starting from the defaults.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::with_target(())
    }

    /// A builder starting from this policy.
    pub fn to_builder(&self) -> PolicyBuilder {
        Policy::builder().policy(self.clone())
    }

    /// The key header's name (R1).
    pub fn header(&self) -> &HeaderName {
        &self.header
    }
    /// Where the key is read (R23).
    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }
    /// The longest key accepted (R1).
    pub fn max_key_len(&self) -> usize {
        self.max_key_len
    }
    /// Covered methods (R2).
    pub fn methods(&self) -> &[Method] {
        &self.methods
    }
    /// Whether covered requests must carry a key (R3).
    pub fn require_key(&self) -> bool {
        self.require_key
    }
    /// How the scope is computed (R4).
    pub fn scope(&self) -> &ScopeSource {
        &self.scope
    }
    /// This policy with another scope source (R4): a scope needs no checking against
    /// the other settings.
    #[must_use]
    pub fn with_scope(mut self, scope: ScopeSource) -> Self {
        self.scope = scope;
        self
    }
    /// What a keyed request without the scope headers gets (R4).
    pub fn unscoped(&self) -> Unscoped {
        self.unscoped
    }
    /// Whether, under one shared scope, a response setting a cookie is stored for
    /// replay (R4; off by default).
    pub fn store_set_cookie(&self) -> bool {
        self.store_set_cookie
    }
    /// How bodies are fingerprinted (R5).
    pub fn fingerprint(&self) -> FingerprintMode {
        self.fingerprint
    }
    /// Headers that count in the fingerprint (R5).
    pub fn significant_headers(&self) -> &[HeaderName] {
        &self.significant_headers
    }
    /// The in-flight lease (R6, R11).
    pub fn lease(&self) -> Duration {
        self.lease
    }
    /// How long a completed record lives (R14).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
    /// What a concurrent duplicate gets (R10).
    pub fn on_concurrent(&self) -> OnConcurrent {
        self.on_concurrent
    }
    /// How often a waiting duplicate re-checks the store when no notification arrives.
    pub fn wait_poll(&self) -> Duration {
        self.wait_poll
    }
    /// Which responses are stored (R7).
    pub fn cacheable(&self) -> &StatusSet {
        &self.cacheable
    }
    /// The status of a payload mismatch (R9).
    pub fn mismatch_status(&self) -> StatusCode {
        self.mismatch_status
    }
    /// The largest request body accepted (R13).
    pub fn max_request_body(&self) -> usize {
        self.max_request_body
    }
    /// The largest response body stored (R13).
    pub fn max_stored_body(&self) -> usize {
        self.max_stored_body
    }
    /// What happens when the store fails (R15).
    pub fn store_failure(&self) -> StoreFailure {
        self.store_failure
    }
    /// What becomes of a key whose request may have reached a failing upstream (R22).
    pub fn on_ambiguous_failure(&self) -> AmbiguousFailure {
        self.on_ambiguous_failure
    }
    /// Headers never stored, beyond the hop-by-hop ones (R19).
    pub fn deny_headers(&self) -> &[HeaderName] {
        &self.deny_headers
    }
    /// Media types that stream through unbuffered (R19).
    pub fn streaming_types(&self) -> &[String] {
        &self.streaming_types
    }
    /// The base of problem `type` URIs, `<base>#<slug>` (R17); `None` is
    /// [`TYPE_BASE`](crate::problem::TYPE_BASE).
    pub fn problem_base(&self) -> Option<&Arc<str>> {
        self.problems.base()
    }
    /// How problems are rendered: under [`problem_base`](Self::problem_base) (R17).
    pub fn problems(&self) -> &Problems {
        &self.problems
    }
    /// The longest `Retry-After` a duplicate in progress is told (R10).
    pub fn retry_after_max(&self) -> Duration {
        self.retry_after_max
    }
    /// The browser origins that may read idem's own answers and replays (CORS).
    pub fn cors_origins(&self) -> &CorsOrigins {
        &self.cors_origins
    }
    /// Whether idem's answers tell an allowed origin that it may read them from a
    /// request made with credentials (`Access-Control-Allow-Credentials: true`).
    pub fn cors_credentials(&self) -> bool {
        self.cors_credentials
    }
    /// Adds to `headers`, the head of an answer of idem's own or of a replay to a
    /// request from `origin`, the CORS headers that let a browser there read it:
    /// [`CorsOrigins::apply`], and `Access-Control-Allow-Credentials` for an allowed
    /// origin when [`cors_credentials`](Self::cors_credentials) is on.
    pub fn cors(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        self.cors_origins.apply(origin, headers);
        if self.cors_credentials && origin.is_some_and(|o| self.cors_origins.allows(o)) {
            headers.insert(
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    /// Renders `problem`, an answer of idem's own, as every one is rendered: under the
    /// [`problems`](Self::problems) shape and base (R17), with the CORS headers that
    /// let a browser at `origin` read it.
    pub fn answer(&self, origin: Option<&HeaderValue>, problem: &Problem) -> Response<Bytes> {
        let mut resp = self.problems.render(problem);
        self.cors(origin, resp.headers_mut());
        resp
    }
    /// How many times a failing completion write is tried (R7).
    pub fn completion_attempts(&self) -> u32 {
        self.completion_attempts
    }
    /// What is stored for a response about to reach the client (R7, R19): its status,
    /// its storable headers and its body, or why the body is not retained. Under one
    /// shared scope a response that sets a cookie is not kept for replay unless
    /// [`store_set_cookie`](PolicyBuilder::store_set_cookie) is on (R4): its cookie
    /// would reach every other caller.
    pub fn snapshot(
        &self,
        status: StatusCode,
        response_headers: &http::HeaderMap,
        extensions: &http::Extensions,
        body: Result<Bytes, NotRetained>,
    ) -> Snapshot {
        let mut headers = headers::storable(response_headers, &self.deny_headers);
        let body = if self.scope.is_shared()
            && !self.store_set_cookie
            && headers.contains_key(http::header::SET_COOKIE)
        {
            headers.remove(http::header::SET_COOKIE);
            Err(NotRetained::SetCookie)
        } else {
            body
        };
        Snapshot {
            status,
            reason: extensions.get::<ReasonPhrase>().cloned(),
            headers,
            body: match body {
                Ok(b) => SnapshotBody::Full(b),
                Err(reason) => SnapshotBody::NotRetained(reason),
            },
        }
    }
    /// How often renewal runs while the upstream works: a third of the lease.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }
}

/// What a [`PolicyBuilder`] makes from its policy once the settings check out.
///
/// `()` makes the [`Policy`] itself ([`Policy::builder`]); the `idem` crate's layer
/// builder makes a layer over a store, so the one list of settings below configures
/// both.
pub trait BuildTarget {
    /// What [`PolicyBuilder::build`] answers.
    type Output;

    /// Makes it from the checked policy.
    fn make(self, policy: Policy) -> Self::Output;
}

impl BuildTarget for () {
    type Output = Policy;

    fn make(self, policy: Policy) -> Policy {
        policy
    }
}

/// Builds a validated [`Policy`], or whatever its target `T` makes of one (see
/// [`BuildTarget`]). Each method replaces one setting; the defaults are the contract's,
/// and [`build`](Self::build) checks them all once, answering a [`ConfigError`] instead
/// of panicking.
#[derive(Clone)]
#[must_use]
pub struct PolicyBuilder<T = ()> {
    policy: Policy,
    target: T,
}

impl<T> fmt::Debug for PolicyBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyBuilder")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<T> PolicyBuilder<T> {
    /// A builder for `target`, starting from the default policy.
    pub fn with_target(target: T) -> Self {
        Self {
            policy: Policy::default(),
            target,
        }
    }

    /// Starts over from `policy`: replaces every setting made so far.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
    /// The key header's name (R1; default `Idempotency-Key`).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.policy.header = name;
        self
    }
    /// Where the key is read (R23; default the key header).
    pub fn key_source(mut self, source: KeySource) -> Self {
        self.policy.key_source = source;
        self
    }
    /// The longest key accepted (R1; default 255, at least 1).
    pub fn max_key_len(mut self, n: usize) -> Self {
        self.policy.max_key_len = n;
        self
    }
    /// Covered methods (R2; default POST and PATCH; at least one).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.policy.methods = methods.into_iter().collect();
        self
    }
    /// Require a key on covered requests (R3; default false): without one they are
    /// 400.
    pub fn require_key(mut self, yes: bool) -> Self {
        self.policy.require_key = yes;
        self
    }
    /// How the scope is computed (R4; default: the `Authorization` header, unkeyed).
    pub fn scope(mut self, scope: ScopeSource) -> Self {
        self.policy.scope = scope;
        self
    }
    /// What a keyed request without any scope header gets (R4; default refused).
    pub fn unscoped(mut self, mode: Unscoped) -> Self {
        self.policy.unscoped = mode;
        self
    }
    /// Under one shared scope ([`ScopeSource::none`]), store responses that set a
    /// cookie for replay to every caller (R4; default false: they replay as 410
    /// `response-not-retained`). Has no effect when callers are scoped.
    pub fn store_set_cookie(mut self, yes: bool) -> Self {
        self.policy.store_set_cookie = yes;
        self
    }
    /// How bodies are fingerprinted (R5; default raw).
    pub fn fingerprint(mut self, mode: FingerprintMode) -> Self {
        self.policy.fingerprint = mode;
        self
    }
    /// Headers that count in the fingerprint (R5; default none).
    pub fn significant_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.policy.significant_headers = names.into_iter().collect();
        self
    }
    /// The in-flight lease (R6, R11; default 60 s, at least 30 ms).
    pub fn lease(mut self, d: Duration) -> Self {
        self.policy.lease = d;
        self
    }
    /// How long a completed record lives (R14; default 24 h, at least 1 s).
    pub fn ttl(mut self, d: Duration) -> Self {
        self.policy.ttl = d;
        self
    }
    /// What a concurrent duplicate gets (R10; default 409; a wait timeout is more than
    /// zero).
    pub fn on_concurrent(mut self, mode: OnConcurrent) -> Self {
        self.policy.on_concurrent = mode;
        self
    }
    /// The fallback re-check interval of waiting duplicates (R10; default 5 s, at
    /// least 10 ms).
    pub fn wait_poll(mut self, d: Duration) -> Self {
        self.policy.wait_poll = d;
        self
    }
    /// Which responses are stored (R7; default `2xx,3xx,4xx,!408,!409,!425,!429`).
    pub fn cacheable(mut self, set: StatusSet) -> Self {
        self.policy.cacheable = set;
        self
    }
    /// The status of a payload mismatch (R9): 422 (default) or 400. Not 409, which
    /// tells a client its request is still in progress (R10).
    pub fn mismatch_status(mut self, status: StatusCode) -> Self {
        self.policy.mismatch_status = status;
        self
    }
    /// The largest request body accepted (R13; default 1 MiB).
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.policy.max_request_body = bytes;
        self
    }
    /// The largest response body stored (R13; default 1 MiB, below 4 GiB).
    pub fn max_stored_body(mut self, bytes: usize) -> Self {
        self.policy.max_stored_body = bytes;
        self
    }
    /// What happens when the store fails (R15; default fail-closed).
    pub fn store_failure(mut self, mode: StoreFailure) -> Self {
        self.policy.store_failure = mode;
        self
    }
    /// What becomes of a key when the upstream failed after the request may have
    /// reached it (R22; default release, as R12). `Hold` makes the route at most once:
    /// recommended for payments.
    pub fn on_ambiguous_failure(mut self, mode: AmbiguousFailure) -> Self {
        self.policy.on_ambiguous_failure = mode;
        self
    }
    /// Headers never stored, beyond the hop-by-hop ones (R19; default none).
    pub fn deny_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.policy.deny_headers = names.into_iter().collect();
        self
    }
    /// Media types that stream through unbuffered (R19; default `text/event-stream`).
    pub fn streaming_types(mut self, types: impl IntoIterator<Item = String>) -> Self {
        self.policy.streaming_types = types.into_iter().collect();
        self
    }
    /// The base of problem `type` URIs: they become `<base>#<slug>` (R17; default
    /// [`TYPE_BASE`](crate::problem::TYPE_BASE); a URI without spaces or fragment). Point
    /// it at the page where you publish `idem docs` output.
    pub fn problem_base(mut self, base: impl Into<String>) -> Self {
        let base = base.into();
        let base = base.strip_suffix('#').unwrap_or(&base);
        self.policy.problems = std::mem::take(&mut self.policy.problems).under(Some(base.into()));
        self
    }
    /// Answers idem's own errors in the API's own shape (R17; default: RFC 9457
    /// documents): a template per problem kind, see [`ProblemTemplates`].
    pub fn problem_templates(mut self, templates: ProblemTemplates) -> Self {
        self.policy.problems = std::mem::take(&mut self.policy.problems).shaped(templates);
        self
    }
    /// The longest `Retry-After` a duplicate in progress is told (R10; default 10 s, at
    /// least 1 s). The hint is how long this route's requests recently held their key,
    /// at least 1 s and never more than the owner's remaining lease or this.
    pub fn retry_after_max(mut self, d: Duration) -> Self {
        self.policy.retry_after_max = d;
        self
    }
    /// The browser origins that may read idem's own answers and replays (CORS; default
    /// none). See [`CorsOrigins`].
    pub fn cors_origins(mut self, origins: CorsOrigins) -> Self {
        self.policy.cors_origins = origins;
        self
    }
    /// Whether idem's answers and replays allow an allowed origin to read them from a
    /// request made with credentials (default off). See [`Policy::cors`].
    pub fn cors_credentials(mut self, yes: bool) -> Self {
        self.policy.cors_credentials = yes;
        self
    }
    /// How many times a failing completion write is tried (R7; default 3, at least 1).
    pub fn completion_attempts(mut self, n: u32) -> Self {
        self.policy.completion_attempts = n;
        self
    }

    /// The settings as set so far, before [`build`](Self::build) checks them.
    pub fn peek(&self) -> &Policy {
        &self.policy
    }

    /// Checks the settings against each other and makes the target of the policy.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first setting out of range.
    pub fn build(self) -> Result<T::Output, ConfigError>
    where
        T: BuildTarget,
    {
        let p = self.policy;
        if p.max_key_len == 0 {
            return Err(invalid("max_key_len", "must be at least 1"));
        }
        if p.methods.is_empty() {
            return Err(invalid("methods", "at least one method must be covered"));
        }
        if p.lease < Duration::from_millis(30) {
            return Err(invalid("lease", "must be at least 30ms"));
        }
        if p.ttl < Duration::from_secs(1) {
            return Err(invalid("ttl", "must be at least 1s"));
        }
        if let OnConcurrent::Wait { timeout } = p.on_concurrent
            && timeout.is_zero()
        {
            return Err(invalid("wait_timeout", "must be more than zero"));
        }
        if p.wait_poll < Duration::from_millis(10) {
            return Err(invalid("wait_poll", "must be at least 10ms"));
        }
        if !matches!(p.mismatch_status.as_u16(), 400 | 422) {
            return Err(invalid(
                "mismatch_status",
                "must be 422 or 400 (409 means in progress, R10)",
            ));
        }
        if p.retry_after_max < Duration::from_secs(1) {
            return Err(invalid("retry_after_max", "must be at least 1s"));
        }
        if p.completion_attempts == 0 {
            return Err(invalid("completion_attempts", "must be at least 1"));
        }
        if let Some(base) = p.problems.base()
            && (base.is_empty()
                || base.contains('#')
                || !base.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(invalid(
                "problem_base",
                "must be a URI without spaces or a fragment",
            ));
        }
        if u32::try_from(p.max_stored_body).is_err() {
            return Err(invalid("max_stored_body", "must be below 4 GiB"));
        }
        Ok(self.target.make(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // R17: idem's answers allow credentialed reads only when told, and only to an
    // allowed origin.
    #[test]
    fn r17_credentialed_reads_only_when_configured_and_allowed() {
        let cors = |credentials: bool, origin: &'static str| {
            let p = Policy::builder()
                .cors_origins("https://app.example".parse().unwrap())
                .cors_credentials(credentials)
                .build()
                .unwrap();
            let resp = p.answer(
                Some(&HeaderValue::from_static(origin)),
                &Problem::new(crate::ProblemKind::InFlight, "busy"),
            );
            let h = resp.headers();
            (
                h.get("access-control-allow-origin").cloned(),
                h.get("access-control-allow-credentials").cloned(),
            )
        };
        let (origin, credentials) = cors(true, "https://app.example");
        assert_eq!(origin.unwrap(), "https://app.example");
        assert_eq!(credentials.unwrap(), "true");
        assert_eq!(cors(false, "https://app.example").1, None);
        assert_eq!(cors(true, "https://evil.example"), (None, None));
    }

    // R7
    #[test]
    fn r07_default_cacheable() {
        let set = StatusSet::default();
        for ok in [200, 201, 204, 301, 304, 400, 404, 410, 422] {
            assert!(set.contains(StatusCode::from_u16(ok).unwrap()), "{ok}");
        }
        for no in [100, 408, 409, 425, 429, 500, 502, 503, 504] {
            assert!(!set.contains(StatusCode::from_u16(no).unwrap()), "{no}");
        }
    }

    #[test]
    fn status_set_parse_errors() {
        assert!("6xx".parse::<StatusSet>().is_err());
        assert!("abc".parse::<StatusSet>().is_err());
        assert!("99".parse::<StatusSet>().is_err());
        let s: StatusSet = "2xx,!204,503".parse().unwrap();
        assert!(s.contains(StatusCode::OK));
        assert!(!s.contains(StatusCode::NO_CONTENT));
        assert!(s.contains(StatusCode::SERVICE_UNAVAILABLE));
    }

    // R9: a mismatch is 422 or 400, never a status a client reads as "in progress".
    #[test]
    fn r09_mismatch_status_is_422_or_400() {
        for ok in [400, 422] {
            let status = StatusCode::from_u16(ok).unwrap();
            let policy = Policy::builder().mismatch_status(status).build().unwrap();
            assert_eq!(policy.mismatch_status(), status);
        }
        for no in [409, 200, 500] {
            let err = Policy::builder()
                .mismatch_status(StatusCode::from_u16(no).unwrap())
                .build()
                .unwrap_err();
            assert!(err.to_string().contains("422 or 400"), "{err}");
        }
    }

    // R23
    #[test]
    fn r23_key_sources_parse_and_show() {
        for text in [
            "header",
            "header:x-github-delivery",
            "json:/request_id",
            "json:/a~1b/0",
        ] {
            let source: KeySource = text.parse().unwrap();
            assert_eq!(source.to_string(), text);
        }
        for bad in [
            "json:request_id",
            "json:",
            "json:/a~2",
            "header:bad header",
            "body",
        ] {
            assert!(bad.parse::<KeySource>().is_err(), "{bad}");
        }
    }

    #[test]
    fn unscoped_modes_parse_and_show() {
        for mode in [Unscoped::Refuse, Unscoped::Pass] {
            assert_eq!(mode.to_string().parse::<Unscoped>(), Ok(mode));
        }
        assert!("drop".parse::<Unscoped>().unwrap_err().contains("drop"));
        assert_eq!(Policy::default().unscoped(), Unscoped::Refuse);
    }

    #[test]
    fn builder_validates() {
        assert!(Policy::builder().build().is_ok());
        assert!(Policy::builder().methods([]).build().is_err());
        assert!(Policy::builder().lease(Duration::ZERO).build().is_err());
        assert!(
            Policy::builder()
                .mismatch_status(StatusCode::OK)
                .build()
                .is_err()
        );
        assert!(
            Policy::builder()
                .on_concurrent(OnConcurrent::Wait {
                    timeout: Duration::ZERO
                })
                .build()
                .is_err()
        );
    }
}
