//! Every `idem serve` setting, described once.
//!
//! [`SETTINGS`] is the table: for each setting its name (the config file key; the flag
//! is the name with `-` for `_`), environment variable, help text, value parser,
//! whether a `[[route]]` rule may set it, and how its value is set on and read back from
//! [`Values`]. Defaults are not in the table: they are whatever [`Values::default`]
//! holds, i.e. [`Policy::default()`](idem::core::policy::Policy) for the engine and
//! [`ProxyConfig::new`](crate::config::ProxyConfig::new) for the proxy. Everything else
//! is derived from the table:
//!
//! - the flags of `serve`, `check-config` and `docs`, with `--help` text and defaults
//!   ([`clap_args`]),
//! - the keys a config file accepts, server-wide and in `[[route]]` rules
//!   ([`ConfigFile`]),
//! - layering: flag > environment variable > config file > default, then each route
//!   rule patched over the server-wide values by the same [`Setting::apply`]
//!   ([`resolve`]),
//! - `check-config --explain` (each value and its [`Origin`]),
//! - the README's flag table ([`markdown_table`]; a test keeps the README equal to it).
//!
//! # Adding a setting
//!
//! 1. Give it a home: a [`PolicyBuilder`](idem::core::policy::PolicyBuilder) method, a field
//!    of [`ProxyConfig`](crate::config::ProxyConfig) with its default in
//!    `ProxyConfig::new`, or a field of [`Values`] with its default in
//!    `Values::default` (and its use in [`Values::finish`]).
//! 2. Add one [`Def`] to [`SETTINGS`]: `info` (name, variable, help, an `example` value
//!    other than the default, `route: true` if a rule may set it), `parse`, `set` and
//!    `get`.
//! 3. Run the tests: the README table test prints the new table to paste between the
//!    README's markers, and the walk test proves the flag, variable, file key (and route
//!    key) of the new entry all reach its field.
//!
//! ```
//! use idem_proxy::settings::{self, Origin, Values};
//!
//! let ttl = settings::find("ttl").unwrap();
//! let mut values = Values::default();
//! assert_eq!(ttl.show(&values).as_deref(), Some("1day"));
//! ttl.apply(&mut values, "2h").unwrap();
//! assert_eq!(ttl.show(&values).as_deref(), Some("2h"));
//! assert!(ttl.apply(&mut values, "soon").unwrap_err().contains("soon"));
//! assert_eq!(values.origin("ttl"), Origin::Default);
//! ```

mod parse;
pub mod table;
mod values;

use std::fmt;
use std::fmt::Write as _;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches};
use idem::core::policy::Policy;

use crate::config::{FlagError, ServeConfig};
use crate::file::{ConfigFile, RouteRule};
use crate::routes::{PathPattern, Route};

pub use parse::{
    parse_bool, parse_duration, parse_header_name, parse_header_names, parse_list, parse_methods,
    parse_size, parse_status, parse_status_set, parse_timeout, parse_words, show_duration,
    show_list, show_size, show_status_set,
};
pub use table::{CONFIG, Def, Info, Kind, SETTINGS, Setting, find};
pub use values::{ConcurrentMode, Origin, Values, read_scope_secret};

/// A setting given on the command line or by its environment variable.
#[derive(Clone)]
pub struct Given {
    /// Which.
    pub setting: &'static dyn Setting,
    /// Its text (a list joined with `,`; a switch `true` or `false`).
    pub text: String,
    /// [`Origin::Flag`] or [`Origin::Env`].
    pub origin: Origin,
}

impl fmt::Debug for Given {
    // The text may be a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Given")
            .field("setting", &self.setting.info().name)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The clap arguments of every setting: `--help` text with the default, the
/// environment variable, no value parser (values are parsed by [`resolve`], with the
/// other sources).
pub fn clap_args() -> Vec<Arg> {
    let defaults = Values::default();
    SETTINGS
        .iter()
        .zip(1..)
        .map(|(s, order)| clap_arg(*s, &defaults).display_order(order))
        .collect()
}

fn clap_arg(s: &dyn Setting, defaults: &Values) -> Arg {
    let i = s.info();
    let mut help = sentence(&plain(i.help));
    if i.kind != Kind::Switch
        && !i.secret
        && let Some(d) = s.show(defaults)
    {
        let _ = write!(help, " [default: {d}]");
    }
    let arg = Arg::new(i.name)
        .long(i.name.replace('_', "-"))
        .env(i.env)
        .help(help)
        .hide_env_values(i.secret);
    match i.kind {
        Kind::Switch => arg
            .action(ArgAction::SetTrue)
            .value_parser(clap::builder::BoolishValueParser::new()),
        Kind::Value => arg
            .action(ArgAction::Set)
            .value_name(i.value_name)
            .value_parser(clap::value_parser!(String)),
        Kind::List => arg
            .action(ArgAction::Append)
            .value_delimiter(',')
            .value_name(i.value_name)
            .value_parser(clap::value_parser!(String)),
    }
}

/// The settings `matches` got from flags and environment variables.
pub fn given(matches: &ArgMatches) -> Result<Vec<Given>, clap::Error> {
    let mut out = Vec::new();
    for setting in SETTINGS {
        let name = setting.info().name;
        let origin = match matches.value_source(name) {
            Some(ValueSource::CommandLine) => Origin::Flag,
            Some(ValueSource::EnvVariable) => Origin::Env,
            _ => continue,
        };
        let text = match setting.info().kind {
            Kind::Switch => matches
                .try_get_one::<bool>(name)
                .map_err(internal)?
                .copied()
                .unwrap_or_default()
                .to_string(),
            Kind::Value | Kind::List => matches
                .try_get_many::<String>(name)
                .map_err(internal)?
                .map(|v| v.map(String::as_str).collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
        };
        out.push(Given {
            setting: *setting,
            text,
            origin,
        });
    }
    Ok(out)
}

/// A setting asked of matches without it: a bug, reported rather than a panic.
fn internal(e: clap::parser::MatchesError) -> clap::Error {
    clap::Error::raw(clap::error::ErrorKind::InvalidValue, e)
}

/// `text` with a capital first letter, as clap's other help lines.
pub(crate) fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// Markdown text without its markup, for `--help`: no backticks, links as their text.
fn plain(md: &str) -> String {
    let mut out = String::with_capacity(md.len());
    let mut rest = md;
    while let Some(open) = rest.find('[') {
        let (before, after) = rest.split_at(open);
        out.push_str(before);
        match after.find("](").zip(after.find(')')) {
            Some((mid, close)) if mid < close => {
                out.push_str(&after[1..mid]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push('[');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out.replace('`', "")
}

/// A `[[route]]` rule with its values.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The rule as the dispatcher uses it.
    pub route: Route,
    /// The server-wide values with the rule's own over them; `None` when the rule
    /// says `enabled = false`.
    pub values: Option<Values>,
}

/// The settings from every source, layered and checked.
#[derive(Clone, Debug)]
pub struct Effective {
    /// Server-wide values, with their origins.
    pub values: Values,
    /// The server-wide policy, checked.
    pub policy: Policy,
    /// The route rules, in file order (first match wins).
    pub rules: Vec<Rule>,
    /// The config file, when one was given.
    pub file: Option<ConfigFile>,
}

impl Effective {
    /// The route rules as the dispatcher uses them.
    pub fn routes(&self) -> Vec<Route> {
        self.rules.iter().map(|r| r.route.clone()).collect()
    }

    /// The `idem serve` settings, checked together (an upstream is required).
    pub fn serve_config(&self) -> Result<ServeConfig, FlagError> {
        self.values.finish(self.policy.clone(), self.routes())
    }
}

/// Layers `given` (flags and environment) over the config file at `config`, over the
/// defaults, then builds each route rule over the result.
pub fn resolve(given: &[Given], config: Option<&Path>) -> Result<Effective, FlagError> {
    let file = config
        .map(ConfigFile::load)
        .transpose()
        .map_err(FlagError::File)?;
    let mut values = Values::default();
    for setting in SETTINGS {
        let name = setting.info().name;
        if let Some(g) = given.iter().find(|g| g.setting.info().name == name) {
            apply(&mut values, *setting, &g.text, g.origin.clone(), None)?;
        } else if let Some(e) = file.as_ref().and_then(|f| f.get(name)) {
            apply(
                &mut values,
                *setting,
                &e.value,
                Origin::File(e.origin.clone()),
                None,
            )?;
        }
    }
    let policy = values.policy()?;
    let rules = match &file {
        Some(f) => f
            .routes
            .iter()
            .map(|r| rule(&values, r))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(Effective {
        values,
        policy,
        rules,
        file,
    })
}

/// Sets one setting from one source: flags, variables, the file and route rules all go
/// through here.
fn apply(
    values: &mut Values,
    setting: &dyn Setting,
    text: &str,
    origin: Origin,
    rule: Option<&RouteRule>,
) -> Result<(), FlagError> {
    let info = setting.info();
    setting.apply(values, text).map_err(|reason| {
        let place = match (&origin, rule) {
            (Origin::Flag, _) => info.flag(),
            (Origin::Env, _) => info.env.to_owned(),
            (Origin::Route(at), Some(r)) => format!("{at}: route `{}`: `{}`", r.pattern, info.name),
            (Origin::File(at) | Origin::Route(at), _) => format!("{at}: `{}`", info.name),
            (Origin::Default, _) => info.name.to_owned(),
        };
        FlagError::Value(format!("{place}: {reason}"))
    })?;
    values.origins.insert(info.name, origin);
    Ok(())
}

/// A route rule: the server-wide values patched with the rule's own.
fn rule(base: &Values, rule: &RouteRule) -> Result<Rule, FlagError> {
    let at = |what: String| {
        FlagError::File(format!("{}: route `{}`: {what}", rule.origin, rule.pattern))
    };
    let pattern: PathPattern = rule.pattern.parse().map_err(&at)?;
    if !rule.enabled {
        return Ok(Rule {
            route: Route {
                pattern,
                policy: None,
                origin: rule.origin.clone(),
            },
            values: None,
        });
    }
    let mut values = base.clone();
    // A rule naming methods covers those, whatever the server-wide list says, unless
    // it sets `methods` itself.
    if rule.get("methods").is_none() && !pattern.methods().is_empty() {
        let methods = pattern.methods().to_vec();
        values.edit_policy(|b| b.methods(methods));
        values
            .origins
            .insert("methods", Origin::Route(rule.origin.clone()));
    }
    for e in &rule.settings {
        apply(
            &mut values,
            e.setting,
            &e.value,
            Origin::Route(e.origin.clone()),
            Some(rule),
        )?;
    }
    let policy = values.policy().map_err(|e| match e {
        FlagError::Policy { source, .. } => at(source.to_string()),
        e => e,
    })?;
    Ok(Rule {
        route: Route {
            pattern,
            policy: Some(policy),
            origin: rule.origin.clone(),
        },
        values: Some(values),
    })
}

/// The README's flag table, generated from [`SETTINGS`]: flag, variable, default,
/// whether a `[[route]]` may set it, and the help text.
pub fn markdown_table() -> String {
    let defaults = Values::default();
    let mut md =
        String::from("| flag | env | default | per route | meaning |\n|---|---|---|---|---|\n");
    let mut row = |info: &Info, default: String| {
        let flag = match info.kind {
            Kind::Switch => info.flag(),
            Kind::Value | Kind::List => format!("{} {}", info.flag(), info.value_name),
        };
        let route = if info.route { "yes" } else { "" };
        let _ = writeln!(
            md,
            "| `{flag}` | `{}` | {default} | {route} | {} |",
            info.env, info.help
        );
    };
    row(&CONFIG, CONFIG.unset.to_owned());
    for s in SETTINGS {
        let info = s.info();
        let default = match (info.kind, s.show(&defaults)) {
            (_, _) if info.secret => info.unset.to_owned(),
            (Kind::Switch, Some(on)) if on == "true" => "on".to_owned(),
            (Kind::Switch, _) => "off".to_owned(),
            (_, Some(d)) => format!("`{d}`"),
            (_, None) => info.unset.to_owned(),
        };
        row(info, default);
    }
    md
}

#[cfg(test)]
mod tests;
