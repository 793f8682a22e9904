//! R5: canonical JSON never panics; every body serde_json reads has a canonical form that
//! reads back as the same JSON value; the form is a fixed point; and a lone number
//! keeps its text exactly (numbers are never rounded through a float).
#![no_main]

use idem_core::fingerprint::canonical_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    let once = canonical_json(raw);
    if let Ok(original) = serde_json::from_slice::<serde_json::Value>(raw) {
        let once = once.as_deref().expect("every JSON body has a canonical form");
        let canonical: serde_json::Value =
            serde_json::from_slice(once).expect("canonical output is JSON");
        assert_eq!(canonical, original, "canonical form changed the value");
        if original.is_number() {
            let trimmed = raw.trim_ascii();
            assert_eq!(once, trimmed, "a number lost its text");
        }
    }
    // Also for what serde_json refuses but JSON allows (numbers beyond a double's range).
    if let Some(once) = once {
        let twice = canonical_json(&once).expect("canonical output is JSON");
        assert_eq!(twice, once, "canonical form is not a fixed point");
    }
});
