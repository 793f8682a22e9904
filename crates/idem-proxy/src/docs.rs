//! `idem docs`: Markdown for an API's public docs, from the effective configuration.
//!
//! One section per problem type, whose anchor is exactly the type's slug, so the `type`
//! URIs (`<problem_base>#<slug>`, R17) resolve to the text that explains them when the
//! output is published at `problem_base`.

use std::fmt::Write as _;
use std::time::Duration;

use idem::core::policy::{KeySource, OnConcurrent, Policy, Unscoped};
use idem::core::problem::Audience;
use idem::core::{Problem, ProblemKind};

use crate::routes::{self, Route};
use crate::text::title_case;

/// The Markdown for `policy` (requests matching no rule) and `routes`.
pub fn markdown(policy: &Policy, routes: &[Route]) -> String {
    let header = policy.header().as_str();
    let header = title_case(header);
    let default_base = idem::core::problem::TYPE_BASE.trim_end_matches('#');
    let base = policy.problem_base().map_or(default_base, |b| &**b);
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Idempotent requests\n");
    let _ = writeln!(
        w,
        "Send an `{header}` header with a write you may retry: a unique value (a UUID) per \
         *operation*, the same value with every retry of that operation. The first request \
         runs; every retry with the same key gets its response again instead of running it \
         twice.\n"
    );

    let _ = writeln!(w, "## Which endpoints take a key\n");
    let _ = writeln!(
        w,
        "| endpoint | methods | key | remembered for | a duplicate in progress gets |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|");
    for line in routes::summary(policy, routes) {
        let endpoint = endpoint(line.route, routes);
        let _ = match (line.policy, line.route) {
            (Some(p), _) => writeln!(w, "| {endpoint} | {} |", row(p)),
            (None, r) => writeln!(
                w,
                "| {endpoint} | {} | not used | — | — |",
                methods_of(r.map_or(&[], |r| r.pattern.methods()))
            ),
        };
    }
    let _ = writeln!(
        w,
        "\nRequests with other methods are not affected by the key. \"Optional\" means a \
         request without a key runs unprotected; \"required\" means it is refused with \
         [`missing-key`](#missing-key).\n"
    );

    let _ = writeln!(w, "## Key format\n");
    let _ = writeln!(
        w,
        "1 to {} visible ASCII characters (no spaces or control characters), sent bare \
         (`{header}: 4f0c…`) or as a quoted string (`{header}: \"4f0c…\"`, with `\\\"` and \
         `\\\\` escapes); both forms name the same key. Send the header once.\n",
        policy.max_key_len()
    );
    let _ = writeln!(w, "## Whose key it is\n");
    let _ = writeln!(w, "{}", whose_key(policy, routes));

    let _ = writeln!(w, "## What a retry gets\n");
    let _ = writeln!(
        w,
        "- **The first request finished:** its response again, status, headers and body, \
         with the header `Idempotent-Replayed: true`. The operation does not run again. \
         This includes validation errors (4xx): fix the request and use a new key.\n\
         - **It is still running:** see the table above: `409` with `Retry-After` \
         ([`in-flight`](#in-flight)), or the request waits and then gets the replay.\n\
         - **It got 5xx, 408, 409, 425 or 429** (not kept): the retry runs the operation \
         again.\n\
         - **The key has expired** (after the retention window in the table, counted from \
         completion): the same key starts a new operation.\n"
    );

    if let Some(browsers) = browsers(policy, routes) {
        let _ = writeln!(w, "## From a browser\n");
        let _ = writeln!(w, "{browsers}");
    }

    let _ = writeln!(w, "## Status codes idem may answer\n");
    if policy.problems().templates().is_some() {
        let _ = writeln!(
            w,
            "Besides your API's own responses, these come from the idempotency layer, in \
             this API's error shape (each section below shows an example). Branch on the \
             code, which is the fragment below (this page's sections); the message is \
             prose for humans.\n"
        );
    } else {
        let _ = writeln!(
            w,
            "Besides your API's own responses, these come from the idempotency layer, as \
             `application/problem+json` (RFC 9457). Branch on `type`, which is \
             `{base}#` followed by the fragment below (this page's sections), or on `code`, \
             the fragment alone; `detail` is prose for humans.\n"
        );
    }
    let _ = writeln!(w, "| status | `type` | what to do |");
    let _ = writeln!(w, "|---|---|---|");
    for kind in client_kinds() {
        let slug = kind.slug();
        let _ = writeln!(
            w,
            "| {} | [`#{slug}`](#{slug}) | {} |",
            status_of(policy, kind),
            kind.advice()
        );
    }
    let _ = writeln!(w);

    for kind in client_kinds() {
        let slug = kind.slug();
        let _ = writeln!(w, "<a id=\"{slug}\"></a>\n\n### {slug}\n");
        let _ = writeln!(
            w,
            "**{} {}.** {}\n",
            status_of(policy, kind),
            kind.title(),
            kind.explanation()
        );
        let _ = writeln!(w, "{}", example(policy, kind));
    }
    md
}

/// An example answer of `kind` as this deployment sends it: its content type and body.
fn example(policy: &Policy, kind: ProblemKind) -> String {
    let mut problem = Problem::new(kind, "A sentence about this request, for humans.");
    problem.status = http::StatusCode::from_u16(status_of(policy, kind)).unwrap_or(problem.status);
    if !matches!(
        kind,
        ProblemKind::InvalidKey | ProblemKind::MissingKey | ProblemKind::UnscopedRequest
    ) {
        problem.key = Some("4f0c9a1e-5b7d-4e2a-9c3f-8d6b1a2e7f90".to_owned());
    }
    if matches!(kind, ProblemKind::InFlight | ProblemKind::StoreUnavailable) {
        problem.retry_after = Some(1);
    }
    if kind == ProblemKind::NotRetained {
        problem.original_status = Some(201);
    }
    let (content_type, body) = policy.problems().body(&problem);
    let body = serde_json::to_string_pretty(&body).unwrap_or_default();
    format!(
        "For example (`Content-Type: {}`):\n\n```json\n{body}\n```\n",
        content_type.to_str().unwrap_or("application/json")
    )
}

/// How keys are kept apart (R4): by which headers, and what a keyed request without
/// them gets, server-wide and on the endpoints that differ.
fn whose_key(policy: &Policy, routes: &[Route]) -> String {
    let scope = policy.scope();
    if scope.is_shared() {
        return "Keys are shared by every caller of this API: use keys no other caller could \
                choose (UUIDs). A response that sets a cookie is not kept for replay, so no \
                caller ever receives another's session."
            .to_owned();
    }
    let names: Vec<String> = scope
        .header_names()
        .iter()
        .map(|h| format!("`{}`", title_case(h.as_str())))
        .collect();
    let names = names.join(" / ");
    let unscoped = |p: &Policy| match p.unscoped() {
        Unscoped::Refuse => "is refused with [`unscoped-request`](#unscoped-request)",
        Unscoped::Pass => "runs unprotected, as if it had no key",
    };
    let mut text = format!(
        "Keys are per {names}: the same key sent with another {names} is a different \
         operation, and nobody else ever receives your stored response. A request with a key \
         but without {names} {}.",
        unscoped(policy)
    );
    for route in routes {
        if let Some(p) = &route.policy
            && p.key_source() != policy.key_source()
        {
            let _ = write!(
                text,
                " On `{}` the key is read from {}.",
                route.pattern.path(),
                match p.key_source() {
                    KeySource::Header =>
                        format!("the `{}` header", title_case(p.header().as_str())),
                    KeySource::NamedHeader(name) =>
                        format!("the `{}` header", title_case(name.as_str())),
                    KeySource::JsonPointer(pointer) => {
                        format!("the JSON body, at `{pointer}` (a string or an integer)")
                    }
                }
            );
        }
        if let Some(p) = &route.policy
            && p.unscoped() != policy.unscoped()
        {
            let _ = write!(text, " On `{}` it {}.", route.pattern.path(), unscoped(p));
        }
    }
    text.push('\n');
    text
}

/// The problems an API's clients can meet (not the admin API's).
/// What a page on another origin can read, when any rule lets one (CORS); `None` when
/// no origin is allowed anywhere.
fn browsers(policy: &Policy, routes: &[Route]) -> Option<String> {
    let mut lines = Vec::new();
    for line in routes::summary(policy, routes) {
        let Some(p) = line.policy else { continue };
        let origins = p.cors_origins();
        if origins.is_empty() {
            continue;
        }
        let endpoint = endpoint(line.route, routes);
        lines.push(format!("- {endpoint}: pages on `{origins}`"));
    }
    if lines.is_empty() {
        return None;
    }
    Some(format!(
        "Pages on these origins can read idem's answers (the problem documents below) and, \
         on a replay, the `Idempotent-Replayed` and `Retry-After` headers; preflight \
         requests are answered by the API itself, which must allow the key header:\n\n{}\n\n\
         A browser that adds its own key (Firefox sends a quoted decimal number such as \
         `\"1733390000123\"`) is treated like any other client: the quoted and bare forms \
         name the same key, scoped by the request's credentials.\n",
        lines.join("\n")
    ))
}

/// How the page names the requests of `route`, one of `routes`, or of none of them.
fn endpoint(route: Option<&Route>, routes: &[Route]) -> String {
    match route {
        Some(r) => format!("`{}`", r.pattern.path()),
        None if routes.is_empty() => "every endpoint".to_owned(),
        None => "every other endpoint".to_owned(),
    }
}

fn client_kinds() -> impl Iterator<Item = ProblemKind> {
    ProblemKind::ALL
        .iter()
        .copied()
        .filter(|k| k.audience() == Audience::Client)
}

/// The status `kind` is answered with under `policy`.
fn status_of(policy: &Policy, kind: ProblemKind) -> u16 {
    if kind == ProblemKind::PayloadMismatch {
        policy.mismatch_status().as_u16()
    } else {
        kind.status().as_u16()
    }
}

fn methods_of(methods: &[http::Method]) -> String {
    if methods.is_empty() {
        "any".to_owned()
    } else {
        methods
            .iter()
            .map(http::Method::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn row(p: &Policy) -> String {
    let concurrent = match p.on_concurrent() {
        OnConcurrent::Conflict => "409, retry later".to_owned(),
        OnConcurrent::Wait { timeout } => {
            format!("waits up to {}, then the replay", human(timeout))
        }
    };
    format!(
        "{} | {} | {} | {concurrent}",
        methods_of(p.methods()),
        if p.require_key() {
            "required"
        } else {
            "optional"
        },
        human(p.ttl())
    )
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // R4: the page says whose key it is and what a keyed request without credentials
    // gets, server-wide and where a route differs.
    #[test]
    fn r04_the_page_states_the_scope_and_the_unscoped_behaviour() {
        let md = markdown(&Policy::default(), &[]);
        assert!(md.contains("Keys are per `Authorization`"), "{md}");
        assert!(md.contains("is refused with [`unscoped-request`]"), "{md}");
        let route = Route {
            pattern: "POST /webhooks/*".parse().unwrap(),
            policy: Some(Policy::builder().unscoped(Unscoped::Pass).build().unwrap()),
            origin: "idem.toml:3".to_owned(),
        };
        let md = markdown(&Policy::default(), &[route]);
        assert!(md.contains("On `/webhooks/*` it runs unprotected"), "{md}");
        let shared = Policy::builder()
            .scope(idem::core::scope::ScopeSource::none())
            .build()
            .unwrap();
        let md = markdown(&shared, &[]);
        assert!(md.contains("shared by every caller"), "{md}");
    }

    // R17: the page says which origins may read idem's answers, only when some may.
    #[test]
    fn r17_the_page_names_the_origins_that_read_idem_s_answers() {
        let md = markdown(&Policy::default(), &[]);
        assert!(!md.contains("## From a browser"), "{md}");
        let cors = Policy::builder()
            .cors_origins("https://app.example".parse().unwrap())
            .build()
            .unwrap();
        let md = markdown(&cors, &[]);
        assert!(md.contains("## From a browser"), "{md}");
        assert!(
            md.contains("- every endpoint: pages on `https://app.example`"),
            "{md}"
        );
    }

    // R17
    #[test]
    fn r17_every_problem_has_a_section_anchored_by_its_slug() {
        let md = markdown(&Policy::default(), &[]);
        for kind in ProblemKind::ALL {
            let slug = kind.slug();
            let documented = md.contains(&format!("<a id=\"{slug}\"></a>"))
                && md.contains(&format!("\n### {slug}\n"));
            // The admin API's problems are for operators, not for the API's clients.
            assert_eq!(documented, kind.audience() == Audience::Client, "{slug}");
        }
        assert!(md.contains("Idempotency-Key"));
        assert!(md.contains("Idempotent-Replayed: true"));
    }

    // R17: the `type` URIs resolve against the repository's own page too: it has a
    // section for every kind.
    #[test]
    fn r17_the_problems_page_has_a_section_per_kind() {
        let page = include_str!("../../../docs/problems.md");
        for kind in ProblemKind::ALL {
            let slug = kind.slug();
            assert!(page.contains(&format!("\n## {slug}\n")), "{slug}");
        }
    }

    // R17: the page shows each answer in the shape this deployment sends.
    #[test]
    fn r17_the_page_shows_the_configured_shape() {
        let md = markdown(&Policy::default(), &[]);
        assert!(
            md.contains("`Content-Type: application/problem+json`"),
            "{md}"
        );
        assert!(md.contains("\"code\": \"in-flight\""), "{md}");
        let templates = idem::core::problem::ProblemTemplates::parse(
            r#"{"*": {"body": {"error": {"code": "{code}", "message": "{detail}"}}},
                "in-flight": {"content_type": "application/vnd.example+json",
                              "body": {"error": {"code": "{code}", "retry_in": "{retry_after}"}}}}"#,
        )
        .unwrap();
        let policy = Policy::builder()
            .problem_templates(templates)
            .build()
            .unwrap();
        let md = markdown(&policy, &[]);
        assert!(md.contains("in this API's error shape"), "{md}");
        assert!(
            md.contains("`Content-Type: application/vnd.example+json`"),
            "{md}"
        );
        assert!(md.contains("\"retry_in\": 1"), "{md}");
        assert!(md.contains("\"code\": \"payload-mismatch\""), "{md}");
        assert!(!md.contains("application/problem+json`)"), "{md}");
    }
}
