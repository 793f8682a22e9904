//! One command connection, standalone or cluster, and how its errors map to R15.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use idem_core::store::StoreError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ErrorKind, RedisError, ScriptInvocation, ServerErrorKind, Value};

use crate::RedisStoreConfig;

/// How long the standalone manager waits between reconnection attempts at first and
/// at most, and how many attempts one reconnection makes before it fails the commands
/// waiting on it (the next command starts another). Short, so an outage is answered
/// with 503 quickly and a recovered server is found within about a second.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);
const RECONNECT_ATTEMPTS: usize = 3;

/// A multiplexed, self-reconnecting connection; clones share it.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server, through redis-rs's reconnecting manager.
    Standalone(ConnectionManager),
    /// A cluster, through redis-rs's slot-routing connection.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to one server, failing if it cannot be reached within the connect timeout.
    pub(crate) async fn standalone(
        client: redis::Client,
        config: &RedisStoreConfig,
    ) -> Result<Self, StoreError> {
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY)
            .set_number_of_retries(RECONNECT_ATTEMPTS);
        let connect = ConnectionManager::new_with_config(client, manager);
        within(config.connect_timeout, connect)
            .await
            .map(Self::Standalone)
    }

    /// Connects to a cluster through its seed nodes, failing if none answers (or the
    /// slots cannot be read) within the connect timeout.
    pub(crate) async fn cluster(
        nodes: &[String],
        config: &RedisStoreConfig,
    ) -> Result<Self, StoreError> {
        let client = ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.command_timeout)
            .overall_response_timeout(Some(config.command_timeout))
            .build()
            .map_err(|e| StoreError::backend("redis", e))?;
        within(config.connect_timeout, client.get_async_connection())
            .await
            .map(Self::Cluster)
    }

    /// Runs a script (EVALSHA, loading it on `NOSCRIPT`).
    pub(crate) async fn invoke(&self, script: &ScriptInvocation<'_>) -> redis::RedisResult<Value> {
        match self {
            Self::Standalone(c) => script.invoke_async(&mut c.clone()).await,
            Self::Cluster(c) => script.invoke_async(&mut c.clone()).await,
        }
    }

    /// Runs one command.
    pub(crate) async fn query(&self, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            Self::Standalone(c) => cmd.query_async(&mut c.clone()).await,
            Self::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
}

/// A server to send a command to: the one standalone server, or a cluster master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    /// The standalone server.
    Only,
    /// The cluster master at this address.
    Master(String, u16),
}

impl Conn {
    /// The servers that hold keys: the standalone server, or every cluster master (from
    /// `CLUSTER SLOTS`, asked of any node), so a `SCAN` per node sees every key once.
    pub(crate) async fn masters(&self) -> redis::RedisResult<Vec<Node>> {
        let Self::Cluster(c) = self else {
            return Ok(vec![Node::Only]);
        };
        let reply = c
            .clone()
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let mut nodes = Vec::new();
        let Value::Array(ranges) = reply else {
            return Err(unexpected_reply("CLUSTER SLOTS"));
        };
        for range in ranges {
            // [first slot, last slot, [host, port, id, …] of the master, replicas …]
            let Value::Array(range) = range else {
                return Err(unexpected_reply("CLUSTER SLOTS"));
            };
            let Some(Value::Array(master)) = range.get(2) else {
                return Err(unexpected_reply("CLUSTER SLOTS"));
            };
            let host = match master.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => return Err(unexpected_reply("CLUSTER SLOTS")),
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return Err(unexpected_reply("CLUSTER SLOTS"));
            };
            let port = u16::try_from(*port).map_err(|_| unexpected_reply("CLUSTER SLOTS"))?;
            let node = Node::Master(host, port);
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        Ok(nodes)
    }

    /// Runs one command on one server (a cluster master by address).
    pub(crate) async fn query_on(&self, node: &Node, cmd: &Cmd) -> redis::RedisResult<Value> {
        match (self, node) {
            (Self::Cluster(c), Node::Master(host, port)) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                c.clone().route_command(cmd.clone(), routing).await
            }
            _ => self.query(cmd).await,
        }
    }
}

fn unexpected_reply(what: &'static str) -> RedisError {
    RedisError::from((ErrorKind::Parse, "unexpected reply", what.to_owned()))
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Standalone(_) => "Standalone",
            Self::Cluster(_) => "Cluster",
        })
    }
}

/// Runs `fut` for at most `limit`: whatever redis-rs does inside (reconnecting,
/// retrying, following redirects), the caller has an answer by then (R15).
pub(crate) async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(store_error),
        Err(_) => Err(StoreError::Timeout),
    }
}

/// R15: a server that cannot be reached, or cannot serve now (loading, cluster down,
/// failing over), is `Unavailable`; a slow one is `Timeout`; anything else is a
/// backend error. The engine answers 503 to each.
pub(crate) fn store_error(e: RedisError) -> StoreError {
    if e.is_timeout() {
        return StoreError::Timeout;
    }
    let unavailable = match e.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => true,
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ReadOnly
        ),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(Box::new(e))
    } else {
        StoreError::backend("redis", e)
    }
}
