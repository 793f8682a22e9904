//! `idem keys get|list|delete`: on-call inspection of idempotency records ("I was charged
//! twice", "my request is stuck"), through a running proxy's admin API (`--admin URL
//! --token T`) or straight at the store (`--store URL`, the same URLs as `serve`).
//!
//! Output is a human table, or with `--json` the admin API's JSON
//! ([`crate::admin::record_json`]). A record that does not exist is
//! [`NotFound`] (exit code 1); every other failure is one line and exit code 2.

use std::fmt;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use idem::clock::{Clock, Millis, SystemClock};
use idem::record::RecordId;
use idem::scope::{Scope, ScopeSource};
use idem::store::{ListFilter, StateFilter};
use idem::{AnyStore, IdempotencyKey, Store};
use serde_json::{Value, json};

use crate::admin::{parse_scope, record_json};

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
        #[arg(long, value_parser = crate::cli::parse_duration)]
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
}

impl ScopeArgs {
    /// The scope named, if any.
    pub fn resolve(&self) -> anyhow::Result<Option<Scope>> {
        if let Some(s) = &self.scope {
            return parse_scope(s).map(Some).map_err(anyhow::Error::msg);
        }
        if let Some(auth) = &self.authorization {
            let mut headers = HeaderMap::new();
            let value = HeaderValue::from_str(auth)
                .context("--authorization is not a valid header value")?;
            headers.insert(AUTHORIZATION, value);
            return Ok(Some(ScopeSource::default().scope(&headers)));
        }
        if self.scope_header.is_empty() {
            return Ok(None);
        }
        let mut names = Vec::new();
        let mut headers = HeaderMap::new();
        for pair in &self.scope_header {
            let (name, value) = pair
                .split_once(':')
                .with_context(|| format!("--scope-header `{pair}` is not `Name: value`"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("--scope-header `{pair}`: bad header name"))?;
            let value = HeaderValue::from_str(value.trim())
                .with_context(|| format!("--scope-header `{pair}`: bad header value"))?;
            headers.append(name.clone(), value);
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(Some(ScopeSource::headers(names).scope(&headers)))
    }

    fn required(&self) -> anyhow::Result<Scope> {
        self.resolve()?.context(
            "name the key's scope: --scope HEX|global, --authorization VALUE or --scope-header 'Name: value'",
        )
    }
}

/// The record asked for does not exist: exit code 1.
#[derive(Debug)]
pub struct NotFound(pub String);

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

fn not_found(id: &RecordId) -> anyhow::Error {
    NotFound(format!(
        "no live record for key `{}` in scope {}",
        id.key(),
        id.scope()
    ))
    .into()
}

/// Runs `idem keys …`, printing to stdout.
pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::Get { target, scope, key } => {
            let id = RecordId::new(scope.required()?, parse_key(&key)?);
            let record = Backend::open(&target).await?.get(&id).await?;
            print_record(&target, &record);
        }
        KeysCommand::List {
            target,
            scope,
            in_flight,
            completed,
            older_than,
            limit,
            after,
        } => {
            let state = if in_flight {
                StateFilter::InFlight
            } else if completed {
                StateFilter::Completed
            } else {
                StateFilter::Any
            };
            let query = ListQuery {
                state,
                older_than,
                scope: scope.resolve()?,
                limit: usize::from(limit),
                after,
            };
            let page = Backend::open(&target).await?.list(&query).await?;
            print_page(&target, &page);
        }
        KeysCommand::Delete {
            target,
            scope,
            key,
            yes,
        } => {
            let id = RecordId::new(scope.required()?, parse_key(&key)?);
            if !yes {
                confirm(&id)?;
            }
            let deleted = Backend::open(&target).await?.delete(&id).await?;
            if target.json {
                println!("{}", json!({ "deleted": deleted }));
            } else {
                println!(
                    "deleted key `{}` in scope {} (was {})",
                    id.key(),
                    id.scope(),
                    deleted["state"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

fn parse_key(key: &str) -> anyhow::Result<IdempotencyKey> {
    IdempotencyKey::new(key).with_context(|| format!("`{key}` is not an idempotency key"))
}

/// Asks on the terminal; refuses when stdin is not one.
fn confirm(id: &RecordId) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    anyhow::ensure!(
        stdin.is_terminal(),
        "refusing to delete without --yes: stdin is not a terminal"
    );
    eprint!(
        "Delete key `{}` in scope {}? Its next request runs the operation again. [y/N] ",
        id.key(),
        id.scope()
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    anyhow::ensure!(matches!(answer.trim(), "y" | "Y" | "yes"), "not deleted");
    Ok(())
}

struct ListQuery {
    state: StateFilter,
    older_than: Option<Duration>,
    scope: Option<Scope>,
    limit: usize,
    after: Option<String>,
}

/// The admin API of a running proxy, or the store itself.
enum Backend {
    Admin {
        base: String,
        token: String,
        client: Box<Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>>,
    },
    Store(AnyStore),
}

fn now() -> Millis {
    SystemClock.now_ms()
}

impl Backend {
    async fn open(target: &Target) -> anyhow::Result<Self> {
        match (&target.admin, &target.store) {
            (Some(url), None) => {
                anyhow::ensure!(
                    url.starts_with("http://"),
                    "--admin `{url}`: give the admin listener as http://host:port"
                );
                let token = target
                    .token
                    .clone()
                    .context("--admin needs --token (or IDEM_ADMIN_TOKEN)")?;
                Ok(Self::Admin {
                    base: url.trim_end_matches('/').to_owned(),
                    token,
                    client: Box::new(Client::builder(TokioExecutor::new()).build_http()),
                })
            }
            (None, Some(url)) => {
                let store = AnyStore::from_url(url)
                    .await
                    .with_context(|| format!("store `{url}`"))?;
                Ok(Self::Store(store))
            }
            _ => anyhow::bail!(
                "say where the records are: --admin URL --token T (a running idem serve) or --store URL"
            ),
        }
    }

    async fn get(&self, id: &RecordId) -> anyhow::Result<Value> {
        match self {
            Self::Admin { .. } => {
                let path = key_path(id);
                match self.call(Method::GET, &path).await? {
                    Some(v) => Ok(v),
                    None => Err(not_found(id)),
                }
            }
            Self::Store(store) => match store.lookup(id).await.context("the store failed")? {
                Some(record) => Ok(record_json(id, &record, now())),
                None => Err(not_found(id)),
            },
        }
    }

    async fn delete(&self, id: &RecordId) -> anyhow::Result<Value> {
        match self {
            Self::Admin { .. } => match self.call(Method::DELETE, &key_path(id)).await? {
                Some(v) => Ok(v["deleted"].clone()),
                None => Err(not_found(id)),
            },
            Self::Store(store) => match store.delete(id).await.context("the store failed")? {
                Some(record) => {
                    tracing::info!(
                        target: "idem::audit",
                        scope = %id.scope(),
                        key = %id.key(),
                        previous_state = state_name(&record.state),
                        who = "idem keys --store",
                        "idempotency record deleted"
                    );
                    Ok(record_json(id, &record, now()))
                }
                None => Err(not_found(id)),
            },
        }
    }

    async fn list(&self, q: &ListQuery) -> anyhow::Result<Value> {
        match self {
            Self::Admin { .. } => {
                let state = match q.state {
                    StateFilter::Any => "any",
                    StateFilter::InFlight => "in_flight",
                    StateFilter::Completed => "completed",
                };
                let mut path = format!("/admin/keys?state={state}&limit={}", q.limit);
                if let Some(d) = q.older_than {
                    path.push_str(&format!("&older_than={}ms", d.as_millis()));
                }
                if let Some(s) = q.scope {
                    path.push_str(&format!("&scope={s}"));
                }
                if let Some(a) = &q.after {
                    path.push_str(&format!("&after={}", encode(a)));
                }
                self.call(Method::GET, &path)
                    .await?
                    .context("the admin API has no /admin/keys: is this an idem admin listener?")
            }
            Self::Store(store) => {
                let now = now();
                let filter = ListFilter {
                    state: q.state,
                    created_before: q.older_than.map(|d| {
                        now.saturating_sub(Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX))
                    }),
                    scope: q.scope,
                    after: match &q.after {
                        Some(a) => Some(
                            RecordId::from_hex(a)
                                .context("--after is not a cursor idem printed")?,
                        ),
                        None => None,
                    },
                    limit: q.limit,
                };
                let page = store.list(&filter).await.context("the store failed")?;
                let keys: Vec<Value> = page
                    .records
                    .iter()
                    .map(|(id, r)| record_json(id, r, now))
                    .collect();
                Ok(json!({ "keys": keys, "next": page.next.map(|n| n.to_hex()) }))
            }
        }
    }

    /// One admin API request: `Some(json)` on 200, `None` on a 404 for a missing key,
    /// an error (with the problem's detail) otherwise.
    async fn call(&self, method: Method, path: &str) -> anyhow::Result<Option<Value>> {
        let Self::Admin {
            base,
            token,
            client,
        } = self
        else {
            anyhow::bail!("not an admin API");
        };
        let url = format!("{base}{path}");
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .with_context(|| format!("bad admin URL `{url}`"))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
            .await
            .with_context(|| format!("{base} did not answer within 30 s"))?
            .with_context(|| format!("cannot reach the admin API at {base}"))?;
        let status = resp.status();
        let is_json = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let body = resp
            .into_body()
            .collect()
            .await
            .context("reading the admin API's answer")?
            .to_bytes();
        let value: Value = if is_json {
            serde_json::from_slice(&body).context("the admin API answered invalid JSON")?
        } else {
            Value::Null
        };
        if status == StatusCode::OK {
            return Ok(Some(value));
        }
        let kind = value["type"].as_str().unwrap_or("");
        if status == StatusCode::NOT_FOUND && kind.ends_with("#admin-key-not-found") {
            return Ok(None);
        }
        let detail = value["detail"].as_str().map_or_else(
            || String::from_utf8_lossy(&body).trim().to_owned(),
            str::to_owned,
        );
        anyhow::bail!("the admin API answered {status}: {detail}")
    }
}

fn state_name(state: &idem::record::State) -> &'static str {
    match state {
        idem::record::State::InFlight { .. } => "in_flight",
        idem::record::State::Completed { .. } => "completed",
    }
}

fn key_path(id: &RecordId) -> String {
    format!("/admin/keys/{}/{}", id.scope(), encode(id.key().as_str()))
}

/// Percent-encodes everything but unreserved characters, so any key is one path segment.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn print_record(target: &Target, record: &Value) {
    if target.json {
        println!("{record}");
        return;
    }
    let field = |name: &str| record[name].as_str().unwrap_or("").to_owned();
    println!("scope        {}", field("scope"));
    println!("key          {}", field("key"));
    println!("state        {}", field("state"));
    println!("fingerprint  {}", field("fingerprint"));
    println!(
        "created      {} ({} ago)",
        field("created"),
        age(record["age_ms"].as_u64())
    );
    if let Some(owner) = record.get("owner") {
        println!("owner        {}", owner["token"].as_str().unwrap_or(""));
        println!(
            "lease until  {} ({} left)",
            owner["lease_until"].as_str().unwrap_or(""),
            age(owner["lease_left_ms"].as_u64())
        );
    }
    if let Some(expires) = record.get("expires").and_then(Value::as_str) {
        println!("expires      {expires}");
    }
    if let Some(resp) = record.get("response") {
        println!("response     {}", response_summary(resp));
    }
}

fn response_summary(resp: &Value) -> String {
    let status = resp["status"].as_u64().unwrap_or(0);
    match (resp["body_bytes"].as_u64(), resp["not_retained"].as_str()) {
        (Some(n), _) => format!("{status}, {n} body bytes stored"),
        (_, Some(why)) => format!("{status}, body not retained ({why})"),
        _ => format!("{status}"),
    }
}

fn age(ms: Option<u64>) -> String {
    let secs = ms.unwrap_or(0) / 1000;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn print_page(target: &Target, page: &Value) {
    if target.json {
        println!("{page}");
        return;
    }
    let empty = Vec::new();
    let keys = page["keys"].as_array().unwrap_or(&empty);
    if keys.is_empty() {
        println!("no matching records");
    } else {
        println!(
            "{:<32}  {:<24}  {:<9}  {:>10}  DETAIL",
            "SCOPE", "KEY", "STATE", "AGE"
        );
        for r in keys {
            let detail = match r.get("owner") {
                Some(owner) => format!("lease {} left", age(owner["lease_left_ms"].as_u64())),
                None => r.get("response").map(response_summary).unwrap_or_default(),
            };
            println!(
                "{:<32}  {:<24}  {:<9}  {:>10}  {detail}",
                r["scope"].as_str().unwrap_or(""),
                r["key"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                age(r["age_ms"].as_u64()),
            );
        }
    }
    if let Some(next) = page["next"].as_str() {
        println!("more: --after {next}");
    }
}
