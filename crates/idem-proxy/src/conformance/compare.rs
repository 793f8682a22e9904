//! Comparing a first response with its replay, and saying how they differ.

use http::{HeaderName, HeaderValue};

use super::client::Answer;

/// `1×201, 7×409`.
pub(super) fn tally<'a>(answers: impl IntoIterator<Item = &'a Answer>) -> String {
    let mut counts: Vec<(u16, usize)> = Vec::new();
    for a in answers {
        let s = a.status.as_u16();
        match counts.iter_mut().find(|(c, _)| *c == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    counts.sort_unstable();
    counts
        .iter()
        .map(|(s, n)| format!("{n}×{s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `Idempotent-Replayed` for `idempotent-replayed`.
pub(super) fn display_name(name: &HeaderName) -> String {
    crate::text::title_case(name.as_str())
}

pub(super) fn compared_headers(a: &Answer, ignored: &[HeaderName]) -> usize {
    a.headers.keys().filter(|k| !ignored.contains(k)).count()
}

/// What differs between a first response and its replay, each as a short phrase;
/// `ignored` headers do not count.
pub(super) fn differences(first: &Answer, retry: &Answer, ignored: &[HeaderName]) -> Vec<String> {
    let mut out = Vec::new();
    if first.status != retry.status {
        out.push(format!(
            "status {} then {}",
            first.status_text(),
            retry.status_text()
        ));
    } else if first.reason != retry.reason {
        out.push(format!(
            "reason phrase {} then {}",
            first.status_text(),
            retry.status_text()
        ));
    }
    let mut names: Vec<&HeaderName> = first.headers.keys().chain(retry.headers.keys()).collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    for name in names {
        if ignored.contains(name) {
            continue;
        }
        let a: Vec<&HeaderValue> = first.headers.get_all(name).iter().collect();
        let b: Vec<&HeaderValue> = retry.headers.get_all(name).iter().collect();
        if a == b {
            continue;
        }
        let show = |v: &[&HeaderValue]| {
            v.iter()
                .map(|v| format!("`{}`", printable(v.as_bytes())))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(match (a.is_empty(), b.is_empty()) {
            (false, true) => format!("header {}: {} then absent", display_name(name), show(&a)),
            (true, false) => format!("header {}: absent then {}", display_name(name), show(&b)),
            _ => format!(
                "header {}: {} then {}",
                display_name(name),
                show(&a),
                show(&b)
            ),
        });
    }
    if let Some(d) = body_difference(&first.body, &retry.body) {
        out.push(d);
    }
    out
}

/// Where two bodies first differ, with a little of each around that byte.
pub(super) fn body_difference(a: &[u8], b: &[u8]) -> Option<String> {
    if a == b {
        return None;
    }
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let around = |s: &[u8]| {
        let from = at.saturating_sub(12);
        let to = (at + 12).min(s.len());
        format!(
            "`{}{}{}`",
            if from > 0 { "…" } else { "" },
            printable(s.get(from..to).unwrap_or_default()),
            if to < s.len() { "…" } else { "" }
        )
    };
    Some(format!(
        "bodies differ from byte {at} ({} and {} bytes): {} then {}",
        a.len(),
        b.len(),
        around(a),
        around(b)
    ))
}

/// Bytes as text: printable ASCII as it is, the rest escaped (`\n`, `\x00`).
pub(super) fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(char::from(b)),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::header::DATE;
    use http::{HeaderMap, StatusCode};

    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            reason: None,
            headers: h,
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    // R8
    #[test]
    fn r08_differences_name_the_header_and_the_first_differing_byte() {
        let ignored = [DATE, HeaderName::from_static("idempotent-replayed")];
        let first = answer(201, &[("x-charge", "1"), ("date", "a")], "{\"charge\":1}");
        let retry = answer(
            201,
            &[
                ("x-charge", "2"),
                ("date", "b"),
                ("idempotent-replayed", "true"),
            ],
            "{\"charge\":2}",
        );
        let d = differences(&first, &retry, &ignored);
        assert_eq!(
            d,
            vec![
                "header X-Charge: `1` then `2`".to_owned(),
                "bodies differ from byte 10 (12 and 12 bytes): `{\"charge\":1}` then \
                 `{\"charge\":2}`"
                    .to_owned(),
            ]
        );
        assert!(differences(&first, &first, &ignored).is_empty());
        let longer = answer(201, &[("x-charge", "1")], "{\"charge\":1}!");
        assert!(
            differences(&first, &longer, &ignored)[0]
                .starts_with("bodies differ from byte 12 (12 and 13")
        );
        assert_eq!(printable(b"a\\b\n\x00\""), "a\\\\b\\n\\x00\"");
    }

    #[test]
    fn tally_counts_statuses_in_order() {
        let a = [
            answer(409, &[], ""),
            answer(201, &[], ""),
            answer(409, &[], ""),
        ];
        assert_eq!(tally(&a), "1×201, 2×409");
    }
}
