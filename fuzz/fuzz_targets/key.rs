//! R1: any header bytes parse to a key or an error, never a panic; a key that parses is
//! 1–255 visible ASCII characters and names itself again bare and quoted.
#![no_main]

use idem_core::key::IdempotencyKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    let Ok(key) = IdempotencyKey::parse_bytes(raw, 255) else {
        return;
    };
    let s = key.as_str();
    assert!(!s.is_empty() && s.len() <= 255, "length out of bounds: {s:?}");
    assert!(s.bytes().all(|b| (0x21..=0x7e).contains(&b)), "not visible ASCII: {s:?}");

    // The quoted form (RFC 9651 escapes) names the same key, with or without parameters.
    let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
    for quoted in [format!("\"{escaped}\""), format!("\"{escaped}\";a=1")] {
        let again = IdempotencyKey::parse_bytes(quoted.as_bytes(), 255);
        assert_eq!(again.as_ref(), Ok(&key), "quoted {quoted:?}");
    }
    // The bare form names it too, unless it starts with a quote (then it is read quoted).
    if !s.starts_with('"') {
        assert_eq!(IdempotencyKey::parse_bytes(s.as_bytes(), 255).as_ref(), Ok(&key));
        assert_eq!(IdempotencyKey::new(s).as_ref(), Ok(&key));
    }
    // A tighter limit only ever refuses.
    if let Ok(shorter) = IdempotencyKey::parse_bytes(raw, s.len()) {
        assert_eq!(shorter, key);
    }
    assert!(IdempotencyKey::parse_bytes(raw, s.len() - 1).is_err());
});
