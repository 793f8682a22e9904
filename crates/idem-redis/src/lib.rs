//! The Redis and Redis Cluster [`Store`] for idem: any number of proxy instances (or
//! service replicas) pointed at one Redis behave as one, so concurrent duplicates spread
//! over them still run the operation once (R18).
//!
//! In a service, through the `idem` crate (feature `redis`), as `idem::redis`:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use axum::{Router, routing::post};
//! use idem::IdempotencyLayer;
//! use idem::redis::{RedisStore, RedisStoreConfig};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // One server …
//!     let store = RedisStore::connect("redis://127.0.0.1:6379/0", RedisStoreConfig::default()).await?;
//!     # let _ = store;
//!     // … or a cluster, named by some of its nodes, with settings of its own.
//!     let config = RedisStoreConfig {
//!         prefix: "payments".into(),
//!         command_timeout: Duration::from_millis(500),
//!         ..RedisStoreConfig::default()
//!     };
//!     let seeds = "redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000";
//!     let store = RedisStore::connect(seeds, config).await?;
//!
//!     let app = Router::new()
//!         .route("/payments", post(|| async { "paid" }))
//!         .layer(IdempotencyLayer::new(store));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! # URLs
//! - `redis://[[user]:password@]host[:port][/db]`, `redis+unix:///path/to.sock`,
//!   `unix:///path/to.sock`: one server, read by redis-rs. `rediss://…` is TLS, with
//!   rustls: the server's certificate must chain to the system's trust store and name
//!   the host, or to the authorities of `?tls_ca_cert_file=PATH` (PEM) when given;
//!   `tls_cert_file=PATH&tls_key_file=PATH` present a client certificate (PEM, key
//!   unencrypted) to a server that asks for one (`tls-auth-clients yes`).
//!   `rediss://host/#insecure` skips certificate checks, for tests only. A cluster over
//!   TLS is not supported.
//! - `redis+cluster://[[user]:password@]host:port,host:port,…`: a Redis Cluster, named by
//!   one or more seed nodes (the rest are discovered). A cluster has database 0 only.
//!
//! # How records are kept
//! One Redis hash per record, at [`redis_key`]'s key `<prefix>:{<scope hex>:<key hex>}`.
//! The whole identity sits inside the `{…}` hash tag, hex-encoded so no key a client
//! sends can open or close the tag: in a cluster, everything a record ever touches is in
//! one slot. Its fields: `st` (`f` in flight, `c` completed), `fp` (fingerprint, 32
//! bytes), `ow` (owner token, hex), `ca` (created at, ms), `dl` (lease deadline or expiry,
//! ms), `sn` (the encoded snapshot, once completed).
//!
//! Claim, renew, complete and release are each one Lua script (sent by SHA with
//! `EVALSHA`, loaded on demand), so every check and the write it guards are one atomic
//! step on the server, never a read then a write from a client; each script says which
//! race it closes. Completion and release are fenced by the owner token (R11).
//!
//! Claim and completion are also safe to send twice, as a client does when a reply is
//! lost (the cluster connection resends after a broken connection; the engine retries a
//! failed completion): a claim that finds its own owner token answers
//! [`Claim::Acquired`] again rather than [`Claim::InFlight`], and a completion that finds
//! its own record already completed answers [`Finish::Done`] and keeps the first
//! snapshot. Owner tokens are fresh per claim, so no other request can match them.
//!
//! # Time and expiry
//! Expiry is Redis's own (R14): an in-flight record expires at its lease deadline
//! (renewal moves it), a completed one at its TTL, a released one is deleted. Deadlines
//! are computed in the scripts from Redis's clock (`TIME`), never a client's, so
//! instances with skewed clocks still agree. [`Store::lookup`] reports them as Unix
//! milliseconds on Redis's clock.
//!
//! Since an ended lease makes the record vanish, a takeover (R11) looks like a fresh
//! claim: [`Lease::taken_over`](idem_core::store::Lease::taken_over) is always `false`
//! here (the contract allows it), and a completion that arrives after the lease ended is
//! [`Finish::Superseded`] even if nobody took the record over. [`Store::purge_expired`]
//! has nothing to do and answers `Ok(0)`.
//!
//! # Waiting duplicates
//! A duplicate that will wait marks the record in its claim (field `w`); a record nobody
//! waits on announces nothing when it is completed or released (a deletion by on-call
//! always announces). On a single server, the completion and release scripts of a
//! marked record `PUBLISH` its id on `<prefix>:done`, and each store keeps one
//! subscriber connection to that channel. On a cluster, where a classic `PUBLISH` is
//! broadcast to every node over the cluster bus, the scripts say that a waiter is to be
//! woken and the store `SPUBLISH`es the id on one of 64 sharded channels,
//! `<prefix>:done:{<tag>}`, the one whose slot lies in the range of the record's own
//! slot; a sharded message stays within the shard that owns its channel. Each store
//! subscribes to all 64 (`SSUBSCRIBE`, over RESP3, each at the master that owns it),
//! retries the ones whose master is down, and subscribes to all again after a lost node
//! connection or a failed ping. Either way the subscription wakes the store's
//! [`Watch`]es, so waiting holds no command connection. Notifications sent while a
//! subscription is being re-established are lost, so every watcher is woken after each
//! (re)subscription; the engine also polls at a bounded interval. (While the instances of a cluster run
//! versions that announce differently — classic before, sharded now — during a rolling
//! upgrade, a waiter on one version is woken by that poll when the other completes.)
//!
//! # Failures (R15)
//! Every command is bounded by [`RedisStoreConfig::command_timeout`]. A server that
//! cannot be reached is [`StoreError::Unavailable`], a slow one [`StoreError::Timeout`]:
//! the engine answers 503 with `Retry-After`. The connection reconnects on its own (the
//! standalone one through redis-rs's `ConnectionManager`, the cluster one through its
//! slot-routing connection), so the store serves again as soon as Redis is back, without
//! a restart. Only [`RedisStore::connect`] needs Redis up: it fails rather than hand out
//! a store that has never reached a server.
//!
//! # Durability: what Redis must be configured for
//! The guarantee is only as durable as Redis. A Redis restart **without persistence**
//! loses every record: an operation whose record was in flight or completed may then run
//! again on retry (the upstream's own key check, R6, is the second line of defence).
//! RDB snapshots alone (`save …`) lose everything written since the last snapshot.
//! With `appendonly yes` a restart keeps the records (their deadlines are absolute, so
//! leases and TTLs still end when they would have): with the default `appendfsync
//! everysec` at most about a second of writes can be lost on a crash of the machine, with
//! `appendfsync always` none. Replication is asynchronous, so a failover to a replica can
//! likewise lose the last claims and completions.
//!
//! Set `maxmemory-policy noeviction`: every record carries an expiry, so a `volatile-*`
//! or `allkeys-*` policy may evict live records and let an operation run twice. With
//! `noeviction` a full Redis refuses new records instead (an error, so 503).
//!
//! Scripts need Redis 5 or later (they call `TIME` before writing, which needs effect
//! replication, the default since 5). A cluster's notifications need Redis 7.0 or later
//! (sharded pub/sub): on an older cluster the store keeps trying to subscribe and logs
//! why, and waiting duplicates are woken only by the engine's bounded poll.
//!
//! # Feature flags
//! None: standalone and cluster support are both always built.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod conn;
mod shards;
mod subscriber;
mod url;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use idem_core::clock::Millis;
use idem_core::fingerprint::Fingerprint;
use idem_core::record::{Corrupt, OwnerToken, Record, RecordId, Snapshot, State};
use idem_core::scope::Scope;
use idem_core::store::{
    Claim, ClaimRequest, Finish, Lease, ListFilter, ListPage, Store, StoreError, WaitHub, Watch,
};
use redis::{Script, Value};
use tokio::sync::oneshot;

use crate::conn::Conn;
use crate::shards::Shards;
use crate::subscriber::{ShardedSubscriber, Subscriber};
use crate::url::{ConfigError, Target, TlsFiles};

/// Settings of a [`RedisStore`].
#[derive(Clone, Debug)]
pub struct RedisStoreConfig {
    /// Starts every key and the notification channel (default `idem`), so several
    /// applications can share one Redis. Must be non-empty and hold no `{` or `}` (they
    /// would move the cluster hash tag).
    pub prefix: String,
    /// The longest any command may take, reconnecting and retrying included, before it
    /// fails with [`StoreError::Timeout`] (default 2 s).
    pub command_timeout: Duration,
    /// The longest connecting may take, in [`RedisStore::connect`] and on each
    /// reconnection attempt (default 2 s).
    pub connect_timeout: Duration,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        Self {
            prefix: "idem".to_owned(),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// A [`Store`] in Redis or Redis Cluster, shared by any number of processes. Clones
/// share one connection and one subscriber; see the [crate docs](crate).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    scripts: Scripts,
    prefix: String,
    notifications: Notifications,
    command_timeout: Duration,
    hub: WaitHub,
    /// The URL without its password, for `Debug`.
    target: String,
    /// Dropped with the last handle, which stops the subscriber task.
    _stop: oneshot::Sender<()>,
}

/// Where completions, releases and deletions of awaited records are announced (R10
/// `wait` mode).
enum Notifications {
    /// One server: the scripts `PUBLISH` on this channel themselves.
    Channel(String),
    /// A cluster: the scripts say when a waiter is to be woken, and the store
    /// `SPUBLISH`es on the record's sharded channel (see [`shards`]).
    Sharded(Shards),
}

impl Notifications {
    /// The channel argument of the scripts: empty on a cluster.
    fn script_channel(&self) -> &str {
        match self {
            Self::Channel(channel) => channel,
            Self::Sharded(_) => "",
        }
    }
}

/// The transitions, one atomic script each (see `src/lua/`).
struct Scripts {
    claim: Script,
    renew: Script,
    complete: Script,
    release: Script,
    delete: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            claim: Script::new(include_str!("lua/claim.lua")),
            renew: Script::new(include_str!("lua/renew.lua")),
            complete: Script::new(include_str!("lua/complete.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            delete: Script::new(include_str!("lua/delete.lua")),
        }
    }
}

/// The Redis key of a record: `<prefix>:{<scope hex>:<key hex>}`.
///
/// The one place the key layout is decided. The hash tag holds the whole identity,
/// hex-encoded, so it never contains a brace and is unambiguous whatever the client's key
/// is; the prefix holds no brace either (checked at connect), so the tag is the first
/// `{…}`.
pub fn redis_key(prefix: &str, id: &RecordId) -> String {
    let key = id.key().as_str().as_bytes();
    let mut out = String::with_capacity(prefix.len() + 36 + 2 * key.len());
    out.push_str(prefix);
    out.push_str(":{");
    out.push_str(&id.scope().to_hex());
    out.push(':');
    push_hex(&mut out, key);
    out.push('}');
    out
}

/// Reads a [`redis_key`] back; `None` for any other key.
fn parse_redis_key(prefix: &str, key: &[u8]) -> Option<RecordId> {
    let key = std::str::from_utf8(key).ok()?;
    let tag = key
        .strip_prefix(prefix)?
        .strip_prefix(":{")?
        .strip_suffix('}')?;
    let (scope, key) = tag.split_once(':')?;
    let scope = Scope::from_hex(scope)?;
    let key = unhex(key)?;
    let key = idem_core::IdempotencyKey::new(std::str::from_utf8(&key).ok()?).ok()?;
    Some(RecordId::new(scope, key))
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `s` with the glob characters of `SCAN … MATCH` escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// Lease and TTL lengths in milliseconds, kept within what Redis and the scripts' Lua
/// numbers handle exactly (at least 1 ms, at most about 34 years).
fn millis(d: Duration) -> u64 {
    const MAX: u64 = 1 << 40;
    u64::try_from(d.as_millis()).unwrap_or(MAX).clamp(1, MAX)
}

fn invalid(msg: String) -> StoreError {
    StoreError::backend("redis", ConfigError(msg))
}

fn unexpected(script: &'static str) -> StoreError {
    StoreError::backend(
        "redis",
        format!("unexpected reply from the {script} script"),
    )
}

impl RedisStore {
    /// Connects to `url` (see the [crate docs](crate#urls) for the forms) and starts the
    /// store's subscriber task, which stops when the last handle is dropped. Must be
    /// called inside a tokio runtime.
    ///
    /// Fails with [`StoreError::Unavailable`] or [`StoreError::Timeout`] if Redis cannot
    /// be reached within [`RedisStoreConfig::connect_timeout`] (the source of
    /// `Unavailable`, a [`ConnectError`](idem_core::store::ConnectError), names the
    /// store and the URL without its password), and with [`StoreError::Backend`] for a
    /// URL or prefix it cannot use. Once connected, the
    /// store reconnects on its own.
    pub async fn connect(url: &str, config: RedisStoreConfig) -> Result<Self, StoreError> {
        let prefix = &config.prefix;
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(invalid(format!(
                "prefix `{prefix}` must be non-empty and hold no `{{` or `}}`"
            )));
        }
        let (url, tls) = TlsFiles::split(url).map_err(|e| StoreError::backend("redis", e))?;
        let url = url.as_str();
        let target = Target::parse(url).map_err(|e| StoreError::backend("redis", e))?;
        if tls.any() && matches!(target, Target::Cluster(_)) {
            return Err(invalid(
                "tls_ca_cert_file, tls_cert_file and tls_key_file are for rediss:// (one server); \
                 a cluster over TLS is not supported"
                    .into(),
            ));
        }
        let open = |url: &str| tls.client(url).map_err(|e| StoreError::backend("redis", e));
        let unreachable = |e: StoreError| e.at_connect("redis", url::redact(url));
        let hub = WaitHub::new();
        let (stop, stopped) = oneshot::channel();
        let (ready, subscribed) = oneshot::channel();
        let (conn, notifications) = match &target {
            Target::Standalone(url) => {
                let client = open(url)?;
                let conn = Conn::standalone(client.clone(), &config)
                    .await
                    .map_err(unreachable)?;
                let channel = format!("{prefix}:done");
                let subscriber = Subscriber {
                    node: client,
                    channel: channel.clone(),
                    hub: hub.clone(),
                    connect_timeout: config.connect_timeout,
                    command_timeout: config.command_timeout,
                };
                tokio::spawn(subscriber.run(stopped, ready));
                (conn, Notifications::Channel(channel))
            }
            Target::Cluster(urls) => {
                let conn = Conn::cluster(urls, &config).await.map_err(unreachable)?;
                let shards = Shards::new(prefix);
                let subscriber = ShardedSubscriber {
                    nodes: urls.clone(),
                    channels: shards.all().to_vec(),
                    hub: hub.clone(),
                    connect_timeout: config.connect_timeout,
                    command_timeout: config.command_timeout,
                };
                tokio::spawn(subscriber.run(stopped, ready));
                (conn, Notifications::Sharded(shards))
            }
        };
        // Wait for the subscription so watches taken right away see every notification.
        // Not fatal: the task keeps trying, and wakes every watcher once it succeeds.
        if tokio::time::timeout(config.connect_timeout, subscribed)
            .await
            .is_err()
        {
            tracing::warn!(url = %url::redact(url), "redis store connected, but not yet subscribed to notifications");
        }

        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                scripts: Scripts::new(),
                prefix: config.prefix,
                notifications,
                command_timeout: config.command_timeout,
                hub,
                target: url::redact(url),
                _stop: stop,
            }),
        })
    }

    /// The key prefix and channel prefix this store uses.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The channels this store's notifications go out on: `<prefix>:done` on one
    /// server, the sharded channels on a cluster. For tests.
    #[doc(hidden)]
    pub fn notification_channels(&self) -> Vec<String> {
        match &self.inner.notifications {
            Notifications::Channel(channel) => vec![channel.clone()],
            Notifications::Sharded(shards) => shards.all().to_vec(),
        }
    }

    /// True when connected to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.conn, Conn::Cluster(_))
    }

    fn key(&self, id: &RecordId) -> String {
        redis_key(&self.inner.prefix, id)
    }

    async fn finish(
        &self,
        script: &'static str,
        id: &RecordId,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Finish, StoreError> {
        let reply = conn::within(
            self.inner.command_timeout,
            self.inner.conn.invoke(invocation),
        )
        .await?;
        match reply {
            Value::Int(1) => Ok(Finish::Done),
            Value::Int(0) => Ok(Finish::Superseded),
            // Done, and a waiter marked the record: on a cluster, wake it from here.
            Value::Int(2) => {
                self.inner.hub.notify(id);
                self.publish_sharded(id).await;
                Ok(Finish::Done)
            }
            _ => Err(unexpected(script)),
        }
    }

    /// On a cluster, `SPUBLISH`es `id` on its sharded channel, after the script that
    /// changed the record (a single server's scripts publish themselves). A failure is
    /// logged, not returned: the record is already written, and every waiter re-checks
    /// by its bounded poll.
    async fn publish_sharded(&self, id: &RecordId) {
        let Notifications::Sharded(shards) = &self.inner.notifications else {
            return;
        };
        let mut cmd = redis::cmd("SPUBLISH");
        cmd.arg(shards.for_key(&self.key(id))).arg(id.to_bytes());
        if let Err(error) =
            conn::within(self.inner.command_timeout, self.inner.conn.query(&cmd)).await
        {
            tracing::warn!(%error, "redis store could not announce a finished record; its waiters will poll");
        }
    }
}

impl Store for RedisStore {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        let mut invocation = self.inner.scripts.claim.prepare_invoke();
        invocation
            .key(self.key(&req.id))
            .arg(&req.fingerprint.as_bytes()[..])
            .arg(req.owner.to_hex())
            .arg(millis(req.lease))
            .arg(if req.waiting { "1" } else { "0" });
        let reply = conn::within(
            self.inner.command_timeout,
            self.inner.conn.invoke(&invocation),
        )
        .await?;
        let Value::Array(items) = reply else {
            return Err(unexpected("claim"));
        };
        match items.as_slice() {
            [Value::Int(0)] => Ok(Claim::Acquired(Lease {
                id: req.id.clone(),
                fingerprint: req.fingerprint,
                owner: req.owner,
                taken_over: false,
            })),
            [Value::Int(1)] => Ok(Claim::Mismatch),
            // R8; a snapshot that does not decode is never replayed (R16).
            [Value::Int(2), Value::BulkString(snapshot)] => {
                Ok(Claim::Completed(Snapshot::decode(snapshot)?))
            }
            [Value::Int(2)] => Err(Corrupt("completed record without a snapshot").into()),
            [Value::Int(3), Value::Int(pttl)] => Ok(Claim::InFlight {
                // PTTL is -1 only for a record someone stripped of its expiry by hand.
                retry_after: Duration::from_millis(u64::try_from(*pttl).unwrap_or(0).max(1)),
            }),
            _ => Err(unexpected("claim")),
        }
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<Finish, StoreError> {
        let mut invocation = self.inner.scripts.renew.prepare_invoke();
        invocation
            .key(self.key(&lease.id))
            .arg(lease.owner.to_hex())
            .arg(millis(lease_for));
        self.finish("renew", &lease.id, &invocation).await
    }

    async fn complete(
        &self,
        lease: &Lease,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        let mut invocation = self.inner.scripts.complete.prepare_invoke();
        invocation
            .key(self.key(&lease.id))
            .arg(lease.owner.to_hex())
            .arg(snapshot.encode())
            .arg(millis(ttl))
            .arg(self.inner.notifications.script_channel())
            .arg(lease.id.to_bytes());
        self.finish("complete", &lease.id, &invocation).await
    }

    async fn release(&self, lease: &Lease) -> Result<Finish, StoreError> {
        let mut invocation = self.inner.scripts.release.prepare_invoke();
        invocation
            .key(self.key(&lease.id))
            .arg(lease.owner.to_hex())
            .arg(self.inner.notifications.script_channel())
            .arg(lease.id.to_bytes());
        self.finish("release", &lease.id, &invocation).await
    }

    async fn lookup(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        // One HMGET reads every field at once: atomic without a script.
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key(id))
            .arg(&["st", "fp", "ow", "ca", "dl", "sn"]);
        let reply = conn::within(self.inner.command_timeout, self.inner.conn.query(&cmd)).await?;
        parse_record(reply)
    }

    /// `SCAN`s the prefix (with the scope, when filtered) on the server, or on every
    /// master of a cluster, then reads the candidates after the cursor in id order until
    /// the page is full. Every page scans the whole prefix: meant for on-call use, not
    /// the request path.
    async fn list(&self, filter: &ListFilter) -> Result<ListPage, StoreError> {
        let timeout = self.inner.command_timeout;
        let mut pattern = glob_escape(&self.inner.prefix);
        pattern.push_str(":{");
        if let Some(scope) = filter.scope {
            pattern.push_str(&scope.to_hex());
            pattern.push(':');
        }
        pattern.push('*');
        let mut ids = Vec::new();
        for node in conn::within(timeout, self.inner.conn.masters()).await? {
            let mut cursor = 0u64;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                let reply = conn::within(timeout, self.inner.conn.query_on(&node, &cmd)).await?;
                let (next, keys) = parse_scan(reply)?;
                ids.extend(
                    keys.iter()
                        .filter_map(|k| parse_redis_key(&self.inner.prefix, k))
                        .filter(|id| filter.after.as_ref().is_none_or(|a| id > a)),
                );
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        ids.sort();
        ids.dedup();
        let mut found = Vec::new();
        for id in ids {
            let record = match self.lookup(&id).await {
                Ok(Some(record)) => record,
                Ok(None) => continue, // expired or deleted since the scan
                // Reported, not a failure of the page: one damaged record must not hide
                // the others (R16).
                Err(StoreError::Corrupt(why)) => {
                    found.push((id, Err(why)));
                    if found.len() > filter.page_size() {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Deadlines are on Redis's clock and Redis removes records itself: a record
            // it still returns is live, whatever this machine's clock says.
            let live_now = record.ends_at().saturating_sub(1);
            if filter.matches(&id, &record, live_now) {
                found.push((id, Ok(record)));
                if found.len() > filter.page_size() {
                    break;
                }
            }
        }
        Ok(ListPage::from_sorted_entries(found, filter))
    }

    async fn delete(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let mut invocation = self.inner.scripts.delete.prepare_invoke();
        invocation
            .key(self.key(id))
            .arg(self.inner.notifications.script_channel())
            .arg(id.to_bytes());
        let reply = conn::within(
            self.inner.command_timeout,
            self.inner.conn.invoke(&invocation),
        )
        .await?;
        // Wake this process's watchers at once too; the notification wakes the others.
        self.inner.hub.notify(id);
        let record = parse_record(reply)?;
        if record.is_some() {
            self.publish_sharded(id).await;
        }
        Ok(record)
    }

    fn watch(&self, id: &RecordId) -> Watch {
        self.inner.hub.watch(id)
    }

    /// Redis expires records natively (R14): nothing to sweep, so always `Ok(0)`.
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// Reads a `SCAN` reply: the next cursor and the keys.
fn parse_scan(reply: Value) -> Result<(u64, Vec<Vec<u8>>), StoreError> {
    let bad = || StoreError::backend("redis", "unexpected reply to SCAN");
    let Value::Array(parts) = reply else {
        return Err(bad());
    };
    let Ok([cursor, keys]) = <[Value; 2]>::try_from(parts) else {
        return Err(bad());
    };
    let cursor = bytes(cursor)
        .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
        .ok_or_else(bad)?;
    let Value::Array(keys) = keys else {
        return Err(bad());
    };
    Ok((cursor, keys.into_iter().filter_map(bytes).collect()))
}

/// Reads the `HMGET st fp ow ca dl sn` reply of [`Store::lookup`].
fn parse_record(reply: Value) -> Result<Option<Record>, StoreError> {
    let Value::Array(fields) = reply else {
        return Err(StoreError::backend("redis", "unexpected reply to HMGET"));
    };
    let Ok([st, fp, ow, ca, dl, sn]) = <[Value; 6]>::try_from(fields) else {
        return Err(StoreError::backend("redis", "unexpected reply to HMGET"));
    };
    let st = match st {
        Value::Nil => return Ok(None),
        Value::BulkString(st) => st,
        _ => return Err(Corrupt("record state is not a string").into()),
    };
    let fingerprint = bytes(fp)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(Fingerprint::from_bytes)
        .ok_or(Corrupt("record fingerprint"))?;
    let created_at = number(ca).ok_or(Corrupt("record creation time"))?;
    let deadline = number(dl).ok_or(Corrupt("record deadline"))?;
    let state = match st.as_slice() {
        b"f" => State::InFlight {
            owner: bytes(ow)
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| OwnerToken::from_hex(&s))
                .ok_or(Corrupt("record owner"))?,
            lease_until: deadline,
        },
        b"c" => State::Completed {
            snapshot: Snapshot::decode(&bytes(sn).ok_or(Corrupt("record snapshot"))?)?,
            expires_at: deadline,
        },
        _ => return Err(Corrupt("unknown record state").into()),
    };
    Ok(Some(Record {
        fingerprint,
        created_at,
        state,
    }))
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}

fn number(v: Value) -> Option<Millis> {
    std::str::from_utf8(&bytes(v)?).ok()?.parse().ok()
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.inner.target)
            .field("mode", &self.inner.conn)
            .field("prefix", &self.inner.prefix)
            .field("command_timeout", &self.inner.command_timeout)
            .field("hub", &self.inner.hub)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idem_core::IdempotencyKey;
    use idem_core::scope::Scope;

    #[test]
    fn keys_put_the_whole_identity_in_one_hash_tag() {
        let id = RecordId::new(
            Scope::from_bytes([0xab; 16]),
            IdempotencyKey::new("a}{b").unwrap(),
        );
        let key = redis_key("idem", &id);
        assert_eq!(key, format!("idem:{{{}:617d7b62}}", "ab".repeat(16)));
        assert_eq!(key.matches('{').count(), 1);
        assert_eq!(key.matches('}').count(), 1);
        assert!(key.ends_with('}'));
    }

    #[test]
    fn scopes_and_keys_cannot_collide() {
        let a = RecordId::new(
            Scope::from_bytes([1; 16]),
            IdempotencyKey::new("k").unwrap(),
        );
        let b = RecordId::new(
            Scope::from_bytes([2; 16]),
            IdempotencyKey::new("k").unwrap(),
        );
        assert_ne!(redis_key("idem", &a), redis_key("idem", &b));
    }

    #[test]
    fn keys_read_back_and_globs_are_escaped() {
        let id = RecordId::new(
            Scope::from_bytes([0xab; 16]),
            IdempotencyKey::new("a}{b:*").unwrap(),
        );
        let key = redis_key("p*[x]", &id);
        assert_eq!(parse_redis_key("p*[x]", key.as_bytes()), Some(id));
        assert_eq!(parse_redis_key("other", key.as_bytes()), None);
        assert_eq!(parse_redis_key("p*[x]", b"p*[x]:done"), None);
        assert_eq!(glob_escape("p*[x]?\\"), "p\\*\\[x\\]\\?\\\\");
    }

    #[test]
    fn durations_fit_the_scripts() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_secs(60)), 60_000);
        assert_eq!(millis(Duration::MAX), 1 << 40);
    }

    #[test]
    fn corrupt_records_are_refused() {
        let s = |b: &[u8]| Value::BulkString(b.to_vec());
        let absent = Value::Array(vec![Value::Nil; 6]);
        assert_eq!(parse_record(absent).unwrap(), None);
        let completed = |fingerprint: &[u8]| {
            Value::Array(vec![
                s(b"c"),
                s(fingerprint),
                s(b"00"),
                s(b"1"),
                s(b"2"),
                s(b"x"),
            ])
        };
        // A fingerprint one byte short; a whole one, with a snapshot that does not decode.
        for fields in [completed(&[1; 31]), completed(&[1; 32])] {
            let parsed = parse_record(fields);
            assert!(matches!(parsed, Err(StoreError::Corrupt(_))), "{parsed:?}");
        }
    }
}
