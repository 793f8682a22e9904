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

/// The TLS files a `rediss://` URL names in its query (`tls_ca_cert_file`,
/// `tls_cert_file`, `tls_key_file`, as redis.conf calls them), taken out before redis-rs
/// reads the URL.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    ca_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl TlsFiles {
    /// Splits the TLS options off `url`: answers the URL without them, and them.
    pub(crate) fn split(url: &str) -> Result<(String, Self), ConfigError> {
        let mut files = Self::default();
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), files));
        };
        // A fragment (`#insecure`) follows the query.
        let (query, fragment) = match query.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (query, None),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match k {
                "tls_ca_cert_file" => &mut files.ca_cert,
                "tls_cert_file" => &mut files.cert,
                "tls_key_file" => &mut files.key,
                _ => {
                    kept.push(pair);
                    continue;
                }
            };
            *slot = Some(percent_decode(v).ok_or_else(|| {
                ConfigError(format!("{k}: `{v}` is not a valid percent-encoded path"))
            })?);
        }
        let mut rest = base.to_owned();
        if !kept.is_empty() {
            rest.push('?');
            rest.push_str(&kept.join("&"));
        }
        if let Some(f) = fragment {
            rest.push('#');
            rest.push_str(f);
        }
        Ok((rest, files))
    }

    /// Whether any TLS file was named.
    pub(crate) fn any(&self) -> bool {
        self.ca_cert.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The redis-rs client for `url`, trusting and presenting these files.
    pub(crate) fn client(&self, url: &str) -> Result<redis::Client, ConfigError> {
        if url.starts_with("rediss://") {
            // redis-rs builds its rustls configuration on the process's default provider;
            // with more than one compiled in there is none unless someone installs it.
            // Another already installed is fine: the call then changes nothing.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let opened = if self.any() {
            if !url.starts_with("rediss://") {
                return Err(ConfigError(
                    "tls_ca_cert_file, tls_cert_file and tls_key_file need a rediss:// URL".into(),
                ));
            }
            let read = |what: &str, path: &str| {
                std::fs::read(path).map_err(|e| ConfigError(format!("{what} {path}: {e}")))
            };
            let client_tls = match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: read("tls_cert_file", cert)?,
                    client_key: read("tls_key_file", key)?,
                }),
                (None, None) => None,
                _ => {
                    return Err(ConfigError(
                        "tls_cert_file and tls_key_file go together".into(),
                    ));
                }
            };
            let root_cert = self
                .ca_cert
                .as_deref()
                .map(|ca| read("tls_ca_cert_file", ca))
                .transpose()?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
        } else {
            redis::Client::open(url)
        };
        opened.map_err(|e| ConfigError(format!("{}: {e}", redact(url))))
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_are_taken_out_of_the_url() {
        let (rest, files) = TlsFiles::split(
            "rediss://:pw@cache:6380/2?tls_ca_cert_file=%2Fetc%2Fca.pem&protocol=resp3\
             &tls_cert_file=/c.pem&tls_key_file=/k.pem#insecure",
        )
        .unwrap();
        assert_eq!(rest, "rediss://:pw@cache:6380/2?protocol=resp3#insecure");
        assert_eq!(
            files,
            TlsFiles {
                ca_cert: Some("/etc/ca.pem".into()),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
            }
        );
        let (rest, files) = TlsFiles::split("rediss://cache?tls_ca_cert_file=/ca.pem").unwrap();
        assert_eq!(rest, "rediss://cache");
        assert!(files.any());
        assert_eq!(TlsFiles::split("redis://cache").unwrap().0, "redis://cache");
        assert!(TlsFiles::split("rediss://cache?tls_ca_cert_file=%zz").is_err());
        let err = |url: &str| {
            let (rest, files) = TlsFiles::split(url).unwrap();
            files.client(&rest).unwrap_err().0
        };
        assert!(err("redis://cache?tls_ca_cert_file=/ca.pem").contains("rediss://"));
        assert!(err("rediss://cache?tls_cert_file=/c.pem").contains("go together"));
        assert!(
            err("rediss://cache?tls_ca_cert_file=/nonexistent.pem").contains("/nonexistent.pem")
        );
    }

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
