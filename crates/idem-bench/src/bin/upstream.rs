//! A fast static upstream: answers every request with a fixed 201 JSON body after
//! reading the request body; a path under `/slow` answers after 60 s instead (for
//! measuring what duplicates cost while they wait). Usage: `bench-upstream ADDR`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const BODY: &[u8] =
    br#"{"id":"ch_0123456789","status":"succeeded","amount":4200,"currency":"eur"}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let slow = req.uri().path().starts_with("/slow");
    let _ = req.into_body().collect().await;
    if slow {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    *resp.status_mut() = hyper::StatusCode::CREATED;
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
