//! [`Values`]: every setting's value while the sources are layered, with where each came
//! from; [`Values::finish`] checks them together into a [`ServeConfig`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use idem::core::policy::{OnConcurrent, Policy, PolicyBuilder};
use idem::core::problem::ProblemTemplates;
use idem::core::scope::ScopeSecret;
use idem::core::store::SealingKeys;

use crate::admin::AdminToken;
use crate::config::{FlagError, ListenerTls, ProxyConfig, Runtime, ServeConfig};
use crate::forward::Upstream;
use crate::routes::Route;

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// The command line.
    Flag,
    /// An `IDEM_*` environment variable.
    Env,
    /// The config file, at `FILE:LINE`.
    File(String),
    /// A `[[route]]` rule, the setting at `FILE:LINE`.
    Route(String),
    /// idem's built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag => f.write_str("flag"),
            Self::Env => f.write_str("env"),
            Self::File(at) => write!(f, "file {at}"),
            Self::Route(at) => write!(f, "route {at}"),
            Self::Default => f.write_str("default"),
        }
    }
}

/// What a concurrent duplicate gets (R10), apart from how long it may wait: the two are
/// separate settings (`on_concurrent`, `wait_timeout`) that become one
/// [`OnConcurrent`] when the policy is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConcurrentMode {
    /// 409 with Retry-After at once.
    Conflict,
    /// Wait for the first request, then replay its response.
    Wait,
}

impl ConcurrentMode {
    /// Parses `conflict` or `wait`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "conflict" => Ok(Self::Conflict),
            "wait" => Ok(Self::Wait),
            _ => Err(format!("`{s}` is not conflict or wait")),
        }
    }

    /// The name [`parse`](Self::parse) reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conflict => "conflict",
            Self::Wait => "wait",
        }
    }
}

/// Every setting's value, starting from the built-in defaults; each setting of the
/// table ([`SETTINGS`](super::SETTINGS)) reads and writes its own field.
///
/// The defaults are [`Policy::default()`] for the engine, [`ProxyConfig::new`] for the
/// proxy, and the field initialisers of [`Values::default`] for the rest: each default
/// is written once, and `--help`, the README and `check-config` read it from here.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Values {
    /// The engine's settings, checked together by [`Values::policy`].
    pub policy: PolicyBuilder,
    /// `on_concurrent`.
    pub on_concurrent: ConcurrentMode,
    /// `wait_timeout`: kept apart from the policy, which holds it only in wait mode,
    /// so a route that switches to `wait` inherits the server-wide timeout.
    pub wait_timeout: Duration,
    /// The proxy's own settings. Its `upstream` and `policy` are not used: they are
    /// [`Values::upstream`] and [`Values::policy`], which may still be missing or
    /// unchecked.
    pub proxy: ProxyConfig,
    /// `upstream` (required to serve, not to document).
    pub upstream: Option<Upstream>,
    /// `listen`.
    pub listen: SocketAddr,
    /// `store`.
    pub store: String,
    /// `admin_listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `admin_token`.
    pub admin_token: Option<AdminToken>,
    /// `admin_token_file`, read by [`finish`](Self::finish).
    pub admin_token_file: Option<PathBuf>,
    /// `encryption_key_file`, read by [`finish`](Self::finish).
    pub encryption_key_file: Option<PathBuf>,
    /// `encryption_keys`.
    pub encryption_keys: Option<SealingKeys>,
    /// `scope_secret_file`, read by [`finish`](Self::finish).
    pub scope_secret_file: Option<PathBuf>,
    /// `tls_cert`; with `tls_key`, [`ProxyConfig::tls`].
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`.
    pub tls_key: Option<PathBuf>,
    /// `problem_template_file`, read by [`policy`](Self::policy).
    pub problem_template_file: Option<PathBuf>,
    /// Where each value that is not the default came from, by setting name.
    pub origins: BTreeMap<&'static str, Origin>,
}

/// Stands in for the upstream in [`Values::proxy`] until [`Values::finish`] puts the real
/// one there (and refuses to finish without one). `.invalid` never resolves (RFC 2606).
fn no_upstream() -> Upstream {
    match "http://upstream.invalid".parse() {
        Ok(u) => u,
        // A constant URL that the parser accepts (tested by `defaults_are_valid`).
        Err(e) => unreachable!("{e}"),
    }
}

impl Default for Values {
    fn default() -> Self {
        let policy = Policy::builder();
        // The engine's default mode; its wait, when the default is to conflict, is ours.
        let (on_concurrent, wait_timeout) = match policy.peek().on_concurrent() {
            OnConcurrent::Conflict => (ConcurrentMode::Conflict, Duration::from_secs(30)),
            OnConcurrent::Wait { timeout } => (ConcurrentMode::Wait, timeout),
        };
        Self {
            policy,
            on_concurrent,
            wait_timeout,
            // `idem serve` owns its process: one single-threaded runtime per core. The
            // library's `serve` runs on its caller's runtime unless told otherwise.
            proxy: ProxyConfig {
                runtime: Runtime::Workers,
                ..ProxyConfig::new(no_upstream())
            },
            upstream: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            store: "file:./idem-data".to_owned(),
            admin_listen: None,
            admin_token: None,
            admin_token_file: None,
            encryption_key_file: None,
            encryption_keys: None,
            scope_secret_file: None,
            tls_cert: None,
            tls_key: None,
            problem_template_file: None,
            origins: BTreeMap::new(),
        }
    }
}

impl Values {
    /// Changes the policy builder with `f`.
    pub fn edit_policy(&mut self, f: impl FnOnce(PolicyBuilder) -> PolicyBuilder) {
        let builder = std::mem::replace(&mut self.policy, Policy::builder());
        self.policy = f(builder);
    }

    /// The policy as set so far, unchecked (what the settings read back).
    pub fn peek(&self) -> &Policy {
        self.policy.peek()
    }

    /// Where setting `name`'s value came from.
    pub fn origin(&self, name: &str) -> Origin {
        self.origins.get(name).cloned().unwrap_or(Origin::Default)
    }

    /// The engine's settings, checked; a bad value is named with where it came from.
    pub fn policy(&self) -> Result<Policy, FlagError> {
        let on_concurrent = match self.on_concurrent {
            ConcurrentMode::Conflict => OnConcurrent::Conflict,
            ConcurrentMode::Wait => OnConcurrent::Wait {
                timeout: self.wait_timeout,
            },
        };
        let mut builder = self.policy.clone().on_concurrent(on_concurrent);
        if let Some(path) = &self.problem_template_file {
            builder = builder.problem_templates(self.templates(path)?);
        }
        builder.build().map_err(|source| {
            let idem::core::policy::ConfigError::Invalid { name, .. } = &source else {
                return FlagError::Policy {
                    at: String::new(),
                    source,
                };
            };
            let at = match self.origin(name) {
                Origin::File(at) | Origin::Route(at) => format!("{at}: "),
                _ => String::new(),
            };
            FlagError::Policy { at, source }
        })
    }

    /// The problem templates in `path` (R17), checked; the error names the file and
    /// where its path was set.
    fn templates(&self, path: &std::path::Path) -> Result<ProblemTemplates, FlagError> {
        let place = match self.origin("problem_template_file") {
            Origin::File(at) | Origin::Route(at) => format!("{at}: `problem_template_file`"),
            Origin::Env => "IDEM_PROBLEM_TEMPLATE_FILE".to_owned(),
            _ => "--problem-template-file".to_owned(),
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            FlagError::Value(format!("{place}: cannot read `{}`: {e}", path.display()))
        })?;
        ProblemTemplates::parse(&text)
            .map_err(|e| FlagError::Value(format!("{place}: `{}`: {e}", path.display())))
    }

    /// The `idem serve` settings, checked together: `policy` is [`Self::policy`]'s,
    /// `routes` the route rules built over it.
    pub fn finish(&self, policy: Policy, routes: Vec<Route>) -> Result<ServeConfig, FlagError> {
        let upstream = self.upstream.clone().ok_or(FlagError::MissingUpstream)?;
        let admin_token = match (&self.admin_token, &self.admin_token_file) {
            (Some(_), Some(_)) => {
                return Err(FlagError::Conflict(
                    "give --admin-token or --admin-token-file, not both",
                ));
            }
            (Some(token), None) => Some(token.clone()),
            (None, Some(file)) => AdminToken::load(None, Some(file))
                .map_err(|e| FlagError::AdminToken(format!("{e:#}")))?,
            (None, None) => None,
        };
        if admin_token.is_some() && self.admin_listen.is_none() {
            return Err(FlagError::Conflict(
                "--admin-token needs --admin-listen: the admin API is served there",
            ));
        }
        let encryption = match (&self.encryption_key_file, &self.encryption_keys) {
            (Some(_), Some(_)) => {
                return Err(FlagError::Conflict(
                    "give --encryption-key-file or --encryption-keys, not both",
                ));
            }
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|source| FlagError::KeyFile {
                    path: path.display().to_string(),
                    source,
                })?;
                Some(SealingKeys::parse(&text).map_err(|source| FlagError::Keys {
                    origin: format!("--encryption-key-file {}", path.display()),
                    source,
                })?)
            }
            (None, keys) => keys.clone(),
        };
        let (policy, routes) = match &self.scope_secret_file {
            None => (policy, routes),
            Some(path) => {
                let secret = read_scope_secret(path)?;
                let routes = routes
                    .into_iter()
                    .map(|mut r| {
                        r.policy = r.policy.map(|p| keyed(p, &secret));
                        r
                    })
                    .collect();
                (keyed(policy, &secret), routes)
            }
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ListenerTls {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => return Err(FlagError::Conflict("--tls-cert needs --tls-key")),
            (None, Some(_)) => return Err(FlagError::Conflict("--tls-key needs --tls-cert")),
        };
        let client = &self.proxy.upstream_tls;
        match (&client.client_cert, &client.client_key) {
            (Some(_), None) => {
                return Err(FlagError::Conflict(
                    "--upstream-client-cert needs --upstream-client-key",
                ));
            }
            (None, Some(_)) => {
                return Err(FlagError::Conflict(
                    "--upstream-client-key needs --upstream-client-cert",
                ));
            }
            _ => {}
        }
        Ok(ServeConfig {
            listen: self.listen,
            store: self.store.clone(),
            admin_listen: self.admin_listen,
            admin_token,
            encryption,
            proxy: ProxyConfig {
                upstream,
                policy,
                routes,
                tls,
                ..self.proxy.clone()
            },
        })
    }
}

/// Reads `--scope-secret-file`; the error names the file, never its content.
pub fn read_scope_secret(path: &std::path::Path) -> Result<ScopeSecret, FlagError> {
    let bytes = std::fs::read(path).map_err(|e| {
        FlagError::ScopeSecret(format!(
            "cannot read --scope-secret-file `{}`: {e}",
            path.display()
        ))
    })?;
    ScopeSecret::new(&bytes).map_err(|e| {
        FlagError::ScopeSecret(format!("--scope-secret-file `{}`: {e}", path.display()))
    })
}

/// `policy` with its scope digests keyed by `secret` (R4).
fn keyed(policy: Policy, secret: &ScopeSecret) -> Policy {
    let scope = policy.scope().clone().keyed(secret.clone());
    policy.with_scope(scope)
}
