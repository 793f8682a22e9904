//! Properties over random input: parsers never panic and agree with themselves, and the
//! memory store follows the shared model of R4, R6–R14 step by step
//! (`idem_core::store::testkit::model`, which every store runs).

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use idem_core::fingerprint::{Fingerprint, canonical_json};
use idem_core::key::IdempotencyKey;
use idem_core::record::{Record, Snapshot, SnapshotBody, State};
use idem_core::store::testkit::ManualFixture;
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
    // and whatever decodes re-encodes to the same bytes (version 1 input, which has no
    // checksum, to bytes that decode to the same record).
    #[test]
    fn r16_decoding_is_total(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(record) = Record::decode(&raw) {
            let again = record.encode();
            if raw[0] == again[0] {
                prop_assert_eq!(&again, &raw);
            } else {
                prop_assert_eq!(Record::decode(&again).unwrap(), record);
            }
        }
        if let Ok(snapshot) = Snapshot::decode(&raw) {
            prop_assert_eq!(Snapshot::decode(&snapshot.encode()).unwrap(), snapshot);
        }
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
                    reason: None,
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

// The memory store against the model of R4, R6–R14 shared by every store.
idem_core::store_model_test!(async { ManualFixture::memory() }, 256);
