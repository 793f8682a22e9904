//! R16, R25: bytes read back from a store decode to a record or an error, never a
//! panic; whatever decodes re-encodes to bytes that decode to the same value; and any
//! single byte of an encoding changed (the damage the checksum exists for) is an error
//! or, at most, the same value, never a different record to replay.
#![no_main]

use idem_core::record::{Record, RecordId, Snapshot};
use libfuzzer_sys::fuzz_target;

/// The encoding `bytes` with one byte changed, at a place and to a value taken from
/// the fuzz input, so libFuzzer explores damage to valid encodings as well.
fn damaged(bytes: &[u8], raw: &[u8]) -> Option<Vec<u8>> {
    let (&at, rest) = raw.split_last()?;
    let delta = rest.last().copied().filter(|&d| d != 0).unwrap_or(1);
    let mut out = bytes.to_vec();
    let i = usize::from(at) % out.len();
    out[i] ^= delta;
    Some(out)
}

fuzz_target!(|raw: &[u8]| {
    if let Ok(record) = Record::decode(raw) {
        let bytes = record.encode();
        assert_eq!(Record::decode(&bytes).as_ref(), Ok(&record));
        if let Some(bad) = damaged(&bytes, raw) {
            if let Ok(other) = Record::decode(&bad) {
                assert_eq!(other, record, "a changed byte decoded to another record");
            }
        }
    }
    if let Ok(snapshot) = Snapshot::decode(raw) {
        let bytes = snapshot.encode();
        assert_eq!(Snapshot::decode(&bytes).as_ref(), Ok(&snapshot));
        if let Some(bad) = damaged(&bytes, raw) {
            if let Ok(other) = Snapshot::decode(&bad) {
                assert_eq!(other, snapshot, "a changed byte decoded to another snapshot");
            }
        }
    }
    if let Ok(id) = RecordId::from_bytes(raw) {
        let bytes = id.to_bytes();
        assert_eq!(RecordId::from_bytes(&bytes).as_ref(), Ok(&id));
        assert_eq!(RecordId::from_hex(&id.to_hex()).as_ref(), Some(&id));
    }
});
