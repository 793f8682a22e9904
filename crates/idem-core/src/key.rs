//! The `Idempotency-Key` header value (R1).
//!
//! Two spellings name the same key: the structured-field String of the IETF draft
//! (`"abc"`, with RFC 9651 escapes `\"` and `\\`, parameters after `;` ignored) and the
//! bare form clients such as Stripe's send (`abc`). After unquoting a key is 1 to
//! `max_len` visible ASCII characters.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The longest key accepted unless configured otherwise.
pub const DEFAULT_MAX_KEY_LEN: usize = 255;

/// A validated idempotency key, stored unquoted. Clones share one allocation: a request
/// hands its key to the record id, the lease, the context and the log.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(Arc<str>);

/// Why a key header was refused (R1). Each is a 400 for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The header was sent more than once.
    #[error("the header was sent more than once")]
    Repeated,
    /// The value is empty (`` or `""`).
    #[error("the key is empty")]
    Empty,
    /// The key is longer than allowed.
    #[error("the key is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// Length of the unquoted key.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The value is neither a structured-field String nor a bare key.
    #[error("the key is malformed: {0}")]
    Malformed(&'static str),
}

impl IdempotencyKey {
    /// Finds and parses the key header.
    ///
    /// `Ok(None)` when the header is absent; an error when it is repeated or invalid.
    pub fn from_headers(
        headers: &HeaderMap,
        name: &HeaderName,
        max_len: usize,
    ) -> Result<Option<Self>, KeyError> {
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(KeyError::Repeated);
        }
        Self::parse(first, max_len).map(Some)
    }

    /// Parses one header value in either accepted form.
    pub fn parse(value: &HeaderValue, max_len: usize) -> Result<Self, KeyError> {
        Self::parse_bytes(value.as_bytes(), max_len)
    }

    /// Parses raw header bytes in either accepted form.
    pub fn parse_bytes(raw: &[u8], max_len: usize) -> Result<Self, KeyError> {
        let raw = raw.trim_ascii();
        let key = match raw.first() {
            None => return Err(KeyError::Empty),
            Some(b'"') => unquote(&raw[1..])?,
            Some(_) => {
                if !raw.iter().all(|b| is_visible(*b)) {
                    return Err(KeyError::Malformed(
                        "only visible ASCII characters are allowed",
                    ));
                }
                // Infallible: every byte was just checked to be visible ASCII.
                String::from_utf8_lossy(raw).into_owned()
            }
        };
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > max_len {
            return Err(KeyError::TooLong {
                len: key.len(),
                max: max_len,
            });
        }
        Ok(Self(key.into()))
    }

    /// Wraps a string already known to be a valid key (no quotes, visible ASCII).
    ///
    /// Fails like [`IdempotencyKey::parse`] on anything else.
    pub fn new(key: &str) -> Result<Self, KeyError> {
        if key.starts_with('"') {
            return Err(KeyError::Malformed("a key cannot start with a quote"));
        }
        Self::parse_bytes(key.as_bytes(), usize::MAX)
    }

    /// A key exactly as [`IdempotencyKey::as_str`] gave it (read back from a store):
    /// taken verbatim, never unquoted, so every key, including one that starts with a
    /// quote, reads back as itself.
    pub(crate) fn from_stored(raw: &[u8]) -> Result<Self, KeyError> {
        Self::verbatim(raw, usize::MAX)
    }

    /// A key taken as it is, never unquoted (a value read from a JSON body, R23), with
    /// R1's rules: 1 to `max_len` visible ASCII characters.
    pub fn verbatim(raw: &[u8], max_len: usize) -> Result<Self, KeyError> {
        if raw.is_empty() {
            return Err(KeyError::Empty);
        }
        if !raw.iter().all(|b| is_visible(*b)) {
            return Err(KeyError::Malformed(
                "only visible ASCII characters are allowed",
            ));
        }
        if raw.len() > max_len {
            return Err(KeyError::TooLong {
                len: raw.len(),
                max: max_len,
            });
        }
        Ok(Self(String::from_utf8_lossy(raw).into()))
    }

    /// The unquoted key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_visible(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// Reads an RFC 9651 sf-string body (after the opening quote), then ignores parameters.
fn unquote(rest: &[u8]) -> Result<String, KeyError> {
    let mut out = String::with_capacity(rest.len());
    let mut bytes = rest.iter().enumerate();
    while let Some((i, &b)) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some((_, &c @ (b'"' | b'\\'))) => out.push(char::from(c)),
                _ => return Err(KeyError::Malformed("only \\\" and \\\\ may be escaped")),
            },
            b'"' => {
                let tail = rest[i + 1..].trim_ascii_start();
                if !tail.is_empty() && tail[0] != b';' {
                    return Err(KeyError::Malformed(
                        "unexpected characters after the closing quote",
                    ));
                }
                if out.bytes().any(|b| !is_visible(b)) {
                    return Err(KeyError::Malformed(
                        "only visible ASCII characters are allowed",
                    ));
                }
                return Ok(out);
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                return Err(KeyError::Malformed(
                    "only visible ASCII characters are allowed",
                ));
            }
        }
    }
    Err(KeyError::Malformed("the closing quote is missing"))
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&self.0).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<String, KeyError> {
        IdempotencyKey::parse_bytes(s.as_bytes(), DEFAULT_MAX_KEY_LEN)
            .map(|k| k.as_str().to_owned())
    }

    // R1
    #[test]
    fn r01_quoted_and_bare_are_the_same_key() {
        assert_eq!(parse("\"abc\"").unwrap(), "abc");
        assert_eq!(parse("abc").unwrap(), "abc");
        assert_eq!(parse("  abc  ").unwrap(), "abc");
        assert_eq!(parse("\"abc\";v=1").unwrap(), "abc");
        assert_eq!(parse("\"abc\" ; v=1").unwrap(), "abc");
    }

    // R1
    #[test]
    fn r01_escapes() {
        assert_eq!(parse(r#""a\"b\\c""#).unwrap(), r#"a"b\c"#);
        assert!(matches!(parse(r#""a\nb""#), Err(KeyError::Malformed(_))));
    }

    // R1
    #[test]
    fn r01_empty_and_malformed() {
        assert_eq!(parse(""), Err(KeyError::Empty));
        assert_eq!(parse("   "), Err(KeyError::Empty));
        assert_eq!(parse("\"\""), Err(KeyError::Empty));
        assert!(matches!(parse("\"abc"), Err(KeyError::Malformed(_))));
        assert!(matches!(parse("\"abc\"x"), Err(KeyError::Malformed(_))));
        assert!(matches!(parse("a b"), Err(KeyError::Malformed(_))));
        assert!(matches!(parse("\"a b\""), Err(KeyError::Malformed(_))));
        assert!(matches!(
            IdempotencyKey::parse_bytes(b"a\xffb", 255),
            Err(KeyError::Malformed(_))
        ));
    }

    // R1
    #[test]
    fn r01_length_limit() {
        let max = "k".repeat(255);
        assert_eq!(parse(&max).unwrap(), max);
        assert_eq!(
            parse(&"k".repeat(256)),
            Err(KeyError::TooLong { len: 256, max: 255 })
        );
        assert!(IdempotencyKey::parse_bytes(b"abcd", 3).is_err());
    }

    // R1
    #[test]
    fn r01_repeated_header() {
        let name = HeaderName::from_static("idempotency-key");
        let mut headers = HeaderMap::new();
        assert_eq!(IdempotencyKey::from_headers(&headers, &name, 255), Ok(None));
        headers.append(&name, HeaderValue::from_static("a"));
        assert!(
            IdempotencyKey::from_headers(&headers, &name, 255)
                .unwrap()
                .is_some()
        );
        headers.append(&name, HeaderValue::from_static("a"));
        assert_eq!(
            IdempotencyKey::from_headers(&headers, &name, 255),
            Err(KeyError::Repeated)
        );
    }
}
