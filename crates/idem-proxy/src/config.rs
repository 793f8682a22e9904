//! Raw flags ([`ServeArgs`]) checked once into the settings the server runs with.
//!
//! [`parse_args`] reads the command line with the config file applied (file values
//! become clap defaults, so a flag beats its environment variable, which beats the
//! file, which beats the built-in default) and records where every value came from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use http::{HeaderName, Method, StatusCode};
use idem::policy::{ConfigError, OnConcurrent, Policy, StatusSet, StoreFailure};
use idem::scope::ScopeSource;
use idem::store::{KeyListError, SealingKeys};

use crate::cli::{Cli, Command, ConcurrentMode, ServeArgs, parse_duration, parse_size};
use crate::file::{ConfigFile, RouteRule, Setting};
use crate::forward::{Upstream, UpstreamError};
use crate::routes::{PathPattern, Route};

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
    /// Per-route rules, first match wins; requests matching none get `policy`.
    pub routes: Vec<Route>,
    /// Time allowed to receive a request: its head, then separately its whole body.
    pub request_read_timeout: Duration,
}

impl ProxyConfig {
    /// Settings for `upstream` with every default.
    pub fn new(upstream: Upstream) -> Self {
        Self {
            upstream,
            policy: Policy::default(),
            upstream_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            routes: Vec::new(),
            request_read_timeout: Duration::from_secs(30),
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
    /// No upstream anywhere.
    #[error("no upstream: set --upstream, IDEM_UPSTREAM or `upstream` in the config file")]
    MissingUpstream,
    /// A bad value in the config file, with its place.
    #[error("{0}")]
    File(String),
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

fn methods<S: AsRef<str>>(list: &[S]) -> Result<Vec<Method>, FlagError> {
    list.iter()
        .map(|m| m.as_ref().trim().to_ascii_uppercase())
        .filter(|m| !m.is_empty())
        .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| bad("methods", &m, "not a method")))
        .collect()
}

impl TryFrom<&ServeArgs> for ServeConfig {
    type Error = FlagError;

    fn try_from(a: &ServeArgs) -> Result<Self, FlagError> {
        let upstream: Upstream = a
            .upstream
            .as_deref()
            .ok_or(FlagError::MissingUpstream)?
            .parse()?;
        if a.request_read_timeout.is_zero() {
            return Err(bad(
                "request-read-timeout",
                "0s",
                "must be longer than zero",
            ));
        }
        Ok(Self {
            listen: a.listen,
            store: a.store.clone(),
            admin_listen: a.admin_listen,
            encryption: encryption(a)?,
            proxy: ProxyConfig {
                upstream,
                policy: server_policy(a)?,
                upstream_timeout: a.upstream_timeout,
                shutdown_grace: a.shutdown_grace,
                routes: Vec::new(),
                request_read_timeout: a.request_read_timeout,
            },
        })
    }
}

impl ServeConfig {
    /// The settings from flags (with the file's values applied by [`parse_args`]) and
    /// the file's route rules.
    pub fn resolve(a: &ServeArgs, file: Option<&ConfigFile>) -> Result<Self, FlagError> {
        let mut config = Self::try_from(a)?;
        if let Some(file) = file {
            config.proxy.routes = routes(&config.proxy.policy, a.wait_timeout, file)?;
        }
        Ok(config)
    }
}

/// The server-wide policy: what requests that match no route get.
pub fn server_policy(a: &ServeArgs) -> Result<Policy, FlagError> {
    {
        let methods = methods(&a.methods)?;
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
        let mut builder = Policy::builder();
        if let Some(base) = &a.problem_base {
            builder = builder.problem_base(base.trim());
        }
        let policy = builder
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
        Ok(policy)
    }
}

/// The file's `[[route]]` rules over `base` (the server-wide policy); `wait_timeout` is
/// the server-wide wait for rules that switch to `on_concurrent = "wait"`.
pub fn routes(
    base: &Policy,
    wait_timeout: Duration,
    file: &ConfigFile,
) -> Result<Vec<Route>, FlagError> {
    file.routes
        .iter()
        .map(|rule| route(base, wait_timeout, rule))
        .collect()
}

fn route(base: &Policy, wait_timeout: Duration, rule: &RouteRule) -> Result<Route, FlagError> {
    let at = |what: String| {
        FlagError::File(format!("{}: route `{}`: {what}", rule.origin, rule.pattern))
    };
    let pattern: PathPattern = rule.pattern.parse().map_err(&at)?;
    if !rule.enabled {
        return Ok(Route {
            pattern,
            policy: None,
            origin: rule.origin.clone(),
        });
    }
    let invalid = |s: &Setting, reason: String| {
        FlagError::File(format!(
            "{}: route `{}`: invalid {} `{}`: {reason}",
            s.origin, rule.pattern, s.name, s.value
        ))
    };
    let list = |s: &Setting| -> Vec<String> {
        s.value
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect()
    };
    let mut b = base.to_builder();
    match rule.get("methods") {
        Some(s) => b = b.methods(methods(&list(s)).map_err(|e| invalid(s, e.to_string()))?),
        // A rule naming methods covers those, whatever the server-wide list says.
        None if !pattern.methods().is_empty() => b = b.methods(pattern.methods().to_vec()),
        None => {}
    }
    if let Some(s) = rule.get("require_key") {
        b = b.require_key(s.value == "true");
    }
    if let Some(s) = rule.get("ttl") {
        b = b.ttl(parse_duration(&s.value).map_err(|e| invalid(s, e))?);
    }
    if let Some(s) = rule.get("lease") {
        b = b.lease(parse_duration(&s.value).map_err(|e| invalid(s, e))?);
    }
    if let Some(s) = rule.get("fingerprint") {
        b = b.fingerprint(s.value.parse().map_err(|e| invalid(s, e))?);
    }
    if let Some(s) = rule.get("significant_headers") {
        b = b.significant_headers(
            header_names("significant-headers", &list(s)).map_err(|e| invalid(s, e.to_string()))?,
        );
    }
    if let Some(s) = rule.get("cacheable") {
        b = b.cacheable(s.value.parse().map_err(|e| invalid(s, e))?);
    }
    if let Some(s) = rule.get("max_request_body") {
        b = b.max_request_body(parse_size(&s.value).map_err(|e| invalid(s, e))?);
    }
    if let Some(s) = rule.get("max_stored_body") {
        b = b.max_stored_body(parse_size(&s.value).map_err(|e| invalid(s, e))?);
    }
    let timeout = match (rule.get("wait_timeout"), base.on_concurrent()) {
        (Some(s), _) => parse_duration(&s.value).map_err(|e| invalid(s, e))?,
        (None, OnConcurrent::Wait { timeout }) => timeout,
        (None, OnConcurrent::Conflict) => wait_timeout,
    };
    let mode = match rule.get("on_concurrent") {
        Some(s) => match s.value.as_str() {
            "conflict" => OnConcurrent::Conflict,
            "wait" => OnConcurrent::Wait { timeout },
            _ => return Err(invalid(s, "expected conflict or wait".into())),
        },
        None => match base.on_concurrent() {
            OnConcurrent::Wait { .. } => OnConcurrent::Wait { timeout },
            OnConcurrent::Conflict => OnConcurrent::Conflict,
        },
    };
    let policy = b
        .on_concurrent(mode)
        .build()
        .map_err(|e| at(e.to_string()))?;
    Ok(Route {
        pattern,
        policy: Some(policy),
        origin: rule.origin.clone(),
    })
}

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

/// The command line as read by [`parse_args`].
#[derive(Debug)]
pub struct Parsed {
    /// The flags, with the config file's values applied.
    pub cli: Cli,
    /// The config file, when one was given.
    pub file: Option<ConfigFile>,
    /// Where each server-wide setting (by flag name with `_`) came from.
    pub origins: BTreeMap<String, Origin>,
}

/// Why the command line could not be read.
#[derive(Debug)]
pub enum ParseError {
    /// clap's own error (also `--help` and `--version`): print it with `exit()`.
    Clap(clap::Error),
    /// The config file is unreadable or invalid: one line.
    Config(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Clap(e) => write!(f, "{e}"),
            Self::Config(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ParseError {}

/// Subcommands that take the `serve` settings (and so `--config`).
const CONFIGURED: [&str; 3] = ["serve", "check-config", "docs"];

/// Reads `argv` (program name first) with the config file applied.
///
/// The file (`--config`, `IDEM_CONFIG`) is read after a first pass; its values, each
/// checked by its flag's own parser, become the flags' defaults, and a second pass
/// gives flag > environment > file > built-in default.
pub fn parse_args<I, T>(argv: I) -> Result<Parsed, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let command = Cli::command();
    let matches = command
        .clone()
        .try_get_matches_from(&argv)
        .map_err(ParseError::Clap)?;
    let sub = match matches.subcommand() {
        Some((name, sub)) if CONFIGURED.contains(&name) => Some((name.to_owned(), sub)),
        _ => None,
    };
    let Some((name, sub)) = sub else {
        let cli = Cli::from_arg_matches(&matches).map_err(ParseError::Clap)?;
        return Ok(Parsed {
            cli,
            file: None,
            origins: BTreeMap::new(),
        });
    };
    let file = match sub.get_one::<PathBuf>("config") {
        Some(path) => Some(ConfigFile::load(path).map_err(ParseError::Config)?),
        None => None,
    };
    let (matches, file) = match file {
        None => (matches, None),
        Some(file) => {
            check_file_values(&name, &file).map_err(ParseError::Config)?;
            let with_file = command.mut_subcommand(&name, |mut sc| {
                for s in &file.settings {
                    let value = s.value.clone();
                    sc = sc.mut_arg(s.name, |a| a.default_value(value));
                }
                sc
            });
            let m = with_file
                .try_get_matches_from(&argv)
                .map_err(ParseError::Clap)?;
            (m, Some(file))
        }
    };
    let mut origins = BTreeMap::new();
    if let Some((_, sub)) = matches.subcommand() {
        for id in sub.ids() {
            let id = id.as_str();
            if matches!(id, "config" | "explain") {
                continue;
            }
            let from_file = file
                .as_ref()
                .and_then(|f| f.settings.iter().find(|s| s.name == id));
            let origin = match (sub.value_source(id), from_file) {
                (Some(ValueSource::CommandLine), _) => Origin::Flag,
                (Some(ValueSource::EnvVariable), _) => Origin::Env,
                (_, Some(s)) => Origin::File(s.origin.clone()),
                _ => Origin::Default,
            };
            origins.insert(id.to_owned(), origin);
        }
    }
    let cli = Cli::from_arg_matches(&matches).map_err(ParseError::Clap)?;
    Ok(Parsed { cli, file, origins })
}

/// Checks each file value with its flag's parser, so a bad one is reported with its
/// place in the file.
fn check_file_values(sub: &str, file: &ConfigFile) -> Result<(), String> {
    let mut command = Cli::command();
    command.build();
    let Some(sc) = command.find_subcommand(sub) else {
        return Ok(());
    };
    for s in &file.settings {
        let Some(arg) = sc.get_arguments().find(|a| a.get_id() == s.name) else {
            return Err(format!("{}: `{}` is not a setting", s.origin, s.name));
        };
        // The flag alone in a command of its own, the file value as its default and no
        // environment, so clap's parser checks exactly this value.
        let probe = clap::Command::new("idem").arg(
            arg.clone()
                .env(None)
                .required(false)
                .default_value(s.value.clone()),
        );
        if let Err(e) = probe.try_get_matches_from(["idem"]) {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            return Err(format!(
                "{}: `{}` = \"{}\": {first}",
                s.origin, s.name, s.value
            ));
        }
    }
    Ok(())
}

/// Tells which of `parsed`'s subcommands carries the `serve` settings.
pub fn serve_args(cli: &Cli) -> Option<&ServeArgs> {
    match &cli.command {
        Command::Serve(a) => Some(a),
        Command::CheckConfig(a) => Some(&a.serve),
        Command::Docs(a) => Some(&a.serve),
        _ => None,
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
    fn route_rules_inherit_and_override() {
        let cli = Cli::try_parse_from([
            "idem",
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--wait-timeout",
            "7s",
            "--ttl",
            "2h",
        ])
        .unwrap();
        let Command::Serve(a) = cli.command else {
            unreachable!()
        };
        let file = ConfigFile::parse(
            "f.toml",
            "[[route]]\nmatch = \"PUT /a/*\"\non_concurrent = \"wait\"\n\n\
             [[route]]\nmatch = \"/b\"\nmethods = \"DELETE\"\nlease = \"5s\"\n\n\
             [[route]]\nmatch = \"/c\"\nenabled = false\n",
        )
        .unwrap();
        let c = ServeConfig::resolve(&a, Some(&file)).unwrap();
        let r = &c.proxy.routes;
        let p0 = r[0].policy.as_ref().unwrap();
        // A rule naming methods covers exactly those; the wait uses the server's timeout.
        assert_eq!(p0.methods(), &[Method::PUT]);
        assert_eq!(
            p0.on_concurrent(),
            OnConcurrent::Wait {
                timeout: Duration::from_secs(7)
            }
        );
        assert_eq!(p0.ttl(), Duration::from_secs(7200));
        let p1 = r[1].policy.as_ref().unwrap();
        assert_eq!(p1.methods(), &[Method::DELETE]);
        assert_eq!(p1.lease(), Duration::from_secs(5));
        assert_eq!(p1.on_concurrent(), OnConcurrent::Conflict);
        assert!(r[2].policy.is_none());
        assert_eq!(r[2].origin, "f.toml:11");
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
