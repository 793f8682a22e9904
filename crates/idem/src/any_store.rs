//! A store chosen at run time from a URL.

use std::fmt;
use std::time::Duration;

use idem_core::record::{Record, RecordId, Snapshot};
use idem_core::store::{
    Claim, ClaimRequest, Finish, Lease, ListFilter, ListPage, MemoryStore, MemoryStoreConfig,
    Sealed, SealingKeys, Store, StoreError, Watch,
};
#[cfg(feature = "postgres")]
use idem_core::store::{RecoveryPoint, Transactional};

/// Any of the stores compiled in, chosen by URL with [`AnyStore::from_url`].
///
/// | URL | store |
/// |---|---|
/// | `memory` | [`MemoryStore`]: volatile, bounded in bytes (default 256 MiB), one process |
/// | `file:PATH` | `RedbStore` (feature `redb`): embedded, durable, one machine; `PATH` is a directory |
/// | `redis://…`, `rediss://…` (TLS), `redis+unix://…`, `redis+cluster://h1:p1,h2:p2` | `RedisStore` (feature `redis`) |
/// | `postgres://…`, `postgresql://…` | `PostgresStore` (feature `postgres`) |
///
/// Options ride in the query string and are taken out before the URL reaches the
/// driver: `memory:max_bytes=64MiB` (also `capacity=N` records, `&`-separated);
/// `file:DIR?fresh=true` (start with an empty store when the directory's database file is
/// empty, foreign or damaged, moving it aside; without it such a file is refused); Redis
/// `?prefix=idem&command_timeout=2s&connect_timeout=2s`;
/// PostgreSQL `?schema=idem&pool_size=16&statement_timeout=2s&sweep_interval=10s&sweep_batch=500&migrate=true`.
#[derive(Clone)]
#[non_exhaustive]
pub enum AnyStore {
    /// The volatile in-process store.
    Memory(MemoryStore),
    /// The embedded durable store.
    #[cfg(feature = "redb")]
    Redb(idem_redb::RedbStore),
    /// The Redis / Redis Cluster store.
    #[cfg(feature = "redis")]
    Redis(idem_redis::RedisStore),
    /// The PostgreSQL store.
    #[cfg(feature = "postgres")]
    Postgres(idem_postgres::PostgresStore),
}

/// Why a store URL could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreUrlError {
    /// The scheme names no store.
    #[error(
        "unknown store `{0}` (expected memory, file:PATH, redis://…, redis+cluster://…, or postgres://…)"
    )]
    Unknown(String),
    /// The store exists but this build left it out.
    #[error("the {0} store is not compiled into this build (cargo feature `{0}`)")]
    NotCompiled(&'static str),
    /// The URL is malformed.
    #[error("invalid store URL: {0}")]
    Invalid(String),
    /// The store could not be opened or reached.
    #[error("cannot open the store")]
    Open(#[source] StoreError),
}

impl AnyStore {
    /// Opens or connects to the store a URL names.
    pub async fn from_url(url: &str) -> Result<Self, StoreUrlError> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("memory")
            && let Some(options) = rest.strip_prefix(':').or(rest.is_empty().then_some(""))
        {
            let config = memory_config(url, options)?;
            return Ok(Self::Memory(MemoryStore::with_config(config)));
        }
        if let Some(rest) = url.strip_prefix("file:") {
            let mut opts = Options::split(rest);
            let fresh = match opts.take("fresh").as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(v) => {
                    return Err(StoreUrlError::Invalid(format!(
                        "fresh={v}: expected true or false"
                    )));
                }
            };
            if let Some((name, _)) = opts.pairs.first() {
                return Err(StoreUrlError::Invalid(format!(
                    "`{url}`: unknown option `{name}` (file: takes fresh=true)"
                )));
            }
            let path = opts.base;
            if path.is_empty() {
                return Err(StoreUrlError::Invalid(
                    "file: needs a directory, e.g. file:./idem-data".into(),
                ));
            }
            #[cfg(feature = "redb")]
            {
                let config = idem_redb::RedbStoreConfig {
                    fresh,
                    ..idem_redb::RedbStoreConfig::default()
                };
                let store =
                    idem_redb::RedbStore::open(&path, config).map_err(StoreUrlError::Open)?;
                return Ok(Self::Redb(store));
            }
            #[cfg(not(feature = "redb"))]
            {
                let _ = (fresh, path);
                return Err(StoreUrlError::NotCompiled("redb"));
            }
        }
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "redis" | "rediss" | "redis+cluster" | "redis+unix" | "unix" => {
                #[cfg(feature = "redis")]
                {
                    // The options are idem's, not redis-rs's: take them out, or every
                    // `?prefix=` would silently share the default prefix.
                    let mut opts = Options::split(url);
                    let mut config = idem_redis::RedisStoreConfig::default();
                    if let Some(prefix) = opts.take("prefix") {
                        config.prefix = prefix;
                    }
                    if let Some(t) = opts.duration("command_timeout")? {
                        config.command_timeout = t;
                    }
                    if let Some(t) = opts.duration("connect_timeout")? {
                        config.connect_timeout = t;
                    }
                    let store = idem_redis::RedisStore::connect(&opts.rest(), config)
                        .await
                        .map_err(StoreUrlError::Open)?;
                    Ok(Self::Redis(store))
                }
                #[cfg(not(feature = "redis"))]
                Err(StoreUrlError::NotCompiled("redis"))
            }
            "postgres" | "postgresql" => {
                #[cfg(feature = "postgres")]
                {
                    let mut opts = Options::split(url);
                    let mut config = idem_postgres::PostgresStoreConfig::default();
                    if let Some(schema) = opts.take("schema") {
                        config.schema = schema;
                    }
                    if let Some(n) = opts.number("pool_size")? {
                        config.pool_size = n;
                    }
                    if let Some(t) = opts.duration("statement_timeout")? {
                        config.statement_timeout = t;
                    }
                    if let Some(t) = opts.duration("sweep_interval")? {
                        config.sweep_interval = t;
                    }
                    if let Some(n) = opts.number("sweep_batch")? {
                        config.sweep_batch = u32::try_from(n).map_err(|_| {
                            StoreUrlError::Invalid(format!("sweep_batch {n} is too large"))
                        })?;
                    }
                    if let Some(m) = opts.take("migrate") {
                        config.migrate = match m.as_str() {
                            "true" => true,
                            "false" => false,
                            _ => {
                                return Err(StoreUrlError::Invalid(format!(
                                    "migrate={m}: expected true or false"
                                )));
                            }
                        };
                    }
                    let store = idem_postgres::PostgresStore::connect(&opts.rest(), config)
                        .await
                        .map_err(StoreUrlError::Open)?;
                    Ok(Self::Postgres(store))
                }
                #[cfg(not(feature = "postgres"))]
                Err(StoreUrlError::NotCompiled("postgres"))
            }
            _ => Err(StoreUrlError::Unknown(url.to_owned())),
        }
    }

    /// Applies the store's schema migrations now, for teams that migrate separately
    /// from start-up (open the PostgreSQL store with `?migrate=false` first). Answers
    /// how many were applied; stores without a schema answer 0.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.migrate().await,
            _ => Ok(0),
        }
    }

    /// This store with encryption at rest: responses sealed, keys digested (see
    /// [`Sealed`]). Hand the result to the layer in place of the store.
    ///
    /// ```
    /// # #[cfg(feature = "axum")] {
    /// use axum::{Router, routing::post};
    /// use idem::{AnyStore, IdempotencyLayer, SealingKeys};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let keys = SealingKeys::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")?;
    /// let store = AnyStore::from_url("memory").await?.sealed(keys);
    /// let app: Router = Router::new()
    ///     .route("/payments", post(|| async { "paid" }))
    ///     .layer(IdempotencyLayer::builder(store).require_key(true).build()?);
    /// # let _ = app;
    /// # Ok(()) }
    /// # main().unwrap(); }
    /// ```
    #[must_use]
    pub fn sealed(self, keys: SealingKeys) -> Sealed<Self> {
        Sealed::new(self, keys)
    }

    /// The store's short name: `memory`, `redb`, `redis` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            #[cfg(feature = "redb")]
            Self::Redb(_) => "redb",
            #[cfg(feature = "redis")]
            Self::Redis(_) => "redis",
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => "postgres",
        }
    }
}

/// The memory store's options: `memory`, `memory:max_bytes=64MiB`,
/// `memory:?max_bytes=64MiB&capacity=1000`.
fn memory_config(url: &str, options: &str) -> Result<MemoryStoreConfig, StoreUrlError> {
    let mut config = MemoryStoreConfig::default();
    let options = options.strip_prefix('?').unwrap_or(options);
    for pair in options.split('&').filter(|p| !p.is_empty()) {
        let bad = |why: &str| {
            StoreUrlError::Invalid(format!(
                "`{url}`: {why} (expected memory, memory:max_bytes=SIZE or memory:capacity=N)"
            ))
        };
        match pair.split_once('=') {
            Some(("max_bytes", v)) => {
                config.max_bytes = idem_core::policy::parse_size(v)
                    .map_err(|e| bad(&format!("max_bytes: {e}")))?;
                if config.max_bytes == 0 {
                    return Err(bad("max_bytes must be more than zero"));
                }
            }
            Some(("capacity", v)) => {
                config.capacity = v
                    .parse()
                    .map_err(|_| bad("capacity is a number of records"))?;
            }
            _ => return Err(bad(&format!("unknown option `{pair}`"))),
        }
    }
    Ok(config)
}

/// The `?name=value` options of a store URL: idem's own are taken out, the rest are
/// handed to the store's driver.
struct Options {
    base: String,
    pairs: Vec<(String, String)>,
}

#[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))]
impl Options {
    fn split(url: &str) -> Self {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        Self {
            base: base.to_owned(),
            pairs,
        }
    }

    fn take(&mut self, name: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(k, _)| k == name)?;
        Some(self.pairs.remove(i).1)
    }

    #[cfg(feature = "postgres")]
    fn number(&mut self, name: &str) -> Result<Option<usize>, StoreUrlError> {
        self.take(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| StoreUrlError::Invalid(format!("{name}={v}: expected a number")))
            })
            .transpose()
    }

    fn duration(&mut self, name: &str) -> Result<Option<Duration>, StoreUrlError> {
        self.take(name)
            .map(|v| {
                humantime::parse_duration(&v).map_err(|_| {
                    StoreUrlError::Invalid(format!("{name}={v}: expected a duration like 2s"))
                })
            })
            .transpose()
    }

    /// The URL without idem's options.
    fn rest(&self) -> String {
        if self.pairs.is_empty() {
            return self.base.clone();
        }
        let query: Vec<String> = self.pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}?{}", self.base, query.join("&"))
    }
}

impl fmt::Debug for AnyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory(s) => s.fmt(f),
            #[cfg(feature = "redb")]
            Self::Redb(s) => s.fmt(f),
            #[cfg(feature = "redis")]
            Self::Redis(s) => s.fmt(f),
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.fmt(f),
        }
    }
}

/// Awaits an operation of whichever store this is. The networked and durable stores'
/// futures are boxed: inline, the largest of them would size every caller's future
/// (several kilobytes, copied whenever a request's future moves), while the memory
/// store's, the one a few bytes large, stays inline.
macro_rules! each_await {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($s) => $call.await,
            #[cfg(feature = "redb")]
            AnyStore::Redb($s) => Box::pin($call).await,
            #[cfg(feature = "redis")]
            AnyStore::Redis($s) => Box::pin($call).await,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($s) => Box::pin($call).await,
        }
    };
}

/// Dispatches a call to whichever store this is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($s) => $call,
            #[cfg(feature = "redb")]
            AnyStore::Redb($s) => $call,
            #[cfg(feature = "redis")]
            AnyStore::Redis($s) => $call,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($s) => $call,
        }
    };
}

impl Store for AnyStore {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        each_await!(self, s => s.claim(req))
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<Finish, StoreError> {
        each_await!(self, s => s.renew(lease, lease_for))
    }

    async fn complete(
        &self,
        lease: &Lease,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        each_await!(self, s => s.complete(lease, snapshot, ttl))
    }

    async fn release(&self, lease: &Lease) -> Result<Finish, StoreError> {
        each_await!(self, s => s.release(lease))
    }

    async fn lookup(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        each_await!(self, s => s.lookup(id))
    }

    async fn list(&self, filter: &ListFilter) -> Result<ListPage, StoreError> {
        each_await!(self, s => s.list(filter))
    }

    async fn delete(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        each_await!(self, s => s.delete(id))
    }

    fn watch(&self, id: &RecordId) -> Watch {
        each!(self, s => s.watch(id))
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        each_await!(self, s => s.purge_expired())
    }
}

/// The PostgreSQL arm's transactional writes ([R20](crate::contract#r20),
/// [R21](crate::contract#r21)), so a handler behind a layer over an `AnyStore` (or a
/// `Sealed<AnyStore>`) reaches them; any other arm answers [`StoreError::Unsupported`].
#[cfg(feature = "postgres")]
impl<C> Transactional<C> for AnyStore
where
    C: idem_postgres::tokio_postgres::GenericClient + Sync,
{
    async fn complete_in(
        &self,
        client: &C,
        lease: &Lease,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        match self {
            Self::Postgres(s) => Box::pin(s.complete_in(client, lease, snapshot, ttl)).await,
            other => Err(other.not_transactional()),
        }
    }

    async fn advance_in(
        &self,
        client: &C,
        lease: &Lease,
        point: &RecoveryPoint,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        match self {
            Self::Postgres(s) => Box::pin(s.advance_in(client, lease, point, ttl)).await,
            other => Err(other.not_transactional()),
        }
    }

    async fn recovery_point(
        &self,
        client: &C,
        lease: &Lease,
    ) -> Result<Option<RecoveryPoint>, StoreError> {
        match self {
            Self::Postgres(s) => Box::pin(s.recovery_point(client, lease)).await,
            other => Err(other.not_transactional()),
        }
    }
}

#[cfg(feature = "postgres")]
impl AnyStore {
    fn not_transactional(&self) -> StoreError {
        StoreError::Unsupported {
            store: self.kind(),
            capability: "writes in a PostgreSQL transaction",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // R25: the memory store's bound is set in bytes in its URL.
    #[tokio::test]
    async fn r25_memory_url_sets_the_byte_bound() {
        async fn max(url: &str) -> usize {
            match AnyStore::from_url(url).await.unwrap() {
                AnyStore::Memory(m) => m.max_bytes(),
                #[allow(unreachable_patterns)]
                other => panic!("{url}: {other:?}"),
            }
        }
        assert_eq!(
            max("memory").await,
            idem_core::store::memory::DEFAULT_MAX_BYTES
        );
        assert_eq!(max("memory:").await, 256 << 20);
        assert_eq!(max("memory:max_bytes=64MiB").await, 64 << 20);
        assert_eq!(max("memory:?max_bytes=1GiB&capacity=10").await, 1 << 30);
        for bad in [
            "memory:max_bytes=lots",
            "memory:max_bytes=0",
            "memory:capacity=x",
            "memory:size=1",
        ] {
            let err = AnyStore::from_url(bad).await.unwrap_err();
            assert!(matches!(err, StoreUrlError::Invalid(_)), "{bad}: {err}");
        }
    }
}
