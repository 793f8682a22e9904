//! R25: guessing the admin token is limited per client address; correct tokens from
//! other addresses are never slowed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::common;

const TOKEN: &str = "the-right-admin-token";

/// `GET /admin/keys` from `from` with `token`: the status and the Retry-After value.
async fn attempt(admin: SocketAddr, from: &str, token: &str) -> (u16, Option<u64>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(admin).await.unwrap();
    s.write_all(
        format!(
            "GET /admin/keys HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut all))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let retry = text
        .lines()
        .find_map(|l| l.strip_prefix("retry-after:"))
        .map(|v| v.trim().parse().unwrap());
    (status, retry)
}

// R25: an address that keeps sending wrong tokens gets 429 with Retry-After after ten,
// even for the right one, until it waited; another address is served at once.
#[tokio::test]
async fn r25_wrong_admin_tokens_are_throttled_per_address() {
    let admin = common::free_addr();
    let _proc = common::serve(&[
        "--upstream",
        "http://127.0.0.1:9",
        "--store",
        "memory",
        "--admin-listen",
        &admin.to_string(),
        "--admin-token",
        TOKEN,
    ])
    .await;
    assert_eq!(attempt(admin, "127.0.0.1", TOKEN).await.0, 200);
    let mut refused = 0;
    let mut throttled = None;
    for i in 0..30 {
        match attempt(admin, "127.0.0.1", &format!("guess-number-{i:04}")).await {
            (401, _) => refused += 1,
            (429, Some(retry)) => {
                throttled = Some(retry);
                break;
            }
            other => panic!("guess {i}: {other:?}"),
        }
    }
    let retry = throttled.expect("thirty wrong tokens and never a 429");
    assert!(refused >= 10, "throttled after {refused} wrong tokens");
    assert!(retry >= 1, "Retry-After: {retry}");
    // Throttled, the right token waits too: a guess tells nothing.
    assert_eq!(attempt(admin, "127.0.0.1", TOKEN).await.0, 429);
    // Another address is not slowed, neither for the right token nor for its own
    // first mistakes.
    assert_eq!(attempt(admin, "127.0.0.2", TOKEN).await.0, 200);
    assert_eq!(
        attempt(admin, "127.0.0.2", "a-wrong-token-here").await.0,
        401
    );
    // After the wait, the first address gets in.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(attempt(admin, "127.0.0.1", TOKEN).await.0, 200);
}
