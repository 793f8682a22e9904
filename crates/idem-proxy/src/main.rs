//! The `idem` binary: parses flags, sets up logging, runs a subcommand, and reports a
//! failure as one line on stderr with exit code 2.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use idem::AnyStore;
use idem_proxy::cli::{Cli, Command, LogFormat};
use idem_proxy::config::ServeConfig;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("idem: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idem: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = ServeConfig::try_from(args.as_ref())?;
            let store = AnyStore::from_url(&config.store)
                .await
                .with_context(|| format!("store `{}`", config.store))?;
            if let Some(addr) = config.admin_listen {
                let metrics = idem_proxy::admin::install_recorder()?;
                let admin = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (admin)"))?;
                let app = idem_proxy::admin::router(store.clone(), metrics);
                tracing::info!(admin = %admin.local_addr()?, "admin listening");
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(admin, app).await {
                        tracing::error!(error = %e, "admin listener failed");
                    }
                });
            }
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            tracing::info!(
                listen = %listener.local_addr()?,
                upstream = %config.proxy.upstream,
                store = store.kind(),
                encrypted = config.encryption.is_some(),
                "idem serving"
            );
            match config.encryption {
                Some(keys) => {
                    let sealed = idem::store::Sealed::new(store, keys);
                    idem_proxy::serve(listener, sealed, config.proxy, shutdown_signal()).await?;
                }
                None => idem_proxy::serve(listener, store, config.proxy, shutdown_signal()).await?,
            }
            Ok(())
        }
        Command::Migrate(args) => {
            // Open without migrating, then migrate explicitly, so the count is real.
            let sep = if args.store.contains('?') { '&' } else { '?' };
            let url = if args.store.starts_with("postgres") {
                format!("{}{sep}migrate=false", args.store)
            } else {
                args.store.clone()
            };
            let store = AnyStore::from_url(&url)
                .await
                .with_context(|| format!("store `{}`", args.store))?;
            let applied = store.migrate().await.context("migration failed")?;
            println!("{}: {applied} migration(s) applied", store.kind());
            Ok(())
        }
        Command::Demo(args) => {
            idem_proxy::demo::run(&args, shutdown_signal()).await?;
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
