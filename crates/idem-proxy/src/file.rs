//! The config file (`--config idem.toml`, `IDEM_CONFIG`): every `idem serve` setting under
//! the flag's name with `_` for `-`, plus `[[route]]` rules.
//!
//! File values become the defaults of the command line, so clap itself applies the
//! precedence: flag > environment variable > file > built-in default.
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

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::{Spanned, Value};

macro_rules! server_settings {
    ($($name:ident),* $(,)?) => {
        /// The server-wide settings of the file, each as written (checked by the flag's
        /// own parser when applied).
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Settings {
            $( $name: Option<Spanned<Value>>, )*
            #[serde(default)]
            route: Vec<RawRoute>,
        }

        impl Settings {
            fn entries(&self) -> Vec<(&'static str, &Spanned<Value>)> {
                let mut out = Vec::new();
                $( if let Some(v) = &self.$name { out.push((stringify!($name), v)); } )*
                out
            }
        }
    };
}

server_settings!(
    listen,
    upstream,
    store,
    ttl,
    lease,
    on_concurrent,
    wait_timeout,
    require_key,
    methods,
    header,
    scope_header,
    fingerprint,
    significant_headers,
    max_request_body,
    max_stored_body,
    upstream_timeout,
    fail_open,
    mismatch_status,
    cacheable,
    deny_headers,
    streaming_types,
    admin_listen,
    shutdown_grace,
    problem_base,
);

/// One `[[route]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(rename = "match")]
    pattern: Spanned<String>,
    enabled: Option<Spanned<bool>>,
    methods: Option<Spanned<Value>>,
    require_key: Option<Spanned<bool>>,
    ttl: Option<Spanned<Value>>,
    lease: Option<Spanned<Value>>,
    fingerprint: Option<Spanned<Value>>,
    significant_headers: Option<Spanned<Value>>,
    cacheable: Option<Spanned<Value>>,
    on_concurrent: Option<Spanned<Value>>,
    wait_timeout: Option<Spanned<Value>>,
    max_request_body: Option<Spanned<Value>>,
    max_stored_body: Option<Spanned<Value>>,
}

/// A server-wide setting from the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The flag's name with `_`, e.g. `max_request_body`.
    pub name: &'static str,
    /// The value as flag text (lists joined with `,`).
    pub value: String,
    /// `FILE:LINE`.
    pub origin: String,
}

/// A `[[route]]` rule from the file, values as flag text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    /// The `match` pattern.
    pub pattern: String,
    /// False: pass matching requests through untouched.
    pub enabled: bool,
    /// The settings the rule sets itself, by name, with `FILE:LINE` of each.
    pub settings: Vec<Setting>,
    /// `FILE:LINE` of the rule.
    pub origin: String,
}

impl RouteRule {
    /// The rule's value of a setting, if it sets it.
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.name == name)
    }
}

/// A parsed config file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigFile {
    /// The path, as given.
    pub path: String,
    /// Server-wide settings, in the order of the flags.
    pub settings: Vec<Setting>,
    /// Route rules, in file order (first match wins).
    pub routes: Vec<RouteRule>,
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
        let raw: Settings = toml::from_str(text).map_err(|e| {
            let place = e.span().map_or_else(|| path.to_owned(), &at);
            format!("{place}: {}", e.message().trim().replace('\n', " "))
        })?;
        let settings = raw
            .entries()
            .into_iter()
            .map(|(name, v)| {
                Ok(Setting {
                    name,
                    value: flag_text(name, v.get_ref())
                        .map_err(|e| format!("{}: {e}", at(v.span())))?,
                    origin: at(v.span()),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut routes = Vec::with_capacity(raw.route.len());
        for r in &raw.route {
            let mut settings = Vec::new();
            let mut add = |name: &'static str, v: &Option<Spanned<Value>>| -> Result<(), String> {
                if let Some(v) = v {
                    settings.push(Setting {
                        name,
                        value: flag_text(name, v.get_ref())
                            .map_err(|e| format!("{}: {e}", at(v.span())))?,
                        origin: at(v.span()),
                    });
                }
                Ok(())
            };
            add("methods", &r.methods)?;
            add("ttl", &r.ttl)?;
            add("lease", &r.lease)?;
            add("fingerprint", &r.fingerprint)?;
            add("significant_headers", &r.significant_headers)?;
            add("cacheable", &r.cacheable)?;
            add("on_concurrent", &r.on_concurrent)?;
            add("wait_timeout", &r.wait_timeout)?;
            add("max_request_body", &r.max_request_body)?;
            add("max_stored_body", &r.max_stored_body)?;
            if let Some(b) = &r.require_key {
                settings.push(Setting {
                    name: "require_key",
                    value: b.get_ref().to_string(),
                    origin: at(b.span()),
                });
            }
            routes.push(RouteRule {
                pattern: r.pattern.get_ref().clone(),
                enabled: r.enabled.as_ref().is_none_or(|b| *b.get_ref()),
                settings,
                origin: at(r.pattern.span()),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            settings,
            routes,
        })
    }
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
            .map(|s| (s.name, s.value.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("ttl", "1h"),
                ("require_key", "true"),
                ("methods", "POST,PUT"),
                ("max_request_body", "2048")
            ]
        );
        assert_eq!(f.settings[0].origin, "x.toml:1");
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
        let e = ConfigFile::parse("x.toml", "ttl = 1.5\n").unwrap_err();
        assert!(e.starts_with("x.toml:1: ") && e.contains("ttl"), "{e}");
        let e = ConfigFile::parse("x.toml", "[[route]]\nttl = \"1h\"\n").unwrap_err();
        assert!(e.contains("match"), "{e}");
    }
}
