//! `idem check-config --explain "POST /v1/payments/123"`: the rule that applies to one
//! request and every effective setting with where it came from.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use http::Method;
use idem::policy::{OnConcurrent, Policy};

use crate::cli::ServeArgs;
use crate::config::{Origin, ServeConfig};
use crate::file::ConfigFile;
use crate::routes;

/// Explains `request` (`METHOD /path[?query]`) under `config`.
pub fn explain(
    request: &str,
    config: &ServeConfig,
    args: &ServeArgs,
    file: Option<&ConfigFile>,
    origins: &BTreeMap<String, Origin>,
) -> Result<String, String> {
    let (method, target) = request
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(|| {
            format!("--explain `{request}`: expected METHOD /path, e.g. \"POST /v1/payments/123\"")
        })?;
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("--explain `{request}`: `{method}` is not a method"))?;
    let path = target.trim().split('?').next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(format!(
            "--explain `{request}`: the path must start with `/`"
        ));
    }
    let found = routes::find(&config.proxy.routes, &method, path);
    let rule = found.and_then(|(i, _)| file.and_then(|f| f.routes.get(i)));
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "request: {method} {path}");
    let policy: &Policy = match found {
        Some((i, route)) => {
            let _ = writeln!(
                w,
                "rule: route {} `{}` ({})",
                i + 1,
                route.pattern,
                route.origin
            );
            match &route.policy {
                Some(p) => p,
                None => {
                    let _ = writeln!(
                        w,
                        "protected: no: the rule says enabled = false, the request passes through untouched"
                    );
                    &config.proxy.policy
                }
            }
        }
        None => {
            let _ = writeln!(w, "rule: none matches; the server-wide settings apply");
            &config.proxy.policy
        }
    };
    let passthrough = found.is_some_and(|(_, r)| r.policy.is_none());
    if !passthrough {
        let header = policy.header().as_str();
        let verdict = if !policy.methods().contains(&method) {
            format!("no: {method} is not a covered method, it passes through untouched")
        } else if policy.require_key() {
            format!("yes: {method} is covered and `{header}` is required (400 without it)")
        } else {
            format!("yes when it carries `{header}`: {method} is covered, the key is optional")
        };
        let _ = writeln!(w, "protected: {verdict}");
    }

    // Server-wide origin, unless the matched rule sets the value itself.
    let from = |name: &str| -> String {
        if let Some(s) = rule.and_then(|r| r.get(name)) {
            return Origin::Route(s.origin.clone()).to_string();
        }
        if name == "methods"
            && let (Some((_, route)), Some(r)) = (found, rule)
            && !route.pattern.methods().is_empty()
        {
            return Origin::Route(r.origin.clone()).to_string();
        }
        origins
            .get(name)
            .cloned()
            .unwrap_or(Origin::Default)
            .to_string()
    };
    let human = |d| humantime::format_duration(d).to_string();
    let list = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_owned()
        } else {
            v.join(",")
        }
    };
    let (mode, wait) = match policy.on_concurrent() {
        OnConcurrent::Conflict => ("conflict".to_owned(), human(args.wait_timeout)),
        OnConcurrent::Wait { timeout } => ("wait".to_owned(), human(timeout)),
    };
    let cacheable = rule
        .and_then(|r| r.get("cacheable"))
        .map_or_else(|| args.cacheable.clone(), |s| s.value.clone());
    let names =
        |v: &[http::HeaderName]| list(&v.iter().map(|h| h.as_str().to_owned()).collect::<Vec<_>>());
    let rows: Vec<(&str, String)> = vec![
        ("listen", config.listen.to_string()),
        ("upstream", config.proxy.upstream.to_string()),
        ("store", config.store.clone()),
        ("header", policy.header().as_str().to_owned()),
        ("scope_header", list(&args.scope_header)),
        (
            "methods",
            policy
                .methods()
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("require_key", policy.require_key().to_string()),
        ("ttl", human(policy.ttl())),
        ("lease", human(policy.lease())),
        ("on_concurrent", mode),
        ("wait_timeout", wait),
        (
            "fingerprint",
            format!("{:?}", policy.fingerprint()).to_lowercase(),
        ),
        ("significant_headers", names(policy.significant_headers())),
        ("cacheable", cacheable),
        ("max_request_body", policy.max_request_body().to_string()),
        ("max_stored_body", policy.max_stored_body().to_string()),
        (
            "mismatch_status",
            policy.mismatch_status().as_u16().to_string(),
        ),
        ("fail_open", args.fail_open.to_string()),
        ("upstream_timeout", human(config.proxy.upstream_timeout)),
        ("deny_headers", names(policy.deny_headers())),
        ("streaming_types", list(policy.streaming_types())),
        (
            "admin_listen",
            config
                .admin_listen
                .map_or_else(|| "(off)".to_owned(), |a| a.to_string()),
        ),
        ("shutdown_grace", human(config.proxy.shutdown_grace)),
        (
            "problem_base",
            policy.problem_base().map_or_else(
                || idem::problem::TYPE_BASE.trim_end_matches('#').to_owned(),
                |b| b.to_string(),
            ),
        ),
    ];
    let _ = writeln!(w, "\n{:<20} {:<40} from", "setting", "value");
    for (name, value) in rows {
        let _ = writeln!(w, "{name:<20} {value:<40} {}", from(name));
    }
    Ok(out)
}
