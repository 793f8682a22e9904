//! The Redis store against the shared contract suite and what only a networked store
//! must show: a standalone Redis (the shared server on 127.0.0.1:6379, which must be
//! running: `scripts/test.sh` starts it), a 3-master cluster this binary starts for
//! itself, recovery after an outage (R15) and wake-ups across instances (R10, R18).
//!
//! Every server this binary starts runs under a shell that kills it when the binary's
//! pipe to it closes, which happens however the binary ends: no server outlives a run.
//! The shared server on 6379 is never stopped.

use std::time::Duration;

use idem_core::store::testkit::{
    self, RealTimeFixture, acquired, claim_req, id, snapshot, wait_on,
};
use idem_core::store::{Claim, Finish, Store, StoreError};
use idem_redis::{RedisStore, RedisStoreConfig};

/// The lease the contract suite claims with: short, so expiry tests run in real time.
const LEASE: Duration = Duration::from_millis(400);

mod support {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::pin::Pin;
    use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use futures_util::{Stream, StreamExt as _};
    use idem_core::record::{OwnerToken, RecordId};
    use idem_core::store::testkit::NotificationProbe;
    use idem_redis::{RedisStore, RedisStoreConfig};

    /// The shared Redis every developer and CI run has.
    pub(crate) const SHARED_URL: &str = "redis://127.0.0.1:6379/0";

    /// A prefix no other test uses, so tests share Redis without sharing records or
    /// notification channels.
    pub(crate) fn unique_prefix() -> String {
        format!("idem-test-{}", OwnerToken::random().to_hex())
    }

    pub(crate) fn config(prefix: &str) -> RedisStoreConfig {
        RedisStoreConfig {
            prefix: prefix.to_owned(),
            ..RedisStoreConfig::default()
        }
    }

    /// A store on the shared Redis; fails loudly if it is not running.
    pub(crate) async fn shared(prefix: &str) -> RedisStore {
        RedisStore::connect(SHARED_URL, config(prefix))
            .await
            .unwrap_or_else(|e| {
                panic!("the Redis at {SHARED_URL} is unreachable ({e}): start it (scripts/test.sh does)")
            })
    }

    /// A subscription of the test's own to the store's channel (`<prefix>:done`), and a
    /// connection to publish markers on it.
    pub(crate) struct Probe {
        channel: String,
        publisher: redis::aio::MultiplexedConnection,
        messages: Pin<Box<dyn Stream<Item = redis::Msg> + Send>>,
    }

    impl Probe {
        /// Subscribes to the channel of the stores with `prefix` on the shared Redis.
        pub(crate) async fn subscribe(prefix: &str) -> Self {
            let channel = format!("{prefix}:done");
            let client = redis::Client::open(SHARED_URL).unwrap();
            let mut pubsub = client.get_async_pubsub().await.unwrap();
            pubsub.subscribe(&channel).await.unwrap();
            Self {
                channel,
                publisher: client.get_multiplexed_async_connection().await.unwrap(),
                messages: Box::pin(pubsub.into_on_message()),
            }
        }
    }

    impl NotificationProbe for Probe {
        async fn send_marker(&mut self, marker: &str) {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(&self.channel)
                .arg(marker)
                .query_async(&mut self.publisher)
                .await
                .unwrap();
        }

        async fn next(&mut self) -> Vec<u8> {
            self.messages
                .next()
                .await
                .expect("the subscription is open")
                .get_payload_bytes()
                .to_vec()
        }

        /// The scripts publish the record's id as [`RecordId::to_bytes`].
        fn record_of(payload: &[u8]) -> Option<RecordId> {
            RecordId::from_bytes(payload).ok()
        }
    }

    /// A port free now; with `bus`, one whose cluster bus port (+10000) is free too.
    pub(crate) fn free_port(bus: bool) -> u16 {
        loop {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            if !bus {
                return port;
            }
            if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                return port;
            }
        }
    }

    /// A `redis-server` of this test binary's own, in a fresh directory, under a shell
    /// that obeys `kill` and `start` lines on its stdin.
    pub(crate) struct RedisServer {
        pub(crate) port: u16,
        child: Child,
        stdin: Option<ChildStdin>,
        stdout: BufReader<ChildStdout>,
    }

    /// Runs the server in `$1` with the other arguments. When our end of the pipe
    /// closes (on drop, or when this process dies, however it dies), `read` fails: the
    /// server is killed and its directory removed.
    const WRAPPER: &str = r#"dir="$1"; shift
redis-server "$@" & pid=$!
while read -r line; do
  case "$line" in
    kill) kill "$pid" 2>/dev/null; kill -CONT "$pid" 2>/dev/null; wait "$pid"; echo killed ;;
    freeze) kill -STOP "$pid"; echo frozen ;;
    thaw) kill -CONT "$pid"; echo thawed ;;
    start) redis-server "$@" & pid=$! ;;
  esac
done
kill "$pid" 2>/dev/null
kill -CONT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$dir""#;

    impl RedisServer {
        /// Starts a server on `port` and waits until it answers PING.
        pub(crate) fn start(port: u16, extra: &[&str]) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "idem-redis-test-{}-{port}-{}",
                std::process::id(),
                OwnerToken::random().to_hex()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let dir_arg = dir.to_str().unwrap().to_owned();
            let port_arg = port.to_string();
            let log = dir.join("redis.log");
            let mut args = vec![
                "--port",
                &port_arg,
                "--bind",
                "127.0.0.1",
                "--dir",
                &dir_arg,
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                log.to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(WRAPPER)
                .arg("redis-wrapper")
                .arg(&dir_arg)
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sh + redis-server");
            let stdin = child.stdin.take();
            let stdout = BufReader::new(child.stdout.take().unwrap());
            let server = Self {
                port,
                child,
                stdin,
                stdout,
            };
            server.wait_for_ping();
            server
        }

        fn wait_for_ping(&self) {
            self.wait_until(|| cli(self.port, &["PING"]).is_some_and(|out| out.trim() == "PONG"));
        }

        fn wait_until(&self, ready: impl Fn() -> bool) {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !ready() {
                assert!(
                    Instant::now() < deadline,
                    "redis-server on port {} did not get ready",
                    self.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        fn send(&mut self, line: &str) {
            let stdin = self.stdin.as_mut().expect("server running");
            stdin.write_all(line.as_bytes()).unwrap();
            stdin.flush().unwrap();
        }

        /// Sends `command` to the wrapper and waits for its acknowledgement.
        fn order(&mut self, command: &str, ack: &str) {
            self.send(&format!("{command}\n"));
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), ack);
        }

        /// Kills the server and waits until it is gone; its directory stays.
        pub(crate) fn kill(&mut self) {
            self.order("kill", "killed");
        }

        /// Stops the server process (SIGSTOP): connections stay open, nothing answers.
        pub(crate) fn freeze(&mut self) {
            self.order("freeze", "frozen");
        }

        /// Lets a frozen server go on (SIGCONT).
        pub(crate) fn thaw(&mut self) {
            self.order("thaw", "thawed");
        }

        /// Starts the server again, on the same port and directory.
        pub(crate) fn restart(&mut self) {
            self.send("start\n");
            self.wait_for_ping();
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            drop(self.stdin.take());
            let _ = self.child.wait();
        }
    }

    /// `redis-cli -p port args…`'s output, or `None` if it failed.
    pub(crate) fn cli(port: u16, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A 3-master Redis Cluster, started once per test binary.
    pub(crate) struct Cluster {
        pub(crate) nodes: Vec<RedisServer>,
    }

    impl Cluster {
        /// Starts three nodes and makes them a cluster.
        pub(crate) fn start() -> Self {
            let nodes: Vec<RedisServer> = (0..3)
                .map(|_| {
                    let port = free_port(true);
                    let conf = format!("nodes-{port}.conf");
                    // Without full coverage the other masters keep serving while one
                    // is down, whether or not they have flagged it as failed yet, so
                    // the outage tests do not depend on the node timeout elapsing.
                    RedisServer::start(
                        port,
                        &[
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            &conf,
                            "--cluster-require-full-coverage",
                            "no",
                        ],
                    )
                })
                .collect();
            let addrs: Vec<String> = nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port))
                .collect();
            let mut create = vec!["--cluster", "create"];
            create.extend(addrs.iter().map(String::as_str));
            create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
            assert!(
                cli(nodes[0].port, &create).is_some(),
                "redis-cli --cluster create failed"
            );
            for node in &nodes {
                node.wait_until(|| {
                    cli(node.port, &["CLUSTER", "INFO"])
                        .is_some_and(|info| info.contains("cluster_state:ok"))
                });
            }
            Self { nodes }
        }

        /// `redis+cluster://` naming the nodes, starting at the `first`-th.
        pub(crate) fn url(&self, first: usize) -> String {
            let n = self.nodes.len();
            let nodes: Vec<String> = (0..n)
                .map(|i| format!("127.0.0.1:{}", self.nodes[(first + i) % n].port))
                .collect();
            format!("redis+cluster://{}", nodes.join(","))
        }
    }

    /// A subscription of the test's own to every sharded channel of a cluster store,
    /// and the cluster connection it publishes markers on. A marker goes out on every
    /// channel and is heard once all its copies arrived: each channel delivers in order,
    /// so a notification sent before the marker, on whichever channel, is heard first.
    pub(crate) struct ShardedProbe {
        channels: Vec<String>,
        conn: redis::cluster_async::ClusterConnection,
        pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
        copies: std::collections::HashMap<Vec<u8>, usize>,
    }

    impl ShardedProbe {
        pub(crate) async fn subscribe(store: &RedisStore, url: &str) -> Self {
            let channels = store.notification_channels();
            let nodes: Vec<String> = url
                .strip_prefix("redis+cluster://")
                .unwrap()
                .split(',')
                .map(|n| format!("redis://{n}"))
                .collect();
            let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .build()
                .unwrap();
            let mut conn = client.get_async_connection().await.unwrap();
            for channel in &channels {
                conn.ssubscribe(channel).await.unwrap();
            }
            Self {
                channels,
                conn,
                pushes,
                copies: Default::default(),
            }
        }

        /// Every message heard so far and until `quiet` passes without one, markers
        /// included, with the kind of push each came as.
        pub(crate) async fn drain(&mut self, quiet: Duration) -> Vec<(redis::PushKind, Vec<u8>)> {
            let mut out = Vec::new();
            while let Ok(Some(push)) = tokio::time::timeout(quiet, self.pushes.recv()).await {
                let kind = push.kind.clone();
                if let Some(msg) = redis::Msg::from_push_info(push) {
                    out.push((kind, msg.get_payload_bytes().to_vec()));
                }
            }
            out
        }
    }

    impl NotificationProbe for ShardedProbe {
        async fn send_marker(&mut self, marker: &str) {
            for channel in &self.channels {
                let _: i64 = redis::cmd("SPUBLISH")
                    .arg(channel)
                    .arg(marker)
                    .query_async(&mut self.conn)
                    .await
                    .unwrap();
            }
        }

        async fn next(&mut self) -> Vec<u8> {
            loop {
                let push = self.pushes.recv().await.expect("the subscription is open");
                let Some(msg) = redis::Msg::from_push_info(push) else {
                    continue; // subscription confirmations
                };
                let payload = msg.get_payload_bytes().to_vec();
                if !payload.starts_with(b"marker-") {
                    return payload;
                }
                let heard = self.copies.entry(payload.clone()).or_default();
                *heard += 1;
                if *heard == self.channels.len() {
                    // A marker may be sent again later: count its next copies afresh.
                    self.copies.remove(&payload);
                    return payload;
                }
            }
        }

        fn record_of(payload: &[u8]) -> Option<RecordId> {
            RecordId::from_bytes(payload).ok()
        }
    }

    static CLUSTER: OnceLock<Cluster> = OnceLock::new();

    /// The binary's cluster, started by the first test that asks.
    pub(crate) fn cluster() -> &'static Cluster {
        // Starting blocks for a few seconds; keep the runtime's other workers free.
        tokio::task::block_in_place(|| CLUSTER.get_or_init(Cluster::start))
    }

    /// A store on the binary's cluster.
    pub(crate) async fn cluster_store(prefix: &str, first: usize) -> RedisStore {
        let url = cluster().url(first);
        RedisStore::connect(&url, config(prefix)).await.unwrap()
    }
}

mod standalone {
    use super::*;

    idem_core::store_tests!(async {
        RealTimeFixture::new(support::shared(&support::unique_prefix()).await, LEASE, ())
    });

    // R4, R6–R14: the store follows the shared model on random histories, on the
    // server's clock (PX expiry).
    idem_core::store_model_test!(
        async { RealTimeFixture::new(support::shared(&support::unique_prefix()).await, LEASE, ()) },
        16
    );

    // R10: a completion or release nobody waits for publishes nothing to the
    // instances' subscribers; one a waiting duplicate asked about does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r10_only_awaited_records_publish() {
        let prefix = support::unique_prefix();
        let store = support::shared(&prefix).await;
        let mut probe = support::Probe::subscribe(&prefix).await;
        testkit::r10_only_awaited_records_notify(
            &RealTimeFixture::new(store, LEASE, ()),
            &mut probe,
        )
        .await;
    }

    // R10, R18
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r10_watch_wakes_across_instances() {
        let prefix = support::unique_prefix();
        let a = support::shared(&prefix).await;
        let b = support::shared(&prefix).await;
        testkit::r10_watch_wakes_across_instances(&a, &b).await;
    }

    // R18: two instances racing on one key: exactly one acquires, the other sees it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r18_instances_share_records() {
        let prefix = support::unique_prefix();
        let a = support::shared(&prefix).await;
        let b = support::shared(&prefix).await;
        let id = id("shared");
        let (qa, qb) = (claim_req(&id, 1), claim_req(&id, 1));
        let (ra, rb) = tokio::join!(a.claim(&qa), b.claim(&qb));
        let acquired = [ra.unwrap(), rb.unwrap()]
            .into_iter()
            .filter(|c| matches!(c, Claim::Acquired(_)))
            .count();
        assert_eq!(acquired, 1);
    }

    // R8, R16: a stored snapshot that does not decode is an error, never a replay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r16_corrupt_snapshot_is_never_replayed() {
        let prefix = support::unique_prefix();
        let store = support::shared(&prefix).await;
        testkit::r16_damaged_record_is_never_replayed(&store, async |id| {
            let client = redis::Client::open(support::SHARED_URL).unwrap();
            let mut raw = client.get_multiplexed_async_connection().await.unwrap();
            let _: () = redis::cmd("HSET")
                .arg(idem_redis::redis_key(&prefix, id))
                .arg("sn")
                .arg(&b"\x01garbage"[..])
                .query_async(&mut raw)
                .await
                .unwrap();
        })
        .await;
    }

    // R11: a completion sent again after a lost reply is not mistaken for a stale one,
    // and a claim sent again is still the owner's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r11_repeated_commands_are_idempotent() {
        let store = support::shared(&support::unique_prefix()).await;
        let id = id("repeat");
        let req = claim_req(&id, 1);
        let Claim::Acquired(lease) = store.claim(&req).await.unwrap() else {
            panic!("first claim")
        };
        assert!(matches!(
            store.claim(&req).await.unwrap(),
            Claim::Acquired(_)
        ));
        let ttl = Duration::from_secs(5);
        assert_eq!(
            store
                .complete(&lease, &snapshot(b"one"), ttl)
                .await
                .unwrap(),
            Finish::Done
        );
        assert_eq!(
            store
                .complete(&lease, &snapshot(b"two"), ttl)
                .await
                .unwrap(),
            Finish::Done
        );
        assert_eq!(
            store.claim(&claim_req(&id, 1)).await.unwrap(),
            Claim::Completed(snapshot(b"one"))
        );
        assert_eq!(store.release(&lease).await.unwrap(), Finish::Superseded);
    }

    // One subscriber connection per store, whatever the number of clones, closed
    // with the last handle.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscriber_stops_with_the_last_handle() {
        let prefix = support::unique_prefix();
        let channel = format!("{prefix}:done");
        let client = redis::Client::open(support::SHARED_URL).unwrap();
        let mut raw = client.get_multiplexed_async_connection().await.unwrap();
        let mut subscribers = async || -> i64 {
            let (_, n): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut raw)
                .await
                .unwrap();
            n
        };
        let store = support::shared(&prefix).await;
        let clone = store.clone();
        assert_eq!(subscribers().await, 1);
        drop(store);
        assert_eq!(subscribers().await, 1);
        drop(clone);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while subscribers().await != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the subscriber outlived the store"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn bad_configuration_is_an_error() {
        let mut config = support::config("a{b");
        assert!(matches!(
            RedisStore::connect(support::SHARED_URL, config.clone()).await,
            Err(StoreError::Backend { .. })
        ));
        config.prefix = "idem".into();
        assert!(matches!(
            RedisStore::connect("memcached://127.0.0.1", config).await,
            Err(StoreError::Backend { .. })
        ));
    }

    #[tokio::test]
    async fn debug_hides_the_password() {
        let url = "redis://:hunter2@127.0.0.1:6379/0";
        // The shared server has no password: AUTH fails, or is accepted by a server
        // configured otherwise. Either way the URL must not leak in the error or Debug.
        match RedisStore::connect(url, support::config(&support::unique_prefix())).await {
            Ok(store) => assert!(!format!("{store:?}").contains("hunter2")),
            Err(e) => assert!(!format!("{e:?}").contains("hunter2")),
        }
    }
}

mod cluster {
    use super::*;

    idem_core::store_tests!(async {
        RealTimeFixture::new(
            support::cluster_store(&support::unique_prefix(), 0).await,
            LEASE,
            (),
        )
    });

    // R10, R18: the instances subscribe at different nodes; the completing script runs
    // on the record's node; the notification still reaches both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r10_watch_wakes_across_instances_and_nodes() {
        let prefix = support::unique_prefix();
        let a = support::cluster_store(&prefix, 1).await;
        let b = support::cluster_store(&prefix, 2).await;
        assert!(a.is_cluster());
        testkit::r10_watch_wakes_across_instances(&a, &b).await;
    }

    // R10: on a cluster, a completion or release nobody waits for publishes nothing; one
    // a waiting duplicate asked about is published on a sharded channel (SPUBLISH, heard
    // only within the shard that owns the channel), never broadcast to every node.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r10_only_awaited_records_publish_on_sharded_channels() {
        let prefix = support::unique_prefix();
        let store = support::cluster_store(&prefix, 0).await;
        let mut probe = support::ShardedProbe::subscribe(&store, &support::cluster().url(0)).await;
        testkit::r10_only_awaited_records_notify(
            &RealTimeFixture::new(store.clone(), LEASE, ()),
            &mut probe,
        )
        .await;
        // The store's channels spread over every master.
        let channels = store.notification_channels();
        assert_eq!(channels.len(), 64);
        let port = support::cluster().nodes[0].port;
        let nodes = support::cli(port, &["CLUSTER", "NODES"]).unwrap();
        let mut owners = std::collections::HashSet::new();
        for channel in &channels {
            let slot: u16 = support::cli(port, &["CLUSTER", "KEYSLOT", channel])
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let owner = nodes
                .lines()
                .find(|line| serves(line, slot))
                .and_then(|line| line.split_whitespace().next())
                .expect("a master serves every slot");
            owners.insert(owner.to_owned());
        }
        assert_eq!(owners.len(), 3, "{owners:?}");
        // A classic subscriber on the old channel hears nothing of an awaited completion.
        let classic = redis::Client::open(format!(
            "redis://127.0.0.1:{}",
            support::cluster().nodes[0].port
        ))
        .unwrap();
        let mut pubsub = classic.get_async_pubsub().await.unwrap();
        pubsub.subscribe(format!("{prefix}:done")).await.unwrap();
        let watched = id("classic-unheard");
        let lease = acquired(&store, &watched).await;
        wait_on(&store, &watched).await;
        assert_eq!(
            store
                .complete(&lease, &snapshot(b"ok"), Duration::from_secs(60))
                .await
                .unwrap(),
            Finish::Done
        );
        let mut messages = pubsub.into_on_message();
        assert!(
            tokio::time::timeout(
                Duration::from_millis(300),
                futures_util::StreamExt::next(&mut messages)
            )
            .await
            .is_err(),
            "a classic PUBLISH went out on a cluster"
        );
        let heard = probe.drain(Duration::from_millis(300)).await;
        assert!(
            heard
                .iter()
                .any(|(kind, payload)| *kind == redis::PushKind::SMessage
                    && *payload == watched.to_bytes()),
            "the awaited completion was not heard on its sharded channel"
        );
    }

    /// Whether the node of this `CLUSTER NODES` line serves `slot` (its ninth field on
    /// are slots and slot ranges).
    fn serves(line: &str, slot: u16) -> bool {
        line.split_whitespace().skip(8).any(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            first.parse::<u16>().is_ok_and(|first| first <= slot)
                && last.parse::<u16>().is_ok_and(|last| slot <= last)
        })
    }

    // The hash tag keeps a record on one node, while records spread over all nodes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_spread_over_the_nodes() {
        let prefix = support::unique_prefix();
        let store = support::cluster_store(&prefix, 0).await;
        for i in 0..30 {
            let _ = acquired(&store, &id(&format!("spread{i}"))).await;
        }
        let cluster = support::cluster();
        for node in &cluster.nodes {
            let keys =
                support::cli(node.port, &["--scan", "--pattern", &format!("{prefix}:*")]).unwrap();
            assert!(
                keys.lines().count() > 0,
                "node {} holds no record",
                node.port
            );
        }
    }
}

mod outage {
    use super::*;
    use support::RedisServer;

    // R15: while Redis is down every call fails with a store error in bounded time (the
    // engine's 503); once it is back, the same store serves again, wake-ups included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r15_store_fails_while_redis_is_down_and_recovers() {
        let port = support::free_port(false);
        let mut server = RedisServer::start(port, &[]);
        let url = format!("redis://127.0.0.1:{port}/0");
        let config = RedisStoreConfig {
            prefix: support::unique_prefix(),
            command_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
        };
        let store = RedisStore::connect(&url, config.clone()).await.unwrap();
        let lease = acquired(&store, &id("before")).await;

        server.kill();
        let bound = Duration::from_secs(3);
        for _ in 0..3 {
            let claim = tokio::time::timeout(bound, store.claim(&claim_req(&id("down"), 1)))
                .await
                .expect("a claim answers while Redis is down");
            assert!(
                matches!(claim, Err(StoreError::Unavailable(_) | StoreError::Timeout)),
                "{claim:?}"
            );
        }
        let complete = tokio::time::timeout(
            bound,
            store.complete(&lease, &snapshot(b"x"), Duration::from_secs(5)),
        )
        .await
        .expect("a completion answers while Redis is down");
        assert!(complete.is_err(), "{complete:?}");
        let lookup = tokio::time::timeout(bound, store.lookup(&id("down")))
            .await
            .expect("a lookup answers while Redis is down");
        assert!(lookup.is_err(), "{lookup:?}");

        server.restart();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match store.claim(&claim_req(&id("back"), 1)).await {
                Ok(Claim::Acquired(_)) => break,
                Ok(other) => panic!("{other:?}"),
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "no recovery: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }

        // The subscriber reconnects too: a completion by a fresh instance wakes a watch
        // on the recovered one (three times in a row, so the one wake-up every watcher
        // gets on resubscribing cannot pass for it).
        let other = RedisStore::connect(&url, config).await.unwrap();
        let mut in_a_row = 0;
        while in_a_row < 3 {
            let id = id("after");
            let lease = acquired(&other, &id).await;
            let mut watch = store.watch(&id);
            wait_on(&store, &id).await;
            let _ = other
                .complete(&lease, &snapshot(b"ok"), Duration::from_secs(5))
                .await
                .unwrap();
            if tokio::time::timeout(Duration::from_secs(1), watch.changed())
                .await
                .is_ok()
            {
                in_a_row += 1;
            } else {
                in_a_row = 0;
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the subscriber did not come back"
                );
            }
        }
    }

    // R15: a server that hangs (connections open, no answers) is a timeout within the
    // command timeout, and the store serves again once it answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r15_hanging_redis_times_out_and_recovers() {
        let mut server = RedisServer::start(support::free_port(false), &[]);
        let url = format!("redis://127.0.0.1:{}/0", server.port);
        let config = RedisStoreConfig {
            prefix: support::unique_prefix(),
            command_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_millis(300),
        };
        let store = RedisStore::connect(&url, config).await.unwrap();
        let _ = acquired(&store, &id("before-freeze")).await;

        server.freeze();
        let claim = tokio::time::timeout(
            Duration::from_secs(3),
            store.claim(&claim_req(&id("frozen"), 1)),
        )
        .await
        .expect("a claim answers while Redis hangs");
        server.thaw();
        assert!(matches!(claim, Err(StoreError::Timeout)), "{claim:?}");

        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match store.claim(&claim_req(&id("thawed"), 1)).await {
                Ok(Claim::Acquired(_)) => break,
                Ok(other) => panic!("{other:?}"),
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "no recovery: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    // R15: a store that cannot reach Redis at all does not connect, and says why.
    #[tokio::test]
    async fn r15_unreachable_redis_fails_to_connect() {
        let port = support::free_port(false);
        let config = RedisStoreConfig {
            connect_timeout: Duration::from_millis(500),
            ..support::config(&support::unique_prefix())
        };
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            RedisStore::connect(&format!("redis://127.0.0.1:{port}/0"), config),
        )
        .await
        .expect("connect answers in bounded time");
        match result {
            // A refused connection names the store and its address.
            Err(StoreError::Unavailable(source)) => {
                let source = source
                    .downcast::<idem_core::store::ConnectError>()
                    .expect("a ConnectError");
                assert_eq!(source.store, "redis");
                assert_eq!(source.address, format!("redis://127.0.0.1:{port}/0"));
            }
            Err(StoreError::Timeout) => {}
            other => panic!("expected Unavailable or Timeout, got {other:?}"),
        }
    }

    // R15, cluster: while a node is down the records on its slots fail in bounded time,
    // the others still serve; once it is back, the same store serves them all again, and
    // its sharded subscriptions on that node are back too (R10): waiters are woken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r15_cluster_store_recovers_when_a_node_returns() {
        // A cluster of this test's own: the shared one stays up for the other tests.
        let mut cluster = tokio::task::block_in_place(support::Cluster::start);
        let config = RedisStoreConfig {
            prefix: support::unique_prefix(),
            command_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
        };
        let store = RedisStore::connect(&cluster.url(1), config.clone())
            .await
            .unwrap();
        let other = RedisStore::connect(&cluster.url(2), config).await.unwrap();

        // Claims of 30 fresh keys, at once: how many failed with a store error.
        async fn failures(store: &RedisStore) -> usize {
            let mut claims = tokio::task::JoinSet::new();
            for i in 0..30 {
                let store = store.clone();
                let req = claim_req(&id(&format!("node{i}")), 1);
                claims.spawn(async move {
                    tokio::time::timeout(Duration::from_secs(3), store.claim(&req))
                        .await
                        .expect("a claim answers while a node is down")
                });
            }
            let mut failed = 0;
            while let Some(claim) = claims.join_next().await {
                match claim.unwrap() {
                    Ok(Claim::Acquired(_)) => {}
                    Err(StoreError::Unavailable(_) | StoreError::Timeout) => failed += 1,
                    other => panic!("{other:?}"),
                }
            }
            failed
        }

        assert_eq!(failures(&store).await, 0);
        tokio::task::block_in_place(|| cluster.nodes[0].kill());
        let failed = failures(&store).await;
        // A third of the slots are down: some of 30 keys land there, not all.
        assert!(failed > 0 && failed < 30, "{failed} of 30 failed");

        tokio::task::block_in_place(|| cluster.nodes[0].restart());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while failures(&store).await > 0 {
            assert!(tokio::time::Instant::now() < deadline, "no recovery");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Every sharded channel has both stores subscribed again, the returned node's
        // included (each channel counts its subscribers on the master that owns it).
        let subscribers = |channel: &str| -> u64 {
            cluster
                .nodes
                .iter()
                .filter_map(|n| support::cli(n.port, &["PUBSUB", "SHARDNUMSUB", channel]))
                .filter_map(|out| {
                    out.lines()
                        .nth(1)
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
                .sum()
        };
        for channel in store.notification_channels() {
            while tokio::task::block_in_place(|| subscribers(&channel)) < 2 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{channel} was not subscribed again"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // And a waiter on one store is woken by the other's completions, wherever the
        // records land.
        for _ in 0..4 {
            testkit::r10_watch_wakes_across_instances(&other, &store).await;
        }
    }
}

/// The same contract on the store wrapped for encryption at rest.
mod sealed {
    use super::*;
    use idem_core::store::Sealed;
    use idem_core::store::testkit::sealing_keys;

    idem_core::store_tests!(sealed: async {
        let store = support::shared(&support::unique_prefix()).await;
        RealTimeFixture::new(Sealed::new(store, sealing_keys()), LEASE, ())
    });
}
