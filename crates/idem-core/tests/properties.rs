//! Properties over random input: parsers never panic and agree with themselves, and the
//! memory store follows a small independent model of R6–R14 step by step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use idem_core::clock::ManualClock;
use idem_core::fingerprint::{Fingerprint, canonical_json};
use idem_core::key::IdempotencyKey;
use idem_core::record::{OwnerToken, Record, RecordId, Snapshot, SnapshotBody, State};
use idem_core::scope::Scope;
use idem_core::store::{Claim, ClaimRequest, Finish, Lease, MemoryStore, MemoryStoreConfig, Store};
use proptest::prelude::*;

proptest! {
    // R1: any header bytes give a key or an error, never a panic.
    #[test]
    fn r01_key_parsing_is_total(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = IdempotencyKey::parse_bytes(&raw, 255);
    }

    // R1: a valid key reads the same bare and quoted.
    #[test]
    fn r01_quoted_equals_bare(key in "[!#-\\[\\]-~]{1,255}") {
        let bare = IdempotencyKey::parse_bytes(key.as_bytes(), 255).unwrap();
        let quoted = format!("\"{key}\"");
        prop_assert_eq!(IdempotencyKey::parse_bytes(quoted.as_bytes(), 255).unwrap(), bare);
    }

    // R16: arbitrary bytes from a store decode to an error or a record, never a panic,
    // and whatever decodes re-encodes to the same bytes.
    #[test]
    fn r16_decoding_is_total(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(record) = Record::decode(&raw) {
            prop_assert_eq!(&record.encode(), &raw);
        }
        let _ = Snapshot::decode(&raw);
    }

    // R16: every record survives its encoding.
    #[test]
    fn r16_encode_decode_round_trip(
        status in 100u16..600,
        body in proptest::collection::vec(any::<u8>(), 0..512),
        header in "[a-z]{1,12}",
        value in "[ -~]{0,40}",
        expires_at in any::<u64>(),
    ) {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::HeaderName::from_bytes(header.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        let record = Record {
            fingerprint: Fingerprint::from_bytes([3; 32]),
            created_at: 7,
            state: State::Completed {
                snapshot: Snapshot {
                    status: StatusCode::from_u16(status).unwrap(),
                    headers,
                    body: SnapshotBody::Full(Bytes::from(body)),
                },
                expires_at,
            },
        };
        prop_assert_eq!(Record::decode(&record.encode()).unwrap(), record);
    }

    // R5: the canonical form is a fixed point.
    #[test]
    fn r05_canonical_json_is_idempotent(v in json_value()) {
        let text = serde_json::to_vec(&v).unwrap();
        let once = canonical_json(&text).unwrap();
        prop_assert_eq!(canonical_json(&once).unwrap(), once);
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z\u{e9} ]{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-d]{1,3}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const LEASE_MS: u64 = 1_000;
const TTL_MS: u64 = 5_000;

/// One step of a random history.
#[derive(Clone, Debug)]
enum Op {
    Claim { key: u8, fp: u8 },
    Complete { handle: usize, body: u8 },
    Release { handle: usize },
    Renew { handle: usize },
    Advance { ms: u64 },
    Lookup { key: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u8..2).prop_map(|(key, fp)| Op::Claim { key, fp }),
        2 => (0usize..8, any::<u8>()).prop_map(|(handle, body)| Op::Complete { handle, body }),
        1 => (0usize..8).prop_map(|handle| Op::Release { handle }),
        1 => (0usize..8).prop_map(|handle| Op::Renew { handle }),
        2 => prop_oneof![Just(LEASE_MS / 2), Just(LEASE_MS + 1), Just(TTL_MS + 1)]
            .prop_map(|ms| Op::Advance { ms }),
        1 => (0u8..3).prop_map(|key| Op::Lookup { key }),
    ]
}

/// The reference: what SPEC R6–R14 say, written independently of the store code.
#[derive(Clone, Debug, PartialEq)]
struct ModelRecord {
    fp: u8,
    /// The owner while in flight.
    owner: Option<u128>,
    /// The stored body once completed.
    body: Option<u8>,
    /// Lease end while in flight, expiry once completed.
    ends: u64,
}

/// What one step answered, in the model's words.
#[derive(Debug, PartialEq)]
enum Seen {
    Acquired,
    InFlight,
    Completed(u8),
    Mismatch,
    Done,
    Superseded,
    Absent,
    LiveInFlight,
    LiveCompleted(u8),
}

fn body_of(s: &Snapshot) -> u8 {
    match &s.body {
        SnapshotBody::Full(b) => b[0],
        SnapshotBody::NotRetained(_) => unreachable!("the model stores bodies only"),
    }
}

fn finish(f: Finish) -> Seen {
    match f {
        Finish::Done => Seen::Done,
        Finish::Superseded => Seen::Superseded,
    }
}

/// Runs `ops` against the memory store and the model; panics at the first divergence.
async fn check(ops: &[Op]) {
    let clock = ManualClock::new();
    let store = MemoryStore::with_config(MemoryStoreConfig {
        clock: Arc::new(clock.clone()),
        ..MemoryStoreConfig::default()
    });
    let mut now = 0u64;
    let mut model: HashMap<u8, ModelRecord> = HashMap::new();
    let mut leases: Vec<(u8, Lease)> = Vec::new();
    let id = |k: u8| {
        RecordId::new(
            Scope::GLOBAL,
            IdempotencyKey::new(&format!("k{k}")).unwrap(),
        )
    };
    let lease = Duration::from_millis(LEASE_MS);
    let ttl = Duration::from_millis(TTL_MS);
    for (step, op) in ops.iter().enumerate() {
        let (real, expected) = match *op {
            Op::Claim { key, fp } => {
                let owner = OwnerToken::random();
                let req = ClaimRequest {
                    id: id(key),
                    fingerprint: Fingerprint::from_bytes([fp; 32]),
                    owner,
                    lease,
                };
                let real = match store.claim(&req).await.unwrap() {
                    Claim::Acquired(l) => {
                        leases.push((key, l));
                        Seen::Acquired
                    }
                    Claim::InFlight { .. } => Seen::InFlight,
                    Claim::Completed(s) => Seen::Completed(body_of(&s)),
                    Claim::Mismatch => Seen::Mismatch,
                };
                let expected = match model.get(&key).filter(|r| r.ends > now) {
                    None => {
                        let fresh = ModelRecord {
                            fp,
                            owner: Some(owner.get()),
                            body: None,
                            ends: now + LEASE_MS,
                        };
                        model.insert(key, fresh);
                        Seen::Acquired
                    }
                    Some(r) if r.fp != fp => Seen::Mismatch,
                    Some(ModelRecord { body: Some(b), .. }) => Seen::Completed(*b),
                    Some(_) => Seen::InFlight,
                };
                (real, expected)
            }
            Op::Complete { handle, body } if handle < leases.len() => {
                let (key, l) = leases[handle].clone();
                let snap = Snapshot {
                    status: StatusCode::OK,
                    headers: HeaderMap::new(),
                    body: SnapshotBody::Full(Bytes::from(vec![body])),
                };
                let real = finish(store.complete(&l, &snap, ttl).await.unwrap());
                let expected = match model.get_mut(&key) {
                    Some(r) if r.owner == Some(l.owner.get()) => {
                        r.owner = None;
                        r.body = Some(body);
                        r.ends = now + TTL_MS;
                        Seen::Done
                    }
                    _ => Seen::Superseded,
                };
                (real, expected)
            }
            Op::Renew { handle } if handle < leases.len() => {
                let (key, l) = leases[handle].clone();
                let real = finish(store.renew(&l, lease).await.unwrap());
                let expected = match model.get_mut(&key) {
                    Some(r) if r.owner == Some(l.owner.get()) => {
                        r.ends = now + LEASE_MS;
                        Seen::Done
                    }
                    _ => Seen::Superseded,
                };
                (real, expected)
            }
            Op::Release { handle } if handle < leases.len() => {
                let (key, l) = leases[handle].clone();
                let real = finish(store.release(&l).await.unwrap());
                let expected = if model
                    .get(&key)
                    .is_some_and(|r| r.owner == Some(l.owner.get()))
                {
                    model.remove(&key);
                    Seen::Done
                } else {
                    Seen::Superseded
                };
                (real, expected)
            }
            Op::Complete { .. } | Op::Renew { .. } | Op::Release { .. } => continue,
            Op::Advance { ms } => {
                clock.advance(Duration::from_millis(ms));
                now += ms;
                continue;
            }
            Op::Lookup { key } => {
                let real = match store.lookup(&id(key)).await.unwrap() {
                    None => Seen::Absent,
                    Some(Record {
                        state: State::InFlight { .. },
                        ..
                    }) => Seen::LiveInFlight,
                    Some(Record {
                        state: State::Completed { snapshot, .. },
                        ..
                    }) => Seen::LiveCompleted(body_of(&snapshot)),
                };
                let expected = match model.get(&key).filter(|r| r.ends > now) {
                    None => Seen::Absent,
                    Some(ModelRecord { body: Some(b), .. }) => Seen::LiveCompleted(*b),
                    Some(_) => Seen::LiveInFlight,
                };
                (real, expected)
            }
        };
        assert_eq!(real, expected, "step {step}: {op:?}\nhistory: {ops:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    // R6–R14: the memory store and the model agree on every answer of every history.
    #[test]
    fn r06_r14_store_follows_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(check(&ops));
    }
}
