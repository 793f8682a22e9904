//! `idem keys --admin URL`: the admin API of a running `idem serve`, over HTTP.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idem::core::record::RecordId;

use serde_json::Value;

use super::query::ListQuery;

/// A client of one admin listener.
pub(super) struct AdminApi {
    base: String,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminApi {
    /// The admin listener at `url` (`http://host:port`), opened by `token`.
    pub(super) fn new(url: &str, token: Option<&str>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            url.starts_with("http://"),
            "--admin `{url}`: give the admin listener as http://host:port"
        );
        let token = token.context("--admin needs --token (or IDEM_ADMIN_TOKEN)")?;
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// The record, or `None` when there is none.
    pub(super) async fn get(&self, id: &RecordId) -> anyhow::Result<Option<Value>> {
        self.call(Method::GET, &key_path(id)).await
    }

    /// Deletes the record; answers it, or `None` when there was none.
    pub(super) async fn delete(&self, id: &RecordId) -> anyhow::Result<Option<Value>> {
        Ok(self
            .call(Method::DELETE, &key_path(id))
            .await?
            .map(|v| v["deleted"].clone()))
    }

    /// One page of records.
    pub(super) async fn list(&self, q: &ListQuery) -> anyhow::Result<Value> {
        let state = crate::admin::filter_name(q.state);
        let mut path = format!("/admin/keys?state={state}&limit={}", q.limit);
        if let Some(d) = q.older_than {
            path.push_str(&format!("&older_than={}ms", d.as_millis()));
        }
        if let Some(s) = q.scope {
            path.push_str(&format!("&scope={s}"));
        }
        if let Some(a) = &q.after {
            path.push_str(&format!("&after={}", encode(a)));
        }
        self.call(Method::GET, &path)
            .await?
            .context("the admin API has no /admin/keys: is this an idem admin listener?")
    }

    /// One admin API request: `Some(json)` on 200, `None` on a 404 for a missing key,
    /// an error (with the problem's detail) otherwise.
    async fn call(&self, method: Method, path: &str) -> anyhow::Result<Option<Value>> {
        let base = &self.base;
        let url = format!("{base}{path}");
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Full::new(Bytes::new()))
            .with_context(|| format!("bad admin URL `{url}`"))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .with_context(|| format!("{base} did not answer within 30 s"))?
            .with_context(|| format!("cannot reach the admin API at {base}"))?;
        let status = resp.status();
        let is_json = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let body = resp
            .into_body()
            .collect()
            .await
            .context("reading the admin API's answer")?
            .to_bytes();
        let value: Value = if is_json {
            serde_json::from_slice(&body).context("the admin API answered invalid JSON")?
        } else {
            Value::Null
        };
        if status == StatusCode::OK {
            return Ok(Some(value));
        }
        let kind = value["type"].as_str().unwrap_or("");
        if status == StatusCode::NOT_FOUND && kind.ends_with("#admin-key-not-found") {
            return Ok(None);
        }
        let detail = value["detail"].as_str().map_or_else(
            || String::from_utf8_lossy(&body).trim().to_owned(),
            str::to_owned,
        );
        anyhow::bail!("the admin API answered {status}: {detail}")
    }
}

fn key_path(id: &RecordId) -> String {
    format!("/admin/keys/{}/{}", id.scope(), encode(id.key().as_str()))
}

/// Percent-encodes everything but unreserved characters, so any key is one path segment.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_key_is_one_path_segment() {
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode("a/b c%"), "a%2Fb%20c%25");
    }
}
