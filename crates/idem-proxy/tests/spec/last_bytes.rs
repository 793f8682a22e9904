//! R8: the last bytes of a response: the upstream's own reason phrase replays, and the
//! trailers of a chunked answer reach the first client (they are not stored), through
//! the `idem` binary over raw sockets.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{read_request, serve};

/// An upstream that answers every request `201 CREATED`, chunked, with a trailer.
async fn shouting_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                while read_request(&mut conn).await.is_some() {
                    let answer = "HTTP/1.1 201 CREATED\r\ncontent-type: application/json\r\n\
                                  transfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
                                  7\r\n{\"a\":1}\r\n0\r\nx-checksum: c0ffee\r\n\r\n";
                    if conn.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends one keyed POST on a fresh connection and reads the whole answer until the
/// server closes it (`Connection: close`).
async fn exchange(addr: SocketAddr) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        b"POST /orders HTTP/1.1\r\nhost: x\r\nauthorization: Bearer a\r\n\
          idempotency-key: o-1\r\nte: trailers\r\nconnection: close\r\n\
          content-length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut answer))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

// R8: `201 CREATED` replays as `201 CREATED`, not `201 Created`; the first answer
// carries the upstream's trailer, the replay none (and announces none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_reason_phrase_replays_and_trailers_reach_the_first_client() {
    let upstream = shouting_upstream().await;
    let idem = serve(&[
        "--upstream",
        &format!("http://{upstream}"),
        "--store",
        "memory",
    ])
    .await;

    let first = exchange(idem.addr).await;
    assert!(first.starts_with("HTTP/1.1 201 CREATED\r\n"), "{first}");
    assert!(
        first
            .to_ascii_lowercase()
            .contains("\r\nx-checksum: c0ffee\r\n"),
        "{first}"
    );
    assert!(first.contains("{\"a\":1}"), "{first}");

    let replay = exchange(idem.addr).await;
    assert!(replay.starts_with("HTTP/1.1 201 CREATED\r\n"), "{replay}");
    let lower = replay.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nidempotent-replayed: true\r\n"),
        "{replay}"
    );
    assert!(
        !lower.contains("x-checksum") && !lower.contains("\r\ntrailer:"),
        "{replay}"
    );
    assert!(replay.ends_with("{\"a\":1}"), "{replay}");
}
