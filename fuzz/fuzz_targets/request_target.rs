//! R24: any request target either normalises or is refused, never a panic; a normal
//! path is its own normal form, has no `//`, `/./` or `/../`, and joined behind an
//! upstream prefix it stays under that prefix.
#![no_main]

use http::uri::PathAndQuery;
use idem_proxy::view::{join, normalise_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    // What hyper hands over: a target that parses as a path and query.
    let Ok(pq) = PathAndQuery::try_from(raw) else {
        return;
    };
    let path = pq.path();
    if !path.starts_with('/') {
        return;
    }
    let Ok(normal) = normalise_path(path) else {
        return;
    };
    assert_eq!(normalise_path(&normal).as_deref(), Ok(normal.as_str()), "{path:?}");
    assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
    for bad in ["//", "/./", "/../"] {
        assert!(!normal.contains(bad), "{path:?} -> {normal:?}");
    }
    assert!(!normal.ends_with("/.") && !normal.ends_with("/.."), "{path:?} -> {normal:?}");
    assert!(normal.len() <= path.len(), "{path:?} -> {normal:?}");
    assert!(PathAndQuery::try_from(normal.as_str()).is_ok(), "{normal:?}");
    let joined = join("/v1", pq.as_str()).expect("a path that normalises joins");
    assert!(joined.starts_with("/v1/"), "{pq:?} -> {joined:?}");
    assert!(PathAndQuery::try_from(joined.as_str()).is_ok(), "{joined:?}");
});
