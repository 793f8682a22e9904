//! Runs `idem keys …`: the scope and key named, the records found, the answer printed.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::Context as _;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};
use idem::core::IdempotencyKey;
use idem::core::record::RecordId;
use idem::core::scope::{Scope, ScopeSource};
use idem::core::store::StateFilter;
use serde_json::{Value, json};

use super::admin_api::AdminApi;
use super::direct::Direct;
use super::print::{print_page, print_record};
use super::query::{ListQuery, NotFound};
use crate::admin::parse_scope;
use crate::cli::{KeysArgs, KeysCommand, ScopeArgs, Target};

/// Runs `idem keys …`, printing to stdout.
pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::Get { target, scope, key } => {
            let id = RecordId::new(required(&scope)?, parse_key(&key)?);
            let record = Backend::open(&target).await?.get(&id).await?;
            print_record(target.json, &record);
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
                scope: resolve_scope(&scope)?,
                limit: usize::from(limit),
                after,
            };
            let page = Backend::open(&target).await?.list(&query).await?;
            print_page(target.json, &page);
        }
        KeysCommand::Delete {
            target,
            scope,
            key,
            yes,
        } => {
            let id = RecordId::new(required(&scope)?, parse_key(&key)?);
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

/// The scope `args` name, if any: a digest, or computed from header values as the
/// proxy computes it.
fn resolve_scope(args: &ScopeArgs) -> anyhow::Result<Option<Scope>> {
    if let Some(s) = &args.scope {
        return parse_scope(s).map(Some).map_err(anyhow::Error::msg);
    }
    let secret = args
        .scope_secret_file
        .as_deref()
        .map(crate::settings::read_scope_secret)
        .transpose()?;
    let computed = |source: ScopeSource, headers: &HeaderMap| {
        let source = match &secret {
            Some(secret) => source.keyed(secret.clone()),
            None => source,
        };
        source
            .scope(headers)
            .context("the header values are empty: such requests are unscoped and never stored")
            .map(Some)
    };
    if let Some(auth) = &args.authorization {
        let mut headers = HeaderMap::new();
        let value =
            HeaderValue::from_str(auth).context("--authorization is not a valid header value")?;
        headers.insert(AUTHORIZATION, value);
        return computed(ScopeSource::default(), &headers);
    }
    if args.scope_header.is_empty() {
        return Ok(None);
    }
    let mut names = Vec::new();
    let mut headers = HeaderMap::new();
    for pair in &args.scope_header {
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
    computed(ScopeSource::headers(names), &headers)
}

fn required(args: &ScopeArgs) -> anyhow::Result<Scope> {
    resolve_scope(args)?.context(
        "name the key's scope: --scope HEX|global, --authorization VALUE or --scope-header 'Name: value'",
    )
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

/// The admin API of a running proxy, or the store itself.
enum Backend {
    Admin(Box<AdminApi>),
    Store(Direct),
}

impl Backend {
    async fn open(target: &Target) -> anyhow::Result<Self> {
        match (&target.admin, &target.store) {
            (Some(url), None) => Ok(Self::Admin(Box::new(AdminApi::new(
                url,
                target.token.as_deref(),
            )?))),
            (None, Some(url)) => Ok(Self::Store(Direct::open(url).await?)),
            _ => anyhow::bail!(
                "say where the records are: --admin URL --token T (a running idem serve) or --store URL"
            ),
        }
    }

    async fn get(&self, id: &RecordId) -> anyhow::Result<Value> {
        let found = match self {
            Self::Admin(api) => api.get(id).await?,
            Self::Store(store) => store.get(id).await?,
        };
        found.ok_or_else(|| NotFound::record(id))
    }

    async fn delete(&self, id: &RecordId) -> anyhow::Result<Value> {
        let deleted = match self {
            Self::Admin(api) => api.delete(id).await?,
            Self::Store(store) => store.delete(id).await?,
        };
        deleted.ok_or_else(|| NotFound::record(id))
    }

    async fn list(&self, q: &ListQuery) -> anyhow::Result<Value> {
        match self {
            Self::Admin(api) => api.list(q).await,
            Self::Store(store) => store.list(q).await,
        }
    }
}
