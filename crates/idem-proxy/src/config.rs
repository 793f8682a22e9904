//! Raw flags ([`ServeArgs`]) checked once into the settings the server runs with.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use idem::policy::{ConfigError, OnConcurrent, Policy, StatusSet, StoreFailure};
use idem::scope::ScopeSource;
use idem::store::{KeyListError, SealingKeys};

use crate::cli::{ConcurrentMode, ServeArgs};
use crate::forward::{Upstream, UpstreamError};

/// What the proxy needs to run, given a listener and a store.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where requests go.
    pub upstream: Upstream,
    /// The engine's settings.
    pub policy: Policy,
    /// Time allowed for the upstream's response head (R12).
    pub upstream_timeout: Duration,
    /// How long shutdown waits for open requests.
    pub shutdown_grace: Duration,
}

impl ProxyConfig {
    /// Settings for `upstream` with every default.
    pub fn new(upstream: Upstream) -> Self {
        Self {
            upstream,
            policy: Policy::default(),
            upstream_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// The validated `idem serve` settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The store URL.
    pub store: String,
    /// Where the admin listener listens, if anywhere.
    pub admin_listen: Option<SocketAddr>,
    /// The keys that seal the store, if encryption at rest is on.
    pub encryption: Option<SealingKeys>,
    /// Everything else.
    pub proxy: ProxyConfig,
}

/// A flag value that does not make sense.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlagError {
    /// The upstream URL.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A value that does not parse.
    #[error("invalid --{flag} `{value}`: {reason}")]
    Value {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
        /// Why it is wrong.
        reason: String,
    },
    /// Settings that contradict each other.
    #[error(transparent)]
    Policy(#[from] ConfigError),
    /// The encryption key file cannot be read.
    #[error("cannot read --encryption-key-file `{path}`")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The encryption key list does not parse (the message never shows key material).
    #[error("invalid encryption keys ({origin})")]
    Keys {
        /// Where the list came from.
        origin: String,
        /// What is wrong.
        #[source]
        source: KeyListError,
    },
}

/// The sealing keys the flags name, if any.
fn encryption(a: &ServeArgs) -> Result<Option<SealingKeys>, FlagError> {
    let (text, origin) = match (&a.encryption_key_file, &a.encryption_keys) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|source| FlagError::KeyFile {
                path: path.display().to_string(),
                source,
            })?;
            (text, format!("--encryption-key-file {}", path.display()))
        }
        (None, Some(text)) => (text.clone(), "IDEM_ENCRYPTION_KEYS".to_owned()),
        (None, None) => return Ok(None),
    };
    SealingKeys::parse(&text)
        .map(Some)
        .map_err(|source| FlagError::Keys { origin, source })
}

fn bad(flag: &'static str, value: &str, reason: impl Into<String>) -> FlagError {
    FlagError::Value {
        flag,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn header_names(flag: &'static str, names: &[String]) -> Result<Vec<HeaderName>, FlagError> {
    names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(|n| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| bad(flag, n, "not a header name"))
        })
        .collect()
}

impl TryFrom<&ServeArgs> for ServeConfig {
    type Error = FlagError;

    fn try_from(a: &ServeArgs) -> Result<Self, FlagError> {
        let upstream: Upstream = a.upstream.parse()?;
        let methods = a
            .methods
            .iter()
            .map(|m| m.trim().to_ascii_uppercase())
            .filter(|m| !m.is_empty())
            .map(|m| {
                Method::from_bytes(m.as_bytes()).map_err(|_| bad("methods", &m, "not a method"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let header = HeaderName::from_bytes(a.header.trim().as_bytes())
            .map_err(|_| bad("header", &a.header, "not a header name"))?;
        let scope = if a
            .scope_header
            .iter()
            .any(|h| h.eq_ignore_ascii_case("none"))
        {
            ScopeSource::none()
        } else {
            ScopeSource::headers(header_names("scope-header", &a.scope_header)?)
        };
        let fingerprint = a
            .fingerprint
            .parse()
            .map_err(|e: String| bad("fingerprint", &a.fingerprint, e))?;
        let mismatch_status = match a.mismatch_status {
            400 | 422 => {
                StatusCode::from_u16(a.mismatch_status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY)
            }
            _ => {
                return Err(bad(
                    "mismatch-status",
                    &a.mismatch_status.to_string(),
                    "expected 422 or 400",
                ));
            }
        };
        let cacheable: StatusSet = a
            .cacheable
            .parse()
            .map_err(|e: String| bad("cacheable", &a.cacheable, e))?;
        let on_concurrent = match a.on_concurrent {
            ConcurrentMode::Conflict => OnConcurrent::Conflict,
            ConcurrentMode::Wait => OnConcurrent::Wait {
                timeout: a.wait_timeout,
            },
        };
        let policy = Policy::builder()
            .header(header)
            .methods(methods)
            .require_key(a.require_key)
            .scope(scope)
            .fingerprint(fingerprint)
            .significant_headers(header_names("significant-headers", &a.significant_headers)?)
            .lease(a.lease)
            .ttl(a.ttl)
            .on_concurrent(on_concurrent)
            .cacheable(cacheable)
            .mismatch_status(mismatch_status)
            .max_request_body(a.max_request_body)
            .max_stored_body(a.max_stored_body)
            .store_failure(if a.fail_open {
                StoreFailure::FailOpen
            } else {
                StoreFailure::FailClosed
            })
            .deny_headers(header_names("deny-headers", &a.deny_headers)?)
            .streaming_types(
                a.streaming_types
                    .iter()
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty()),
            )
            .build()?;
        Ok(Self {
            listen: a.listen,
            store: a.store.clone(),
            admin_listen: a.admin_listen,
            encryption: encryption(a)?,
            proxy: ProxyConfig {
                upstream,
                policy,
                upstream_timeout: a.upstream_timeout,
                shutdown_grace: a.shutdown_grace,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<ServeConfig, String> {
        let mut argv = vec!["idem", "serve", "--upstream", "http://127.0.0.1:9"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Serve(a) = cli.command else {
            unreachable!()
        };
        ServeConfig::try_from(a.as_ref()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = parse(&[]).unwrap();
        let p = &c.proxy.policy;
        assert_eq!(p.methods(), &[Method::POST, Method::PATCH]);
        assert_eq!(p.ttl(), Duration::from_secs(86400));
        assert_eq!(p.lease(), Duration::from_secs(60));
        assert_eq!(p.mismatch_status(), 422);
        assert_eq!(p.on_concurrent(), OnConcurrent::Conflict);
        assert_eq!(c.store, "file:./idem-data");
    }

    #[test]
    fn flags_are_applied() {
        let c = parse(&[
            "--on-concurrent",
            "wait",
            "--wait-timeout",
            "5s",
            "--methods",
            "post,put",
            "--scope-header",
            "x-tenant",
            "--fingerprint",
            "json",
            "--mismatch-status",
            "400",
            "--max-request-body",
            "2KiB",
            "--fail-open",
        ])
        .unwrap();
        let p = &c.proxy.policy;
        assert_eq!(
            p.on_concurrent(),
            OnConcurrent::Wait {
                timeout: Duration::from_secs(5)
            }
        );
        assert_eq!(p.methods(), &[Method::POST, Method::PUT]);
        assert_eq!(p.mismatch_status(), 400);
        assert_eq!(p.max_request_body(), 2048);
        assert_eq!(p.store_failure(), StoreFailure::FailOpen);
        assert_eq!(
            p.scope().header_names(),
            &[HeaderName::from_static("x-tenant")]
        );
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        for args in [
            &["--ttl", "forever"][..],
            &["--mismatch-status", "418"],
            &["--cacheable", "7xx"],
            &["--fingerprint", "xml"],
            &["--methods", "PO ST"],
            &["--lease", "1ms"],
        ] {
            let err = parse(args).unwrap_err();
            assert!(!err.trim().is_empty(), "{args:?}");
        }
        let cli = Cli::try_parse_from(["idem", "serve", "--upstream", "https://x"]).unwrap();
        let Command::Serve(a) = cli.command else {
            unreachable!()
        };
        let err = ServeConfig::try_from(a.as_ref()).unwrap_err();
        assert!(err.to_string().contains("https"));
    }
}
