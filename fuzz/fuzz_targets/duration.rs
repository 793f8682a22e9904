//! The `idem serve` value parsers (durations, sizes, status sets, fingerprint modes,
//! upstream URLs) answer a value or an error message for any text, never a panic.
#![no_main]

use idem_core::fingerprint::FingerprintMode;
use idem_core::policy::StatusSet;
use idem_proxy::cli::{parse_duration, parse_size};
use idem_proxy::forward::Upstream;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    let Ok(s) = std::str::from_utf8(raw) else {
        return;
    };
    if let Err(e) = parse_duration(s) {
        assert!(!e.is_empty());
    }
    match parse_size(s) {
        // A size that parses is what its digits say, times a unit.
        Ok(n) => {
            let digits: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
            let d: usize = digits.parse().expect("a parsed size starts with digits");
            assert!(n >= d && (d == 0 || n % d == 0), "{s:?} -> {n}");
        }
        Err(e) => assert!(!e.is_empty()),
    }
    if let Ok(set) = s.parse::<StatusSet>() {
        // Codes outside 100..=599 are never members, whatever the text.
        for code in [0u16, 99, 600, 999] {
            if let Ok(status) = http::StatusCode::from_u16(code) {
                assert!(!set.contains(status), "{s:?} contains {code}");
            }
        }
    }
    let _ = s.parse::<FingerprintMode>();
    let _ = s.parse::<Upstream>();
});
