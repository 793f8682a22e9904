//! The config file (`--config idem.toml`, `IDEM_CONFIG`): every `idem serve` setting under
//! its name (the flag's, with `_` for `-`), plus `[[route]]` rules with the settings a
//! route may set. The keys are those of [`crate::settings::SETTINGS`].
//!
//! A value is read as its flag's text: strings as they are, numbers and booleans
//! printed, a list as its items joined with `,`; the setting's own parser checks it when
//! it is applied.
//!
//! ```
//! use idem_proxy::file::ConfigFile;
//!
//! let file = ConfigFile::parse("idem.toml", r#"
//! upstream = "http://127.0.0.1:3000"
//! ttl = "1h"
//!
//! [[route]]
//! match = "POST /v1/payments/*"
//! require_key = true
//! "#).unwrap();
//! assert_eq!(file.routes.len(), 1);
//! assert_eq!(file.routes[0].origin, "idem.toml:6");
//! assert!(ConfigFile::parse("idem.toml", "tll = \"1h\"").unwrap_err().contains("idem.toml:1"));
//! ```

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use toml::{Spanned, Value};

use crate::settings::table::{SETTINGS, Setting};

/// One setting as the file writes it.
#[derive(Clone)]
pub struct Entry {
    /// Which setting.
    pub setting: &'static dyn Setting,
    /// The value as flag text (lists joined with `,`).
    pub value: String,
    /// `FILE:LINE`.
    pub origin: String,
}

impl Entry {
    /// The setting's name, e.g. `max_request_body`.
    pub fn name(&self) -> &'static str {
        self.setting.info().name
    }
}

impl fmt::Debug for Entry {
    // The value may be a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name())
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// A `[[route]]` rule from the file.
#[derive(Clone, Debug)]
pub struct RouteRule {
    /// The `match` pattern.
    pub pattern: String,
    /// False: pass matching requests through untouched.
    pub enabled: bool,
    /// The settings the rule sets itself.
    pub settings: Vec<Entry>,
    /// `FILE:LINE` of the rule.
    pub origin: String,
}

impl RouteRule {
    /// The rule's value of a setting, if it sets it.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.settings.iter().find(|s| s.name() == name)
    }
}

/// A parsed config file.
#[derive(Clone, Debug, Default)]
pub struct ConfigFile {
    /// The path, as given.
    pub path: String,
    /// Server-wide settings, by key.
    pub settings: Vec<Entry>,
    /// Route rules, in file order (first match wins).
    pub routes: Vec<RouteRule>,
}

/// The file's top level as written: `route` and every other key.
struct RawFile {
    entries: Vec<(String, Spanned<Value>)>,
    routes: Vec<Spanned<RawTable>>,
}

/// A table as written, keys in order.
struct RawTable(Vec<(String, Spanned<Value>)>);

impl<'de> Deserialize<'de> for RawFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFile, A::Error> {
                let mut file = RawFile {
                    entries: Vec::new(),
                    routes: Vec::new(),
                };
                while let Some(key) = map.next_key::<String>()? {
                    if key == "route" {
                        file.routes = map.next_value()?;
                    } else {
                        file.entries.push((key, map.next_value()?));
                    }
                }
                Ok(file)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for RawTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTable;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a `[[route]]` table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawTable, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(RawTable(entries))
            }
        }
        d.deserialize_map(V)
    }
}

impl ConfigFile {
    /// Reads and parses `path`; errors are one line naming the file (and line).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses `text`, naming it `path` in errors and origins.
    pub fn parse(path: &str, text: &str) -> Result<Self, String> {
        let at = |span: Range<usize>| format!("{path}:{}", line_of(text, span.start));
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let place = e.span().map_or_else(|| path.to_owned(), &at);
            format!("{place}: {}", e.message().trim().replace('\n', " "))
        })?;
        let entry = |key: &str, v: &Spanned<Value>, route: bool| -> Result<Entry, String> {
            let setting = SETTINGS
                .iter()
                .copied()
                .find(|s| s.info().name == key && (s.info().route || !route))
                .ok_or_else(|| format!("{}: {}", at(v.span()), unknown(key, route)))?;
            Ok(Entry {
                setting,
                value: flag_text(key, v.get_ref()).map_err(|e| format!("{}: {e}", at(v.span())))?,
                origin: at(v.span()),
            })
        };
        let settings = raw
            .entries
            .iter()
            .map(|(k, v)| entry(k, v, false))
            .collect::<Result<Vec<_>, _>>()?;
        let mut routes = Vec::with_capacity(raw.routes.len());
        for table in &raw.routes {
            let mut pattern = None;
            let mut enabled = true;
            let mut settings = Vec::new();
            for (key, v) in &table.get_ref().0 {
                match (key.as_str(), v.get_ref()) {
                    ("match", Value::String(p)) => pattern = Some((p.clone(), at(v.span()))),
                    ("enabled", Value::Boolean(b)) => enabled = *b,
                    ("match", _) => {
                        return Err(format!("{}: `match` must be a string", at(v.span())));
                    }
                    ("enabled", _) => {
                        return Err(format!("{}: `enabled` must be true or false", at(v.span())));
                    }
                    _ => settings.push(entry(key, v, true)?),
                }
            }
            let (pattern, origin) = pattern.ok_or_else(|| {
                format!(
                    "{}: a `[[route]]` needs `match`, e.g. match = \"POST /v1/payments/*\"",
                    at(table.span())
                )
            })?;
            routes.push(RouteRule {
                pattern,
                enabled,
                settings,
                origin,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            settings,
            routes,
        })
    }

    /// The file's server-wide value of a setting, if it sets it.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.settings.iter().find(|s| s.name() == name)
    }
}

/// The error for a key that names no setting (or none a route may set).
fn unknown(key: &str, route: bool) -> String {
    let keys: Vec<String> = route
        .then(|| ["match".to_owned(), "enabled".to_owned()])
        .into_iter()
        .flatten()
        .chain(
            SETTINGS
                .iter()
                .filter(|s| s.info().route || !route)
                .map(|s| s.info().name.to_owned()),
        )
        .chain((!route).then(|| "route".to_owned()))
        .map(|k| format!("`{k}`"))
        .collect();
    if route && SETTINGS.iter().any(|s| s.info().name == key) {
        return format!(
            "`{key}` is server-wide, a route cannot set it; a route sets {}",
            keys.join(", ")
        );
    }
    format!("unknown field `{key}`, expected one of {}", keys.join(", "))
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A TOML value as the text its flag takes: strings as is, numbers and booleans
/// printed, lists of those joined with `,`.
fn flag_text(name: &str, v: &Value) -> Result<String, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(format!(
            "`{name}`: expected a string, integer, boolean or a list of them"
        )),
    };
    match v {
        Value::Array(items) => Ok(items
            .iter()
            .map(scalar)
            .collect::<Result<Vec<_>, _>>()?
            .join(",")),
        v => scalar(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_routes() {
        let f = ConfigFile::parse(
            "x.toml",
            "ttl = \"1h\"\nmethods = [\"POST\", \"PUT\"]\nmax_request_body = 2048\nrequire_key = true\n\n\
             [[route]]\nmatch = \"/a/*\"\nenabled = false\n\n[[route]]\nmatch = \"POST /b\"\nttl = \"5m\"\n",
        )
        .unwrap();
        let names: Vec<_> = f
            .settings
            .iter()
            .map(|s| (s.name(), s.value.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("max_request_body", "2048"),
                ("methods", "POST,PUT"),
                ("require_key", "true"),
                ("ttl", "1h"),
            ]
        );
        assert_eq!(f.get("ttl").unwrap().origin, "x.toml:1");
        assert!(!f.routes[0].enabled);
        assert_eq!(f.routes[1].origin, "x.toml:11");
        assert_eq!(f.routes[1].get("ttl").unwrap().value, "5m");
        assert_eq!(f.routes[1].get("ttl").unwrap().origin, "x.toml:12");
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let e = ConfigFile::parse("x.toml", "ttl = \"1h\"\ntll = \"2h\"\n").unwrap_err();
        assert!(e.starts_with("x.toml:2: "), "{e}");
        assert!(e.contains("tll"), "{e}");
        assert!(!e.contains('\n'));
        let e =
            ConfigFile::parse("x.toml", "[[route]]\nmatch = \"/a\"\nrequire = true\n").unwrap_err();
        assert!(e.starts_with("x.toml:3: ") && e.contains("require"), "{e}");
        let e = ConfigFile::parse("x.toml", "[[route]]\nmatch = \"/a\"\nstore = \"memory\"\n")
            .unwrap_err();
        assert!(
            e.starts_with("x.toml:3: ") && e.contains("server-wide"),
            "{e}"
        );
        let e = ConfigFile::parse("x.toml", "ttl = 1.5\n").unwrap_err();
        assert!(e.starts_with("x.toml:1: ") && e.contains("ttl"), "{e}");
        let e = ConfigFile::parse("x.toml", "[[route]]\nttl = \"1h\"\n").unwrap_err();
        assert!(e.contains("match"), "{e}");
        let e = ConfigFile::parse("x.toml", "[[route]]\nmatch = \"/a\"\nenabled = \"no\"\n")
            .unwrap_err();
        assert!(e.starts_with("x.toml:3: ") && e.contains("enabled"), "{e}");
    }

    // Every setting the table has is a file key, and the route-settable ones route keys.
    #[test]
    fn every_setting_is_a_key() {
        for s in SETTINGS {
            let i = s.info();
            let text = format!(
                "{} = \"{}\"\n\n[[route]]\nmatch = \"/a\"\n",
                i.name, i.example
            );
            let f = ConfigFile::parse("x.toml", &text).unwrap();
            assert_eq!(f.get(i.name).unwrap().value, i.example);
            let text = format!(
                "[[route]]\nmatch = \"/a\"\n{} = \"{}\"\n",
                i.name, i.example
            );
            assert_eq!(
                ConfigFile::parse("x.toml", &text).is_ok(),
                i.route,
                "{}",
                i.name
            );
        }
    }
}
