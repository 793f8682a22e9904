//! `idem docs`: Markdown for an API's public docs, from the effective configuration.
//!
//! One section per problem type, whose anchor is exactly the type's slug, so the `type`
//! URIs (`<problem_base>#<slug>`, R17) resolve to the text that explains them when the
//! output is published at `problem_base`.

use std::fmt::Write as _;
use std::time::Duration;

use idem::ProblemKind;
use idem::policy::{OnConcurrent, Policy};

use crate::routes::Route;

/// The Markdown for `policy` (requests matching no rule) and `routes`.
pub fn markdown(policy: &Policy, routes: &[Route]) -> String {
    let header = policy.header().as_str();
    let header = display_header(header);
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
    for route in routes {
        match &route.policy {
            Some(p) => {
                let _ = writeln!(w, "| `{}` | {} |", route.pattern.path(), row(p));
            }
            None => {
                let _ = writeln!(
                    w,
                    "| `{}` | {} | not used | — | — |",
                    route.pattern.path(),
                    methods_of(route.pattern.methods())
                );
            }
        }
    }
    let others = if routes.is_empty() {
        "every endpoint"
    } else {
        "every other endpoint"
    };
    let _ = writeln!(w, "| {others} | {} |", row(policy));
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
    for kind in ProblemKind::ALL {
        let status = if *kind == ProblemKind::PayloadMismatch {
            policy.mismatch_status().as_u16()
        } else {
            kind.status().as_u16()
        };
        let slug = kind.slug();
        let _ = writeln!(
            w,
            "| {status} | [`#{slug}`](#{slug}) | {} |",
            advice(*kind).0
        );
    }
    let _ = writeln!(w);

    for kind in ProblemKind::ALL {
        let slug = kind.slug();
        let status = if *kind == ProblemKind::PayloadMismatch {
            policy.mismatch_status().as_u16()
        } else {
            kind.status().as_u16()
        };
        let _ = writeln!(w, "<a id=\"{slug}\"></a>\n\n### {slug}\n");
        let _ = writeln!(w, "**{status} {}.** {}\n", kind.title(), advice(*kind).1);
    }
    md
}

fn display_header(lower: &str) -> String {
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

/// (short advice for the table, the section's text) per problem kind.
fn advice(kind: ProblemKind) -> (&'static str, &'static str) {
    match kind {
        ProblemKind::InvalidKey => (
            "fix the key",
            "The key header was sent twice, is empty (`` or `\"\"`), too long, or not visible \
             ASCII, bare or as a quoted string. Nothing was processed. Fix the key and send \
             the request again.",
        ),
        ProblemKind::MissingKey => (
            "add a key",
            "This endpoint requires an idempotency key and the request had none. Nothing was \
             processed. Generate a key (a UUID) for the operation and send it with the \
             request and every retry of it.",
        ),
        ProblemKind::PayloadMismatch => (
            "use a new key for a new operation",
            "This key was already used with a *different* request (method, path and query, \
             body, or significant headers). The earlier request's result stands and nothing \
             was processed. Do not retry with this key: a new operation needs a new key.",
        ),
        ProblemKind::InFlight => (
            "retry the same request after `Retry-After` seconds",
            "A request with this key is still being processed; nothing new was started. \
             Retry the *same* request with the *same* key after the `Retry-After` seconds: \
             you will receive the first request's response once it is done.",
        ),
        ProblemKind::RequestTooLarge => (
            "send a smaller body",
            "The request body exceeds the limit for this endpoint. Nothing was processed or \
             stored; the key is still unused.",
        ),
        ProblemKind::NotRetained => (
            "do not retry; look the result up",
            "The request with this key was processed (`original_status` in the document \
             says how it answered) but its response was not kept, because it was too large \
             or streamed. It will not be processed again. Look the result up by other means, \
             e.g. a GET on the resource.",
        ),
        ProblemKind::BadRequestBody => (
            "send the request again",
            "The request body could not be read (the connection broke while it was sent, \
             or it was framed with a transfer coding other than `chunked` alone). \
             Nothing was processed; send the request again with the same key, its body \
             framed by Content-Length or plain `chunked`.",
        ),
        ProblemKind::AmbiguousRequest => (
            "send the request in its plain form",
            "The request could be read in more than one way, so it was refused rather than \
             guessed: an encoded `/` (`%2F`) or a `\\` in the path, a malformed \
             percent-encoding, a dot segment with parameters (`..;`), a method in another \
             case than its registered one (`post` for `POST`), or a missing, repeated or \
             invalid `Host` header. Nothing was processed. Send the path unencoded and the \
             method in upper case.",
        ),
        ProblemKind::UnsupportedMethod => (
            "do not use this method here",
            "The method asks for something this reverse proxy does not do (`CONNECT`: a \
             tunnel). Nothing was processed.",
        ),
        ProblemKind::StoreUnavailable => (
            "retry later with the same key",
            "The service cannot record the request right now, so it did not run it. Retry \
             with the same key after the `Retry-After` seconds.",
        ),
        ProblemKind::UpstreamUnavailable => (
            "retry with the same key",
            "The API behind the idempotency layer could not be reached, broke the \
             connection, or sent a malformed answer (502). Nothing was stored and the key \
             was released: retry with the same key.",
        ),
        ProblemKind::UpstreamTimeout => (
            "retry with the same key",
            "The API behind the idempotency layer did not answer in time (504). The key was \
             released: retry with the same key.",
        ),
        ProblemKind::Internal => (
            "retry with the same key; report it if it persists",
            "An internal error in the idempotency layer. Retry with the same key; report it \
             if it persists.",
        ),
        _ => (
            "see the `detail`",
            "An error of the idempotency layer; the document's `detail` explains it.",
        ),
    }
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
            assert!(md.contains(&format!("<a id=\"{slug}\"></a>")), "{slug}");
            assert!(md.contains(&format!("\n### {slug}\n")), "{slug}");
        }
        assert!(md.contains("Idempotency-Key"));
        assert!(md.contains("Idempotent-Replayed: true"));
    }
}
