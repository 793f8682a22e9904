//! Who a key belongs to (R4).
//!
//! A record's identity is `(scope, key)`, never the key alone, so one tenant can never
//! receive another tenant's stored response. The scope is a digest of the configured
//! request headers (by default `Authorization`); the raw credential is never stored.
//! A refreshed token is a new scope: configure a stable tenant header if tokens rotate.

use std::fmt;

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

/// A 128-bit digest of the headers that identify the caller.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope([u8; 16]);

impl Scope {
    /// The scope used when no header identifies the caller: one shared namespace.
    pub const GLOBAL: Self = Self([0; 16]);

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Rebuilds a scope from its bytes (as read back from a store).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// Lower-case hex, as shown in logs and store keys.
    pub fn to_hex(&self) -> String {
        crate::hex(&self.0)
    }

    /// Parses [`Scope::to_hex`] output.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = crate::unhex(hex)?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({})", self.to_hex())
    }
}

/// Which request headers make up the scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeSource {
    headers: Vec<HeaderName>,
}

impl Default for ScopeSource {
    /// The `Authorization` header.
    fn default() -> Self {
        Self::headers([http::header::AUTHORIZATION])
    }
}

impl ScopeSource {
    /// Scope by these headers (all of them, in order).
    pub fn headers(headers: impl IntoIterator<Item = HeaderName>) -> Self {
        Self {
            headers: headers.into_iter().collect(),
        }
    }

    /// No scoping: every caller shares one namespace of keys.
    pub fn none() -> Self {
        Self { headers: vec![] }
    }

    /// The configured header names.
    pub fn header_names(&self) -> &[HeaderName] {
        &self.headers
    }

    /// Computes the scope of a request. A request that carries none of the headers gets
    /// its own digest (not [`Scope::GLOBAL`]), distinct from any credentialed caller.
    pub fn scope(&self, headers: &HeaderMap) -> Scope {
        if self.headers.is_empty() {
            return Scope::GLOBAL;
        }
        let mut h = Sha256::new();
        h.update(b"idem-scope-v1");
        for name in &self.headers {
            h.update(name.as_str().as_bytes());
            h.update([0]);
            for value in headers.get_all(name) {
                h.update((value.len() as u64).to_be_bytes());
                h.update(value.as_bytes());
            }
            h.update([0xff]);
        }
        let digest = h.finalize();
        let mut out = [0; 16];
        out.copy_from_slice(&digest[..16]);
        Scope(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_auth(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_static(v));
        h
    }

    // R4
    #[test]
    fn r04_scopes_differ_by_credential() {
        let src = ScopeSource::default();
        let a = src.scope(&with_auth("Bearer a"));
        let b = src.scope(&with_auth("Bearer b"));
        assert_ne!(a, b);
        assert_eq!(a, src.scope(&with_auth("Bearer a")));
        assert_ne!(src.scope(&HeaderMap::new()), a);
        assert_ne!(src.scope(&HeaderMap::new()), Scope::GLOBAL);
        assert_eq!(ScopeSource::none().scope(&with_auth("x")), Scope::GLOBAL);
    }

    #[test]
    fn hex_round_trip() {
        let s = ScopeSource::default().scope(&with_auth("x"));
        assert_eq!(Scope::from_hex(&s.to_hex()), Some(s));
        assert_eq!(Scope::from_hex("zz"), None);
    }
}
