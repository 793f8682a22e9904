//! Who a key belongs to (R4).
//!
//! A record's identity is `(scope, key)`, never the key alone, so one tenant can never
//! receive another tenant's stored response. The scope is a digest of the configured
//! request headers (by default `Authorization`); the raw credential is never stored.
//! A refreshed token is a new scope: configure a stable tenant header if tokens rotate.
//!
//! - A request that carries none of the configured headers (or only empty values) is
//!   *unscoped*: [`ScopeSource::scope`] answers `None`, and the engine refuses it or
//!   passes it through unprotected ([`Unscoped`](crate::policy::Unscoped)); it never
//!   shares a scope with other anonymous callers.
//! - One shared scope for every caller is an explicit choice, [`ScopeSource::none`].
//! - With a [`ScopeSecret`] the digest is an HMAC keyed by that deployment secret, so a
//!   digest read from a log or a store cannot be tested against guessed credentials.
//!   Without one, [`ScopeSource::log`] shows logs a digest keyed by a random key of the
//!   process instead, so logs never carry a value recomputable from a credential alone.

use std::fmt;
use std::sync::{Arc, OnceLock};

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

/// A 128-bit digest of the headers that identify the caller.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope([u8; 16]);

impl Scope {
    /// The scope shared by every caller under [`ScopeSource::none`].
    pub const GLOBAL: Self = Self([0; 16]);

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Rebuilds a scope from its bytes (as read back from a store).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// Lower-case hex, as stores and the admin API show it.
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

/// Why a scope secret cannot be used. Messages never contain secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeSecretError {
    /// Fewer bytes than [`ScopeSecret::MIN_LEN`].
    #[error("a scope secret needs at least {min} bytes, this one has {len}", min = ScopeSecret::MIN_LEN)]
    TooShort {
        /// How many bytes it had.
        len: usize,
    },
}

/// A deployment secret that keys scope digests (R4).
///
/// Every instance sharing a store must use the same secret: the digest is the record's
/// identity. Setting, changing or removing it changes every scope, so records made
/// before are not found again (their keys run again); set it before the first
/// deployment.
#[derive(Clone, PartialEq, Eq)]
pub struct ScopeSecret(Arc<[u8; 32]>);

impl ScopeSecret {
    /// The shortest material accepted: 32 bytes (`openssl rand -base64 32` gives 44).
    pub const MIN_LEN: usize = 32;

    /// A secret from `material` (e.g. a file's content, surrounding white space
    /// removed): the key is derived from all of it.
    ///
    /// # Errors
    ///
    /// [`ScopeSecretError::TooShort`] below [`MIN_LEN`](Self::MIN_LEN) bytes.
    pub fn new(material: &[u8]) -> Result<Self, ScopeSecretError> {
        let material = material.trim_ascii();
        if material.len() < Self::MIN_LEN {
            return Err(ScopeSecretError::TooShort {
                len: material.len(),
            });
        }
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(material).expect("HMAC takes keys of any length");
        mac.update(b"idem scope key v1");
        Ok(Self(Arc::new(mac.finalize().into_bytes().into())))
    }
}

impl fmt::Debug for ScopeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key material never reaches a log.
        f.write_str("ScopeSecret(..)")
    }
}

/// Which request headers make up the scope, and whether digests are keyed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeSource {
    headers: Vec<HeaderName>,
    secret: Option<ScopeSecret>,
}

impl Default for ScopeSource {
    /// The `Authorization` header, unkeyed.
    fn default() -> Self {
        Self::headers([http::header::AUTHORIZATION])
    }
}

impl ScopeSource {
    /// Scope by these headers (all of them, in order).
    pub fn headers(headers: impl IntoIterator<Item = HeaderName>) -> Self {
        Self {
            headers: headers.into_iter().collect(),
            secret: None,
        }
    }

    /// No scoping: every caller shares one namespace of keys ([`Scope::GLOBAL`]).
    pub fn none() -> Self {
        Self {
            headers: vec![],
            secret: None,
        }
    }

    /// The same headers, digested with an HMAC keyed by `secret`.
    #[must_use]
    pub fn keyed(mut self, secret: ScopeSecret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// The configured header names.
    pub fn header_names(&self) -> &[HeaderName] {
        &self.headers
    }

    /// True for [`ScopeSource::none`]: every caller shares one scope.
    pub fn is_shared(&self) -> bool {
        self.headers.is_empty()
    }

    /// True when digests are keyed by a [`ScopeSecret`].
    pub fn is_keyed(&self) -> bool {
        self.secret.is_some()
    }

    /// The scope of a request: [`Scope::GLOBAL`] when scoping is off, `None` when the
    /// request carries none of the headers with a non-empty value (it is *unscoped*),
    /// else a digest of the headers' values.
    pub fn scope(&self, headers: &HeaderMap) -> Option<Scope> {
        if self.headers.is_empty() {
            return Some(Scope::GLOBAL);
        }
        let identified = self.headers.iter().any(|name| {
            headers
                .get_all(name)
                .iter()
                .any(|v| !v.as_bytes().trim_ascii().is_empty())
        });
        if !identified {
            return None;
        }
        let digest = match &self.secret {
            None => {
                let mut h = Sha256::new();
                h.update(b"idem-scope-v1");
                self.feed(headers, |bytes| h.update(bytes));
                h.finalize()
            }
            Some(secret) => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret.0[..])
                    .expect("HMAC takes keys of any length");
                mac.update(b"idem-scope-keyed-v1");
                self.feed(headers, |bytes| mac.update(bytes));
                mac.finalize().into_bytes()
            }
        };
        let mut out = [0; 16];
        out.copy_from_slice(&digest[..16]);
        Some(Scope(out))
    }

    /// The digest's input: each header's name and length-prefixed values, in order.
    fn feed(&self, headers: &HeaderMap, mut update: impl FnMut(&[u8])) {
        for name in &self.headers {
            update(name.as_str().as_bytes());
            update(&[0]);
            for value in headers.get_all(name) {
                update(&(value.len() as u64).to_be_bytes());
                update(value.as_bytes());
            }
            update(&[0xff]);
        }
    }

    /// How `scope` appears in logs: its hex when digests are keyed (or for the shared
    /// scope), else a tag keyed by a random key of this process, stable for the
    /// process's life but never recomputable from a credential (R4).
    pub fn log(&self, scope: &Scope) -> LoggedScope {
        LoggedScope {
            scope: *scope,
            plain: self.is_keyed() || *scope == Scope::GLOBAL,
        }
    }
}

/// A scope as logs show it: see [`ScopeSource::log`].
#[derive(Clone, Copy)]
pub struct LoggedScope {
    scope: Scope,
    plain: bool,
}

impl fmt::Display for LoggedScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.plain {
            return fmt::Display::fmt(&self.scope, f);
        }
        static PROCESS_KEY: OnceLock<[u8; 32]> = OnceLock::new();
        let key = PROCESS_KEY.get_or_init(|| {
            let mut key = [0; 32];
            if getrandom::fill(&mut key).is_err() {
                // No OS randomness: owner tokens have the same fallback. The tag is
                // still not recomputable from the credential without this process's
                // start time and counter.
                let t = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
                key[..8].copy_from_slice(&t.to_be_bytes());
                key[8..12].copy_from_slice(&std::process::id().to_be_bytes());
            }
            key
        });
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(self.scope.as_bytes());
        // `~` marks a process-local tag: it matches no store's scope.
        write!(f, "~{}", crate::hex(&mac.finalize().into_bytes()[..8]))
    }
}

impl fmt::Debug for LoggedScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
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

    fn secret(s: &str) -> ScopeSecret {
        ScopeSecret::new(s.as_bytes()).unwrap()
    }

    // R4
    #[test]
    fn r04_scopes_differ_by_credential() {
        let src = ScopeSource::default();
        let a = src.scope(&with_auth("Bearer a")).unwrap();
        let b = src.scope(&with_auth("Bearer b")).unwrap();
        assert_ne!(a, b);
        assert_eq!(Some(a), src.scope(&with_auth("Bearer a")));
        assert_ne!(a, Scope::GLOBAL);
        assert_eq!(
            ScopeSource::none().scope(&with_auth("x")),
            Some(Scope::GLOBAL)
        );
        assert_eq!(
            ScopeSource::none().scope(&HeaderMap::new()),
            Some(Scope::GLOBAL)
        );
    }

    // R4: a request without the scope headers, or with only empty values, is unscoped:
    // it gets no scope to share with other anonymous callers.
    #[test]
    fn r04_requests_without_scope_headers_are_unscoped() {
        let src = ScopeSource::default();
        assert_eq!(src.scope(&HeaderMap::new()), None);
        assert_eq!(src.scope(&with_auth("")), None);
        assert_eq!(src.scope(&with_auth("  ")), None);
        let two = ScopeSource::headers([
            http::header::AUTHORIZATION,
            HeaderName::from_static("x-tenant"),
        ]);
        let mut tenant = HeaderMap::new();
        tenant.insert("x-tenant", HeaderValue::from_static("acme"));
        assert!(two.scope(&tenant).is_some(), "one of the headers scopes");
        assert_eq!(two.scope(&HeaderMap::new()), None);
    }

    // R4: keyed digests differ from the unkeyed one and between secrets; the same
    // secret gives the same scope on every instance.
    #[test]
    fn r04_keyed_digests_depend_on_the_secret() {
        let plain = ScopeSource::default();
        let k1 = ScopeSource::default().keyed(secret("a deployment secret of 32+ bytes!"));
        let k1_again = ScopeSource::default().keyed(secret("a deployment secret of 32+ bytes!"));
        let k2 = ScopeSource::default().keyed(secret("another deployment secret, 32 b+"));
        let h = with_auth("Basic YWxpY2U6cGFzc3dvcmQ=");
        let p = plain.scope(&h).unwrap();
        let a = k1.scope(&h).unwrap();
        assert_ne!(p, a);
        assert_eq!(Some(a), k1_again.scope(&h));
        assert_ne!(Some(a), k2.scope(&h));
        assert_ne!(a, k1.scope(&with_auth("Basic Ym9iOnBhc3N3b3Jk")).unwrap());
        assert!(k1.is_keyed() && !plain.is_keyed());
    }

    #[test]
    fn short_secrets_are_refused_and_never_shown() {
        assert_eq!(
            ScopeSecret::new(b"  short\n"),
            Err(ScopeSecretError::TooShort { len: 5 })
        );
        let s = secret("0123456789abcdef0123456789abcdef");
        assert_eq!(format!("{s:?}"), "ScopeSecret(..)");
        assert_eq!(s, secret(" 0123456789abcdef0123456789abcdef\n"));
    }

    // R4: without a secret, logs never show the credential's plain digest.
    #[test]
    fn r04_unkeyed_scopes_are_logged_under_a_process_key() {
        let plain = ScopeSource::default();
        let scope = plain
            .scope(&with_auth("Basic YWxpY2U6cGFzc3dvcmQ="))
            .unwrap();
        let logged = plain.log(&scope).to_string();
        assert!(logged.starts_with('~'), "{logged}");
        assert!(!logged.contains(&scope.to_hex()[..8]), "{logged}");
        assert_eq!(
            logged,
            plain.log(&scope).to_string(),
            "stable in one process"
        );
        let keyed = ScopeSource::default().keyed(secret("a deployment secret of 32+ bytes!"));
        let scope = keyed
            .scope(&with_auth("Basic YWxpY2U6cGFzc3dvcmQ="))
            .unwrap();
        assert_eq!(keyed.log(&scope).to_string(), scope.to_hex());
        assert_eq!(
            ScopeSource::none().log(&Scope::GLOBAL).to_string(),
            Scope::GLOBAL.to_hex()
        );
    }

    #[test]
    fn hex_round_trip() {
        let s = ScopeSource::default().scope(&with_auth("x")).unwrap();
        assert_eq!(Scope::from_hex(&s.to_hex()), Some(s));
        assert_eq!(Scope::from_hex("zz"), None);
    }
}
