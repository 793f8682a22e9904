//! What a request asks for (R5).
//!
//! A SHA-256 over method, path with query as the request carries them, the configured
//! significant headers and the body. `idem serve` normalises the path and drops
//! hop-by-hop headers before this is computed (R24), so the fingerprint is that of the
//! request as forwarded: `/v1/%70ay` and `/v1/./pay` are one request, as they are to the
//! upstream. Fields are length-prefixed so no two different requests can
//! hash the same bytes. In [`FingerprintMode::Json`] a body that parses as JSON is
//! hashed in a canonical form (object keys sorted, insignificant whitespace dropped),
//! so semantically equal retries match; a body that does not parse is hashed raw.

use std::fmt;
use std::str::FromStr;

use http::{HeaderMap, HeaderName, Method};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How request bodies are fingerprinted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FingerprintMode {
    /// The body bytes exactly as sent (the default).
    #[default]
    Raw,
    /// JSON bodies in canonical form; other bodies raw.
    Json,
}

impl FromStr for FingerprintMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(Self::Raw),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown fingerprint mode `{other}` (expected raw or json)"
            )),
        }
    }
}

/// A SHA-256 digest of a request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Computes the fingerprint of a request.
    pub fn compute(
        mode: FingerprintMode,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        significant: &[HeaderName],
        body: &[u8],
    ) -> Self {
        let mut h = Sha256::new();
        h.update(b"idem-fp-v1");
        field(&mut h, method.as_str().as_bytes());
        field(&mut h, path_and_query.as_bytes());
        for name in significant {
            field(&mut h, name.as_str().as_bytes());
            for value in headers.get_all(name) {
                field(&mut h, value.as_bytes());
            }
            h.update([0xff]);
        }
        match mode {
            FingerprintMode::Json => match serde_json::from_slice::<Value>(body) {
                Ok(v) => {
                    let mut canonical = Vec::with_capacity(body.len());
                    write_canonical(&v, &mut canonical);
                    h.update(b"J");
                    field(&mut h, &canonical);
                }
                Err(_) => {
                    h.update(b"R");
                    field(&mut h, body);
                }
            },
            FingerprintMode::Raw => {
                h.update(b"R");
                field(&mut h, body);
            }
        }
        Self(h.finalize().into())
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Rebuilds a fingerprint from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        crate::hex(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..16])
    }
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The canonical JSON text of `body`: object keys sorted by their bytes, no
/// insignificant whitespace; strings and numbers as serde_json writes them. `None` when
/// the body is not JSON.
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    write_canonical(&v, &mut out);
    Some(out)
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        other => write_scalar(other, out),
    }
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    // Writing a scalar into a Vec cannot fail: no I/O, and every Value serialises.
    let _ = serde_json::to_writer(out, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(mode: FingerprintMode, path: &str, body: &str) -> Fingerprint {
        Fingerprint::compute(
            mode,
            &Method::POST,
            path,
            &HeaderMap::new(),
            &[],
            body.as_bytes(),
        )
    }

    // R5
    #[test]
    fn r05_raw_mode_is_exact() {
        let a = fp(FingerprintMode::Raw, "/p", r#"{"a":1,"b":2}"#);
        assert_eq!(a, fp(FingerprintMode::Raw, "/p", r#"{"a":1,"b":2}"#));
        assert_ne!(a, fp(FingerprintMode::Raw, "/p", r#"{"b":2,"a":1}"#));
        assert_ne!(a, fp(FingerprintMode::Raw, "/p?x=1", r#"{"a":1,"b":2}"#));
        assert_ne!(
            a,
            Fingerprint::compute(
                FingerprintMode::Raw,
                &Method::PATCH,
                "/p",
                &HeaderMap::new(),
                &[],
                br#"{"a":1,"b":2}"#
            )
        );
    }

    // R5: a long decimal is read to the nearest double, so its canonical form reads back
    // as the same number and is a fixed point (found by fuzzing; needs serde_json's
    // float_roundtrip).
    #[test]
    fn r05_canonical_floats_round_trip() {
        let text = b"155555555555555500000000001286193430139584147.8";
        let once = canonical_json(text).unwrap();
        let a: Value = serde_json::from_slice(text).unwrap();
        let b: Value = serde_json::from_slice(&once).unwrap();
        assert_eq!(a, b);
        assert_eq!(canonical_json(&once).unwrap(), once);
    }

    // R5
    #[test]
    fn r05_json_mode_canonicalises() {
        let a = fp(
            FingerprintMode::Json,
            "/p",
            r#"{"a":1,"b":[1,{"y":2,"x":1}]}"#,
        );
        let b = fp(
            FingerprintMode::Json,
            "/p",
            " {\"b\" : [1, {\"x\":1,\"y\":2}],\n \"a\":1 } ",
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            fp(
                FingerprintMode::Json,
                "/p",
                r#"{"a":2,"b":[1,{"y":2,"x":1}]}"#
            )
        );
        // Not JSON: hashed raw, and never equal to a JSON body.
        assert_ne!(
            fp(FingerprintMode::Json, "/p", "{x"),
            fp(FingerprintMode::Json, "/p", "{ x")
        );
    }

    // R5
    #[test]
    fn r05_significant_headers() {
        let name = HeaderName::from_static("x-currency");
        let mut h1 = HeaderMap::new();
        h1.insert(&name, "EUR".parse().unwrap());
        let mut h2 = HeaderMap::new();
        h2.insert(&name, "USD".parse().unwrap());
        let sig = [name];
        let a = Fingerprint::compute(FingerprintMode::Raw, &Method::POST, "/", &h1, &sig, b"");
        let b = Fingerprint::compute(FingerprintMode::Raw, &Method::POST, "/", &h2, &sig, b"");
        assert_ne!(a, b);
        let c = Fingerprint::compute(FingerprintMode::Raw, &Method::POST, "/", &h2, &[], b"");
        let d = Fingerprint::compute(FingerprintMode::Raw, &Method::POST, "/", &h1, &[], b"");
        assert_eq!(c, d);
    }

    #[test]
    fn canonical_text() {
        assert_eq!(
            canonical_json(br#"{ "b": "\u00e9", "a": [1.5, null] }"#).unwrap(),
            "{\"a\":[1.5,null],\"b\":\"\u{e9}\"}".as_bytes()
        );
        assert_eq!(canonical_json(b"nope"), None);
    }
}
