//! The table: one entry per `idem serve` setting (re-exported by [`settings`](super)).

use std::fmt;
use std::path::PathBuf;

use idem::core::cors::CorsOrigins;
use idem::core::policy::{AmbiguousFailure, KeySource, StoreFailure, Unscoped};
use idem::core::scope::ScopeSource;
use idem::core::store::SealingKeys;

use super::parse::{
    parse_bool, parse_duration, parse_header_name, parse_header_names, parse_methods, parse_size,
    parse_status, parse_status_set, parse_timeout, parse_words, show_duration, show_list,
    show_size, show_status_set,
};
use super::values::{ConcurrentMode, Values};
use crate::admin::AdminToken;
use crate::config::{MAX_HEADER_BYTES, MIN_HEADER_BYTES, Runtime};

/// How a setting is written on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `--require-key`: on when given; its variable and file key take `true`/`false`.
    Switch,
    /// `--ttl 24h`: one value.
    Value,
    /// `--methods POST,PUT`: comma-separated, or the flag repeated; a TOML array in a file.
    List,
}

/// What a setting is, apart from its type.
#[derive(Clone, Copy, Debug)]
pub struct Info {
    /// The file key, and the flag with `-` for `_`: `max_request_body`.
    pub name: &'static str,
    /// The environment variable: `IDEM_MAX_REQUEST_BODY`.
    pub env: &'static str,
    /// The value's placeholder in `--help` and the README: `SIZE`.
    pub value_name: &'static str,
    /// One or two sentences for `--help` and the README (Markdown: backticks, links).
    pub help: &'static str,
    /// How the default reads when there is no value: `off`, `none`, `(required)`.
    pub unset: &'static str,
    /// A valid value other than the default (the tests set every setting to it).
    pub example: &'static str,
    /// Whether a `[[route]]` rule may set it.
    pub route: bool,
    /// Never echoed: not in `--help`'s environment values, errors or `check-config`.
    pub secret: bool,
    /// How it is written.
    pub kind: Kind,
}

impl Info {
    const BASE: Self = Self {
        name: "",
        env: "",
        value_name: "",
        help: "",
        unset: "off",
        example: "",
        route: false,
        secret: false,
        kind: Kind::Value,
    };

    /// The flag, `--max-request-body`.
    pub fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }
}

/// One setting of type `T`: what it is, how its text parses, where the value goes and
/// how it reads back.
pub struct Def<T> {
    /// Name, variable, help…
    pub info: Info,
    /// Flag, variable and file text to value.
    pub parse: fn(&str) -> Result<T, String>,
    /// Puts the value in its field (of the policy builder, the proxy config, …).
    pub set: fn(&mut Values, T),
    /// The field's value as text that `parse` reads back; `None` when unset.
    pub get: fn(&Values) -> Option<String>,
}

impl<T> fmt::Debug for Def<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Def").field("info", &self.info).finish()
    }
}

/// A setting of any type: what the rest of the crate works with.
pub trait Setting: Sync + fmt::Debug {
    /// What it is.
    fn info(&self) -> &Info;
    /// Parses `text` and puts the value in `values`; the error says why, in one line.
    fn apply(&self, values: &mut Values, text: &str) -> Result<(), String>;
    /// The current value, as text its parser reads; `None` when unset.
    fn show(&self, values: &Values) -> Option<String>;
}

impl<T> Setting for Def<T> {
    fn info(&self) -> &Info {
        &self.info
    }

    fn apply(&self, values: &mut Values, text: &str) -> Result<(), String> {
        let value = (self.parse)(text)?;
        (self.set)(values, value);
        Ok(())
    }

    fn show(&self, values: &Values) -> Option<String> {
        (self.get)(values)
    }
}

fn parse_path(s: &str) -> Result<PathBuf, String> {
    if s.trim().is_empty() {
        return Err("expected a file path".to_owned());
    }
    Ok(PathBuf::from(s))
}

fn parse_text(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("expected a value".to_owned());
    }
    Ok(s.to_owned())
}

fn parse_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an address like 127.0.0.1:8080"))
}

fn parse_scope(s: &str) -> Result<ScopeSource, String> {
    let names = s.split(',').map(str::trim);
    if names.clone().any(|n| n.eq_ignore_ascii_case("none")) {
        return Ok(ScopeSource::none());
    }
    parse_header_names(s).map(ScopeSource::headers)
}

/// A count of at least one.
fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err(format!("`{s}`: must be at least 1")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// A header block limit within what the HTTP/1 parser and HTTP/2 peers take.
fn parse_header_bytes(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&n) {
        return Err(format!("`{s}`: must be between 8KiB and 16MiB"));
    }
    Ok(n)
}

/// Shown instead of a secret's value.
const SET: &str = "(set)";

fn path(p: Option<&PathBuf>) -> Option<String> {
    p.map(|p| p.display().to_string())
}

/// Every `idem serve` setting, in `--help` and README order.
pub static SETTINGS: &[&dyn Setting] = &[
    &Def {
        info: Info {
            name: "listen",
            env: "IDEM_LISTEN",
            value_name: "ADDR",
            help: "address to listen on",
            example: "127.0.0.1:9999",
            ..Info::BASE
        },
        parse: parse_addr,
        set: |v, a| v.listen = a,
        get: |v| Some(v.listen.to_string()),
    },
    &Def {
        info: Info {
            name: "upstream",
            env: "IDEM_UPSTREAM",
            value_name: "URL",
            help: "the API, `http://host:port[/prefix]` or `https://…`; see [TLS to the upstream](#tls-to-the-upstream)",
            unset: "(required)",
            example: "http://127.0.0.1:3000/api",
            ..Info::BASE
        },
        parse: |s| s.trim().parse().map_err(|e| format!("{e}")),
        set: |v, u| v.upstream = Some(u),
        get: |v| v.upstream.as_ref().map(ToString::to_string),
    },
    &Def {
        info: Info {
            name: "upstream_ca_file",
            env: "IDEM_UPSTREAM_CA_FILE",
            value_name: "PEM",
            help: "certificate authorities to trust for an `https://` upstream, beside the \
                   system's",
            example: "/etc/idem/upstream-ca.pem",
            ..Info::BASE
        },
        parse: parse_path,
        set: |v, p| v.proxy.upstream_tls.ca_file = Some(p),
        get: |v| path(v.proxy.upstream_tls.ca_file.as_ref()),
    },
    &Def {
        info: Info {
            name: "upstream_insecure",
            env: "IDEM_UPSTREAM_INSECURE",
            help: "do not verify an `https://` upstream's certificate: for tests only, never \
                   in production (logged at start-up)",
            example: "true",
            kind: Kind::Switch,
            ..Info::BASE
        },
        parse: parse_bool,
        set: |v, yes| v.proxy.upstream_tls.insecure = yes,
        get: |v| Some(v.proxy.upstream_tls.insecure.to_string()),
    },
    &Def {
        info: Info {
            name: "upstream_client_cert",
            env: "IDEM_UPSTREAM_CLIENT_CERT",
            value_name: "PEM",
            help: "client certificate chain shown to an `https://` upstream that asks for one \
                   (mTLS); needs `--upstream-client-key`",
            example: "/etc/idem/upstream-client.pem",
            ..Info::BASE
        },
        parse: parse_path,
        set: |v, p| v.proxy.upstream_tls.client_cert = Some(p),
        get: |v| path(v.proxy.upstream_tls.client_cert.as_ref()),
    },
    &Def {
        info: Info {
            name: "upstream_client_key",
            env: "IDEM_UPSTREAM_CLIENT_KEY",
            value_name: "PEM",
            help: "the client certificate's private key (unencrypted)",
            example: "/etc/idem/upstream-client.key",
            ..Info::BASE
        },
        parse: parse_path,
        set: |v, p| v.proxy.upstream_tls.client_key = Some(p),
        get: |v| path(v.proxy.upstream_tls.client_key.as_ref()),
    },
    &Def {
        info: Info {
            name: "tls_cert",
            env: "IDEM_TLS_CERT",
            value_name: "PEM",
            help: "serve TLS (HTTP/2 and HTTP/1.1 over ALPN) with this certificate chain, \
                   reloaded on SIGHUP and when it changes; needs `--tls-key`; see \
                   [Terminating TLS](#terminating-tls)",
            example: "/etc/idem/tls.pem",
            ..Info::BASE
        },
        parse: parse_path,
        set: |v, p| v.tls_cert = Some(p),
        get: |v| path(v.tls_cert.as_ref()),
    },
    &Def {
        info: Info {
            name: "tls_key",
            env: "IDEM_TLS_KEY",
            value_name: "PEM",
            help: "the private key of `--tls-cert` (unencrypted)",
            example: "/etc/idem/tls.key",
            ..Info::BASE
        },
        parse: parse_path,
        set: |v, p| v.tls_key = Some(p),
        get: |v| path(v.tls_key.as_ref()),
    },
    &Def {
        info: Info {
            name: "store",
            env: "IDEM_STORE",
            value_name: "STORE",
            help: "`memory` (volatile, bounded in bytes: 256 MiB unless \
                   `memory:max_bytes=SIZE`), `file:DIR` (embedded, durable), `redis://…`, \
                   `redis+cluster://…`, `postgres://…`",
            example: "memory",
            ..Info::BASE
        },
        parse: parse_text,
        set: |v, s| v.store = s,
        get: |v| Some(v.store.clone()),
    },
    &Def {
        info: Info {
            name: "encryption_key_file",
            env: "IDEM_ENCRYPTION_KEY_FILE",
            value_name: "PATH",
            help: "seal stored responses and digest stored keys with the keys in this file: \
                   one `ID:BASE64` (32 bytes) line per key, newest first; see \
                   [Encryption at rest](#encryption-at-rest)",
            example: "/etc/idem/keys",
            ..Info::BASE
        },
        parse: parse_path,
        set: |v, p| v.encryption_key_file = Some(p),
        get: |v| path(v.encryption_key_file.as_ref()),
    },
    &Def {
        info: Info {
            name: "encryption_keys",
            env: "IDEM_ENCRYPTION_KEYS",
            value_name: "KEYS",
            help: "the same key list inline, newline-separated (prefer the variable: a flag \
                   shows in `ps`)",
            example: "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            secret: true,
            ..Info::BASE
        },
        parse: |s| SealingKeys::parse(s).map_err(|e| e.to_string()),
        set: |v, k| v.encryption_keys = Some(k),
        get: |v| v.encryption_keys.as_ref().map(|_| SET.to_owned()),
    },
    &Def {
        info: Info {
            name: "ttl",
            env: "IDEM_TTL",
            value_name: "D",
            help: "how long a completed key is replayed, from completion (R14)",
            example: "7d",
            route: true,
            ..Info::BASE
        },
        parse: parse_duration,
        set: |v, d| v.edit_policy(|b| b.ttl(d)),
        get: |v| Some(show_duration(v.peek().ttl())),
    },
    &Def {
        info: Info {
            name: "lease",
            env: "IDEM_LEASE",
            value_name: "D",
            help: "how long a request owns its key without renewal; renewed every lease/3 \
                   while the API works, so a crashed instance's keys free up after one \
                   lease (R11)",
            example: "90s",
            route: true,
            ..Info::BASE
        },
        parse: parse_duration,
        set: |v, d| v.edit_policy(|b| b.lease(d)),
        get: |v| Some(show_duration(v.peek().lease())),
    },
    &Def {
        info: Info {
            name: "on_concurrent",
            env: "IDEM_ON_CONCURRENT",
            value_name: "MODE",
            help: "`conflict`: a duplicate in progress gets 409 at once; `wait`: it waits \
                   and gets the replay (R10)",
            example: "wait",
            route: true,
            ..Info::BASE
        },
        parse: ConcurrentMode::parse,
        set: |v, m| v.on_concurrent = m,
        get: |v| Some(v.on_concurrent.as_str().to_owned()),
    },
    &Def {
        info: Info {
            name: "retry_after_max",
            env: "IDEM_RETRY_AFTER_MAX",
            value_name: "D",
            help: "the longest `Retry-After` of a 409 `in-flight`: the hint is how long the \
                   route's requests recently held their key (at least 1s, at most the \
                   owner's remaining lease and this) (R10)",
            example: "3s",
            route: true,
            ..Info::BASE
        },
        parse: parse_duration,
        set: |v, d| v.edit_policy(|b| b.retry_after_max(d)),
        get: |v| Some(show_duration(v.peek().retry_after_max())),
    },
    &Def {
        info: Info {
            name: "wait_timeout",
            env: "IDEM_WAIT_TIMEOUT",
            value_name: "D",
            help: "with `wait`: how long a duplicate waits, then 409",
            example: "5s",
            route: true,
            ..Info::BASE
        },
        parse: parse_duration,
        set: |v, d| v.wait_timeout = d,
        get: |v| Some(show_duration(v.wait_timeout)),
    },
    &Def {
        info: Info {
            name: "require_key",
            env: "IDEM_REQUIRE_KEY",
            help: "covered requests without a key get 400 (R3)",
            example: "true",
            route: true,
            kind: Kind::Switch,
            ..Info::BASE
        },
        parse: parse_bool,
        set: |v, yes| v.edit_policy(|b| b.require_key(yes)),
        get: |v| Some(v.peek().require_key().to_string()),
    },
    &Def {
        info: Info {
            name: "methods",
            env: "IDEM_METHODS",
            value_name: "LIST",
            help: "covered methods (R2)",
            example: "PUT,DELETE",
            route: true,
            kind: Kind::List,
            ..Info::BASE
        },
        parse: parse_methods,
        set: |v, m| v.edit_policy(|b| b.methods(m)),
        get: |v| show_list(v.peek().methods()),
    },
    &Def {
        info: Info {
            name: "header",
            env: "IDEM_HEADER",
            value_name: "NAME",
            help: "the key header (R1)",
            example: "X-Request-Key",
            ..Info::BASE
        },
        parse: parse_header_name,
        set: |v, h| v.edit_policy(|b| b.header(h)),
        get: |v| Some(v.peek().header().to_string()),
    },
    &Def {
        info: Info {
            name: "key_source",
            env: "IDEM_KEY_SOURCE",
            value_name: "SRC",
            help: "where the key is read (R23): `header` (the `--header`), another header \
                   (`header:X-GitHub-Delivery`, for webhook senders' delivery ids), or a JSON \
                   pointer into the body (`json:/request_id`, for clients that cannot set \
                   headers; the body must be JSON, a string or integer there is the key)",
            example: "json:/request_id",
            route: true,
            ..Info::BASE
        },
        parse: |s| s.parse::<KeySource>(),
        set: |v, k| v.edit_policy(|b| b.key_source(k)),
        get: |v| Some(v.peek().key_source().to_string()),
    },
    &Def {
        info: Info {
            name: "scope_header",
            env: "IDEM_SCOPE_HEADER",
            value_name: "LIST",
            help: "headers whose values scope keys; `none` for one shared scope (R4). A \
                   refreshed token is a new scope: scope by a stable tenant header if \
                   tokens rotate",
            example: "X-Tenant",
            kind: Kind::List,
            ..Info::BASE
        },
        parse: parse_scope,
        set: |v, s| v.edit_policy(|b| b.scope(s)),
        get: |v| Some(show_list(v.peek().scope().header_names()).unwrap_or("none".to_owned())),
    },
    &Def {
        info: Info {
            name: "unscoped",
            env: "IDEM_UNSCOPED",
            value_name: "MODE",
            help: "a keyed request that carries none of the scope headers: `refuse` (400 \
                   `unscoped-request`) or `pass` it through unprotected; it is never stored \
                   in a scope shared with other callers (R4)",
            example: "pass",
            route: true,
            ..Info::BASE
        },
        parse: |s| s.parse::<Unscoped>(),
        set: |v, m| v.edit_policy(|b| b.unscoped(m)),
        get: |v| Some(v.peek().unscoped().to_string()),
    },
    &Def {
        info: Info {
            name: "store_set_cookie",
            env: "IDEM_STORE_SET_COOKIE",
            help: "with `--scope-header none`, store responses that set a cookie for replay \
                   to every caller (by default they replay as 410: one caller's session \
                   must not reach another, R4)",
            example: "true",
            route: true,
            kind: Kind::Switch,
            ..Info::BASE
        },
        parse: parse_bool,
        set: |v, yes| v.edit_policy(|b| b.store_set_cookie(yes)),
        get: |v| Some(v.peek().store_set_cookie().to_string()),
    },
    &Def {
        info: Info {
            name: "scope_secret_file",
            env: "IDEM_SCOPE_SECRET_FILE",
            value_name: "PATH",
            help: "a file of 32 or more secret bytes (`openssl rand -base64 32`) that keys \
                   scope digests, so a digest in a log or a store cannot be tested against \
                   guessed credentials; the same on every instance, set before the first \
                   deployment (changing it changes every scope). Without it, logs show scopes \
                   under a random key of the process (R4)",
            example: "/etc/idem/scope-secret",
            ..Info::BASE
        },
        parse: parse_path,
        set: |v, p| v.scope_secret_file = Some(p),
        get: |v| path(v.scope_secret_file.as_ref()),
    },
    &Def {
        info: Info {
            name: "fingerprint",
            env: "IDEM_FINGERPRINT",
            value_name: "MODE",
            help: "`raw` body bytes, or `json`: canonical JSON, so reordered keys match (R5)",
            example: "json",
            route: true,
            ..Info::BASE
        },
        parse: |s| s.trim().parse(),
        set: |v, f| v.edit_policy(|b| b.fingerprint(f)),
        get: |v| Some(format!("{:?}", v.peek().fingerprint()).to_lowercase()),
    },
    &Def {
        info: Info {
            name: "significant_headers",
            env: "IDEM_SIGNIFICANT_HEADERS",
            value_name: "LIST",
            help: "request headers that count in the fingerprint (R5)",
            unset: "none",
            example: "X-Account",
            route: true,
            kind: Kind::List,
            ..Info::BASE
        },
        parse: parse_header_names,
        set: |v, h| v.edit_policy(|b| b.significant_headers(h)),
        get: |v| show_list(v.peek().significant_headers()),
    },
    &Def {
        info: Info {
            name: "max_request_body",
            env: "IDEM_MAX_REQUEST_BODY",
            value_name: "SIZE",
            help: "larger protected requests get 413, nothing stored (R13)",
            example: "64KiB",
            route: true,
            ..Info::BASE
        },
        parse: parse_size,
        set: |v, n| v.edit_policy(|b| b.max_request_body(n)),
        get: |v| Some(show_size(v.peek().max_request_body())),
    },
    &Def {
        info: Info {
            name: "max_stored_body",
            env: "IDEM_MAX_STORED_BODY",
            value_name: "SIZE",
            help: "larger responses reach the client but replay as 410 (R13)",
            example: "2MiB",
            route: true,
            ..Info::BASE
        },
        parse: parse_size,
        set: |v, n| v.edit_policy(|b| b.max_stored_body(n)),
        get: |v| Some(show_size(v.peek().max_stored_body())),
    },
    &Def {
        info: Info {
            name: "upstream_timeout",
            env: "IDEM_UPSTREAM_TIMEOUT",
            value_name: "D",
            help: "time for the API's response head, then 504 and the key is released \
                   (R12); also the longest wait for each part of its body, then the answer \
                   breaks off (502 when it was being stored)",
            example: "7s",
            ..Info::BASE
        },
        parse: parse_duration,
        set: |v, d| v.proxy.upstream_timeout = d,
        get: |v| Some(show_duration(v.proxy.upstream_timeout)),
    },
    &Def {
        info: Info {
            name: "fail_open",
            env: "IDEM_FAIL_OPEN",
            help: "when the store fails, forward unprotected instead of 503 (R15)",
            example: "true",
            kind: Kind::Switch,
            ..Info::BASE
        },
        parse: parse_bool,
        set: |v, yes| {
            let mode = if yes {
                StoreFailure::FailOpen
            } else {
                StoreFailure::FailClosed
            };
            v.edit_policy(|b| b.store_failure(mode));
        },
        get: |v| Some((v.peek().store_failure() == StoreFailure::FailOpen).to_string()),
    },
    &Def {
        info: Info {
            name: "on_ambiguous_failure",
            env: "IDEM_ON_AMBIGUOUS_FAILURE",
            value_name: "MODE",
            help: "when the upstream fails after the request may have reached it (reset or \
                   timed out once sent): `release` the key so a retry runs again (R12), or \
                   `hold` it: retries get 502/504 `outcome-unknown` and never run it again \
                   until the TTL ends or `idem keys delete` (at most once, R22; recommended \
                   for payments). A refused connection is always released",
            example: "hold",
            route: true,
            ..Info::BASE
        },
        parse: |s| s.parse::<AmbiguousFailure>(),
        set: |v, m| v.edit_policy(|b| b.on_ambiguous_failure(m)),
        get: |v| Some(v.peek().on_ambiguous_failure().to_string()),
    },
    &Def {
        info: Info {
            name: "mismatch_status",
            env: "IDEM_MISMATCH_STATUS",
            value_name: "CODE",
            help: "status of a key reused with another payload: 422 or 400 (R9)",
            example: "400",
            ..Info::BASE
        },
        parse: parse_status,
        set: |v, s| v.edit_policy(|b| b.mismatch_status(s)),
        get: |v| Some(v.peek().mismatch_status().as_u16().to_string()),
    },
    &Def {
        info: Info {
            name: "cacheable",
            env: "IDEM_CACHEABLE",
            value_name: "LIST",
            help: "statuses stored and replayed; others release the key (R7)",
            example: "2xx",
            route: true,
            ..Info::BASE
        },
        parse: parse_status_set,
        set: |v, s| v.edit_policy(|b| b.cacheable(s)),
        get: |v| Some(show_status_set(v.peek().cacheable())),
    },
    &Def {
        info: Info {
            name: "deny_headers",
            env: "IDEM_DENY_HEADERS",
            value_name: "LIST",
            help: "response headers never stored (hop-by-hop headers never are) (R19)",
            unset: "none",
            example: "Set-Cookie",
            kind: Kind::List,
            ..Info::BASE
        },
        parse: parse_header_names,
        set: |v, h| v.edit_policy(|b| b.deny_headers(h)),
        get: |v| show_list(v.peek().deny_headers()),
    },
    &Def {
        info: Info {
            name: "streaming_types",
            env: "IDEM_STREAMING_TYPES",
            value_name: "LIST",
            help: "media types passed through unbuffered and not stored (R19)",
            unset: "none",
            example: "text/event-stream,application/x-ndjson",
            kind: Kind::List,
            ..Info::BASE
        },
        parse: parse_words,
        set: |v, t| v.edit_policy(|b| b.streaming_types(t)),
        get: |v| show_list(v.peek().streaming_types()),
    },
    &Def {
        info: Info {
            name: "admin_listen",
            env: "IDEM_ADMIN_LISTEN",
            value_name: "ADDR",
            help: "admin listener: `/healthz`, `/readyz` (the store answers), `/metrics` \
                   (Prometheus)",
            example: "127.0.0.1:9090",
            ..Info::BASE
        },
        parse: parse_addr,
        set: |v, a| v.admin_listen = Some(a),
        get: |v| v.admin_listen.map(|a| a.to_string()),
    },
    &Def {
        info: Info {
            name: "admin_token",
            env: "IDEM_ADMIN_TOKEN",
            value_name: "T",
            help: "bearer token (16+ characters) that opens the on-call API `/admin/keys…` on \
                   the admin listener",
            example: "0123456789abcdef-token",
            secret: true,
            ..Info::BASE
        },
        parse: |s| AdminToken::new(s).map_err(|e| e.to_string()),
        set: |v, t| v.admin_token = Some(t),
        get: |v| v.admin_token.as_ref().map(|_| SET.to_owned()),
    },
    &Def {
        info: Info {
            name: "admin_token_file",
            env: "IDEM_ADMIN_TOKEN_FILE",
            value_name: "F",
            help: "the same, read from the first line of a file",
            example: "/etc/idem/admin-token",
            ..Info::BASE
        },
        parse: parse_path,
        set: |v, p| v.admin_token_file = Some(p),
        get: |v| path(v.admin_token_file.as_ref()),
    },
    &Def {
        info: Info {
            name: "request_read_timeout",
            env: "IDEM_REQUEST_READ_TIMEOUT",
            value_name: "D",
            help: "time to receive a request's header block, and then its whole body; \
                   slower clients (slowloris) are cut off: a slow head closes the \
                   connection, a slow body gets 408 and its key is never claimed. A new \
                   connection's first head is timed from the accept, so one that sends \
                   nothing (or half an HTTP/2 preface or HEADERS block) is closed too (R25)",
            example: "10s",
            ..Info::BASE
        },
        parse: parse_timeout,
        set: |v, d| v.proxy.request_read_timeout = d,
        get: |v| Some(show_duration(v.proxy.request_read_timeout)),
    },
    // Connection limits (R25).
    &Def {
        info: Info {
            name: "idle_timeout",
            env: "IDEM_IDLE_TIMEOUT",
            value_name: "D",
            help: "a keep-alive connection with no request in progress is closed after this \
                   (nginx's `keepalive_timeout`); so is one whose client has not read its \
                   response for this long (R25)",
            example: "20s",
            ..Info::BASE
        },
        parse: parse_timeout,
        set: |v, d| v.proxy.connections.idle_timeout = d,
        get: |v| Some(show_duration(v.proxy.connections.idle_timeout)),
    },
    &Def {
        info: Info {
            name: "max_connections",
            env: "IDEM_MAX_CONNECTIONS",
            value_name: "N",
            help: "client connections served at once; further ones wait in the listen \
                   backlog, unaccepted, until one closes (R25). Keep it below the \
                   process's file descriptor limit (`ulimit -n`) minus the upstream \
                   connections",
            example: "500",
            ..Info::BASE
        },
        parse: parse_count,
        set: |v, n| v.proxy.connections.max_connections = n,
        get: |v| Some(v.proxy.connections.max_connections.to_string()),
    },
    &Def {
        info: Info {
            name: "max_header_bytes",
            env: "IDEM_MAX_HEADER_BYTES",
            value_name: "SIZE",
            help: "largest request header block (HTTP/1 request line and headers, HTTP/2 \
                   header list), 8KiB to 16MiB; larger gets 431 (R25)",
            example: "16KiB",
            ..Info::BASE
        },
        parse: parse_header_bytes,
        set: |v, n| v.proxy.connections.max_header_bytes = n,
        get: |v| Some(show_size(v.proxy.connections.max_header_bytes)),
    },
    &Def {
        info: Info {
            name: "runtime",
            env: "IDEM_RUNTIME",
            value_name: "SHAPE",
            help: "`work-stealing`: one multi-threaded runtime, any thread runs any \
                   connection; `workers`: one single-threaded runtime per core, each with \
                   its own upstream connections, and each client connection stays on one \
                   (nginx's worker model)",
            example: "work-stealing",
            ..Info::BASE
        },
        parse: Runtime::parse,
        set: |v, r| v.proxy.runtime = r,
        get: |v| Some(v.proxy.runtime.as_str().to_owned()),
    },
    &Def {
        info: Info {
            name: "shutdown_grace",
            env: "IDEM_SHUTDOWN_GRACE",
            value_name: "D",
            help: "on SIGTERM/Ctrl-C, time for open requests to finish and record",
            example: "12s",
            ..Info::BASE
        },
        parse: parse_duration,
        set: |v, d| v.proxy.shutdown_grace = d,
        get: |v| Some(show_duration(v.proxy.shutdown_grace)),
    },
    &Def {
        info: Info {
            name: "problem_base",
            env: "IDEM_PROBLEM_BASE",
            value_name: "URL",
            help: "problem `type` URIs become `URL#slug` (R17); publish `idem docs` output \
                   at `URL`",
            example: "https://api.example.com/docs/idempotency",
            ..Info::BASE
        },
        parse: parse_text,
        set: |v, b| v.edit_policy(|p| p.problem_base(b)),
        get: |v| {
            Some(v.peek().problem_base().map_or_else(
                || {
                    idem::core::problem::TYPE_BASE
                        .trim_end_matches('#')
                        .to_owned()
                },
                ToString::to_string,
            ))
        },
    },
    &Def {
        info: Info {
            name: "problem_template_file",
            env: "IDEM_PROBLEM_TEMPLATE_FILE",
            value_name: "PATH",
            help: "answer idem's errors in the API's own shape: a JSON file mapping problem \
                   slugs (or `\"*\"`) to `{\"content_type\": …, \"body\": …}`, where \
                   string values `\"{detail}\"`, `\"{status}\"`… become the problem's \
                   values; see [Errors in your API's shape](#errors-in-your-apis-shape) (R17)",
            example: "/etc/idem/errors.json",
            ..Info::BASE
        },
        parse: parse_path,
        set: |v, p| v.problem_template_file = Some(p),
        get: |v| path(v.problem_template_file.as_ref()),
    },
    &Def {
        info: Info {
            name: "cors_origins",
            env: "IDEM_CORS_ORIGINS",
            value_name: "LIST",
            help: "browser origins (`https://app.example.com`, or `*`) allowed to read \
                   idem's own answers and replays: the origin is echoed in \
                   `Access-Control-Allow-Origin` and `Idempotent-Replayed`, `Retry-After` \
                   are exposed; preflights stay with the API. See [Browsers](#browsers)",
            unset: "none",
            example: "https://app.example.com",
            route: true,
            kind: Kind::List,
            ..Info::BASE
        },
        parse: |s| s.parse::<CorsOrigins>(),
        set: |v, c| v.edit_policy(|b| b.cors_origins(c)),
        get: |v| {
            let c = v.peek().cors_origins();
            (!c.is_empty()).then(|| c.to_string())
        },
    },
    &Def {
        info: Info {
            name: "cors_credentials",
            env: "IDEM_CORS_CREDENTIALS",
            help: "with `cors_origins`, let those origins read idem's answers and replays \
                   from requests made with credentials (`fetch(…, {credentials: \"include\"})`): \
                   adds `Access-Control-Allow-Credentials: true`, as the API's own CORS \
                   answers do. See [Browsers](#browsers)",
            example: "true",
            route: true,
            kind: Kind::Switch,
            ..Info::BASE
        },
        parse: parse_bool,
        set: |v, yes| v.edit_policy(|b| b.cors_credentials(yes)),
        get: |v| Some(v.peek().cors_credentials().to_string()),
    },
];

/// `--config`: not a setting (a file cannot name another file), but a flag of the same
/// commands, documented in the same table.
pub const CONFIG: Info = Info {
    name: "config",
    env: "IDEM_CONFIG",
    value_name: "FILE",
    help: "a TOML file with these settings and per-route rules, see \
           [below](#configuration-file); flags and environment variables override its values",
    unset: "none",
    example: "idem.toml",
    ..Info::BASE
};

/// The setting called `name`.
pub fn find(name: &str) -> Option<&'static dyn Setting> {
    SETTINGS.iter().copied().find(|s| s.info().name == name)
}
