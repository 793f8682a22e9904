//! The one pub/sub connection per store that turns completion and release
//! notifications into [`WaitHub`] wake-ups (R10 `wait` mode), so waiting duplicates
//! hold no command connection: a classic subscription to one channel on a single
//! server, sharded subscriptions on a cluster.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use idem_core::record::RecordId;
use idem_core::store::WaitHub;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::oneshot;

/// How often an idle subscription is pinged: a silent connection to a server that died
/// without closing it (power loss, network cut) is noticed within this plus the
/// command timeout.
const PING_EVERY: Duration = Duration::from_secs(5);
/// The first and the longest pause between failed (re)subscription attempts.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Waits `pause` before the next subscription attempt and doubles it (up to
/// [`RETRY_MAX`]); false when the store was dropped meanwhile.
async fn back_off(stop: &mut oneshot::Receiver<()>, pause: &mut Duration) -> bool {
    tokio::select! {
        _ = stop => false,
        () = tokio::time::sleep(*pause) => {
            *pause = (*pause * 2).min(RETRY_MAX);
            true
        }
    }
}

/// The subscriber task's settings.
pub(crate) struct Subscriber {
    /// The server to subscribe at.
    pub(crate) node: redis::Client,
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
        let mut ready = Some(ready);
        let mut pause = RETRY_MIN;
        loop {
            let subscribed = tokio::select! {
                _ = &mut stop => return,
                s = self.subscribe() => s,
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
                    if !back_off(&mut stop, &mut pause).await {
                        return;
                    }
                }
            }
        }
    }

    async fn subscribe(&self) -> Result<(PubSubSink, PubSubStream), idem_core::store::StoreError> {
        crate::conn::within(self.connect_timeout, async {
            let (mut sink, stream) = self.node.get_async_pubsub().await?.split();
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

/// The sharded subscription of a cluster store (see [`crate::shards`]): one RESP3
/// cluster connection subscribed with `SSUBSCRIBE` to every sharded channel, each at
/// the master that owns its slot (redis-rs routes each one). Channels whose master is
/// down are retried, and every channel is subscribed again after a lost node
/// connection or a failed ping; every (re)subscription and every lost connection wakes
/// every watcher, so one that missed a notification re-checks its record.
pub(crate) struct ShardedSubscriber {
    /// The cluster's seed nodes.
    pub(crate) nodes: Vec<String>,
    /// The channels to subscribe to.
    pub(crate) channels: Vec<String>,
    /// Whom to wake.
    pub(crate) hub: WaitHub,
    /// Bounds each attempt to connect.
    pub(crate) connect_timeout: Duration,
    /// Bounds each round of subscriptions and each keep-alive ping.
    pub(crate) command_timeout: Duration,
}

impl ShardedSubscriber {
    /// Runs until `stop` resolves; `ready` fires once a first attempt to subscribe to
    /// every channel is over.
    pub(crate) async fn run(self, mut stop: oneshot::Receiver<()>, ready: oneshot::Sender<()>) {
        let hub = self.hub.clone();
        // Set when a node's connection is lost: its subscriptions are to be made again.
        let lost = Arc::new(AtomicBool::new(false));
        let lost_by_push = Arc::clone(&lost);
        let wake = move |info: PushInfo| -> Result<(), Infallible> {
            match info.kind {
                PushKind::SMessage => {
                    if let Some(msg) = redis::Msg::from_push_info(info) {
                        match RecordId::from_bytes(msg.get_payload_bytes()) {
                            Ok(id) => hub.notify(&id),
                            Err(error) => {
                                tracing::debug!(%error, "ignoring a malformed notification");
                            }
                        }
                    }
                }
                // Resubscribed: notifications may have been missed before.
                PushKind::SSubscribe => hub.notify_all(),
                // A node's connection lost, and with it the subscriptions it carried.
                PushKind::Disconnection => {
                    lost_by_push.store(true, Ordering::Relaxed);
                    hub.notify_all();
                }
                _ => {}
            }
            Ok(())
        };
        let client = match ClusterClientBuilder::new(self.nodes.iter().map(String::as_str))
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(wake)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.command_timeout)
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "redis store cannot subscribe to notifications");
                return;
            }
        };
        let mut pause = RETRY_MIN;
        let conn = loop {
            let connected = tokio::select! {
                _ = &mut stop => return,
                c = crate::conn::within(self.connect_timeout, client.get_async_connection()) => c,
            };
            match connected {
                Ok(conn) => break conn,
                Err(error) => {
                    tracing::warn!(%error, "redis store cannot subscribe; retrying");
                    if !back_off(&mut stop, &mut pause).await {
                        return;
                    }
                }
            }
        };
        self.keep(conn, &lost, ready, &mut stop).await;
    }

    /// Subscribes to each channel in `pending` that is not yet subscribed; keeps the ones
    /// that failed (their master is down, say) for the next attempt. Wakes every watcher
    /// when any subscription was added: notifications may have gone out before it.
    async fn subscribe(&self, conn: &ClusterConnection, pending: &mut Vec<String>) {
        let before = pending.len();
        // One command per channel (the channels lie in different slots), all at once, so
        // a master that hangs holds the attempt for one command timeout, not one each.
        let attempts = pending.drain(..).map(|channel| {
            let mut conn = conn.clone();
            async move {
                let subscribed =
                    tokio::time::timeout(self.command_timeout, conn.ssubscribe(&channel)).await;
                (!matches!(subscribed, Ok(Ok(())))).then_some(channel)
            }
        });
        *pending = futures_util::future::join_all(attempts)
            .await
            .into_iter()
            .flatten()
            .collect();
        if pending.len() < before {
            self.hub.notify_all();
        }
        if pending.is_empty() {
            tracing::debug!(
                channels = self.channels.len(),
                "redis store subscribed to its sharded channels"
            );
        } else {
            tracing::warn!(
                unsubscribed = pending.len(),
                "redis store cannot subscribe to some sharded channels yet; retrying"
            );
        }
    }

    /// Subscribes, then holds the subscription until the store is dropped. Every
    /// [`PING_EVERY`] it pings every master, so that a node that died without closing
    /// its connection is noticed, and subscribes again to what is not (or may no longer
    /// be) subscribed: channels that failed, and every channel after a lost connection
    /// or a failed ping (subscribing twice to a channel is harmless). `ready` fires after
    /// the first attempt.
    async fn keep(
        &self,
        mut conn: ClusterConnection,
        lost: &AtomicBool,
        ready: oneshot::Sender<()>,
        stop: &mut oneshot::Receiver<()>,
    ) {
        let mut pending = self.channels.clone();
        tokio::select! {
            _ = &mut *stop => return,
            () = self.subscribe(&conn, &mut pending) => {}
        }
        let _ = ready.send(());
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = &mut *stop => return,
                _ = ping.tick() => {
                    let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                    let pong = tokio::time::timeout(
                        self.command_timeout,
                        conn.route_command(redis::cmd("PING"), all),
                    )
                    .await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!("redis store's sharded subscription did not answer a ping");
                        self.hub.notify_all();
                        lost.store(true, Ordering::Relaxed);
                    }
                    if lost.swap(false, Ordering::Relaxed) {
                        pending.clone_from(&self.channels);
                    }
                    if !pending.is_empty() {
                        self.subscribe(&conn, &mut pending).await;
                    }
                }
            }
        }
    }
}
