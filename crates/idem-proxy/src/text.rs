//! Spelling shared by the generated documents and reports.

/// A header name as people write it: `Idempotency-Key` for `idempotency-key`.
pub(crate) fn title_case(lower: &str) -> String {
    lower
        .split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_case_capitalises_each_word() {
        assert_eq!(title_case("idempotency-key"), "Idempotency-Key");
        assert_eq!(title_case("x--y"), "X--Y");
        assert_eq!(title_case(""), "");
    }
}
