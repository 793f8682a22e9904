//! `idem check-config --explain "POST /v1/payments/123"`: the rule that applies to one
//! request and every effective setting with where it came from.

use std::fmt::Write as _;

use http::Method;
use idem::core::policy::Policy;

use crate::routes;
use crate::settings::{Effective, SETTINGS};

/// Explains `request` (`METHOD /path[?query]`) under `effective`.
pub fn explain(request: &str, effective: &Effective) -> Result<String, String> {
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
    // R24: the rules see the path `idem serve` forwards.
    let path = crate::view::normalise_path(path).map_err(|e| {
        format!("--explain `{request}`: {e}: `idem serve` answers 400 (ambiguous-request)")
    })?;
    let path = path.as_str();
    let routes = effective.routes();
    let found = routes::find(&routes, &method, path);
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
                    &effective.policy
                }
            }
        }
        None => {
            let _ = writeln!(w, "rule: none matches; the server-wide settings apply");
            &effective.policy
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

    let values = found
        .and_then(|(i, _)| effective.rules.get(i))
        .and_then(|r| r.values.as_ref())
        .unwrap_or(&effective.values);
    let width = SETTINGS
        .iter()
        .map(|s| s.info().name.len())
        .max()
        .unwrap_or(0);
    let _ = writeln!(w, "\n{:<width$} {:<40} from", "setting", "value");
    for s in SETTINGS {
        let info = s.info();
        let value = s
            .show(values)
            .unwrap_or_else(|| format!("({})", info.unset.trim_matches(['(', ')'])));
        let _ = writeln!(
            w,
            "{:<width$} {value:<40} {}",
            info.name,
            values.origin(info.name)
        );
    }
    Ok(out)
}
