//! What the `idem` binary runs, one function per subcommand, so tests run them
//! in-process; the binary only parses the command line, sets up logging and reports.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use idem::core::problem::Problems;
use idem::{AnyStore, Store};
use tokio::net::TcpListener;

use crate::admin::{self, AdminToken};
use crate::cli::{CheckConfigArgs, Command, DocsArgs};
use crate::config::{OpenStore, ServeConfig};

/// Runs `command` until it is done or, for `serve` and `demo`, until `shutdown`
/// resolves; output goes to stdout.
pub async fn run(
    command: Command,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig(args) => print!("{}", check_config(&args)?),
        Command::Docs(args) => {
            let (text, warnings) = docs(&args)?;
            for w in warnings {
                eprintln!("idem: warning: {w}");
            }
            print!("{text}");
        }
        Command::Serve(args) => {
            let config = args.resolve()?.serve_config()?;
            bind(config).await?.run(shutdown).await?;
        }
        Command::Migrate(args) => {
            let (kind, applied) = migrate(&args.store).await?;
            println!("{kind}: {applied} migration(s) applied");
        }
        Command::Keys(args) => crate::keys::run(args).await?,
        Command::CheckStore(args) => crate::check_store::run(&args).await?,
        Command::Check(args) => crate::conformance::run(*args).await?,
        Command::Demo(args) => {
            crate::demo::run(&args, shutdown).await?;
        }
    }
    Ok(())
}

/// `idem check-config`: a summary of a valid configuration, or with `--explain`, the
/// rule and every setting that applies to one request.
pub fn check_config(args: &CheckConfigArgs) -> anyhow::Result<String> {
    let effective = args.serve.resolve()?;
    let config = effective.serve_config()?;
    if let Some(path) = &args.openapi {
        // Warnings only: a rule for an endpoint the document does not describe yet is
        // not an invalid configuration.
        let (doc, _) = crate::openapi::load(path)?;
        let name = path.display().to_string();
        let routes = effective.routes();
        for w in crate::openapi::route_warnings(&doc, &name, &effective.policy, &routes)? {
            eprintln!("idem: warning: {w}");
        }
    }
    match &args.explain {
        Some(request) => crate::check::explain(request, &effective).map_err(anyhow::Error::msg),
        None => Ok(format!(
            "configuration ok: {} route rule(s), upstream {}, store {}\n",
            config.proxy.routes.len(),
            config.proxy.upstream,
            config.store
        )),
    }
}

/// `idem docs`: the Markdown for an API's public docs, or with `--format openapi` or
/// `--openapi-merge` an OpenAPI document (no upstream needed); with the warnings about
/// rules that match no operation of the merged document.
pub fn docs(args: &DocsArgs) -> anyhow::Result<(String, Vec<String>)> {
    let effective = args.serve.resolve()?;
    let routes = effective.routes();
    match crate::openapi::docs(&args.openapi, &effective.policy, &routes)? {
        Some(out) => Ok(out),
        None => Ok((
            crate::docs::markdown(&effective.policy, &routes),
            Vec::new(),
        )),
    }
}

/// `idem migrate`: applies the store's schema migrations; answers the store's kind and
/// how many were applied.
pub async fn migrate(url: &str) -> anyhow::Result<(&'static str, usize)> {
    // Opened without migrating, then migrated explicitly, so the count is real.
    let store = AnyStore::from_url(&without_startup_migration(url))
        .await
        .with_context(|| format!("store `{url}`"))?;
    let applied = store.migrate().await.context("migration failed")?;
    Ok((store.kind(), applied))
}

/// A PostgreSQL store URL with `migrate=false` in place of any `migrate` option, so
/// opening it does not migrate; other URLs as they are.
fn without_startup_migration(url: &str) -> String {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return url.to_owned();
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some("migrate"))
        .collect();
    params.push("migrate=false");
    format!("{base}?{}", params.join("&"))
}

/// `idem serve` with its store open and its listeners bound: [`run`](Self::run) it.
#[derive(Debug)]
pub struct Bound {
    config: ServeConfig,
    store: OpenStore,
    listener: TcpListener,
    admin: Option<TcpListener>,
    tls: crate::tls::Loaded,
}

/// Reads the TLS files, opens the store and binds the proxy's listener and, when
/// `admin_listen` is set, the admin listener (port 0 picks a free one).
pub async fn bind(config: ServeConfig) -> anyhow::Result<Bound> {
    let tls = crate::tls::load(&config.proxy)?;
    let store = config.open_store().await?;
    tracing::info!(
        store = store.kind(),
        encrypted = config.encryption.is_some(),
        "store open"
    );
    let admin = match config.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?,
        ),
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    Ok(Bound {
        config,
        store,
        listener,
        admin,
        tls,
    })
}

impl Bound {
    /// Where the proxy listens.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the admin listener listens, if it is on.
    pub fn admin_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.admin.as_ref().map(TcpListener::local_addr)
    }

    /// Serves the admin listener, if any, and the proxy until `shutdown` resolves.
    ///
    /// The admin listener's `/metrics` installs the process's metrics recorder: once a
    /// process.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        match self.store.clone() {
            // The admin API reads through the same sealed store, so keys are looked up
            // by their digests as the proxy stores them.
            OpenStore::Sealed { store, .. } => self.run_on(store, shutdown).await,
            OpenStore::Plain(store) => self.run_on(store, shutdown).await,
        }
    }

    async fn run_on<St: Store>(
        self,
        store: St,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            listener,
            admin,
            tls,
            ..
        } = self;
        let admin_task = match admin {
            Some(admin) => Some(serve_admin(
                admin,
                store.clone(),
                config.admin_token,
                config.proxy.policy.problems().clone(),
            )?),
            None => None,
        };
        tracing::info!(
            listen = %listener.local_addr()?,
            tls = tls.listener.is_some(),
            upstream = %config.proxy.upstream,
            "idem serving"
        );
        let served =
            crate::server::serve_loaded(listener, store, config.proxy, tls, shutdown).await;
        if let Some(task) = admin_task {
            // Awaited, so the admin listener is closed when this returns.
            task.abort();
            let _ = task.await;
        }
        served?;
        Ok(())
    }
}

/// The admin routes on `listener`, on a task of their own, rendering problems as the
/// proxy does.
fn serve_admin<St: Store>(
    listener: TcpListener,
    store: St,
    token: Option<AdminToken>,
    problems: Problems,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let metrics = admin::install_recorder()?;
    let keys_api = token.is_some();
    let app = admin::router_with(store, metrics, token, problems);
    tracing::info!(admin = %listener.local_addr()?, keys_api, "admin listening");
    Ok(tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin listener failed");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_opens_postgres_without_migrating() {
        for (url, want) in [
            ("postgres://u@h/db", "postgres://u@h/db?migrate=false"),
            (
                "postgres://u@h/db?schema=idem",
                "postgres://u@h/db?schema=idem&migrate=false",
            ),
            (
                "postgresql://u@h/db?migrate=true&schema=x",
                "postgresql://u@h/db?schema=x&migrate=false",
            ),
            ("memory", "memory"),
            ("file:./idem-data", "file:./idem-data"),
        ] {
            assert_eq!(without_startup_migration(url), want);
        }
    }
}
