//! `idem demo`: the double charge idem exists to prevent, played live.
//!
//! A small payments API (slow, like a real bank call, and with no idempotency of its
//! own) and the proxy start on free loopback ports. A client then charges once and
//! retries after timeouts, and fires ten concurrent duplicates: first straight at the
//! API, then through idem. The summary counts the charges.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idem::AnyStore;
use tokio::net::TcpListener;

use crate::cli::DemoArgs;
use crate::config::ProxyConfig;
use crate::server::serve;

/// How long the demo bank takes to charge a card.
const BANK_LATENCY: Duration = Duration::from_millis(300);
/// How long the demo client waits before it gives up and retries.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Clone, Default)]
struct Bank {
    charges: Arc<AtomicU64>,
}

async fn charge(State(bank): State<Bank>, body: Bytes) -> impl IntoResponse {
    // Like a real payments backend, the charge goes through even when the client has
    // stopped waiting: the work runs on its own task, not on the connection's.
    let charged = tokio::spawn(async move {
        tokio::time::sleep(BANK_LATENCY).await;
        bank.charges.fetch_add(1, Ordering::SeqCst) + 1
    });
    let n = charged.await.unwrap_or_default();
    let amount = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("amount").cloned())
        .unwrap_or(serde_json::Value::Null);
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "charge": format!("ch_{n}"), "amount": amount })),
    )
}

/// What one scenario produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Charges the bank made.
    pub charges: u64,
    /// Attempts the client gave up on.
    pub timeouts: u32,
    /// Responses that executed the charge.
    pub executed: u32,
    /// Replayed responses (`Idempotent-Replayed: true`).
    pub replays: u32,
    /// 409 in-progress answers.
    pub conflicts: u32,
}

/// The two scenarios, each straight and through idem.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// One charge retried after timeouts, straight at the API.
    pub retries_direct: Tally,
    /// The same through idem.
    pub retries_idem: Tally,
    /// Ten concurrent duplicates straight at the API.
    pub burst_direct: Tally,
    /// The same through idem.
    pub burst_idem: Tally,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn send_charge(
    client: &HttpClient,
    addr: SocketAddr,
    key: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<Option<(u16, bool)>> {
    let req = Request::post(format!("http://{addr}/charges"))
        .header("idempotency-key", key)
        // The customer's API credential: idem keeps each caller's keys apart (R4).
        .header("authorization", "Bearer sk_test_demo")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"amount\":4200}")))?;
    let call = async {
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        let replayed = resp.headers().get("idempotent-replayed").is_some();
        resp.into_body().collect().await?;
        anyhow::Ok((status, replayed))
    };
    match timeout {
        Some(t) => match tokio::time::timeout(t, call).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        },
        None => call.await.map(Some),
    }
}

fn count(t: &mut Tally, outcome: Option<(u16, bool)>) {
    match outcome {
        None => t.timeouts += 1,
        Some((409, _)) => t.conflicts += 1,
        Some((_, true)) => t.replays += 1,
        Some(_) => t.executed += 1,
    }
}

/// One charge: five attempts, each abandoned after the client timeout, then a last
/// patient one.
async fn retries(client: &HttpClient, addr: SocketAddr, key: &str) -> anyhow::Result<Tally> {
    let mut t = Tally::default();
    for _ in 0..5 {
        count(
            &mut t,
            send_charge(client, addr, key, Some(CLIENT_TIMEOUT)).await?,
        );
    }
    // Let abandoned requests reach the bank, then ask once more, patiently.
    tokio::time::sleep(BANK_LATENCY * 2).await;
    count(&mut t, send_charge(client, addr, key, None).await?);
    Ok(t)
}

/// Ten identical requests at once.
async fn burst(client: &HttpClient, addr: SocketAddr, key: &str) -> anyhow::Result<Tally> {
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (client, key) = (client.clone(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            send_charge(&client, addr, &key, None).await
        }));
    }
    let mut t = Tally::default();
    for task in tasks {
        count(&mut t, task.await??);
    }
    Ok(t)
}

/// The tally of `run`, with the charges the bank made meanwhile.
async fn charged(
    bank: &Bank,
    run: impl std::future::Future<Output = anyhow::Result<Tally>>,
) -> anyhow::Result<Tally> {
    let before = bank.charges.load(Ordering::SeqCst);
    let mut t = run.await?;
    t.charges = bank.charges.load(Ordering::SeqCst) - before;
    Ok(t)
}

/// Runs the demo: prints the report, then serves until `shutdown` unless `args.once`.
pub async fn run(
    args: &DemoArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Report> {
    let bank = Bank::default();
    let api_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the demo API")?;
    let api = api_listener.local_addr()?;
    let app = Router::new()
        .route("/charges", post(charge))
        .with_state(bank.clone());
    tokio::spawn(async move {
        let _ = axum::serve(api_listener, app).await;
    });

    let (store_url, _tempdir) = match &args.store {
        Some(url) => (url.clone(), None),
        None => {
            let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
            (
                format!("file:{}", dir.path().join("idem-data").display()),
                Some(dir),
            )
        }
    };
    let store = AnyStore::from_url(&store_url)
        .await
        .with_context(|| format!("cannot open store `{store_url}`"))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let proxy = listener.local_addr()?;
    let config = ProxyConfig::new(format!("http://{api}").parse()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, store, config, async move {
        let _ = stop_rx.await;
    }));

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let run_id = std::process::id();
    let report = Report {
        retries_direct: charged(&bank, retries(&client, api, &format!("demo-{run_id}-a"))).await?,
        retries_idem: charged(&bank, retries(&client, proxy, &format!("demo-{run_id}-a"))).await?,
        burst_direct: charged(&bank, burst(&client, api, &format!("demo-{run_id}-b"))).await?,
        burst_idem: charged(&bank, burst(&client, proxy, &format!("demo-{run_id}-b"))).await?,
    };
    print_report(&report, &store_url);
    if !args.once {
        println!();
        println!("Try it by hand (Ctrl-C to stop):");
        println!("  demo payments API  http://{api}");
        println!("  idem in front      http://{proxy}");
        println!(
            "  curl -i -X POST http://{proxy}/charges -H 'Idempotency-Key: my-first-key' \
             -H 'Authorization: Bearer sk_test_demo' -H 'Content-Type: application/json' \
             -d '{{\"amount\":4200}}'"
        );
        println!("  (run it twice: the second answer is a replay; change the body: 422)");
        shutdown.await;
    }
    let _ = stop_tx.send(());
    server.await??;
    Ok(report)
}

fn line(what: &str, t: &Tally) -> String {
    let mut parts = Vec::new();
    for (n, word) in [
        (t.timeouts, "timed out"),
        (t.executed, "executed"),
        (t.conflicts, "told 409 in progress"),
        (t.replays, "replayed"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    let plural = if t.charges == 1 { "" } else { "s" };
    format!(
        "  {what:<34} -> {} charge{plural}  ({})",
        t.charges,
        parts.join(", ")
    )
}

fn print_report(r: &Report, store: &str) {
    println!("idem demo: a 300 ms payments API, a client that gives up after 100 ms");
    println!();
    println!("Straight to the payments API:");
    println!(
        "{}",
        line("1 charge, 5 retries after timeouts", &r.retries_direct)
    );
    println!("{}", line("10 concurrent duplicates", &r.burst_direct));
    println!("Through idem (store {store}):");
    println!(
        "{}",
        line("1 charge, 5 retries after timeouts", &r.retries_idem)
    );
    println!("{}", line("10 concurrent duplicates", &r.burst_idem));
    println!();
    println!(
        "The customer asked for 2 charges: charged {} times without idem, {} with it.",
        r.retries_direct.charges + r.burst_direct.charges,
        r.retries_idem.charges + r.burst_idem.charges
    );
}
