//! The command line: every subcommand's flags.
//!
//! The `serve` settings come from [`crate::settings`]: each can also be set
//! by an `IDEM_*` environment variable and in the config file (`--config`); a flag wins
//! over its variable, which wins over the file, which wins over the built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::config::FlagError;
use crate::settings::{self, CONFIG, Effective, Given};

pub use crate::settings::{parse_duration, parse_size};

/// idem: idempotency keys for any HTTP API.
#[derive(Debug, Parser)]
#[command(name = "idem", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, env = "IDEM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, display_order = 1000)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info`, `warn,idem::decision=info` or `idem::decision=off`; when
    /// absent, `RUST_LOG`, else `info`. One INFO line (target `idem::decision`) is
    /// logged per protected request.
    #[arg(long, global = true, env = "IDEM_LOG_LEVEL", display_order = 1000)]
    pub log_level: Option<String>,
    /// OpenTelemetry collector (OTLP over HTTP) to export request spans to, e.g.
    /// http://127.0.0.1:4318; spans go to ENDPOINT/v1/traces. Off unless set.
    #[cfg(feature = "otel")]
    #[arg(
        long,
        global = true,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        display_order = 1000
    )]
    pub otlp_endpoint: Option<String>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the idempotency proxy in front of an upstream API.
    Serve(Box<ServeArgs>),
    /// Show the double charge idem prevents, with a demo payments API, then keep serving.
    Demo(DemoArgs),
    /// Apply the store's schema migrations (PostgreSQL) and exit; `serve` applies them at
    /// start unless the URL says `?migrate=false`.
    Migrate(MigrateArgs),
    /// Validate the effective configuration (flags, environment, config file); with
    /// --explain, show the rule and every setting that applies to one request.
    CheckConfig(Box<CheckConfigArgs>),
    /// Print Markdown for your API's public docs: which endpoints take keys, retention,
    /// retries, and every status idem may answer, one section per problem type; or the
    /// same as OpenAPI (--format openapi, --openapi-merge api.yaml).
    Docs(Box<DocsArgs>),
    /// Inspect and delete idempotency records (on call): get, list, delete.
    Keys(KeysArgs),
    /// Read every stored record and report how many decode; exit 1 if any is corrupt.
    CheckStore(crate::check_store::CheckStoreArgs),
    /// Check a live endpoint against the idempotency rules from the outside (replay,
    /// mismatch, concurrent duplicates, invalid keys, ...): it sends real requests, at
    /// most --budget, to that URL only.
    Check(Box<crate::conformance::CheckArgs>),
}

/// Flags of `idem check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// A request to explain, as `METHOD /path`, e.g. "POST /v1/payments/123".
    #[arg(long, value_name = "REQUEST")]
    pub explain: Option<String>,
    /// An OpenAPI 3 document (JSON or YAML): warn about route rules that match none of
    /// its operations.
    #[arg(long, value_name = "FILE")]
    pub openapi: Option<PathBuf>,
    /// The settings to check, as for `serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Flags of `idem docs`.
#[derive(Debug, Args)]
pub struct DocsArgs {
    /// Markdown, or OpenAPI (standalone or merged into a document).
    #[command(flatten)]
    pub openapi: crate::openapi::OpenApiArgs,
    /// The settings to document, as for `serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Flags of `idem migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The store, e.g. postgres://user@host/db?schema=idem
    #[arg(long, env = "IDEM_STORE")]
    pub store: String,
}

/// Log output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// Flags of `idem serve` (and of `check-config` and `docs`, which take the same
/// settings): `--config` and every setting of
/// [`SETTINGS`](crate::settings::SETTINGS), each also read from its environment variable.
///
/// Values are kept as text here; [`crate::settings::resolve`] parses
/// them with the config file's and reports a bad one with where it came from.
#[derive(Clone, Debug, Default)]
pub struct ServeArgs {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// The settings given by flag or environment variable.
    pub given: Vec<Given>,
}

impl ServeArgs {
    /// Layers these over the config file and the defaults.
    pub fn resolve(&self) -> Result<Effective, FlagError> {
        settings::resolve(&self.given, self.config.as_deref())
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            config: m
                .try_get_one::<PathBuf>(CONFIG.name)
                .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))?
                .cloned(),
            given: settings::given(m)?,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            Arg::new(CONFIG.name)
                .long(CONFIG.name)
                .env(CONFIG.env)
                .value_name(CONFIG.value_name)
                .value_parser(clap::value_parser!(PathBuf))
                .display_order(0)
                .help(
                    "A TOML config file with these settings and [[route]] rules (see \
                     idem.example.toml); flags and environment variables override its values",
                ),
        )
        .args(settings::clap_args())
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Flags of `idem demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where idem keeps records; default: an embedded store in a temporary directory.
    #[arg(long, env = "IDEM_STORE")]
    pub store: Option<String>,
    /// Address for idem (the demo API gets a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Play the scenario and exit instead of serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,
}

/// Flags of `idem keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// The `idem keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Show one record: state, fingerprint, times, owner lease or stored response.
    Get {
        /// Where the records are.
        #[command(flatten)]
        target: Target,
        /// Whose key.
        #[command(flatten)]
        scope: ScopeArgs,
        /// The idempotency key, as the client sent it (unquoted).
        key: String,
    },
    /// List live records, oldest filter first: e.g. `--in-flight --older-than 5m`.
    List {
        /// Where the records are.
        #[command(flatten)]
        target: Target,
        /// Only records of this scope.
        #[command(flatten)]
        scope: ScopeArgs,
        /// Only requests still in flight (running, or stuck until their lease ends).
        #[arg(long, conflicts_with = "completed")]
        in_flight: bool,
        /// Only completed records.
        #[arg(long)]
        completed: bool,
        /// Only records created at least this long ago (e.g. 5m).
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// At most this many records (1 to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// Continue after this cursor (printed after a full page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Delete a record whatever its state, so the key runs afresh; asks first on a terminal.
    Delete {
        /// Where the records are.
        #[command(flatten)]
        target: Target,
        /// Whose key.
        #[command(flatten)]
        scope: ScopeArgs,
        /// The idempotency key, as the client sent it (unquoted).
        key: String,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// Where `idem keys` finds the records.
#[derive(Debug, Args)]
pub struct Target {
    /// The admin listener of a running `idem serve`, e.g. http://127.0.0.1:9090
    #[arg(long = "admin", env = "IDEM_ADMIN_URL", conflicts_with = "store")]
    pub admin: Option<String>,
    /// The admin token (`serve --admin-token`).
    #[arg(long, env = "IDEM_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the store directly instead: memory, file:DIR, redis://…, postgres://… (an
    /// embedded file: store cannot be opened while `idem serve` has it open).
    #[arg(long)]
    pub store: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Whose keys: a scope digest, or the header values the proxy computes it from.
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// The scope: the digest in hex as logs show it, or `global` (`--scope-header none`).
    #[arg(long, conflicts_with_all = ["authorization", "scope_header"])]
    pub scope: Option<String>,
    /// The client's Authorization value; the scope is computed as the proxy does by default.
    #[arg(long, conflicts_with = "scope_header")]
    pub authorization: Option<String>,
    /// `Name: value` of each header the proxy scopes by (`serve --scope-header`), in its order.
    #[arg(long = "scope-header")]
    pub scope_header: Vec<String>,
    /// The proxy's `--scope-secret-file`, to compute a keyed scope from --authorization
    /// or --scope-header.
    #[arg(long, env = "IDEM_SCOPE_SECRET_FILE")]
    pub scope_secret_file: Option<std::path::PathBuf>,
}
