//! R16: bytes read back from a store decode to a record or an error, never a panic;
//! whatever decodes re-encodes to bytes that decode to the same value.
#![no_main]

use idem_core::record::{Record, RecordId, Snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    if let Ok(record) = Record::decode(raw) {
        let bytes = record.encode();
        assert_eq!(Record::decode(&bytes).as_ref(), Ok(&record));
    }
    if let Ok(snapshot) = Snapshot::decode(raw) {
        let bytes = snapshot.encode();
        assert_eq!(Snapshot::decode(&bytes).as_ref(), Ok(&snapshot));
    }
    if let Ok(id) = RecordId::from_bytes(raw) {
        let bytes = id.to_bytes();
        assert_eq!(RecordId::from_bytes(&bytes).as_ref(), Ok(&id));
        assert_eq!(RecordId::from_hex(&id.to_hex()).as_ref(), Some(&id));
    }
});
