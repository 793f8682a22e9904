//! The `idem` binary: parses flags, sets up logging, runs a subcommand, and reports a
//! failure as one line on stderr with exit code 2.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context as _;
use idem::AnyStore;
use idem_proxy::cli::{Command, LogFormat};
use idem_proxy::config::{ParseError, Parsed, ServeConfig};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

fn main() -> ExitCode {
    let parsed = match idem_proxy::config::parse_args(std::env::args_os()) {
        Ok(p) => p,
        Err(ParseError::Clap(e)) => e.exit(),
        Err(ParseError::Config(e)) => {
            eprintln!("idem: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = &parsed.cli;
    #[cfg(feature = "otel")]
    let otlp = cli.otlp_endpoint.as_deref();
    #[cfg(not(feature = "otel"))]
    let otlp = None;
    // Declared before the runtime, so dropped after it: spans are flushed last.
    // The demo prints its own account of each request: its decision lines stay off
    // unless asked for.
    let default_level = match cli.command {
        Command::Demo(_) => "info,idem::decision=off",
        _ => "info",
    };
    let level = cli.log_level.as_deref();
    let _telemetry = match init_logging(cli.log_format, level, default_level, otlp) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("idem: {e}");
            return ExitCode::from(2);
        }
    };
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
    match runtime.block_on(run(parsed)) {
        Ok(()) => ExitCode::SUCCESS,
        // `idem keys`: a record that does not exist is not a failure of the command.
        Err(e) if e.downcast_ref::<idem_proxy::keys::NotFound>().is_some() => {
            eprintln!("idem: {e:#}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("idem: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Flushes exported spans when dropped (feature `otel`).
struct Telemetry {
    #[cfg(feature = "otel")]
    otel: Option<idem_proxy::telemetry::Otel>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(otel) = self.otel.take() {
            otel.shutdown();
        }
    }
}

fn init_logging(
    format: LogFormat,
    level: Option<&str>,
    default_level: &str,
    otlp: Option<&str>,
) -> Result<Telemetry, String> {
    let filter =
        match level {
            Some(level) => EnvFilter::try_new(level)
                .map_err(|e| format!("invalid --log-level `{level}`: {e}"))?,
            None => EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| EnvFilter::new(default_level)),
        };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    // The per-request span is for exporters; log lines carry the decision instead.
    let fmt = fmt.with_filter(filter).with_filter(filter_fn(|meta| {
        !(meta.is_span() && meta.target() == idem::layer::REQUEST_SPAN_TARGET)
    }));
    let registry = tracing_subscriber::registry().with(fmt);
    #[cfg(feature = "otel")]
    if let Some(endpoint) = otlp {
        let (otel, layer) = idem_proxy::telemetry::layer(endpoint)
            .map_err(|e| format!("OpenTelemetry exporter to `{endpoint}`: {e}"))?;
        registry.with(layer).try_init().map_err(|e| e.to_string())?;
        return Ok(Telemetry { otel: Some(otel) });
    }
    #[cfg(not(feature = "otel"))]
    let _ = otlp;
    registry.try_init().map_err(|e| e.to_string())?;
    Ok(Telemetry {
        #[cfg(feature = "otel")]
        otel: None,
    })
}

async fn run(parsed: Parsed) -> anyhow::Result<()> {
    let Parsed { cli, file, origins } = parsed;
    match cli.command {
        Command::CheckConfig(args) => {
            let config = ServeConfig::resolve(&args.serve, file.as_ref())?;
            match &args.explain {
                Some(request) => print!(
                    "{}",
                    idem_proxy::check::explain(
                        request,
                        &config,
                        &args.serve,
                        file.as_ref(),
                        &origins
                    )
                    .map_err(anyhow::Error::msg)?
                ),
                None => println!(
                    "configuration ok: {} route rule(s), upstream {}, store {}",
                    config.proxy.routes.len(),
                    config.proxy.upstream,
                    config.store
                ),
            }
            Ok(())
        }
        Command::Docs(args) => {
            let policy = idem_proxy::config::server_policy(&args.serve)?;
            let routes = match &file {
                Some(f) => idem_proxy::config::routes(&policy, args.serve.wait_timeout, f)?,
                None => Vec::new(),
            };
            print!("{}", idem_proxy::docs::markdown(&policy, &routes));
            Ok(())
        }
        Command::Serve(args) => {
            let config = ServeConfig::resolve(args.as_ref(), file.as_ref())?;
            let admin_token = idem_proxy::admin::AdminToken::load(
                args.admin_token.as_deref(),
                args.admin_token_file.as_deref(),
            )?;
            anyhow::ensure!(
                admin_token.is_none() || config.admin_listen.is_some(),
                "--admin-token needs --admin-listen: the admin API is served there"
            );
            let store = AnyStore::from_url(&config.store)
                .await
                .with_context(|| format!("store `{}`", config.store))?;
            tracing::info!(
                store = store.kind(),
                encrypted = config.encryption.is_some(),
                "store open"
            );
            match config.encryption.clone() {
                // The admin API reads through the same sealed store, so keys are
                // looked up by their digests as the proxy stores them.
                Some(keys) => {
                    serve(idem::store::Sealed::new(store, keys), config, admin_token).await
                }
                None => serve(store, config, admin_token).await,
            }
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
        Command::Keys(args) => idem_proxy::keys::run(args).await,
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

/// `idem serve` over `store`: the admin listener if asked for, then the proxy until a
/// shutdown signal.
async fn serve<St: idem::Store>(
    store: St,
    config: ServeConfig,
    admin_token: Option<idem_proxy::admin::AdminToken>,
) -> anyhow::Result<()> {
    if let Some(addr) = config.admin_listen {
        let metrics = idem_proxy::admin::install_recorder()?;
        let admin = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (admin)"))?;
        let keys_api = admin_token.is_some();
        let app = idem_proxy::admin::router_with(store.clone(), metrics, admin_token);
        tracing::info!(admin = %admin.local_addr()?, keys_api, "admin listening");
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
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
        "idem serving"
    );
    idem_proxy::serve(listener, store, config.proxy, shutdown_signal()).await?;
    Ok(())
}
