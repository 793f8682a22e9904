//! What a store keeps for `(scope, key)`, and its versioned binary encoding (R16, R25).
//!
//! The encoding starts with a version byte; [`Record::decode`] and [`Snapshot::decode`]
//! refuse anything unexpected (unknown version or tag, truncation, trailing bytes,
//! invalid header names or values, a checksum that does not match) with [`Corrupt`], so
//! a damaged record is never replayed.
//!
//! # Versions
//!
//! - **2** (written now): the version 1 layout with version byte 2, followed by the
//!   XXH3-64 checksum (8 bytes, big-endian) of every byte before it. Any damage to the
//!   stored bytes (a flipped bit, a body edited in place, a torn write that a store let
//!   through) fails the checksum and decodes as [`Corrupt`]. The checksum is not a
//!   secret: it catches damage, not a forger who can write the file; against that,
//!   [`Sealed`](crate::store::Sealed) authenticates every stored response.
//! - **1** (written before checksums): still decoded, so records stored before an
//!   upgrade keep replaying until they expire or are next written (as version 2). A
//!   version 2 record whose version byte is damaged into 1 still fails: the version 1
//!   layout has no room for the checksum's 8 bytes.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::clock::Millis;
use crate::fingerprint::Fingerprint;
use crate::key::IdempotencyKey;
use crate::scope::Scope;

/// The identity of a record: the scope and the key, never the key alone (R4).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RecordId {
    scope: Scope,
    key: IdempotencyKey,
}

impl RecordId {
    /// The record of `key` under `scope`.
    pub fn new(scope: Scope, key: IdempotencyKey) -> Self {
        Self { scope, key }
    }

    /// Who the key belongs to.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The client's key.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// A byte string unique to this record: the 16 scope bytes, then the key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.key.as_str().len());
        out.extend_from_slice(self.scope.as_bytes());
        out.extend_from_slice(self.key.as_str().as_bytes());
        out
    }

    /// Reads [`RecordId::to_bytes`] output back.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Corrupt> {
        if bytes.len() <= 16 {
            return Err(Corrupt("record id too short"));
        }
        let mut scope = [0; 16];
        scope.copy_from_slice(&bytes[..16]);
        let key = IdempotencyKey::from_stored(&bytes[16..])
            .map_err(|_| Corrupt("record id has an invalid key"))?;
        Ok(Self::new(Scope::from_bytes(scope), key))
    }
}

impl RecordId {
    /// [`RecordId::to_bytes`] as lower-case hex: a text form for notification payloads.
    pub fn to_hex(&self) -> String {
        crate::hex(&self.to_bytes())
    }

    /// Reads [`RecordId::to_hex`] output back; `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        Self::from_bytes(&crate::unhex(hex)?).ok()
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scope, self.key)
    }
}

/// The random token of the request that owns an `in_flight` record (R11 fencing).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerToken(u128);

impl OwnerToken {
    /// A fresh random token.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        if getrandom::fill(&mut b).is_err() {
            // No OS randomness: fall back to time and a process-wide counter, which is
            // still unique per claim within and (with overwhelming odds) across processes.
            use std::sync::atomic::{AtomicU64, Ordering};
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let t = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
            b[..8].copy_from_slice(&n.to_be_bytes());
            b[8..].copy_from_slice(&(t ^ u64::from(std::process::id())).to_be_bytes());
        }
        Self(u128::from_be_bytes(b))
    }

    /// A token unique within this process and, with overwhelming odds, across processes:
    /// a random per-process half and a counter. Unlike [`OwnerToken::random`] it costs no
    /// system call, so it suits a claim per request.
    pub fn unique() -> Self {
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        static BASE: OnceLock<u128> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = *BASE.get_or_init(|| Self::random().0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(base ^ u128::from(n))
    }

    /// The token as a number.
    pub fn get(self) -> u128 {
        self.0
    }

    /// Rebuilds a token read from a store.
    pub fn from_u128(v: u128) -> Self {
        Self(v)
    }

    /// Lower-case hex (32 characters).
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    /// Parses [`OwnerToken::to_hex`] output.
    pub fn from_hex(s: &str) -> Option<Self> {
        u128::from_str_radix(s, 16).ok().map(Self)
    }
}

impl fmt::Debug for OwnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerToken({:08x}…)", (self.0 >> 96) as u32)
    }
}

/// Why a completed record holds no body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotRetained {
    /// The body was larger than the storable limit (R13).
    TooLarge,
    /// The response streamed (R19).
    Streamed,
    /// The response set a cookie and every caller shares one scope, so replaying it
    /// would hand one client's cookie to another (R4).
    SetCookie,
    /// The store had no room for it (the memory store at its bound, R25).
    StoreFull,
    /// The upstream failed after the request may have reached it, and the route holds
    /// such keys (R22): whether the operation ran is unknown, so it never runs again.
    OutcomeUnknown,
}

impl NotRetained {
    /// Every reason.
    pub const ALL: [Self; 5] = [
        Self::TooLarge,
        Self::Streamed,
        Self::SetCookie,
        Self::StoreFull,
        Self::OutcomeUnknown,
    ];

    /// Its name in the admin API and `idem keys`: `too_large`, `outcome_unknown` …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Streamed => "streamed",
            Self::SetCookie => "set_cookie",
            Self::StoreFull => "store_full",
            Self::OutcomeUnknown => "outcome_unknown",
        }
    }
}

/// The stored body of a completed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotBody {
    /// The whole body, replayed byte for byte.
    Full(Bytes),
    /// The operation ran but its body was not kept; a replay is 410 Gone (R13, R19).
    NotRetained(NotRetained),
}

/// A reason phrase other than the status's usual one, as the upstream sent it (`201
/// CREATED`), kept so that a replay carries it too (R8).
///
/// A response extension: the proxy sets it from its HTTP client's and turns it back
/// into its server's; the engine stores it with the snapshot and puts it on replays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReasonPhrase(Box<[u8]>);

impl ReasonPhrase {
    /// `bytes` as a reason phrase: 1 to 255 bytes of tab, space, visible ASCII or
    /// obs-text (RFC 9112 §4); `None` for anything else.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        let valid = !bytes.is_empty()
            && bytes.len() <= 255
            && bytes
                .iter()
                .all(|&b| b == b'\t' || b == b' ' || b.is_ascii_graphic() || b >= 0x80);
        valid.then(|| Self(bytes.into()))
    }

    /// The phrase's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A stored response: status, end-to-end headers and body (R7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The original status.
    pub status: StatusCode,
    /// The upstream's own reason phrase, when it was not the usual one (R8).
    pub reason: Option<ReasonPhrase>,
    /// The stored headers (hop-by-hop and denied headers already removed).
    pub headers: HeaderMap,
    /// The body, or why there is none.
    pub body: SnapshotBody,
}

/// The state of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Owned by a running request until `lease_until` (R6, R11).
    InFlight {
        /// The owner's token; completion and release must present it.
        owner: OwnerToken,
        /// When the lease ends unless renewed.
        lease_until: Millis,
    },
    /// Done; replayed until `expires_at` (R8, R14).
    Completed {
        /// The stored response.
        snapshot: Snapshot,
        /// When the record stops existing.
        expires_at: Millis,
    },
}

/// What a store keeps for one `(scope, key)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The fingerprint of the request that created the record (kept on completion).
    pub fingerprint: Fingerprint,
    /// When the record was first claimed.
    pub created_at: Millis,
    /// In flight or completed.
    pub state: State,
}

/// A stored byte string that does not decode: never replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("corrupt record: {0}")]
pub struct Corrupt(pub &'static str);

/// The version [`Record::encode`] and [`Snapshot::encode`] write: checksummed.
const VERSION: u8 = 2;
/// The version written before checksums; still read.
const VERSION_UNCHECKED: u8 = 1;
/// Version 2 with a reason phrase after the status: written for snapshots that have
/// one, so every other record keeps its version 2 bytes.
const VERSION_REASON: u8 = 3;
/// The length of the checksum that ends a version 2 encoding.
const CHECKSUM_LEN: usize = 8;
const TAG_IN_FLIGHT: u8 = 1;
const TAG_COMPLETED: u8 = 2;
const BODY_FULL: u8 = 0;
const BODY_TOO_LARGE: u8 = 1;
const BODY_STREAMED: u8 = 2;
const BODY_SET_COOKIE: u8 = 3;
const BODY_STORE_FULL: u8 = 4;
const BODY_OUTCOME_UNKNOWN: u8 = 5;

impl Record {
    /// True while the record counts at `now`: an in-flight record until its lease
    /// ends, a completed one until it expires. A record that is not live is as good
    /// as absent: the next claim replaces it (R11 takeover, R14 expiry).
    pub fn is_live(&self, now: Millis) -> bool {
        self.ends_at() > now
    }

    /// When the record stops counting and a store may delete it: the lease deadline
    /// while in flight, the expiry once completed.
    pub fn ends_at(&self) -> Millis {
        match self.state {
            State::Completed { expires_at, .. } => expires_at,
            State::InFlight { lease_until, .. } => lease_until,
        }
    }

    /// Encodes the record (format version 2: checksummed).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + CHECKSUM_LEN);
        out.push(match &self.state {
            State::Completed { snapshot, .. } => snapshot.version(),
            State::InFlight { .. } => VERSION,
        });
        match &self.state {
            State::InFlight { .. } => out.push(TAG_IN_FLIGHT),
            State::Completed { .. } => out.push(TAG_COMPLETED),
        }
        out.extend_from_slice(self.fingerprint.as_bytes());
        out.extend_from_slice(&self.created_at.to_be_bytes());
        match &self.state {
            State::InFlight { owner, lease_until } => {
                out.extend_from_slice(&owner.get().to_be_bytes());
                out.extend_from_slice(&lease_until.to_be_bytes());
            }
            State::Completed {
                snapshot,
                expires_at,
            } => {
                out.extend_from_slice(&expires_at.to_be_bytes());
                snapshot.encode_into(&mut out);
            }
        }
        seal_checksum(&mut out);
        out
    }

    /// Decodes [`Record::encode`] output (or a version 1 record); anything else,
    /// including bytes whose checksum does not match, is [`Corrupt`].
    pub fn decode(bytes: &[u8]) -> Result<Self, Corrupt> {
        let (version, body) = checked(bytes, "unknown record version")?;
        let mut r = Reader(body);
        r.u8()?; // the version, read above
        let tag = r.u8()?;
        let fingerprint = Fingerprint::from_bytes(r.array()?);
        let created_at = r.u64()?;
        let state = match tag {
            TAG_IN_FLIGHT => State::InFlight {
                owner: OwnerToken(u128::from_be_bytes(r.array()?)),
                lease_until: r.u64()?,
            },
            TAG_COMPLETED => {
                let expires_at = r.u64()?;
                State::Completed {
                    snapshot: Snapshot::decode_from(&mut r, version)?,
                    expires_at,
                }
            }
            _ => return Err(Corrupt("unknown record state")),
        };
        r.finish()?;
        Ok(Self {
            fingerprint,
            created_at,
            state,
        })
    }
}

impl Snapshot {
    /// Encodes the snapshot alone (format version 2: checksummed), for stores that
    /// keep it apart from the record's other fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        seal_checksum(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let body_len = match &self.body {
            SnapshotBody::Full(b) => b.len(),
            SnapshotBody::NotRetained(_) => 0,
        };
        let headers_len: usize = self
            .headers
            .iter()
            .map(|(n, v)| 6 + n.as_str().len() + v.len())
            .sum();
        out.reserve(12 + headers_len + body_len + CHECKSUM_LEN);
        out.push(self.version());
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        if let Some(reason) = &self.reason {
            // At most 255 bytes: checked by `ReasonPhrase::new`.
            out.push(reason.0.len() as u8);
            out.extend_from_slice(&reason.0);
        }
        out.push(match self.body {
            SnapshotBody::Full(_) => BODY_FULL,
            SnapshotBody::NotRetained(NotRetained::TooLarge) => BODY_TOO_LARGE,
            SnapshotBody::NotRetained(NotRetained::Streamed) => BODY_STREAMED,
            SnapshotBody::NotRetained(NotRetained::SetCookie) => BODY_SET_COOKIE,
            SnapshotBody::NotRetained(NotRetained::StoreFull) => BODY_STORE_FULL,
            SnapshotBody::NotRetained(NotRetained::OutcomeUnknown) => BODY_OUTCOME_UNKNOWN,
        });
        out.extend_from_slice(&(self.headers.len() as u32).to_be_bytes());
        for (name, value) in &self.headers {
            out.extend_from_slice(&(name.as_str().len() as u16).to_be_bytes());
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        if let SnapshotBody::Full(body) = &self.body {
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(body);
        }
    }

    /// The format version this snapshot is written in.
    fn version(&self) -> u8 {
        if self.reason.is_some() {
            VERSION_REASON
        } else {
            VERSION
        }
    }

    /// Decodes [`Snapshot::encode`] output (or a version 1 snapshot); anything else,
    /// including bytes whose checksum does not match, is [`Corrupt`].
    pub fn decode(bytes: &[u8]) -> Result<Self, Corrupt> {
        let (version, body) = checked(bytes, "unknown snapshot version")?;
        let mut r = Reader(body);
        let s = Self::decode_from(&mut r, version)?;
        r.finish()?;
        Ok(s)
    }

    /// Reads the snapshot fields, which start with their own copy of the `version`
    /// of what holds them (the checksum, if any, was verified and cut off already).
    fn decode_from(r: &mut Reader<'_>, version: u8) -> Result<Self, Corrupt> {
        if r.u8()? != version {
            return Err(Corrupt("unknown snapshot version"));
        }
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| Corrupt("invalid status"))?;
        let reason = if version == VERSION_REASON {
            let n = usize::from(r.u8()?);
            Some(ReasonPhrase::new(r.take(n)?).ok_or(Corrupt("invalid reason phrase"))?)
        } else {
            None
        };
        let kind = r.u8()?;
        let count = r.u32()? as usize;
        // Each header takes at least 6 bytes: refuse counts the input cannot hold.
        if count > r.0.len() / 6 {
            return Err(Corrupt("header count exceeds the record"));
        }
        let mut headers = HeaderMap::with_capacity(count);
        for _ in 0..count {
            let n = r.u16()? as usize;
            let name =
                HeaderName::from_bytes(r.take(n)?).map_err(|_| Corrupt("invalid header name"))?;
            let n = r.u32()? as usize;
            let value =
                HeaderValue::from_bytes(r.take(n)?).map_err(|_| Corrupt("invalid header value"))?;
            headers.append(name, value);
        }
        let body = match kind {
            BODY_FULL => {
                let n = r.u32()? as usize;
                SnapshotBody::Full(Bytes::copy_from_slice(r.take(n)?))
            }
            BODY_TOO_LARGE => SnapshotBody::NotRetained(NotRetained::TooLarge),
            BODY_STREAMED => SnapshotBody::NotRetained(NotRetained::Streamed),
            BODY_SET_COOKIE => SnapshotBody::NotRetained(NotRetained::SetCookie),
            BODY_STORE_FULL => SnapshotBody::NotRetained(NotRetained::StoreFull),
            BODY_OUTCOME_UNKNOWN => SnapshotBody::NotRetained(NotRetained::OutcomeUnknown),
            _ => return Err(Corrupt("unknown body kind")),
        };
        Ok(Self {
            status,
            reason,
            headers,
            body,
        })
    }
}

/// Appends the checksum of everything in `out`: the last step of a version 2 encoding.
fn seal_checksum(out: &mut Vec<u8>) {
    let sum = xxhash_rust::xxh3::xxh3_64(out);
    out.extend_from_slice(&sum.to_be_bytes());
}

/// The version of `bytes` and the part of them to parse: for version 2, everything but
/// the checksum, once it matches; for version 1, all of them.
fn checked<'a>(bytes: &'a [u8], unknown: &'static str) -> Result<(u8, &'a [u8]), Corrupt> {
    match bytes.first().copied() {
        Some(v @ (VERSION | VERSION_REASON)) => {
            let split = bytes
                .len()
                .checked_sub(CHECKSUM_LEN)
                .ok_or(Corrupt("truncated"))?;
            let (body, sum) = bytes.split_at(split);
            let mut stored = [0; CHECKSUM_LEN];
            stored.copy_from_slice(sum);
            if xxhash_rust::xxh3::xxh3_64(body) != u64::from_be_bytes(stored) {
                return Err(Corrupt("checksum mismatch"));
            }
            Ok((v, body))
        }
        Some(VERSION_UNCHECKED) => Ok((VERSION_UNCHECKED, bytes)),
        Some(_) => Err(Corrupt(unknown)),
        None => Err(Corrupt("truncated")),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        if self.0.len() < n {
            return Err(Corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Corrupt> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, Corrupt> {
        self.array().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, Corrupt> {
        self.array().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64, Corrupt> {
        self.array().map(u64::from_be_bytes)
    }
    fn finish(&self) -> Result<(), Corrupt> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Corrupt("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_owner_tokens_never_repeat_across_threads() {
        let tokens: Vec<OwnerToken> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..10_000)
                            .map(|_| OwnerToken::unique())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let distinct: std::collections::HashSet<_> = tokens.iter().copied().collect();
        assert_eq!(distinct.len(), tokens.len());
    }

    fn completed() -> Record {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        Record {
            fingerprint: Fingerprint::from_bytes([7; 32]),
            created_at: 5,
            state: State::Completed {
                snapshot: Snapshot {
                    status: StatusCode::CREATED,
                    reason: None,
                    headers,
                    body: SnapshotBody::Full(Bytes::from_static(b"{\"id\":1}")),
                },
                expires_at: 99,
            },
        }
    }

    // R16
    #[test]
    fn r16_round_trip() {
        let rec = completed();
        assert_eq!(Record::decode(&rec.encode()).unwrap(), rec);
        let inflight = Record {
            fingerprint: Fingerprint::from_bytes([1; 32]),
            created_at: 1,
            state: State::InFlight {
                owner: OwnerToken::random(),
                lease_until: 42,
            },
        };
        assert_eq!(Record::decode(&inflight.encode()).unwrap(), inflight);
        for reason in NotRetained::ALL {
            let s = Snapshot {
                status: StatusCode::OK,
                reason: None,
                headers: HeaderMap::new(),
                body: SnapshotBody::NotRetained(reason),
            };
            assert_eq!(Snapshot::decode(&s.encode()).unwrap(), s);
        }
    }

    // R16: nothing half-written is ever replayed
    #[test]
    fn r16_every_truncation_and_extension_is_corrupt() {
        let bytes = completed().encode();
        for n in 0..bytes.len() {
            assert!(Record::decode(&bytes[..n]).is_err(), "prefix {n} decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Record::decode(&longer).is_err());
        let mut bad_version = bytes;
        bad_version[0] = 9;
        assert_eq!(
            Record::decode(&bad_version),
            Err(Corrupt("unknown record version"))
        );
    }

    fn in_flight() -> Record {
        Record {
            fingerprint: Fingerprint::from_bytes([1; 32]),
            created_at: 1,
            state: State::InFlight {
                owner: OwnerToken::from_u128(0x0123_4567_89ab_cdef),
                lease_until: 42,
            },
        }
    }

    /// Every other value of every byte of `bytes`: the damage a flipped bit, a
    /// misdirected write or an edit in place can do to one byte.
    fn each_byte_changed(bytes: &[u8]) -> impl Iterator<Item = (usize, Vec<u8>)> + '_ {
        (0..bytes.len()).flat_map(move |i| {
            (0..=u8::MAX).filter(move |&v| v != bytes[i]).map(move |v| {
                let mut damaged = bytes.to_vec();
                damaged[i] = v;
                (i, damaged)
            })
        })
    }

    // R16, R25: a damaged record is Corrupt, never replayed as something else
    #[test]
    fn r25_every_single_byte_change_of_a_record_is_corrupt() {
        for rec in [completed(), in_flight()] {
            let bytes = rec.encode();
            for (i, damaged) in each_byte_changed(&bytes) {
                match Record::decode(&damaged) {
                    Err(_) => {}
                    Ok(decoded) => assert_eq!(decoded, rec, "byte {i} changed the record"),
                }
            }
        }
        let Record {
            state: State::Completed { snapshot, .. },
            ..
        } = completed()
        else {
            unreachable!()
        };
        let bytes = snapshot.encode();
        for (i, damaged) in each_byte_changed(&bytes) {
            match Snapshot::decode(&damaged) {
                Err(_) => {}
                Ok(decoded) => assert_eq!(decoded, snapshot, "byte {i} changed the snapshot"),
            }
        }
    }

    // R25: the body edited in place (same length, so every length field still fits) is
    // caught by the checksum alone
    #[test]
    fn r25_a_body_edited_in_place_is_corrupt() {
        let mut bytes = completed().encode();
        let at = bytes
            .windows(8)
            .position(|w| w == b"{\"id\":1}")
            .expect("the body is stored in the clear");
        bytes[at..at + 8].copy_from_slice(b"{\"id\":2}");
        assert_eq!(Record::decode(&bytes), Err(Corrupt("checksum mismatch")));
    }

    /// What the codec wrote before checksums: version bytes 1, no checksum.
    fn version_1(record: &Record) -> Vec<u8> {
        let mut bytes = record.encode();
        bytes.truncate(bytes.len() - CHECKSUM_LEN);
        bytes[0] = VERSION_UNCHECKED;
        if let State::Completed { .. } = record.state {
            // The snapshot's own version byte follows tag, fingerprint and two instants.
            let at = 2 + 32 + 8 + 8;
            assert_eq!(bytes[at], VERSION);
            bytes[at] = VERSION_UNCHECKED;
        }
        bytes
    }

    // R16: records stored before checksums still decode (and re-encode checksummed);
    // a version 2 record whose version byte is damaged into 1 does not
    #[test]
    fn r16_version_1_records_still_decode() {
        for rec in [completed(), in_flight()] {
            let old = version_1(&rec);
            assert_eq!(Record::decode(&old), Ok(rec.clone()));
            assert_eq!(Record::decode(&rec.encode()), Ok(rec.clone()));
            let mut downgraded = rec.encode();
            downgraded[0] = VERSION_UNCHECKED;
            assert!(Record::decode(&downgraded).is_err());
        }
        let s = Snapshot {
            status: StatusCode::OK,
            reason: None,
            headers: HeaderMap::new(),
            body: SnapshotBody::Full(Bytes::from_static(b"ok")),
        };
        let mut old = s.encode();
        old.truncate(old.len() - CHECKSUM_LEN);
        old[0] = VERSION_UNCHECKED;
        assert_eq!(Snapshot::decode(&old), Ok(s));
    }

    // R8: a snapshot with its own reason phrase is written as version 3 and reads back
    // with it; one without keeps its version 2 bytes; a damaged phrase is corrupt.
    #[test]
    fn r08_reason_phrases_round_trip() {
        let plain = snapshot_for_reason(None);
        assert_eq!(plain.encode()[0], VERSION);
        let shouting = snapshot_for_reason(ReasonPhrase::new(b"CREATED"));
        let bytes = shouting.encode();
        assert_eq!(bytes[0], VERSION_REASON);
        assert_eq!(Snapshot::decode(&bytes), Ok(shouting.clone()));
        let record = Record {
            fingerprint: Fingerprint::from_bytes([7; 32]),
            created_at: 1,
            state: State::Completed {
                snapshot: shouting,
                expires_at: 2,
            },
        };
        assert_eq!(Record::decode(&record.encode()), Ok(record));
        assert!(ReasonPhrase::new(b"bad\r\nx: y").is_none());
        assert!(ReasonPhrase::new(b"").is_none());
        assert!(ReasonPhrase::new(&[b'a'; 256]).is_none());
    }

    fn snapshot_for_reason(reason: Option<ReasonPhrase>) -> Snapshot {
        Snapshot {
            status: StatusCode::CREATED,
            reason,
            headers: HeaderMap::new(),
            body: SnapshotBody::Full(Bytes::from_static(b"{}")),
        }
    }

    #[test]
    fn record_id_round_trip_keeps_keys_that_start_with_a_quote() {
        // R1: `"\""` unquotes to the key `"`; read back from a store it is still `"`
        // (found by the record_decode fuzz target).
        let key = IdempotencyKey::parse_bytes(br#""\"""#, 255).unwrap();
        assert_eq!(key.as_str(), "\"");
        let id = RecordId::new(Scope::from_bytes([2; 16]), key);
        assert_eq!(RecordId::from_bytes(&id.to_bytes()), Ok(id.clone()));
        assert_eq!(RecordId::from_hex(&id.to_hex()), Some(id));
    }

    #[test]
    fn record_id_round_trip() {
        let id = RecordId::new(
            Scope::from_bytes([3; 16]),
            IdempotencyKey::new("k-1").unwrap(),
        );
        assert_eq!(RecordId::from_bytes(&id.to_bytes()).unwrap(), id);
        assert_eq!(RecordId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(RecordId::from_hex("abc"), None);
        assert_eq!(RecordId::from_hex("zz"), None);
        assert!(RecordId::from_bytes(&[0; 16]).is_err());
    }

    #[test]
    fn owner_tokens_differ() {
        assert_ne!(OwnerToken::random(), OwnerToken::random());
        let t = OwnerToken::random();
        assert_eq!(OwnerToken::from_hex(&t.to_hex()), Some(t));
    }
}
