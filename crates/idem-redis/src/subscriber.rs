//! The one pub/sub connection per store that turns completion and release
//! notifications into [`WaitHub`] wake-ups (R10 `wait` mode), so waiting duplicates
//! hold no command connection.

use std::time::Duration;

use futures_util::StreamExt;
use idem_core::record::RecordId;
use idem_core::store::WaitHub;
use redis::Value;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::oneshot;

/// How often an idle subscription is pinged: a silent connection to a server that died
/// without closing it (power loss, network cut) is noticed within this plus the
/// command timeout.
const PING_EVERY: Duration = Duration::from_secs(5);
/// The first and the longest pause between failed (re)subscription attempts.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The subscriber task's settings.
pub(crate) struct Subscriber {
    /// Servers to subscribe at, tried in turn: the one server, or every seed node of a
    /// cluster (a classic `PUBLISH` in a cluster reaches every node).
    pub(crate) nodes: Vec<redis::Client>,
    /// The channel the scripts publish record ids on.
    pub(crate) channel: String,
    /// Whom to wake.
    pub(crate) hub: WaitHub,
    /// Bounds connecting and subscribing.
    pub(crate) connect_timeout: Duration,
    /// Bounds each keep-alive ping.
    pub(crate) command_timeout: Duration,
}

/// Why a subscription ended.
enum End {
    /// The store was dropped: stop.
    Stopped,
    /// The connection failed: subscribe again.
    Lost,
}

impl Subscriber {
    /// Runs until `stop` resolves (its sender, held by the store, is dropped with the
    /// store's last handle). `ready` fires once the first subscription is in place.
    pub(crate) async fn run(self, mut stop: oneshot::Receiver<()>, ready: oneshot::Sender<()>) {
        if self.nodes.is_empty() {
            return;
        }
        let mut ready = Some(ready);
        let mut node = 0;
        let mut pause = RETRY_MIN;
        loop {
            // In bounds: `nodes` is not empty (checked above).
            let client = &self.nodes[node % self.nodes.len()];
            let subscribed = tokio::select! {
                _ = &mut stop => return,
                s = self.subscribe(client) => s,
            };
            match subscribed {
                Ok((sink, stream)) => {
                    tracing::debug!(channel = %self.channel, "redis store subscribed");
                    pause = RETRY_MIN;
                    // Notifications sent while we were not subscribed are lost: wake every
                    // waiter so each re-checks its record.
                    self.hub.notify_all();
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    match self.pump(sink, stream, &mut stop).await {
                        End::Stopped => return,
                        End::Lost => {
                            tracing::warn!(channel = %self.channel, "redis store subscription lost; resubscribing");
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, channel = %self.channel, "redis store cannot subscribe; retrying");
                    tokio::select! {
                        _ = &mut stop => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
            // Next time, another node (a cluster) or the same server again.
            node = node.wrapping_add(1);
        }
    }

    async fn subscribe(
        &self,
        client: &redis::Client,
    ) -> Result<(PubSubSink, PubSubStream), idem_core::store::StoreError> {
        crate::conn::within(self.connect_timeout, async {
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            sink.subscribe(&self.channel).await?;
            Ok((sink, stream))
        })
        .await
    }

    /// Forwards notifications until the connection fails or the store is dropped.
    async fn pump(
        &self,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        stop: &mut oneshot::Receiver<()>,
    ) -> End {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = &mut *stop => return End::Stopped,
                msg = stream.next() => {
                    let Some(msg) = msg else { return End::Lost };
                    match RecordId::from_bytes(msg.get_payload_bytes()) {
                        Ok(id) => self.hub.notify(&id),
                        Err(error) => tracing::debug!(%error, "ignoring a malformed notification"),
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(self.command_timeout, sink.ping::<Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return End::Lost;
                    }
                }
            }
        }
    }
}
