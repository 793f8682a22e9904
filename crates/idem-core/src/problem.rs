//! Every response the engine makes itself: RFC 9457 problem documents (R17).
//!
//! Each [`ProblemKind`] has one row in one table: status, stable `type` slug, title,
//! who meets it and what to tell them. Clients branch on `type`, never on the prose in
//! `detail`. A [`Problem`] becomes a response only through [`Problems::render`], which
//! puts every `type` under one deployment's base, so the engine's, the layer's and the
//! proxy's own answers cannot disagree on it.
//!
//! An operator may give these answers the protected API's own error shape instead of
//! RFC 9457's ([`ProblemTemplates`]): a JSON template per kind, whose string values
//! `"{detail}"`, `"{status}"`… are replaced by the typed values of each problem.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::Value;

/// The base of every problem `type` URI; the fragment names a section of
/// `docs/problems.md`, which explains the error to client developers.
/// A deployment can point them at its own copy of that text (`idem docs` prints one)
/// with [`PolicyBuilder::problem_base`](crate::policy::PolicyBuilder::problem_base);
/// the fragment stays the same.
pub const TYPE_BASE: &str = "https://github.com/idem-rs/idem/blob/main/docs/problems.md#";

/// The media type of problem documents.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// Who meets a problem kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Audience {
    /// The clients of the protected API: documented for them by `idem docs`.
    Client,
    /// The operators using the admin API; API clients never see it.
    Operator,
}

macro_rules! problem_kinds {
    ($(
        $(#[$doc:meta])*
        $variant:ident {
            status: $status:expr,
            slug: $slug:literal,
            title: $title:literal,
            audience: $audience:ident,
            advice: $advice:literal,
            explanation: $explanation:expr $(,)?
        }
    )*) => {
        /// The errors idem answers itself, each with a stable `type`.
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

            /// Who meets it.
            pub fn audience(self) -> Audience {
                match self { $(ProblemKind::$variant => Audience::$audience,)* }
            }

            /// What to do about it, in a few words (the table of `idem docs`).
            pub fn advice(self) -> &'static str {
                match self { $(ProblemKind::$variant => $advice,)* }
            }

            /// What it means and what to do, in a paragraph (the sections of
            /// `idem docs`).
            pub fn explanation(self) -> &'static str {
                match self { $(ProblemKind::$variant => $explanation,)* }
            }
        }
    };
}

// One entry per kind: adding a kind is adding an entry here (and its section in
// docs/problems.md, which a test checks).
problem_kinds! {
    /// The key header is repeated, empty, too long or malformed (R1).
    InvalidKey {
        status: StatusCode::BAD_REQUEST,
        slug: "invalid-key",
        title: "Invalid idempotency key",
        audience: Client,
        advice: "fix the key",
        explanation: "The key header was sent twice, is empty (`` or `\"\"`), too long, or not \
            visible ASCII, bare or as a quoted string. Nothing was processed. Fix the key and \
            send the request again.",
    }
    /// The route requires a key and none was sent (R3).
    MissingKey {
        status: StatusCode::BAD_REQUEST,
        slug: "missing-key",
        title: "Idempotency key required",
        audience: Client,
        advice: "add a key",
        explanation: "This endpoint requires an idempotency key and the request had none. \
            Nothing was processed. Generate a key (a UUID) for the operation and send it with \
            the request and every retry of it.",
    }
    /// A keyed request carried none of the headers that say whose key it is (R4).
    UnscopedRequest {
        status: StatusCode::BAD_REQUEST,
        slug: "unscoped-request",
        title: "Idempotency key without credentials",
        audience: Client,
        advice: "send your credentials with the key",
        explanation: "The request carried an idempotency key but none of the headers that \
            say whose key it is (by default `Authorization`), so its response could not be kept \
            apart from other callers'. Nothing was processed. Send the request with your \
            credentials, or without a key if it needs no protection.",
    }
    /// The key was used before with a different request (R9).
    PayloadMismatch {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        slug: "payload-mismatch",
        title: "Idempotency key reused with a different request",
        audience: Client,
        advice: "use a new key for a new operation",
        explanation: "This key was already used with a *different* request (method, path \
            and query, body, or significant headers). The earlier request's result stands and \
            nothing was processed. Do not retry with this key: a new operation needs a new key.",
    }
    /// A request with this key is still being processed (R10).
    InFlight {
        status: StatusCode::CONFLICT,
        slug: "in-flight",
        title: "A request with this idempotency key is in progress",
        audience: Client,
        advice: "retry the same request after `Retry-After` seconds",
        explanation: "A request with this key is still being processed; nothing new was \
            started. Retry the *same* request with the *same* key after the `Retry-After` \
            seconds: you will receive the first request's response once it is done.",
    }
    /// The request body exceeds the limit (R13).
    RequestTooLarge {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        slug: "request-too-large",
        title: "Request body too large",
        audience: Client,
        advice: "send a smaller body",
        explanation: "The request body exceeds the limit for this endpoint. Nothing was \
            processed or stored; the key is still unused.",
    }
    /// The original response was not retained, so it cannot be replayed (R13, R19).
    NotRetained {
        status: StatusCode::GONE,
        slug: "response-not-retained",
        title: "Original response not retained",
        audience: Client,
        advice: "do not retry; look the result up",
        explanation: "The request with this key was processed (`original_status` in the \
            document says how it answered) but its response was not kept, because it was too \
            large, streamed, or set a cookie while every caller shares one scope. It will not be processed again. Look the result up by other \
            means, e.g. a GET on the resource.",
    }
    /// The client did not send its request within the server's read timeout.
    RequestTimeout {
        status: StatusCode::REQUEST_TIMEOUT,
        slug: "request-timeout",
        title: "Request not received in time",
        audience: Client,
        advice: "send the request again, body at once",
        explanation: "The request body did not arrive within the server's read timeout. \
            Nothing was processed or stored and the key was never claimed: send the request \
            again with the same key, sending the body at once.",
    }
    /// The request body could not be read.
    BadRequestBody {
        status: StatusCode::BAD_REQUEST,
        slug: "unreadable-body",
        title: "Request body could not be read",
        audience: Client,
        advice: "send the request again",
        explanation: "The request body could not be read (the connection broke while it was \
            sent, or it was framed with a transfer coding other than `chunked` alone). Nothing \
            was processed; send the request again with the same key, its body framed by \
            Content-Length or plain `chunked`.",
    }
    /// The request could be read more than one way (an encoded `/`, a case variant of a
    /// covered method, a missing or repeated `Host`), so it is refused rather than guessed (R24).
    AmbiguousRequest {
        status: StatusCode::BAD_REQUEST,
        slug: "ambiguous-request",
        title: "Ambiguous request",
        audience: Client,
        advice: "send the request in its plain form",
        explanation: "The request could be read in more than one way, so it was refused \
            rather than guessed: an encoded `/` (`%2F`) or a `\\` in the path, a malformed \
            percent-encoding, a dot segment with parameters (`..;`), a method in another case \
            than its registered one (`post` for `POST`), or a missing, repeated or invalid \
            `Host` header. Nothing was processed. Send the path unencoded and the method in \
            upper case.",
    }
    /// The method asks for something a reverse proxy does not do (`CONNECT`) (R24).
    UnsupportedMethod {
        status: StatusCode::NOT_IMPLEMENTED,
        slug: "unsupported-method",
        title: "Method not supported",
        audience: Client,
        advice: "do not use this method here",
        explanation: "The method asks for something this reverse proxy does not do \
            (`CONNECT`: a tunnel). Nothing was processed.",
    }
    /// The idempotency store is unreachable or failing (R15).
    StoreUnavailable {
        status: StatusCode::SERVICE_UNAVAILABLE,
        slug: "store-unavailable",
        title: "Idempotency store unavailable",
        audience: Client,
        advice: "retry later with the same key",
        explanation: "The service cannot record the request right now, so it did not run \
            it. Retry with the same key after the `Retry-After` seconds.",
    }
    /// The upstream refused or reset the connection (R12).
    UpstreamUnavailable {
        status: StatusCode::BAD_GATEWAY,
        slug: "upstream-unavailable",
        title: "Upstream unavailable",
        audience: Client,
        advice: "retry with the same key",
        explanation: "The API behind the idempotency layer could not be reached, broke the \
            connection, or sent a malformed answer (502). Nothing was stored and the key was \
            released: retry with the same key.",
    }
    /// The upstream failed after the request may have reached it, and the key is held:
    /// the operation may or may not have run, and it will not run again (R22).
    OutcomeUnknown {
        status: StatusCode::BAD_GATEWAY,
        slug: "outcome-unknown",
        title: "Outcome unknown",
        audience: Client,
        advice: "do not retry; look the result up",
        explanation: "The API behind the idempotency layer failed after it may have received \
            the request (the connection broke or timed out after the request was sent), so \
            whether the operation ran is unknown. This endpoint runs each key at most once: \
            the key is held, retries get this same answer (502 or 504) and never run the \
            operation again. Look the result up by other means (e.g. a GET on the resource, \
            or support); a new operation needs a new key.",
    }
    /// The upstream did not answer in time (R12).
    UpstreamTimeout {
        status: StatusCode::GATEWAY_TIMEOUT,
        slug: "upstream-timeout",
        title: "Upstream timed out",
        audience: Client,
        advice: "retry with the same key",
        explanation: "The API behind the idempotency layer did not answer in time (504). The \
            key was released: retry with the same key.",
    }
    /// A bug in idem itself, or a service behind the layer that panicked.
    Internal {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        slug: "internal",
        title: "Internal error",
        audience: Client,
        advice: "retry with the same key; report it if it persists",
        explanation: "An internal error in the idempotency layer. Retry with the same key; \
            report it if it persists.",
    }
    /// The admin API's bearer token is missing or wrong.
    AdminUnauthorized {
        status: StatusCode::UNAUTHORIZED,
        slug: "admin-unauthorized",
        title: "Admin token required",
        audience: Operator,
        advice: "send the admin token",
        explanation: "The `Authorization: Bearer <token>` header is missing or does not \
            carry the admin token.",
    }
    /// An address sent too many wrong admin tokens; it waits `Retry-After` (R25).
    AdminThrottled {
        status: StatusCode::TOO_MANY_REQUESTS,
        slug: "admin-throttled",
        title: "Too many wrong admin tokens",
        audience: Operator,
        advice: "wait `Retry-After` seconds",
        explanation: "This address sent too many wrong tokens; it may try again after the \
            `Retry-After` seconds (the answer comes before the token is checked, so a correct \
            token waits too).",
    }
    /// The admin API is off: no token was configured.
    AdminDisabled {
        status: StatusCode::NOT_FOUND,
        slug: "admin-disabled",
        title: "Admin API off",
        audience: Operator,
        advice: "configure an admin token",
        explanation: "The admin API is off: no admin token was configured.",
    }
    /// No such admin endpoint.
    AdminNotFound {
        status: StatusCode::NOT_FOUND,
        slug: "admin-not-found",
        title: "No such admin endpoint",
        audience: Operator,
        advice: "check the path",
        explanation: "No such admin endpoint.",
    }
    /// The admin API has no live record for this scope and key.
    AdminKeyNotFound {
        status: StatusCode::NOT_FOUND,
        slug: "admin-key-not-found",
        title: "No such record",
        audience: Operator,
        advice: "check the scope and key",
        explanation: "No live record for this scope and key: it never existed, expired, was \
            released or was deleted.",
    }
    /// A malformed admin request: scope, key, cursor or query parameter.
    AdminBadRequest {
        status: StatusCode::BAD_REQUEST,
        slug: "admin-bad-request",
        title: "Malformed admin request",
        audience: Operator,
        advice: "fix the request",
        explanation: "A malformed scope (neither `global` nor a 32-digit hex digest), key, \
            cursor or query parameter; `detail` says which.",
    }
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

/// One problem, before it is rendered by [`Problems::render`].
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

/// How one deployment renders problems: every `type` URI under one base (R17),
/// [`TYPE_BASE`] unless the policy sets another
/// ([`Policy::problems`](crate::Policy::problems)).
///
/// The one way a [`Problem`] becomes a response, for the engine's answers and for those
/// of whatever serves it (the layer, the proxy's forwarder, read timeout and admin API).
/// Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems {
    base: Option<Arc<str>>,
    templates: Option<Arc<ProblemTemplates>>,
}

impl Problems {
    /// These problems under `base` (without a trailing `#`), checked by the policy
    /// builder.
    pub(crate) fn under(self, base: Option<Arc<str>>) -> Self {
        Self { base, ..self }
    }

    /// These problems in the shapes of `templates`.
    pub(crate) fn shaped(self, templates: ProblemTemplates) -> Self {
        Self {
            templates: Some(Arc::new(templates)),
            ..self
        }
    }

    /// The operator's templates, when set.
    pub fn templates(&self) -> Option<&ProblemTemplates> {
        self.templates.as_deref()
    }

    /// The base when not [`TYPE_BASE`].
    pub fn base(&self) -> Option<&Arc<str>> {
        self.base.as_ref()
    }

    /// The `type` URI of `kind`.
    pub fn type_uri(&self, kind: ProblemKind) -> String {
        match &self.base {
            Some(base) => kind.type_uri_at(base),
            None => kind.type_uri(),
        }
    }

    /// The JSON document of `problem`.
    pub fn document(&self, problem: &Problem) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "type": self.type_uri(problem.kind),
            "title": problem.kind.title(),
            "status": problem.status.as_u16(),
            "detail": problem.detail,
            "code": problem.kind.slug(),
        });
        if let Some(key) = &problem.key {
            doc["idempotency_key"] = key.as_str().into();
        }
        if let Some(s) = problem.original_status {
            doc["original_status"] = s.into();
        }
        doc
    }

    /// The body and content type `problem` is answered with: the operator's template
    /// for its kind when there is one, else the RFC 9457 [`document`](Self::document).
    pub fn body(&self, problem: &Problem) -> (HeaderValue, Value) {
        match self.templates.as_deref().and_then(|t| t.get(problem.kind)) {
            Some(template) => (
                template.content_type.clone(),
                template.fill(&self.values(problem)),
            ),
            None => (
                HeaderValue::from_static(CONTENT_TYPE),
                self.document(problem),
            ),
        }
    }

    /// The values a template can name, for `problem`.
    fn values(&self, problem: &Problem) -> Values {
        Values {
            status: problem.status.as_u16().into(),
            type_uri: self.type_uri(problem.kind).into(),
            code: problem.kind.slug().into(),
            title: problem.kind.title().into(),
            detail: problem.detail.as_str().into(),
            key: problem.key.as_deref().map_or(Value::Null, Value::from),
            retry_after: problem.retry_after.map_or(Value::Null, Value::from),
            original_status: problem.original_status.map_or(Value::Null, Value::from),
        }
    }

    /// The full HTTP response for `problem`: its status, its [`body`](Self::body),
    /// `no-store`, and `Retry-After` when it has one.
    pub fn render(&self, problem: &Problem) -> Response<Bytes> {
        let (content_type, body) = self.body(problem);
        let mut resp = Response::new(Bytes::from(body.to_string()));
        *resp.status_mut() = problem.status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, content_type);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = problem.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The names a template's string values may be, each standing for one value of the
/// problem: `"{status}"` is replaced by the status as a number, `"{detail}"` by the
/// detail as a string, and so on. An absent value (no key echoed, no `Retry-After`)
/// becomes `null`.
pub const TEMPLATE_VALUES: &[&str] = &[
    "status",
    "type",
    "code",
    "title",
    "detail",
    "key",
    "retry_after",
    "original_status",
];

/// The values of one problem, by template name.
struct Values {
    status: Value,
    type_uri: Value,
    code: Value,
    title: Value,
    detail: Value,
    key: Value,
    retry_after: Value,
    original_status: Value,
}

impl Values {
    fn get(&self, name: &str) -> Option<&Value> {
        Some(match name {
            "status" => &self.status,
            "type" => &self.type_uri,
            "code" => &self.code,
            "title" => &self.title,
            "detail" => &self.detail,
            "key" => &self.key,
            "retry_after" => &self.retry_after,
            "original_status" => &self.original_status,
            _ => return None,
        })
    }
}

/// The name in a placeholder string, `{name}`: braces around a lower-case word.
fn placeholder(s: &str) -> Option<&str> {
    let name = s.strip_prefix('{')?.strip_suffix('}')?;
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then_some(name)
}

/// One answer shape: a content type and a JSON body template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProblemTemplate {
    content_type: HeaderValue,
    body: Value,
}

impl ProblemTemplate {
    /// The content type answers of this shape are sent with.
    pub fn content_type(&self) -> &HeaderValue {
        &self.content_type
    }

    /// The body with every placeholder replaced by its value. Values go in as JSON
    /// values, never as text, so the result is valid JSON whatever they contain.
    fn fill(&self, values: &Values) -> Value {
        fn walk(v: &Value, values: &Values) -> Value {
            match v {
                Value::String(s) => placeholder(s)
                    .and_then(|name| values.get(name))
                    .cloned()
                    .unwrap_or_else(|| v.clone()),
                Value::Array(items) => items.iter().map(|i| walk(i, values)).collect(),
                Value::Object(map) => Value::Object(
                    map.iter()
                        .map(|(k, i)| (k.clone(), walk(i, values)))
                        .collect(),
                ),
                other => other.clone(),
            }
        }
        walk(&self.body, values)
    }
}

/// A template file that cannot be used, in one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

/// The shapes an operator gives idem's answers, instead of RFC 9457 documents (R17):
/// a template per problem kind (by slug) and one for every other kind (`"*"`).
///
/// Written as JSON: each entry has a `body`, any JSON value in which a string exactly
/// equal to `"{name}"` (one of [`TEMPLATE_VALUES`]) is replaced by that value, typed,
/// and an optional `content_type` (default `application/json`).
///
/// ```
/// use idem_core::problem::{Problem, ProblemKind, ProblemTemplates};
/// use idem_core::Policy;
///
/// let templates = ProblemTemplates::parse(r#"{
///     "*": {"body": {"error": {"type": "idempotency_error", "code": "{code}",
///                              "message": "{detail}", "status": "{status}"}}}
/// }"#).unwrap();
/// let policy = Policy::builder().problem_templates(templates).build().unwrap();
/// let resp = policy.problems().render(&Problem::new(ProblemKind::InFlight, "busy \"now\""));
/// assert_eq!(resp.status(), 409);
/// assert_eq!(resp.headers()["content-type"], "application/json");
/// let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
/// assert_eq!(body["error"]["message"], "busy \"now\"");
/// assert_eq!(body["error"]["status"], 409);
///
/// // A name that is not a value is refused.
/// assert!(ProblemTemplates::parse(r#"{"*": {"body": "{message}"}}"#).is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProblemTemplates {
    kinds: HashMap<ProblemKind, ProblemTemplate>,
    fallback: Option<ProblemTemplate>,
}

impl ProblemTemplates {
    /// Reads and checks templates written as JSON: every key a problem slug or `"*"`,
    /// every entry a `body` and an optional `content_type`, every placeholder a known
    /// value.
    ///
    /// # Errors
    ///
    /// [`TemplateError`] saying, in one line, what is wrong and where.
    pub fn parse(json: &str) -> Result<Self, TemplateError> {
        let fail = |m: String| Err(TemplateError(m));
        let doc: Value = match serde_json::from_str(json) {
            Ok(v) => v,
            Err(e) => return fail(format!("not valid JSON: {e}")),
        };
        let Value::Object(entries) = doc else {
            return fail("expected a JSON object of problem slugs (or \"*\") to templates".into());
        };
        let mut out = Self::default();
        for (slug, entry) in entries {
            let kind = if slug == "*" {
                None
            } else {
                match ProblemKind::ALL.iter().find(|k| k.slug() == slug) {
                    Some(k) => Some(*k),
                    None => return fail(format!("`{slug}` is not a problem slug or \"*\"")),
                }
            };
            let template = Self::entry(&slug, entry)?;
            match kind {
                Some(k) => {
                    out.kinds.insert(k, template);
                }
                None => out.fallback = Some(template),
            }
        }
        Ok(out)
    }

    fn entry(slug: &str, entry: Value) -> Result<ProblemTemplate, TemplateError> {
        let fail = |m: String| Err(TemplateError(format!("`{slug}`: {m}")));
        let Value::Object(mut fields) = entry else {
            return fail("expected an object with `body` and `content_type`".into());
        };
        if let Some(other) = fields.keys().find(|k| *k != "body" && *k != "content_type") {
            return fail(format!(
                "unknown member `{other}` (expected `body` and `content_type`)"
            ));
        }
        let content_type = match fields.remove("content_type") {
            None => HeaderValue::from_static("application/json"),
            Some(Value::String(ct)) => match HeaderValue::from_str(&ct) {
                Ok(v) if ct.contains('/') && ct.is_ascii() => v,
                _ => return fail(format!("`content_type` `{ct}` is not a media type")),
            },
            Some(_) => return fail("`content_type` must be a string".into()),
        };
        let Some(body) = fields.remove("body") else {
            return fail("missing `body`".into());
        };
        if let Some(name) = unknown_value(&body) {
            return fail(format!(
                "`{{{name}}}` names no value (known: {})",
                TEMPLATE_VALUES
                    .iter()
                    .map(|v| format!("{{{v}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(ProblemTemplate { content_type, body })
    }

    /// The template for `kind`: its own, else the one for every kind.
    pub fn get(&self, kind: ProblemKind) -> Option<&ProblemTemplate> {
        self.kinds.get(&kind).or(self.fallback.as_ref())
    }
}

/// The first placeholder in `v` that names no value.
fn unknown_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            placeholder(s).and_then(|n| (!TEMPLATE_VALUES.contains(&n)).then(|| n.to_owned()))
        }
        Value::Array(items) => items.iter().find_map(unknown_value),
        Value::Object(map) => map.values().find_map(unknown_value),
        _ => None,
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
        let resp = Problems::default().render(&p);
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
        let policy = crate::Policy::builder()
            .problem_base("https://api.example.com/idempotency")
            .build()
            .unwrap();
        let doc = policy
            .problems()
            .document(&Problem::new(ProblemKind::InFlight, "busy"));
        assert_eq!(doc["type"], "https://api.example.com/idempotency#in-flight");
        assert_eq!(
            ProblemKind::InFlight.type_uri_at(TYPE_BASE),
            ProblemKind::InFlight.type_uri()
        );
    }

    // R17: every default document names its kind in `code`, as API error envelopes do.
    #[test]
    fn r17_documents_carry_their_code() {
        for kind in ProblemKind::ALL {
            let doc = Problems::default().document(&Problem::new(*kind, "d"));
            assert_eq!(doc["code"], kind.slug());
        }
    }

    // R17: a template gets typed values, escaped as JSON whatever they contain.
    #[test]
    fn r17_templates_fill_typed_values() {
        let t = ProblemTemplates::parse(
            r#"{
                "*": {"content_type": "application/vnd.api+json",
                      "body": {"errors": [{"code": "{code}", "status": "{status}",
                                           "detail": "{detail}", "key": "{key}",
                                           "wait": "{retry_after}", "was": "{original_status}",
                                           "type": "{type}", "title": "{title}",
                                           "literal": "{detail} and more", "n": 7}]}},
                "payload-mismatch": {"body": {"error": {"message": "{detail}"}}}
            }"#,
        )
        .unwrap();
        let problems = Problems::default().shaped(t);
        let nasty = "quote \" backslash \\ newline \n brace {detail} \u{0}";
        let p = Problem::new(ProblemKind::InFlight, nasty)
            .with_key("k\"1")
            .with_retry_after(Duration::from_secs(3));
        let resp = problems.render(&p);
        assert_eq!(resp.status(), 409);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/vnd.api+json"
        );
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        let doc: Value = serde_json::from_slice(resp.body()).unwrap();
        let e = &doc["errors"][0];
        assert_eq!(e["code"], "in-flight");
        assert_eq!(e["status"], 409);
        assert_eq!(e["detail"], nasty);
        assert_eq!(e["key"], "k\"1");
        assert_eq!(e["wait"], 3);
        assert_eq!(e["was"], Value::Null);
        assert_eq!(e["type"], ProblemKind::InFlight.type_uri());
        assert_eq!(e["title"], ProblemKind::InFlight.title());
        assert_eq!(e["literal"], "{detail} and more");
        assert_eq!(e["n"], 7);
        // A kind's own template wins over `*`.
        let resp = problems.render(&Problem::new(ProblemKind::PayloadMismatch, "used"));
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let doc: Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(doc, serde_json::json!({"error": {"message": "used"}}));
    }

    // R17: operator input is checked, each mistake named in one line.
    #[test]
    fn r17_bad_templates_are_refused() {
        for (bad, says) in [
            ("{", "not valid JSON"),
            ("[]", "JSON object"),
            (r#"{"in-flite": {"body": 1}}"#, "`in-flite`"),
            (r#"{"*": 1}"#, "expected an object"),
            (r#"{"*": {}}"#, "missing `body`"),
            (r#"{"*": {"body": 1, "headers": {}}}"#, "`headers`"),
            (
                r#"{"*": {"body": 1, "content_type": "json"}}"#,
                "media type",
            ),
            (r#"{"*": {"body": 1, "content_type": 5}}"#, "string"),
            (r#"{"*": {"body": {"a": ["{message}"]}}}"#, "`{message}`"),
        ] {
            let err = ProblemTemplates::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
