//! The `idem` binary: parses flags, sets up logging, runs a subcommand
//! ([`idem_proxy::run`]), and reports a failure as one line on stderr with exit code 2.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser as _;
use clap::error::ErrorKind;
use idem_proxy::cli::{Cli, Command, LogFormat};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A bad value is one line, like every other bad input; usage errors, --help and
        // --version are clap's own.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ValueValidation | ErrorKind::InvalidValue
            ) =>
        {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or_default();
            eprintln!("idem: {}", first.strip_prefix("error: ").unwrap_or(first));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
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
    match runtime.block_on(idem_proxy::run(cli.command, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        // `idem keys`: a record that does not exist is not a failure of the command;
        // `idem check-store`: corrupt records were found and listed; `idem check`: a
        // failed check is a finding, not a broken command.
        Err(e)
            if e.downcast_ref::<idem_proxy::keys::NotFound>().is_some()
                || e.downcast_ref::<idem_proxy::check_store::Damaged>()
                    .is_some()
                || e.downcast_ref::<idem_proxy::conformance::Failed>()
                    .is_some() =>
        {
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
    // The level filter goes outermost: its level is the hint that also caps the `log`
    // crate's records (tokio-postgres logs every statement at debug), which are then
    // dropped where they are made instead of being built and offered to the filter.
    let fmt = fmt
        .with_filter(filter_fn(|meta| {
            !(meta.is_span() && meta.target() == idem::layer::REQUEST_SPAN_TARGET)
        }))
        .with_filter(filter);
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
