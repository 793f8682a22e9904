//! The one LISTEN connection per store that turns NOTIFYs into [`WaitHub`] wake-ups.
//!
//! It is a dedicated connection, not a pooled one: it stays subscribed for the store's
//! lifetime, and waiters hold nothing but a [`Watch`](idem_core::store::Watch). When the
//! connection drops it reconnects with backoff and then wakes every waiter, because
//! notifications sent while it was away are lost; waiters re-check with a claim. A
//! periodic ping finds a connection that died silently (a network cut).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idem_core::record::RecordId;
use idem_core::store::{BoxError, WaitHub};
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;

use crate::tls::Tls;
use tokio_util::sync::CancellationToken;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const PING_EVERY: Duration = Duration::from_secs(30);

/// What the listener task needs; it holds no handle on the store itself, so it does
/// not keep the store alive.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: Tls,
    pub(crate) channel: String,
    pub(crate) hub: WaitHub,
    pub(crate) listening: Arc<AtomicBool>,
    pub(crate) ping_timeout: Duration,
    pub(crate) stop: CancellationToken,
}

/// Aborts the connection task when the session ends or is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Listener {
    /// Subscribes, reconnecting with backoff, until the store is dropped.
    pub(crate) async fn run(self) {
        let mut backoff = MIN_BACKOFF;
        let mut failures = 0u32;
        loop {
            let mut subscribed = false;
            let ended = tokio::select! {
                () = self.stop.cancelled() => return,
                ended = self.session(&mut subscribed) => ended,
            };
            self.listening.store(false, Ordering::SeqCst);
            if subscribed {
                backoff = MIN_BACKOFF;
                failures = 0;
            }
            failures = failures.saturating_add(1);
            // One warning per outage; the retries after it are debug noise.
            let error = Chain(&*ended).to_string();
            if failures == 1 {
                tracing::warn!(
                    %error,
                    channel = %self.channel,
                    "idem postgres listener not connected; retrying"
                );
            } else {
                tracing::debug!(
                    %error,
                    retry_in = ?backoff,
                    "idem postgres listener still not connected"
                );
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection: subscribe, wake everyone, then deliver notifications until the
    /// connection fails. Answers why it ended.
    async fn session(&self, subscribed: &mut bool) -> BoxError {
        let (client, mut connection) = match self.config.connect(self.tls.clone()).await {
            Ok(pair) => pair,
            Err(e) => return e.into(),
        };
        let hub = self.hub.clone();
        // The connection must be polled for the client to make progress; this task
        // polls it and hands every notification to the hub.
        let mut driver = AbortOnDrop(tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => wake(&hub, n.payload()),
                    Some(Ok(_)) => {} // notices
                    Some(Err(e)) => return BoxError::from(e),
                    None => return "connection closed".into(),
                }
            }
        }));
        // The channel is `<schema>.records` with a validated schema: quoting suffices.
        let listen = format!("LISTEN \"{}\"", self.channel);
        tokio::select! {
            ended = &mut driver.0 => return ended_with(ended),
            done = client.batch_execute(&listen) => if let Err(e) = done { return e.into() },
        }
        *subscribed = true;
        self.listening.store(true, Ordering::SeqCst);
        // Anything completed before LISTEN took effect (while disconnected, or before
        // the first subscription) was not heard: let every waiter re-check.
        self.hub.notify_all();
        tracing::debug!(channel = %self.channel, "idem postgres listener subscribed");
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                ended = &mut driver.0 => return ended_with(ended),
                _ = ping.tick() => {
                    match tokio::time::timeout(self.ping_timeout, client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return e.into(),
                        Err(_) => return "ping timed out".into(),
                    }
                }
            }
        }
    }
}

fn ended_with(joined: Result<BoxError, tokio::task::JoinError>) -> BoxError {
    joined.unwrap_or_else(|e| e.into())
}

/// Wakes the waiters of the record a payload names, or everyone when it names none
/// (an id too long for a NOTIFY payload is sent as '').
fn wake(hub: &WaitHub, payload: &str) {
    match RecordId::from_hex(payload) {
        Some(id) => hub.notify(&id),
        None => hub.notify_all(),
    }
}

/// Displays an error with its causes, `a: b: c`.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idem_core::IdempotencyKey;
    use idem_core::scope::Scope;

    #[test]
    fn payloads_name_records() {
        let id = RecordId::new(
            Scope::from_bytes([7; 16]),
            IdempotencyKey::new("k-1").unwrap(),
        );
        // What `encode(scope || key, 'hex')` sends: the scope's 16 bytes, then `k-1`.
        let hex = format!("{}6b2d31", "07".repeat(16));
        assert_eq!(RecordId::from_hex(&hex), Some(id));
        assert_eq!(RecordId::from_hex(""), None);
    }
}
