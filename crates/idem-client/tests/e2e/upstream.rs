//! An upstream API whose answers the test scripts: the first attempts fail as told, then
//! every request succeeds and counts as one execution.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the upstream does with one request.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Answers this status (not an execution), with `Retry-After` if given.
    Fail(u16, Option<String>),
    /// Drops the connection without answering.
    Reset,
    /// Executes after this long.
    Slow(Duration),
}

#[derive(Debug, Default)]
struct State {
    script: VecDeque<Step>,
    /// The key header of every request, in arrival order.
    keys: Vec<Option<String>>,
    executions: u64,
}

/// The scripted upstream; requests beyond the script execute at once with 201.
#[derive(Debug, Clone)]
pub(crate) struct Scripted {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Scripted {
    /// Serves `script` on a free loopback port until the test ends.
    pub(crate) async fn spawn(script: impl IntoIterator<Item = Step>) -> Self {
        let state = Arc::new(Mutex::new(State {
            script: script.into_iter().collect(),
            ..State::default()
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(state.clone(), req));
                    // A `Reset` step fails the service, and hyper drops the connection.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests that reached it, executed or not.
    pub(crate) fn attempts(&self) -> usize {
        self.lock().keys.len()
    }

    /// The key header each request carried.
    pub(crate) fn keys(&self) -> Vec<Option<String>> {
        self.lock().keys.clone()
    }

    /// Requests that ran the operation.
    pub(crate) fn executions(&self) -> u64 {
        self.lock().executions
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let key = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let step = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.keys.push(key);
        s.script.pop_front()
    };
    match step {
        Some(Step::Fail(code, retry_after)) => {
            let mut resp = Response::builder().status(code);
            if let Some(after) = retry_after {
                resp = resp.header("retry-after", after);
            }
            return Ok(resp.body(Full::new(Bytes::from_static(b"failed"))).unwrap());
        }
        Some(Step::Reset) => {
            return Err(std::io::Error::other("scripted reset"));
        }
        Some(Step::Slow(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    let n = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.executions += 1;
        s.executions
    };
    let doc = serde_json::json!({
        "execution": n,
        "body": String::from_utf8_lossy(&body),
    });
    Ok(Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(doc.to_string())))
        .unwrap())
}
