//! What a request asks for (R5).
//!
//! A SHA-256 over method, path with query as the request carries them, the configured
//! significant headers and the body. `idem serve` normalises the path and drops
//! hop-by-hop headers before this is computed (R24), so the fingerprint is that of the
//! request as forwarded: `/v1/%70ay` and `/v1/./pay` are one request, as they are to the
//! upstream. Fields are length-prefixed so no two different requests can
//! hash the same bytes. In [`FingerprintMode::Json`] a body that parses as JSON is
//! hashed in a canonical form (object keys sorted, insignificant whitespace dropped),
//! so semantically equal retries match; a body that does not parse is hashed raw.
//! Numbers are compared by their text, never through a float: two different numbers
//! never match, even where one double would hold them both.

use std::fmt;
use std::str::FromStr;

use http::{HeaderMap, HeaderName, Method};
use sha2::{Digest, Sha256};

/// How request bodies are fingerprinted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FingerprintMode {
    /// The body bytes exactly as sent (the default).
    #[default]
    Raw,
    /// JSON bodies in canonical form; other bodies raw.
    Json,
}

impl FromStr for FingerprintMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(Self::Raw),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown fingerprint mode `{other}` (expected raw or json)"
            )),
        }
    }
}

/// A SHA-256 digest of a request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Computes the fingerprint of a request.
    pub fn compute(
        mode: FingerprintMode,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        significant: &[HeaderName],
        body: &[u8],
    ) -> Self {
        let mut h = Sha256::new();
        h.update(b"idem-fp-v1");
        field(&mut h, method.as_str().as_bytes());
        field(&mut h, path_and_query.as_bytes());
        for name in significant {
            field(&mut h, name.as_str().as_bytes());
            for value in headers.get_all(name) {
                field(&mut h, value.as_bytes());
            }
            h.update([0xff]);
        }
        match mode {
            FingerprintMode::Json => match canonical_json(body) {
                Some(canonical) => {
                    h.update(b"J");
                    field(&mut h, &canonical);
                }
                None => {
                    h.update(b"R");
                    field(&mut h, body);
                }
            },
            FingerprintMode::Raw => {
                h.update(b"R");
                field(&mut h, body);
            }
        }
        Self(h.finalize().into())
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Rebuilds a fingerprint from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        crate::hex(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..16])
    }
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The canonical JSON text of `body`: object keys sorted by their bytes (members with
/// equal keys kept in their order), no insignificant whitespace, strings written as
/// serde_json writes them, and every number **exactly as sent**: `1e2`, `100` and
/// `100.0` stay three different numbers, as do two integers beyond 2^53 that one
/// double would round to the same value. A number is never read into a float, so no
/// two different numbers are ever taken for one. `None` when the body is not JSON
/// (RFC 8259, nesting at most 128 deep).
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    let mut p = Parser { s: body, i: 0 };
    p.ws();
    let node = p.value(0)?;
    p.ws();
    if p.i != body.len() {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    write_node(&node, &mut out);
    Some(out)
}

/// How deep arrays and objects may nest; deeper bodies are hashed raw.
const MAX_DEPTH: usize = 128;

/// A parsed JSON value, numbers kept as their text.
enum Node<'a> {
    Literal(&'static [u8]),
    Number(&'a [u8]),
    Str(String),
    Array(Vec<Node<'a>>),
    Object(Vec<(String, Node<'a>)>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Option<Node<'a>> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(Node::Str),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Option<Node<'a>> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Some(Node::Literal(word))
        } else {
            None
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, kept as written.
    fn number(&mut self) -> Option<Node<'a>> {
        let start = self.i;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat(b'.') && self.digits() == 0 {
            return None;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(Node::Number(&self.s[start..self.i]))
    }

    fn hex4(&mut self) -> Option<u16> {
        let h = self.s.get(self.i..self.i + 4)?;
        let text = std::str::from_utf8(h).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.i += 4;
        u16::from_str_radix(text, 16).ok()
    }

    /// A string, unescaped; invalid UTF-8, raw control characters and lone surrogates
    /// are not JSON.
    fn string(&mut self) -> Option<String> {
        self.i += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            let run = self.i;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.i += 1;
            }
            out.extend_from_slice(&self.s[run..self.i]);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return String::from_utf8(out).ok();
                }
                b'\\' => {
                    self.i += 1;
                    let esc = self.peek()?;
                    self.i += 1;
                    let c = match esc {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = match hi {
                                0xD800..=0xDBFF => {
                                    if !(self.eat(b'\\') && self.eat(b'u')) {
                                        return None;
                                    }
                                    let lo = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&lo) {
                                        return None;
                                    }
                                    0x10000
                                        + ((u32::from(hi) - 0xD800) << 10)
                                        + (u32::from(lo) - 0xDC00)
                                }
                                0xDC00..=0xDFFF => return None,
                                _ => u32::from(hi),
                            };
                            char::from_u32(code)?
                        }
                        _ => return None,
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                // A raw control character.
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<Node<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.eat(b']') {
            return Some(Node::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth)?);
            self.ws();
            if self.eat(b']') {
                return Some(Node::Array(items));
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    fn object(&mut self, depth: usize) -> Option<Node<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.i += 1;
        let mut members = Vec::new();
        self.ws();
        if self.eat(b'}') {
            return Some(Node::Object(members));
        }
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.string()?;
            self.ws();
            if !self.eat(b':') {
                return None;
            }
            self.ws();
            members.push((key, self.value(depth)?));
            self.ws();
            if self.eat(b'}') {
                // Stable: members with equal keys keep their order, so a body whose
                // reader takes the first of them never meets one whose reader takes
                // the last.
                members.sort_by(|a, b| a.0.cmp(&b.0));
                return Some(Node::Object(members));
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }
}

fn write_node(node: &Node<'_>, out: &mut Vec<u8>) {
    match node {
        Node::Literal(word) => out.extend_from_slice(word),
        Node::Number(text) => out.extend_from_slice(text),
        Node::Str(s) => write_string(s, out),
        Node::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_node(v, out);
            }
            out.push(b']');
        }
        Node::Object(members) => {
            out.push(b'{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_node(v, out);
            }
            out.push(b'}');
        }
    }
}

/// A string as serde_json writes it: `"` and `\` escaped, control characters as
/// `\b \f \n \r \t` or `\u00xx`, everything else as UTF-8.
fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(mode: FingerprintMode, path: &str, body: &str) -> Fingerprint {
        Fingerprint::compute(
            mode,
            &Method::POST,
            path,
            &HeaderMap::new(),
            &[],
            body.as_bytes(),
        )
    }

    // R5
    #[test]
    fn r05_raw_mode_is_exact() {
        let a = fp(FingerprintMode::Raw, "/p", r#"{"a":1,"b":2}"#);
        assert_eq!(a, fp(FingerprintMode::Raw, "/p", r#"{"a":1,"b":2}"#));
        assert_ne!(a, fp(FingerprintMode::Raw, "/p", r#"{"b":2,"a":1}"#));
        assert_ne!(a, fp(FingerprintMode::Raw, "/p?x=1", r#"{"a":1,"b":2}"#));
        assert_ne!(
            a,
            Fingerprint::compute(
                FingerprintMode::Raw,
                &Method::PATCH,
                "/p",
                &HeaderMap::new(),
                &[],
                br#"{"a":1,"b":2}"#
            )
        );
    }

    // R5: numbers keep their text: a long decimal is not rounded to a double, and the
    // canonical form is a fixed point that reads back as the same JSON value.
    #[test]
    fn r05_canonical_numbers_keep_their_text() {
        let text = b"155555555555555500000000001286193430139584147.8";
        let once = canonical_json(text).unwrap();
        assert_eq!(once, text);
        let a: serde_json::Value = serde_json::from_slice(text).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&once).unwrap();
        assert_eq!(a, b);
        assert_eq!(canonical_json(&once).unwrap(), once);
        for n in ["0", "-0", "1.0", "1.00", "1e2", "1E+2", "-12.5e-3", "1e400"] {
            assert_eq!(canonical_json(n.as_bytes()).unwrap(), n.as_bytes(), "{n}");
        }
        for bad in ["01", "1.", ".5", "-", "1e", "+1", "0x10", "NaN", "1.5e+"] {
            assert_eq!(canonical_json(bad.as_bytes()), None, "{bad}");
        }
    }

    // R5: numbers that one double would hold are still different requests.
    #[test]
    fn r05_numbers_beyond_double_precision_differ() {
        let json = |b: &str| fp(FingerprintMode::Json, "/p", b);
        for (a, b) in [
            ("100000000000000000001", "100000000000000000000"),
            ("0.30000000000000001", "0.3"),
            ("9007199254740993", "9007199254740992"),
            ("1.0", "1"),
        ] {
            let (x, y) = (format!("{{\"amount\":{a}}}"), format!("{{\"amount\":{b}}}"));
            assert_ne!(json(&x), json(&y), "{a} vs {b}");
            // Whitespace and order still do not count.
            let z = format!("{{ \"amount\" : {a} }}");
            assert_eq!(json(&x), json(&z));
        }
    }

    // R5: strings are compared by what they say, escapes decoded and written one way;
    // text that is not JSON is hashed raw.
    #[test]
    fn r05_canonical_strings_and_structure() {
        let c = |b: &str| canonical_json(b.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(c(r#""\u00e9\/\u0041""#).unwrap(), "\"\u{e9}/A\"");
        assert_eq!(c(r#""\ud83d\ude00""#).unwrap(), "\"\u{1f600}\"");
        assert_eq!(c("\"\\u0001\\n\\\"\"").unwrap(), "\"\\u0001\\n\\\"\"");
        assert_eq!(
            c(" [ true , false , null , { } , [ ] ] ").unwrap(),
            "[true,false,null,{},[]]"
        );
        // Members with one key keep their order: `{"a":1,"a":2}` is not `{"a":2}`.
        assert_eq!(
            c(r#"{"b":0,"a":1,"a":2}"#).unwrap(),
            r#"{"a":1,"a":2,"b":0}"#
        );
        assert_ne!(c(r#"{"a":1,"a":2}"#), c(r#"{"a":2,"a":1}"#));
        for bad in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            "\"a\u{1}\"",
            r#""\x""#,
            "[1,]",
            "{\"a\"}",
            "{\"a\":1,}",
            "tru",
            "1 2",
            "",
            "[",
        ] {
            assert_eq!(c(bad), None, "{bad:?}");
        }
        assert_eq!(canonical_json(b"\"\xff\""), None, "invalid UTF-8");
        let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(c(&deep).is_some());
        let deeper = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert_eq!(c(&deeper), None);
    }

    // R5: for bodies whose numbers serde_json reads exactly (integers), the canonical
    // text is the one of earlier versions, so their fingerprints did not change.
    #[test]
    fn r05_canonical_text_of_integer_bodies_is_unchanged() {
        fn old(v: &serde_json::Value, out: &mut Vec<u8>) {
            match v {
                serde_json::Value::Object(map) => {
                    let mut entries: Vec<_> = map.iter().collect();
                    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                    out.push(b'{');
                    for (i, (k, v)) in entries.into_iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        serde_json::to_writer(&mut *out, k).unwrap();
                        out.push(b':');
                        old(v, out);
                    }
                    out.push(b'}');
                }
                serde_json::Value::Array(items) => {
                    out.push(b'[');
                    for (i, v) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        old(v, out);
                    }
                    out.push(b']');
                }
                other => serde_json::to_writer(&mut *out, other).unwrap(),
            }
        }
        let body = r#" {"z": [1, -2, 18446744073709551615, -9223372036854775808],
            "a\u0000b": "\u001f\t\b\f\r\n\"\\\/\u00e9\u2028\ud83d\ude00\u007f",
            "m": {"y": null, "x": true, "w": false, "v": {}, "u": []}} "#;
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let mut expected = Vec::new();
        old(&v, &mut expected);
        assert_eq!(canonical_json(body.as_bytes()).unwrap(), expected);
    }

    // R5
    #[test]
    fn r05_json_mode_canonicalises() {
        let a = fp(
            FingerprintMode::Json,
            "/p",
            r#"{"a":1,"b":[1,{"y":2,"x":1}]}"#,
        );
        let b = fp(
            FingerprintMode::Json,
            "/p",
            " {\"b\" : [1, {\"x\":1,\"y\":2}],\n \"a\":1 } ",
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            fp(
                FingerprintMode::Json,
                "/p",
                r#"{"a":2,"b":[1,{"y":2,"x":1}]}"#
            )
        );
        // Not JSON: hashed raw, and never equal to a JSON body.
        assert_ne!(
            fp(FingerprintMode::Json, "/p", "{x"),
            fp(FingerprintMode::Json, "/p", "{ x")
        );
    }

    // R5
    #[test]
    fn r05_significant_headers() {
        let name = HeaderName::from_static("x-currency");
        let mut h1 = HeaderMap::new();
        h1.insert(&name, "EUR".parse().unwrap());
        let mut h2 = HeaderMap::new();
        h2.insert(&name, "USD".parse().unwrap());
        let sig = [name];
        let a = Fingerprint::compute(FingerprintMode::Raw, &Method::POST, "/", &h1, &sig, b"");
        let b = Fingerprint::compute(FingerprintMode::Raw, &Method::POST, "/", &h2, &sig, b"");
        assert_ne!(a, b);
        let c = Fingerprint::compute(FingerprintMode::Raw, &Method::POST, "/", &h2, &[], b"");
        let d = Fingerprint::compute(FingerprintMode::Raw, &Method::POST, "/", &h1, &[], b"");
        assert_eq!(c, d);
    }

    #[test]
    fn canonical_text() {
        assert_eq!(
            canonical_json(br#"{ "b": "\u00e9", "a": [1.5, null] }"#).unwrap(),
            "{\"a\":[1.5,null],\"b\":\"\u{e9}\"}".as_bytes()
        );
        assert_eq!(canonical_json(b"nope"), None);
    }
}
