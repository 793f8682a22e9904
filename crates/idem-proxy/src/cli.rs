//! The command line. Every `serve` flag can also be set by an `IDEM_*` environment
//! variable and in the config file (`--config`); a flag wins over its variable, which
//! wins over the file, which wins over the built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// idem: idempotency keys for any HTTP API.
#[derive(Debug, Parser)]
#[command(name = "idem", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, env = "IDEM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info`, `warn,idem::decision=info` or `idem::decision=off`; when
    /// absent, `RUST_LOG`, else `info`. One INFO line (target `idem::decision`) is
    /// logged per protected request.
    #[arg(long, global = true, env = "IDEM_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// OpenTelemetry collector (OTLP over HTTP) to export request spans to, e.g.
    /// http://127.0.0.1:4318; spans go to ENDPOINT/v1/traces. Off unless set.
    #[cfg(feature = "otel")]
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
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
    /// retries, and every status idem may answer, one section per problem type.
    Docs(Box<DocsArgs>),
    /// Inspect and delete idempotency records (on call): get, list, delete.
    Keys(crate::keys::KeysArgs),
}

/// Flags of `idem check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// A request to explain, as `METHOD /path`, e.g. "POST /v1/payments/123".
    #[arg(long, value_name = "REQUEST")]
    pub explain: Option<String>,
    /// The settings to check, as for `serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Flags of `idem docs`.
#[derive(Debug, Args)]
pub struct DocsArgs {
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

/// What a concurrent duplicate gets (R10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConcurrentMode {
    /// 409 with Retry-After at once.
    Conflict,
    /// Wait for the first request, then replay its response.
    Wait,
}

/// Flags of `idem serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file with these settings and `[[route]]` rules (see idem.example.toml);
    /// flags and environment variables override its values.
    #[arg(long, env = "IDEM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "IDEM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The API to protect, as http://host:port[/prefix] (required, here or in the file).
    #[arg(long, env = "IDEM_UPSTREAM")]
    pub upstream: Option<String>,
    /// Where records live: memory (volatile, bounded in bytes: 256 MiB unless
    /// memory:max_bytes=SIZE), file:PATH (embedded, durable), redis://…, postgres://…
    #[arg(long, env = "IDEM_STORE", default_value = "file:./idem-data")]
    pub store: String,
    /// How long a completed key is replayed, counted from completion (e.g. 24h).
    #[arg(long, env = "IDEM_TTL", value_parser = parse_duration, default_value = "24h")]
    pub ttl: Duration,
    /// How long a request owns its key without renewal; renewed while the upstream works.
    #[arg(long, env = "IDEM_LEASE", value_parser = parse_duration, default_value = "60s")]
    pub lease: Duration,
    /// What a duplicate of a request still in progress gets.
    #[arg(long, env = "IDEM_ON_CONCURRENT", value_enum, default_value_t = ConcurrentMode::Conflict)]
    pub on_concurrent: ConcurrentMode,
    /// With --on-concurrent wait: how long a duplicate waits before a 409.
    #[arg(long, env = "IDEM_WAIT_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub wait_timeout: Duration,
    /// Refuse covered requests that carry no key (400).
    #[arg(long, env = "IDEM_REQUIRE_KEY")]
    pub require_key: bool,
    /// Covered methods, comma-separated.
    #[arg(
        long,
        env = "IDEM_METHODS",
        value_delimiter = ',',
        default_value = "POST,PATCH"
    )]
    pub methods: Vec<String>,
    /// The key header's name.
    #[arg(long, env = "IDEM_HEADER", default_value = "Idempotency-Key")]
    pub header: String,
    /// Headers whose values scope keys (tenant, credential), comma-separated; `none` for one shared scope.
    #[arg(
        long,
        env = "IDEM_SCOPE_HEADER",
        value_delimiter = ',',
        default_value = "Authorization"
    )]
    pub scope_header: Vec<String>,
    /// How request bodies are fingerprinted: raw bytes, or canonical JSON.
    #[arg(long, env = "IDEM_FINGERPRINT", default_value = "raw")]
    pub fingerprint: String,
    /// Request headers that count in the fingerprint, comma-separated.
    #[arg(long, env = "IDEM_SIGNIFICANT_HEADERS", value_delimiter = ',')]
    pub significant_headers: Vec<String>,
    /// Largest request body accepted on a protected request (e.g. 1MiB); larger is 413.
    #[arg(long, env = "IDEM_MAX_REQUEST_BODY", value_parser = parse_size, default_value = "1MiB")]
    pub max_request_body: usize,
    /// Largest response body stored for replay; larger is delivered but replays as 410.
    #[arg(long, env = "IDEM_MAX_STORED_BODY", value_parser = parse_size, default_value = "1MiB")]
    pub max_stored_body: usize,
    /// Time allowed for the upstream's response head; then 504.
    #[arg(long, env = "IDEM_UPSTREAM_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub upstream_timeout: Duration,
    /// When the store fails, forward unprotected instead of answering 503.
    #[arg(long, env = "IDEM_FAIL_OPEN")]
    pub fail_open: bool,
    /// Status of a key reused with a different request: 422 or 400.
    #[arg(long, env = "IDEM_MISMATCH_STATUS", default_value = "422")]
    pub mismatch_status: u16,
    /// Which response statuses are stored and replayed; the rest release the key.
    #[arg(
        long,
        env = "IDEM_CACHEABLE",
        default_value = "2xx,3xx,4xx,!408,!409,!425,!429"
    )]
    pub cacheable: String,
    /// Response headers never stored, comma-separated (hop-by-hop headers never are).
    #[arg(long, env = "IDEM_DENY_HEADERS", value_delimiter = ',')]
    pub deny_headers: Vec<String>,
    /// Response media types that stream through unbuffered, comma-separated.
    #[arg(
        long,
        env = "IDEM_STREAMING_TYPES",
        value_delimiter = ',',
        default_value = "text/event-stream"
    )]
    pub streaming_types: Vec<String>,
    /// Address of the admin listener (/healthz, /readyz, /metrics); off unless set.
    #[arg(long, env = "IDEM_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token that opens the admin API (/admin/keys…) on the admin listener; off unless set.
    #[arg(long, env = "IDEM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File whose first line is the admin token (instead of --admin-token).
    #[arg(long, env = "IDEM_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Time allowed to receive a request's head, and then its whole body; a client that
    /// sends slower is cut off (408 when the head was read), and its key is never claimed.
    #[arg(long, env = "IDEM_REQUEST_READ_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub request_read_timeout: Duration,
    /// On shutdown, how long open requests may take to finish.
    #[arg(long, env = "IDEM_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "30s")]
    pub shutdown_grace: Duration,
    /// Base URI of problem `type`s: they become URL#slug. Point it at where you publish
    /// `idem docs`; default: idem's docs/problems.md.
    #[arg(long, env = "IDEM_PROBLEM_BASE", value_name = "URL")]
    pub problem_base: Option<String>,
    /// Seal stored responses and digest stored keys with the keys in this file: one
    /// ID:BASE64 (32 bytes) line per key, newest first; the last line also keys the
    /// record-id digests and stays for good. Off unless set.
    #[arg(long, env = "IDEM_ENCRYPTION_KEY_FILE", value_name = "PATH")]
    pub encryption_key_file: Option<std::path::PathBuf>,
    /// The same key list given inline (newline-separated); prefer the environment
    /// variable or the file, a flag's value shows in the process list.
    #[arg(
        long,
        env = "IDEM_ENCRYPTION_KEYS",
        hide_env_values = true,
        value_name = "KEYS",
        conflicts_with = "encryption_key_file"
    )]
    pub encryption_keys: Option<String>,
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

/// Parses `500ms`, `2s`, `5m`, `24h`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 2s or 24h ({e})"))
}

/// Parses a byte size: `1024`, `64KiB`, `1MiB`, `10MB`, `1k`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64 KiB"), Ok(65536));
        assert_eq!(parse_size("2kb"), Ok(2000));
        assert!(parse_size("x").is_err());
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("soon").is_err());
    }
}
