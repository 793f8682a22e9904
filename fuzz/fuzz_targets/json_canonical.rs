//! R5: canonical JSON never panics; its output is a fixed point and parses as the same
//! JSON value as the input.
#![no_main]

use idem_core::fingerprint::canonical_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    let Some(once) = canonical_json(raw) else {
        return;
    };
    let original: serde_json::Value = serde_json::from_slice(raw).expect("canonical only for JSON");
    let canonical: serde_json::Value =
        serde_json::from_slice(&once).expect("canonical output is JSON");
    assert_eq!(canonical, original, "canonical form changed the value");
    let twice = canonical_json(&once).expect("canonical output is JSON");
    assert_eq!(twice, once, "canonical form is not a fixed point");
});
