//! The URL forms [`RedisStore::connect`](crate::RedisStore::connect) accepts.

use std::fmt;

/// Where the store connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// One server: the URL as redis-rs reads it.
    Standalone(String),
    /// A cluster: one `redis://` URL per seed node.
    Cluster(Vec<String>),
}

const CLUSTER_SCHEME: &str = "redis+cluster://";
const STANDALONE_SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];

/// A URL or setting the store cannot use.
#[derive(Debug)]
pub(crate) struct ConfigError(pub(crate) String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid redis store configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Target {
    /// Reads `redis://…`, `rediss://…`, `redis+unix://…`, `unix://…` (handed to redis-rs
    /// as they are) and `redis+cluster://[user:password@]host:port,host:port,…[/0]`.
    pub(crate) fn parse(url: &str) -> Result<Self, ConfigError> {
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            return parse_cluster(rest).map(Self::Cluster);
        }
        if STANDALONE_SCHEMES.iter().any(|s| url.starts_with(s)) {
            return Ok(Self::Standalone(url.to_owned()));
        }
        Err(ConfigError(format!(
            "unsupported URL `{}`: expected redis://, rediss://, redis+unix:// or {CLUSTER_SCHEME}",
            redact(url)
        )))
    }
}

fn parse_cluster(rest: &str) -> Result<Vec<String>, ConfigError> {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // Redis Cluster has database 0 only.
    if !matches!(tail, "" | "/" | "/0") {
        return Err(ConfigError(format!(
            "`{tail}` after the node list of a cluster URL: a cluster has database 0 only and takes no options"
        )));
    }
    let (userinfo, nodes) = match authority.rsplit_once('@') {
        Some((userinfo, nodes)) => (Some(userinfo), nodes),
        None => (None, authority),
    };
    let nodes: Vec<String> = nodes
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|node| match userinfo {
            Some(u) => format!("redis://{u}@{node}"),
            None => format!("redis://{node}"),
        })
        .collect();
    if nodes.is_empty() {
        return Err(ConfigError(
            "a cluster URL names no node: write redis+cluster://host:port,host:port".into(),
        ));
    }
    Ok(nodes)
}

/// The URL without its password, for logs and `Debug`.
pub(crate) fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &url[start + at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_urls_pass_through() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "redis://:secret@cache:6380/2",
            "rediss://cache",
            "redis+unix:///run/redis.sock",
        ] {
            assert_eq!(Target::parse(url).unwrap(), Target::Standalone(url.into()));
        }
    }

    #[test]
    fn cluster_urls_list_their_nodes() {
        assert_eq!(
            Target::parse("redis+cluster://10.0.0.1:7000, 10.0.0.2:7001,[::1]:7002/").unwrap(),
            Target::Cluster(vec![
                "redis://10.0.0.1:7000".into(),
                "redis://10.0.0.2:7001".into(),
                "redis://[::1]:7002".into(),
            ])
        );
        assert_eq!(
            Target::parse("redis+cluster://app:p%40ss@a:1,b:2/0").unwrap(),
            Target::Cluster(vec![
                "redis://app:p%40ss@a:1".into(),
                "redis://app:p%40ss@b:2".into()
            ])
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "redis+cluster://",
            "redis+cluster://a:1/3",
            "redis+cluster://a:1?x=1",
            "postgres://localhost",
            "127.0.0.1:6379",
        ] {
            assert!(Target::parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://:secret@cache:6379/0"),
            "redis://***@cache:6379/0"
        );
        assert_eq!(
            redact("redis+cluster://u:p@a:1,b:2"),
            "redis+cluster://***@a:1,b:2"
        );
        assert_eq!(redact("redis://cache:6379/0"), "redis://cache:6379/0");
        assert_eq!(redact("redis://cache/0?x=a@b"), "redis://cache/0?x=a@b");
    }
}
