//! Which response headers are stored and replayed, and which responses stream (R19).

use http::header::{self, HeaderMap, HeaderName};

/// True for the hop-by-hop headers of RFC 9110 §7.6.1 and every `Proxy-*` header.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        *name,
        header::CONNECTION
            | header::TRANSFER_ENCODING
            | header::TE
            | header::TRAILER
            | header::UPGRADE
            | header::PROXY_AUTHENTICATE
            | header::PROXY_AUTHORIZATION
    ) || name.as_str() == "keep-alive"
        || name.as_str().starts_with("proxy-")
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none (a `Connection` header is one itself): one pass over the
    // names, nothing allocated.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        // Bytes, not `to_str`: one non-ASCII byte in the value must not hide the names
        // around it.
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// The end-to-end headers of a response minus the deny-list: what a snapshot keeps.
pub fn storable(headers: &HeaderMap, deny: &[HeaderName]) -> HeaderMap {
    let mut out = headers.clone();
    strip_hop_by_hop(&mut out);
    for name in deny {
        out.remove(name);
    }
    out
}

/// True when the response's media type is one of `streaming` (matched case-insensitively
/// on the type/subtype, parameters ignored), e.g. `text/event-stream`.
pub fn is_streaming(headers: &HeaderMap, streaming: &[String]) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = ct.split(';').next().unwrap_or("").trim();
    streaming.iter().any(|s| s.eq_ignore_ascii_case(media))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    // R19
    #[test]
    fn r19_hop_by_hop_never_stored() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("proxy-foo", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("x-secret", HeaderValue::from_static("s"));
        let out = storable(&h, &[HeaderName::from_static("x-secret")]);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out.contains_key(header::CONTENT_TYPE));
    }

    // R19: a hop-by-hop header is removed when it comes alone, with no `Connection`
    // header beside it; a message without any is left as it was.
    #[test]
    fn r19_each_hop_by_hop_header_alone_is_removed() {
        for name in [
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authenticate",
            "proxy-authorization",
            "proxy-foo",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
            assert!(h.contains_key(header::CONTENT_TYPE), "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.append("x-tag", HeaderValue::from_static("a"));
        h.append("x-tag", HeaderValue::from_static("b"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    // R24: the names `Connection` nominates are removed even when another token of the
    // value is not ASCII.
    #[test]
    fn r24_connection_tokens_read_as_bytes() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"idempotency-key, \xe9t\xe9").unwrap(),
        );
        h.insert("idempotency-key", HeaderValue::from_static("k"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    // R19
    #[test]
    fn r19_streaming_detection() {
        let mut h = HeaderMap::new();
        let types = vec!["text/event-stream".to_owned()];
        assert!(!is_streaming(&h, &types));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Text/Event-Stream; charset=utf-8"),
        );
        assert!(is_streaming(&h, &types));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_streaming(&h, &types));
    }
}
