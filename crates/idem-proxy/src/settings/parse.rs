//! The value parsers of the settings, and how each kind of value reads back.
//!
//! A parser takes the text of a flag, of an environment variable or of a config file value
//! (TOML values become that same text) and answers the typed value or why not, naming the
//! text, in one line.

use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use idem::core::policy::StatusSet;
pub use idem::core::policy::parse_size;

/// Parses `500ms`, `2s`, `5m`, `24h`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 2s or 24h ({e})"))
}

/// Parses a duration that must be longer than zero (a zero timeout would refuse
/// everything).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}`: must be longer than zero"));
    }
    Ok(d)
}

/// Parses a switch: `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`), so
/// `IDEM_REQUIRE_KEY=false` turns off what a config file turned on.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("`{s}` is not true or false")),
    }
}

/// Parses a status code (100 to 599).
pub fn parse_status(s: &str) -> Result<StatusCode, String> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|c| (100..600).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| format!("`{s}` is not a status code"))
}

/// Parses a comma-separated list with `item`, skipping empty items.
pub fn parse_list<T>(s: &str, item: fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(item)
        .collect()
}

/// Parses a header name.
pub fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.trim().as_bytes()).map_err(|_| format!("`{s}` is not a header name"))
}

/// Parses a comma-separated list of header names.
pub fn parse_header_names(s: &str) -> Result<Vec<HeaderName>, String> {
    parse_list(s, parse_header_name)
}

/// Parses a comma-separated list of methods, case-insensitively.
pub fn parse_methods(s: &str) -> Result<Vec<Method>, String> {
    parse_list(s, |m| {
        Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("`{m}` is not a method"))
    })
}

/// Parses a comma-separated list of words (media types).
pub fn parse_words(s: &str) -> Result<Vec<String>, String> {
    parse_list(s, |w| Ok(w.to_owned()))
}

/// Parses a status set like `2xx,3xx,4xx,!408`.
pub fn parse_status_set(s: &str) -> Result<StatusSet, String> {
    s.parse()
}

/// A duration as `--help` and `check-config` show it, e.g. `24h`, `1m 30s`.
pub fn show_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A size as it would be written: `1MiB`, `64KiB`, or bytes.
pub fn show_size(n: usize) -> String {
    match n {
        0 => "0".to_owned(),
        n if n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => n.to_string(),
    }
}

/// A list joined with `,`; `None` when empty.
pub fn show_list<T: AsRef<str>>(items: &[T]) -> Option<String> {
    (!items.is_empty()).then(|| {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// A status set as its shortest list: whole classes as `2xx`, with `!` exceptions.
pub fn show_status_set(set: &StatusSet) -> String {
    let mut parts = Vec::new();
    for class in 1..=5u16 {
        let codes: Vec<u16> = (class * 100..class * 100 + 100).collect();
        let has = |c: &u16| StatusCode::from_u16(*c).is_ok_and(|s| set.contains(s));
        let n = codes.iter().filter(|c| has(c)).count();
        if n * 2 > codes.len() {
            parts.push(format!("{class}xx"));
            parts.extend(codes.iter().filter(|c| !has(c)).map(|c| format!("!{c}")));
        } else {
            parts.extend(codes.iter().filter(|c| has(c)).map(u16::to_string));
        }
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64 KiB"), Ok(65536));
        assert_eq!(parse_size("2kb"), Ok(2000));
        assert!(parse_size("x").is_err());
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        for n in [0, 1, 2000, 1 << 10, 3 << 20, 1 << 30, 1025] {
            assert_eq!(parse_size(&show_size(n)), Ok(n), "{n}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_timeout("0s").is_err());
        assert_eq!(parse_timeout("1ms"), Ok(Duration::from_millis(1)));
        let d = Duration::from_millis(90_500);
        assert_eq!(parse_duration(&show_duration(d)), Ok(d));
    }

    #[test]
    fn status_sets_read_back_as_written() {
        for text in [
            "2xx,3xx,4xx,!408,!409,!425,!429",
            "2xx",
            "201,204",
            "2xx,!204,503",
        ] {
            let set = parse_status_set(text).unwrap();
            assert_eq!(show_status_set(&set), text);
        }
        assert_eq!(
            show_status_set(&StatusSet::default()),
            "2xx,3xx,4xx,!408,!409,!425,!429"
        );
    }

    #[test]
    fn lists_and_switches() {
        assert_eq!(
            parse_methods("post, put,").unwrap(),
            [Method::POST, Method::PUT]
        );
        assert!(parse_methods("PO ST").is_err());
        assert!(parse_header_names("x-a,bad header").is_err());
        assert_eq!(parse_bool("false"), Ok(false));
        assert_eq!(parse_bool("1"), Ok(true));
        assert!(parse_bool("maybe").is_err());
        assert!(parse_status("42").is_err());
        assert_eq!(parse_status("400"), Ok(StatusCode::BAD_REQUEST));
    }
}
