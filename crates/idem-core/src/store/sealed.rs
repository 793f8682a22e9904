//! Encryption at rest: [`Sealed`] wraps any [`Store`] so the store sees neither stored
//! responses nor raw idempotency keys.
//!
//! - Every snapshot (status, headers, body) is sealed with XChaCha20-Poly1305 under the
//!   current key before it reaches the store. The sealed blob names its key, so records
//!   sealed before a rotation still open with the older keys kept in the list; its
//!   random 192-bit nonce is safe to pick at random at any volume; its associated data is
//!   the record id the store sees, so a blob copied onto another record does not open.
//! - The store's record id keeps the scope but replaces the key by an HMAC-SHA256 of
//!   scope and key (hex), keyed by a key derived from the **last** key in the list (the
//!   root key). Equal keys still meet on one record; the raw key never reaches the store.
//! - Over a [`Transactional`] store it is transactional too (R20, R21): a snapshot
//!   completed in the caller's transaction is sealed as any completion, and a recovery
//!   point's step and data are sealed together (under associated data of their own, so
//!   a point's blob never opens as a snapshot's or the other way round).
//! - A blob that does not open (tampered, moved, sealed under a key no longer in the
//!   list, or written before sealing was turned on) is [`StoreError::Corrupt`]: never
//!   replayed, answered as a problem.
//!
//! Fingerprints (SHA-256 digests of requests) and timestamps stay in the clear: stores
//! compare them.
//!
//! ```
//! use idem_core::store::{MemoryStore, Sealed, SealingKeys};
//!
//! let keys = SealingKeys::parse(
//!     "2025-06:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\
//!      2025-01:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
//! )?;
//! let store = Sealed::new(MemoryStore::new(), keys);
//! # Ok::<(), idem_core::store::KeyListError>(())
//! ```

use crate::store::{ListFilter, ListPage};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use http::{HeaderMap, StatusCode};
use sha2::Sha256;

use crate::key::IdempotencyKey;
use crate::record::{Corrupt, Record, RecordId, Snapshot, SnapshotBody, State};
use crate::store::{
    Claim, ClaimRequest, CorruptRecord, Finish, Lease, RecoveryPoint, Store, StoreError,
    Transactional, Watch,
};

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const SNAPSHOT_AAD: &[u8] = b"idem sealed snapshot v1\0";
const POINT_AAD: &[u8] = b"idem sealed recovery point v1\0";
/// The step of a sealed recovery point as its store sees it: the real one is sealed.
const SEALED_STEP: &str = "sealed";
const DERIVE_SEAL: &[u8] = b"idem seal key v1";
const DERIVE_RECORD_ID: &[u8] = b"idem record id key v1";
const MAX_ID_LEN: usize = 64;

/// Why a key list cannot be used. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyListError {
    /// No key at all.
    #[error("no encryption keys (expected one ID:BASE64 line per key, newest first)")]
    Empty,
    /// A line without `ID:BASE64`.
    #[error("line {line}: expected ID:BASE64")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// A key id with characters outside the allowed set.
    #[error("line {line}: a key id is 1-64 letters, digits, `.`, `_` or `-`")]
    BadId {
        /// 1-based line number.
        line: usize,
    },
    /// Key material that is not base64.
    #[error("line {line}: key `{id}` is not valid base64")]
    BadBase64 {
        /// 1-based line number.
        line: usize,
        /// The key's id.
        id: String,
    },
    /// Key material of the wrong length.
    #[error("line {line}: key `{id}` is {len} bytes, expected 32")]
    BadLength {
        /// 1-based line number.
        line: usize,
        /// The key's id.
        id: String,
        /// The decoded length.
        len: usize,
    },
    /// Two keys with one id.
    #[error("line {line}: key id `{id}` appears twice")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// The key's id.
        id: String,
    },
}

struct SealingKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// The keys [`Sealed`] seals and opens with: the first seals, all open; the last also
/// keys record-id digests.
///
/// The text form ([`SealingKeys::parse`]) is one `ID:BASE64` line per key, newest first,
/// where `BASE64` is 32 random bytes in standard base64 (`openssl rand -base64 32`);
/// blank lines and lines starting with `#` are ignored.
#[derive(Clone)]
pub struct SealingKeys {
    keys: Arc<[SealingKey]>,
    record_id_key: [u8; 32],
}

impl fmt::Debug for SealingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids only: key material never reaches a log.
        f.debug_struct("SealingKeys")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn derive(master: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(master).expect("HMAC takes keys of any length");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl SealingKeys {
    /// Reads the text form: one `ID:BASE64` line per key, newest first.
    pub fn parse(text: &str) -> Result<Self, KeyListError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, material) = line
                .split_once(':')
                .ok_or(KeyListError::Malformed { line: line_no })?;
            let id = id.trim();
            if !valid_id(id) {
                return Err(KeyListError::BadId { line: line_no });
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(material.trim())
                .map_err(|_| KeyListError::BadBase64 {
                    line: line_no,
                    id: id.to_owned(),
                })?;
            let material: [u8; 32] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyListError::BadLength {
                        line: line_no,
                        id: id.to_owned(),
                        len: bytes.len(),
                    })?;
            if keys.iter().any(|(k, _): &(String, _)| k == id) {
                return Err(KeyListError::Duplicate {
                    line: line_no,
                    id: id.to_owned(),
                });
            }
            keys.push((id.to_owned(), material));
        }
        Self::new(keys)
    }

    /// Keys from `(id, 32 bytes)` pairs, newest first.
    pub fn new(
        keys: impl IntoIterator<Item = (impl Into<String>, [u8; 32])>,
    ) -> Result<Self, KeyListError> {
        let keys: Vec<(String, [u8; 32])> = keys.into_iter().map(|(i, k)| (i.into(), k)).collect();
        let Some((_, root)) = keys.last() else {
            return Err(KeyListError::Empty);
        };
        let record_id_key = derive(root, DERIVE_RECORD_ID);
        let mut sealing: Vec<SealingKey> = Vec::with_capacity(keys.len());
        for (line, (id, material)) in keys.iter().enumerate() {
            if !valid_id(id) {
                return Err(KeyListError::BadId { line: line + 1 });
            }
            if sealing.iter().any(|k| &k.id == id) {
                return Err(KeyListError::Duplicate {
                    line: line + 1,
                    id: id.clone(),
                });
            }
            let key = derive(material, DERIVE_SEAL);
            sealing.push(SealingKey {
                id: id.clone(),
                cipher: XChaCha20Poly1305::new(&key.into()),
            });
        }
        Ok(Self {
            keys: sealing.into(),
            record_id_key,
        })
    }

    /// The key ids, newest (the one that seals) first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// The id the store sees for `id`: same scope, the key replaced by a keyed digest.
    pub fn store_id(&self, id: &RecordId) -> RecordId {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.record_id_key)
            .expect("HMAC takes keys of any length");
        mac.update(id.scope().as_bytes());
        mac.update(id.key().as_str().as_bytes());
        let digest = crate::hex(&mac.finalize().into_bytes());
        // 64 lower-case hex digits: always a valid key.
        let key = IdempotencyKey::new(&digest).expect("hex digests are valid keys");
        RecordId::new(*id.scope(), key)
    }

    /// Seals `snapshot` for the record the store knows as `store_id`, under the
    /// newest key: the result carries only ciphertext.
    pub fn seal(&self, store_id: &RecordId, snapshot: &Snapshot) -> Snapshot {
        Snapshot {
            status: StatusCode::OK,
            reason: None,
            headers: HeaderMap::new(),
            body: SnapshotBody::Full(Bytes::from(self.seal_bytes(
                SNAPSHOT_AAD,
                store_id,
                &snapshot.encode(),
            ))),
        }
    }

    /// Opens what [`SealingKeys::seal`] made for `store_id`; anything else is [`Corrupt`].
    pub fn open(&self, store_id: &RecordId, sealed: &Snapshot) -> Result<Snapshot, Corrupt> {
        let SnapshotBody::Full(blob) = &sealed.body else {
            return Err(Corrupt("record is not sealed"));
        };
        Snapshot::decode(&self.open_bytes(SNAPSHOT_AAD, store_id, blob)?)
    }

    /// Seals a recovery point (R20) for the record the store knows as `store_id`: its
    /// step and data both become one blob, in the data of a point whose step only says
    /// it is sealed. Its associated data differs from a snapshot's, so neither blob
    /// opens as the other.
    pub fn seal_point(&self, store_id: &RecordId, point: &RecoveryPoint) -> RecoveryPoint {
        let step = point.step.as_bytes();
        let mut plain =
            Vec::with_capacity(5 + step.len() + point.data.as_ref().map_or(0, Vec::len));
        // Steps are names chosen by the application; a u32 length holds any of them.
        plain.extend_from_slice(&u32::try_from(step.len()).unwrap_or(u32::MAX).to_be_bytes());
        plain.extend_from_slice(step);
        match &point.data {
            None => plain.push(0),
            Some(data) => {
                plain.push(1);
                plain.extend_from_slice(data);
            }
        }
        RecoveryPoint::with_data(SEALED_STEP, self.seal_bytes(POINT_AAD, store_id, &plain))
    }

    /// Opens what [`SealingKeys::seal_point`] made for `store_id`; anything else is
    /// [`Corrupt`].
    pub fn open_point(
        &self,
        store_id: &RecordId,
        sealed: &RecoveryPoint,
    ) -> Result<RecoveryPoint, Corrupt> {
        let (SEALED_STEP, Some(blob)) = (sealed.step.as_str(), &sealed.data) else {
            return Err(Corrupt("recovery point is not sealed"));
        };
        let plain = self.open_bytes(POINT_AAD, store_id, blob)?;
        let bad = Corrupt("sealed recovery point is malformed");
        let (len, rest) = plain.split_first_chunk::<4>().ok_or(bad)?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| bad)?;
        if rest.len() <= len {
            return Err(bad);
        }
        let (step, rest) = rest.split_at(len);
        let step = String::from_utf8(step.to_vec()).map_err(|_| bad)?;
        let data = match rest.split_first() {
            Some((0, [])) => None,
            Some((1, data)) => Some(data.to_vec()),
            _ => return Err(bad),
        };
        Ok(RecoveryPoint { step, data })
    }

    /// Seals `plain` for `store_id` under the newest key, with `aad_prefix` naming
    /// what it is: `version, key id length, key id, nonce, ciphertext`.
    fn seal_bytes(&self, aad_prefix: &[u8], store_id: &RecordId, plain: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        if getrandom::fill(&mut nonce).is_err() {
            // No OS randomness: owner tokens fall back to a unique value; two of them
            // make a unique 192-bit nonce (uniqueness is what XChaCha20 needs).
            let a = crate::record::OwnerToken::random().get().to_be_bytes();
            let b = crate::record::OwnerToken::random().get().to_be_bytes();
            nonce[..16].copy_from_slice(&a);
            nonce[16..].copy_from_slice(&b[..8]);
        }
        let aad = aad(aad_prefix, store_id);
        let sealed = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            // Encryption fails only for messages over 256 GiB.
            .expect("snapshot fits XChaCha20-Poly1305");
        let mut blob = Vec::with_capacity(2 + key.id.len() + NONCE_LEN + sealed.len());
        blob.push(SEAL_VERSION);
        blob.push(key.id.len() as u8); // at most 64: checked when the key was made
        blob.extend_from_slice(key.id.as_bytes());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        blob
    }

    /// Opens what [`seal_bytes`](Self::seal_bytes) made for `store_id` with the same
    /// `aad_prefix`.
    fn open_bytes(
        &self,
        aad_prefix: &[u8],
        store_id: &RecordId,
        blob: &[u8],
    ) -> Result<Vec<u8>, Corrupt> {
        let (&version, rest) = blob.split_first().ok_or(Corrupt("record is not sealed"))?;
        if version != SEAL_VERSION {
            return Err(Corrupt("record is not sealed"));
        }
        let (&id_len, rest) = rest
            .split_first()
            .ok_or(Corrupt("sealed record truncated"))?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN {
            return Err(Corrupt("sealed record truncated"));
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let key = self
            .keys
            .iter()
            .find(|k| k.id.as_bytes() == id)
            .ok_or(Corrupt("record sealed under a key not in the key list"))?;
        let aad = aad(aad_prefix, store_id);
        key.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| Corrupt("sealed record does not open"))
    }

    fn open_record(&self, store_id: &RecordId, record: Record) -> Result<Record, Corrupt> {
        let state = match record.state {
            State::Completed {
                snapshot,
                expires_at,
            } => State::Completed {
                snapshot: self.open(store_id, &snapshot)?,
                expires_at,
            },
            in_flight @ State::InFlight { .. } => in_flight,
        };
        Ok(Record { state, ..record })
    }
}

fn aad(prefix: &[u8], store_id: &RecordId) -> Vec<u8> {
    let id = store_id.to_bytes();
    let mut aad = Vec::with_capacity(prefix.len() + id.len());
    aad.extend_from_slice(prefix);
    aad.extend_from_slice(&id);
    aad
}

/// A [`Store`] that seals what it keeps: see the [module docs](self).
///
/// It keeps the store contract: the engine and the layer use it like the store it wraps.
#[derive(Clone)]
pub struct Sealed<S> {
    inner: S,
    keys: SealingKeys,
}

impl<S: fmt::Debug> fmt::Debug for Sealed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("inner", &self.inner)
            .field("keys", &self.keys)
            .finish()
    }
}

impl<S> Sealed<S> {
    /// Seals everything `inner` keeps with `keys`.
    pub fn new(inner: S, keys: SealingKeys) -> Self {
        Self { inner, keys }
    }

    /// The wrapped store.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The keys.
    pub fn keys(&self) -> &SealingKeys {
        &self.keys
    }

    fn inner_lease(&self, lease: &Lease) -> Lease {
        Lease {
            id: self.keys.store_id(&lease.id),
            ..lease.clone()
        }
    }
}

impl<S: Store> Store for Sealed<S> {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        let store_id = self.keys.store_id(&req.id);
        let inner = ClaimRequest {
            id: store_id.clone(),
            ..req.clone()
        };
        Ok(match self.inner.claim(&inner).await? {
            Claim::Acquired(lease) => Claim::Acquired(Lease {
                id: req.id.clone(),
                ..lease
            }),
            Claim::Completed(snapshot) => Claim::Completed(self.keys.open(&store_id, &snapshot)?),
            other @ (Claim::InFlight { .. } | Claim::Mismatch) => other,
        })
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<Finish, StoreError> {
        self.inner.renew(&self.inner_lease(lease), lease_for).await
    }

    async fn complete(
        &self,
        lease: &Lease,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        let inner = self.inner_lease(lease);
        let sealed = self.keys.seal(&inner.id, snapshot);
        self.inner.complete(&inner, &sealed, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<Finish, StoreError> {
        self.inner.release(&self.inner_lease(lease)).await
    }

    async fn lookup(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let store_id = self.keys.store_id(id);
        match self.inner.lookup(&store_id).await? {
            Some(record) => Ok(Some(self.keys.open_record(&store_id, record)?)),
            None => Ok(None),
        }
    }

    /// Lists what the inner store holds, opened. The ids are the ones the store sees
    /// (the key replaced by its keyed digest, which cannot be turned back into the
    /// client's key): a sealed store lists records, not keys. The filter's cursor is
    /// such an id too.
    async fn list(&self, filter: &ListFilter) -> Result<ListPage, StoreError> {
        let page = self.inner.list(filter).await?;
        let mut records = Vec::with_capacity(page.records.len());
        let mut corrupt = page.corrupt;
        // A blob that does not open is reported like one that does not decode: the
        // page goes on (R16).
        for (store_id, record) in page.records {
            match self.keys.open_record(&store_id, record) {
                Ok(record) => records.push((store_id, record)),
                Err(why) => corrupt.push(CorruptRecord {
                    id: Some(store_id),
                    why,
                }),
            }
        }
        corrupt.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(ListPage {
            records,
            next: page.next,
            corrupt,
        })
    }

    async fn delete(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let store_id = self.keys.store_id(id);
        match self.inner.delete(&store_id).await? {
            Some(record) => Ok(Some(self.keys.open_record(&store_id, record)?)),
            None => Ok(None),
        }
    }

    fn watch(&self, id: &RecordId) -> Watch {
        self.inner.watch(&self.keys.store_id(id))
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.inner.purge_expired().await
    }
}

/// Transactional writes, sealed as [`Store::complete`] seals (R20, R21): the snapshot and
/// the recovery point the inner store writes in the caller's transaction carry only
/// ciphertext, under the record id the inner store sees, so they read back through
/// this store as any other record does.
impl<C: ?Sized + Sync, S: Transactional<C>> Transactional<C> for Sealed<S> {
    async fn complete_in(
        &self,
        client: &C,
        lease: &Lease,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        let inner = self.inner_lease(lease);
        let sealed = self.keys.seal(&inner.id, snapshot);
        self.inner.complete_in(client, &inner, &sealed, ttl).await
    }

    async fn advance_in(
        &self,
        client: &C,
        lease: &Lease,
        point: &RecoveryPoint,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        let inner = self.inner_lease(lease);
        let sealed = self.keys.seal_point(&inner.id, point);
        self.inner.advance_in(client, &inner, &sealed, ttl).await
    }

    async fn recovery_point(
        &self,
        client: &C,
        lease: &Lease,
    ) -> Result<Option<RecoveryPoint>, StoreError> {
        let inner = self.inner_lease(lease);
        match self.inner.recovery_point(client, &inner).await? {
            Some(point) => Ok(Some(self.keys.open_point(&inner.id, &point)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::Scope;
    use crate::store::MemoryStore;
    use crate::store::testkit::{Fixture as _, ManualFixture};
    use crate::store::testkit::{claim_req, id, snapshot};

    const K1: [u8; 32] = [1; 32];
    const K2: [u8; 32] = [2; 32];

    fn keys(list: &[(&str, [u8; 32])]) -> SealingKeys {
        SealingKeys::new(list.iter().map(|(i, k)| (*i, *k))).unwrap()
    }

    fn blob(s: &Snapshot) -> &[u8] {
        match &s.body {
            SnapshotBody::Full(b) => b,
            SnapshotBody::NotRetained(_) => panic!("sealed snapshots carry a blob"),
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn round_trip_hides_body_and_headers() {
        let k = keys(&[("a", K1)]);
        let rid = k.store_id(&id("round"));
        let plain = snapshot(b"secret-body-marker");
        let sealed = k.seal(&rid, &plain);
        assert!(!contains(blob(&sealed), b"secret-body-marker"));
        assert!(!contains(blob(&sealed), b"application/json"));
        assert!(sealed.headers.is_empty());
        assert_eq!(k.open(&rid, &sealed).unwrap(), plain);
    }

    #[test]
    fn nonces_differ_per_seal() {
        let k = keys(&[("a", K1)]);
        let rid = k.store_id(&id("nonce"));
        let s = snapshot(b"x");
        assert_ne!(k.seal(&rid, &s), k.seal(&rid, &s));
    }

    #[test]
    fn tampered_blob_is_corrupt() {
        let k = keys(&[("a", K1)]);
        let rid = k.store_id(&id("tamper"));
        let sealed = k.seal(&rid, &snapshot(b"body"));
        let b = blob(&sealed);
        for i in [0, 1, 2, 5, b.len() / 2, b.len() - 1] {
            let mut bad = b.to_vec();
            bad[i] ^= 0x40;
            let bad = Snapshot {
                body: SnapshotBody::Full(Bytes::from(bad)),
                ..sealed.clone()
            };
            assert!(k.open(&rid, &bad).is_err(), "flipped byte {i} still opened");
        }
        let truncated = Snapshot {
            body: SnapshotBody::Full(Bytes::copy_from_slice(&b[..10])),
            ..sealed
        };
        assert!(k.open(&rid, &truncated).is_err());
    }

    // R20: a sealed recovery point hides step and data, opens back to what was sealed,
    // and opens only on its own record and only as a point.
    #[test]
    fn recovery_points_round_trip_hidden() {
        let k = keys(&[("a", K1)]);
        let rid = k.store_id(&id("point"));
        for point in [
            RecoveryPoint::new("order_created"),
            RecoveryPoint::with_data("charged", b"ch_secret".to_vec()),
            RecoveryPoint::with_data("", Vec::new()),
        ] {
            let sealed = k.seal_point(&rid, &point);
            assert_eq!(sealed.step, SEALED_STEP);
            let blob = sealed.data.as_deref().unwrap();
            assert!(point.step.is_empty() || !contains(blob, point.step.as_bytes()));
            assert!(!contains(blob, b"ch_secret"));
            assert_eq!(k.open_point(&rid, &sealed).unwrap(), point);
        }
        let sealed = k.seal_point(&rid, &RecoveryPoint::new("order_created"));
        let elsewhere = k.store_id(&id("elsewhere"));
        assert!(k.open_point(&elsewhere, &sealed).is_err());
        assert!(
            k.open_point(&rid, &RecoveryPoint::new("order_created"))
                .is_err()
        );
        // A snapshot's blob is no point, and a point's blob is no snapshot.
        let snapshot_blob = blob(&k.seal(&rid, &snapshot(b"body"))).to_vec();
        let as_point = RecoveryPoint::with_data(SEALED_STEP, snapshot_blob);
        assert!(k.open_point(&rid, &as_point).is_err());
        let as_snapshot = Snapshot {
            body: SnapshotBody::Full(Bytes::from(sealed.data.clone().unwrap())),
            ..snapshot(b"")
        };
        assert!(k.open(&rid, &as_snapshot).is_err());
        // Tampered: never a point.
        let mut bad = sealed.data.unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(
            k.open_point(&rid, &RecoveryPoint::with_data(SEALED_STEP, bad))
                .is_err()
        );
    }

    #[test]
    fn wrong_key_does_not_open() {
        let rid = keys(&[("a", K1)]).store_id(&id("wrong"));
        let sealed = keys(&[("a", K1)]).seal(&rid, &snapshot(b"body"));
        // Same id, other material.
        assert_eq!(
            keys(&[("a", K2)]).open(&rid, &sealed),
            Err(Corrupt("sealed record does not open"))
        );
        // Key not in the list at all.
        assert_eq!(
            keys(&[("b", K2)]).open(&rid, &sealed),
            Err(Corrupt("record sealed under a key not in the key list"))
        );
    }

    #[test]
    fn moved_blob_does_not_open() {
        let k = keys(&[("a", K1)]);
        let from = k.store_id(&id("from"));
        let to = k.store_id(&id("to"));
        let sealed = k.seal(&from, &snapshot(b"body"));
        assert_eq!(
            k.open(&to, &sealed),
            Err(Corrupt("sealed record does not open"))
        );
    }

    #[test]
    fn plaintext_record_is_corrupt() {
        let k = keys(&[("a", K1)]);
        let rid = k.store_id(&id("plain"));
        assert!(k.open(&rid, &snapshot(b"body")).is_err());
    }

    #[test]
    fn rotation_opens_old_and_seals_with_new() {
        let old = keys(&[("old", K1)]);
        let rotated = keys(&[("new", K2), ("old", K1)]);
        let original = id("rotate");
        // The record id does not change with rotation: the root key stays last.
        assert_eq!(old.store_id(&original), rotated.store_id(&original));
        let rid = old.store_id(&original);
        let before = old.seal(&rid, &snapshot(b"before"));
        assert_eq!(rotated.open(&rid, &before).unwrap(), snapshot(b"before"));
        let after = rotated.seal(&rid, &snapshot(b"after"));
        assert_eq!(&blob(&after)[1..5], b"\x03new");
        // The old list does not know the new key.
        assert!(old.open(&rid, &after).is_err());
    }

    #[test]
    fn store_id_digests_the_key_per_scope() {
        let k = keys(&[("a", K1)]);
        let a = id("digest");
        let b = RecordId::new(Scope::from_bytes([7; 16]), a.key().clone());
        assert_eq!(k.store_id(&a), k.store_id(&a));
        assert_eq!(k.store_id(&a).scope(), a.scope());
        assert_ne!(k.store_id(&a).key(), k.store_id(&b).key());
        assert!(!k.store_id(&a).key().as_str().contains("digest"));
        assert_ne!(
            k.store_id(&a),
            keys(&[("a", K2)]).store_id(&a),
            "the digest is keyed"
        );
    }

    #[test]
    fn key_list_parses_and_refuses_bad_input() {
        let b64 = |k: [u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
        let text = format!("# keys\n\nnew:{}\n  old : {} \n", b64(K2), b64(K1));
        let k = SealingKeys::parse(&text).unwrap();
        assert_eq!(k.ids().collect::<Vec<_>>(), ["new", "old"]);
        assert!(!format!("{k:?}").contains(&b64(K1)));
        assert_eq!(SealingKeys::parse("# none\n"), Err(KeyListError::Empty));
        assert_eq!(
            SealingKeys::parse("nocolon"),
            Err(KeyListError::Malformed { line: 1 })
        );
        assert_eq!(
            SealingKeys::parse(&format!("a b:{}", b64(K1))),
            Err(KeyListError::BadId { line: 1 })
        );
        assert!(matches!(
            SealingKeys::parse("a:not*base64"),
            Err(KeyListError::BadBase64 { line: 1, .. })
        ));
        assert!(matches!(
            SealingKeys::parse("a:AAAA"),
            Err(KeyListError::BadLength { len: 3, .. })
        ));
        assert!(matches!(
            SealingKeys::parse(&format!("a:{}\na:{}", b64(K1), b64(K2))),
            Err(KeyListError::Duplicate { line: 2, .. })
        ));
    }

    impl PartialEq for SealingKeys {
        fn eq(&self, other: &Self) -> bool {
            self.ids().eq(other.ids()) && self.record_id_key == other.record_id_key
        }
    }

    /// Through the Store trait: the inner store holds the digest and the blob only, and
    /// a blob that fails to open is a Corrupt error, never a replay.
    #[tokio::test]
    async fn store_sees_only_digests_and_ciphertext() {
        let inner = MemoryStore::new();
        let sealed = Sealed::new(inner.clone(), keys(&[("a", K1)]));
        let rid = id("visible");
        let Claim::Acquired(lease) = sealed.claim(&claim_req(&rid, 1)).await.unwrap() else {
            panic!("expected Acquired");
        };
        assert_eq!(lease.id, rid);
        let done = sealed
            .complete(&lease, &snapshot(b"marker-body"), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(done, Finish::Done);
        assert_eq!(inner.lookup(&rid).await.unwrap(), None);
        let raw = inner
            .lookup(&sealed.keys().store_id(&rid))
            .await
            .unwrap()
            .unwrap();
        let encoded = raw.encode();
        assert!(!contains(&encoded, b"marker-body"));
        assert!(!contains(&encoded, rid.key().as_str().as_bytes()));
        assert_eq!(
            sealed.claim(&claim_req(&rid, 1)).await.unwrap(),
            Claim::Completed(snapshot(b"marker-body"))
        );
        // Rotated: the old record still replays; a new one is sealed with the new key.
        let rotated = Sealed::new(inner.clone(), keys(&[("b", K2), ("a", K1)]));
        assert_eq!(
            rotated.claim(&claim_req(&rid, 1)).await.unwrap(),
            Claim::Completed(snapshot(b"marker-body"))
        );
        let fresh = id("rotated");
        let Claim::Acquired(lease) = rotated.claim(&claim_req(&fresh, 1)).await.unwrap() else {
            panic!("expected Acquired");
        };
        let _ = rotated
            .complete(&lease, &snapshot(b"new"), Duration::from_secs(60))
            .await
            .unwrap();
        // Restarted without the key that sealed it: a store error, not a replay.
        let missing = Sealed::new(inner, keys(&[("a", K1)]));
        assert!(matches!(
            missing.claim(&claim_req(&fresh, 1)).await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            missing.lookup(&fresh).await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(missing.lookup(&rid).await.unwrap().is_some());
    }

    crate::store_tests!(sealed: async {
        let fx = ManualFixture::memory();
        let clock = fx.clock().clone();
        let store = Sealed::new(fx.store().clone(), crate::store::testkit::sealing_keys());
        ManualFixture::new(store, clock, fx)
    });
}
