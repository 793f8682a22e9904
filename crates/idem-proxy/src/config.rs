//! What the proxy runs with: [`ProxyConfig`] for [`serve`](crate::serve), and
//! [`ServeConfig`] for `idem serve` (built from flags, environment and config file by
//! [`settings::resolve`](crate::settings::resolve)).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use idem::AnyStore;
use idem::core::policy::{ConfigError, Policy};
use idem::core::store::{KeyListError, SealingKeys};

use crate::admin::AdminToken;
use crate::forward::Upstream;
use crate::routes::Route;

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
    /// A connection's first head is timed from the accept, whatever it sends (R25).
    pub request_read_timeout: Duration,
    /// What client connections may hold (R25).
    pub connections: ConnectionLimits,
    /// How an `https://` upstream is verified, and the client certificate shown to it.
    pub upstream_tls: UpstreamTls,
    /// TLS on the listener, when set: its certificate and key, reloaded when they change.
    pub tls: Option<ListenerTls>,
    /// How client connections are spread over threads.
    pub runtime: Runtime,
}

/// How [`serve`](crate::serve) runs client connections: `--runtime`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Runtime {
    /// On the runtime `serve` is called on (tokio's work-stealing scheduler for
    /// `idem serve`): any worker thread may run any connection.
    #[default]
    WorkStealing,
    /// One single-threaded runtime per core, each with its own upstream connection
    /// pool; the accept loop hands each new connection to the one with the fewest.
    /// A connection, its requests and its upstream connections then stay on one thread.
    Workers,
}

impl Runtime {
    /// Parses `workers` or `work-stealing`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "workers" => Ok(Self::Workers),
            "work-stealing" => Ok(Self::WorkStealing),
            _ => Err(format!("`{s}` is not workers or work-stealing")),
        }
    }

    /// The name [`parse`](Self::parse) reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workers => "workers",
            Self::WorkStealing => "work-stealing",
        }
    }
}

/// TLS to an `https://` upstream: `--upstream-ca-file`, `--upstream-insecure`,
/// `--upstream-client-cert`, `--upstream-client-key`. The server's certificate is
/// verified against the system's authorities and `ca_file`'s, for the upstream's host
/// name (also sent as SNI).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// More authorities to trust (PEM), beside the system's.
    pub ca_file: Option<PathBuf>,
    /// No verification of the upstream's certificate at all: for tests only.
    pub insecure: bool,
    /// A client certificate chain (PEM) for upstreams that ask for one (mTLS).
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, unencrypted).
    pub client_key: Option<PathBuf>,
}

/// TLS on the listener: `--tls-cert`, `--tls-key`. Both files are read at start-up, and
/// again on SIGHUP or when either changes on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM, unencrypted: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The smallest header block limit (`--max-header-bytes`) the HTTP/1 parser takes.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

/// What client connections may hold (R25): `--idle-timeout`, `--max-connections`,
/// `--max-header-bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A connection with no request in progress is closed after this long (keep-alive);
    /// so is one whose client has not read what it was sent for this long.
    pub idle_timeout: Duration,
    /// Connections served at once. Beyond it, new connections wait in the listen
    /// backlog (they are not accepted) until one closes.
    pub max_connections: usize,
    /// Largest request header block in bytes (HTTP/1: request line and headers;
    /// HTTP/2: the header list size); larger is 431. At least [`MIN_HEADER_BYTES`].
    pub max_header_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            // nginx's keepalive_timeout.
            idle_timeout: Duration::from_secs(75),
            max_connections: 10_000,
            // Envoy allows 60 KiB, nginx 4 x 8 KiB buffers.
            max_header_bytes: 64 * 1024,
        }
    }
}

/// The largest `--max-header-bytes`: what HTTP/2 peers are offered stays sane.
pub const MAX_HEADER_BYTES: usize = 16 << 20;

impl ProxyConfig {
    /// Settings for `upstream` with every default (the defaults of `idem serve`).
    pub fn new(upstream: Upstream) -> Self {
        Self {
            upstream,
            policy: Policy::default(),
            upstream_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            routes: Vec::new(),
            request_read_timeout: Duration::from_secs(30),
            connections: ConnectionLimits::default(),
            upstream_tls: UpstreamTls::default(),
            tls: None,
            runtime: Runtime::default(),
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
    /// The token that opens the admin API (`/admin/keys…`), if it is on.
    pub admin_token: Option<AdminToken>,
    /// The keys that seal the store, if encryption at rest is on.
    pub encryption: Option<SealingKeys>,
    /// Everything else.
    pub proxy: ProxyConfig,
}

impl ServeConfig {
    /// Opens (or connects to) the store; sealed when encryption at rest is on, so the
    /// proxy and the admin API both see records as the proxy stores them.
    pub async fn open_store(&self) -> anyhow::Result<OpenStore> {
        let store = AnyStore::from_url(&self.store)
            .await
            .with_context(|| format!("store `{}`", self.store))?;
        Ok(match self.encryption.clone() {
            Some(keys) => OpenStore::Sealed {
                kind: store.kind(),
                store: idem::core::store::Sealed::new(store, keys),
            },
            None => OpenStore::Plain(store),
        })
    }
}

/// The store `idem serve` runs on.
#[derive(Clone, Debug)]
pub enum OpenStore {
    /// As the URL names it.
    Plain(AnyStore),
    /// With encryption at rest.
    Sealed {
        /// The kind of store sealed ([`AnyStore::kind`]).
        kind: &'static str,
        /// The sealed store.
        store: idem::core::store::Sealed<AnyStore>,
    },
}

impl OpenStore {
    /// Which store it is: `memory`, `redb`, `redis`, `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Plain(s) => s.kind(),
            Self::Sealed { kind, .. } => kind,
        }
    }
}

/// A setting that does not make sense.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlagError {
    /// A value that does not parse, with its place (`--ttl`, `IDEM_TTL`,
    /// `idem.toml:3: `ttl``) and why.
    #[error("{0}")]
    Value(String),
    /// Engine settings that do not make sense, with the file place when from a file.
    #[error("{at}{source}")]
    Policy {
        /// `FILE:LINE: ` or nothing.
        at: String,
        /// What is wrong.
        #[source]
        source: ConfigError,
    },
    /// No upstream anywhere.
    #[error("no upstream: set --upstream, IDEM_UPSTREAM or `upstream` in the config file")]
    MissingUpstream,
    /// Settings that exclude or need each other.
    #[error("{0}")]
    Conflict(&'static str),
    /// The config file is unreadable or invalid, or a route rule is.
    #[error("{0}")]
    File(String),
    /// The admin token file cannot be used.
    #[error("{0}")]
    AdminToken(String),
    /// The scope secret file cannot be read or is too short (never shows its content).
    #[error("{0}")]
    ScopeSecret(String),
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
