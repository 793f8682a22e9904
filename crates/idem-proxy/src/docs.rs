//! `idem docs`: Markdown for an API's public docs, from the effective configuration.
//!
//! One section per problem type, whose anchor is exactly the type's slug, so the `type`
//! URIs (`<problem_base>#<slug>`, R17) resolve to the text that explains them when the
//! output is published at `problem_base`.

use std::fmt::Write as _;
use std::time::Duration;

use idem::ProblemKind;
use idem::policy::{OnConcurrent, Policy};
use idem::problem::Audience;

use crate::routes::{self, Route};
use crate::text::title_case;

/// The Markdown for `policy` (requests matching no rule) and `routes`.
pub fn markdown(policy: &Policy, routes: &[Route]) -> String {
    let header = policy.header().as_str();
    let header = title_case(header);
    let default_base = idem::problem::TYPE_BASE.trim_end_matches('#');
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
        let endpoint = match line.route {
            Some(r) => format!("`{}`", r.pattern.path()),
            None if routes.is_empty() => "every endpoint".to_owned(),
            None => "every other endpoint".to_owned(),
        };
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
         `\\\\` escapes); both forms name the same key. Send the header once. Keys are per \
         credential: the same key sent with another `Authorization` is a different \
         operation, and nobody else ever receives your stored response.\n",
        policy.max_key_len()
    );

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

    let _ = writeln!(w, "## Status codes idem may answer\n");
    let _ = writeln!(
        w,
        "Besides your API's own responses, these come from the idempotency layer, as \
         `application/problem+json` (RFC 9457). Branch on `type`, which is \
         `{base}#` followed by the fragment below (this page's sections); `detail` is \
         prose for humans.\n"
    );
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
    }
    md
}

/// The problems an API's clients can meet (not the admin API's).
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
}
