//! The checks themselves: what each sends and how its answers are judged.

use std::time::Duration;

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, DATE, RETRY_AFTER, TRANSFER_ENCODING,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::client::{Answer, Call, Endpoint, TransportError};
use super::compare::{body_difference, compared_headers, differences, display_name, tally};
use super::{
    CheckArgs, DEFAULT_BODY, Finding, InFlight, MissingKey, PLACEHOLDER, PLACEHOLDER_SPACED,
    Report, Verdict, Which,
};

/// The largest `--body-file` read.
const MAX_BODY_FILE: u64 = 1 << 20;

/// A body with an optional `{{n}}`.
#[derive(Clone, Debug)]
pub(super) struct Template {
    text: String,
    pub(super) fresh: bool,
}

impl Template {
    fn new(text: String) -> Self {
        let fresh = text.contains(PLACEHOLDER) || text.contains(PLACEHOLDER_SPACED);
        Self { text, fresh }
    }

    fn render(&self, n: &str) -> Bytes {
        Bytes::from(
            self.text
                .replace(PLACEHOLDER, n)
                .replace(PLACEHOLDER_SPACED, n),
        )
    }
}

/// Parses `Name: value`.
fn header_line(flag: &str, line: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = line.split_once(':').ok_or_else(|| {
        anyhow::anyhow!("--{flag} `{line}`: expected NAME: VALUE, e.g. \"Authorization: Bearer x\"")
    })?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| anyhow::anyhow!("--{flag}: `{}` is not a header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| anyhow::anyhow!("--{flag} {name}: the value is not a header value"))?;
    Ok((name, value))
}

fn header_name(flag: &str, name: &str) -> anyhow::Result<HeaderName> {
    HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| anyhow::anyhow!("--{flag}: `{}` is not a header name", name.trim()))
}

pub(super) struct Checker {
    pub(super) ep: Endpoint,
    key_header: HeaderName,
    marker: HeaderName,
    ignore: Vec<HeaderName>,
    pub(super) body: Template,
    invalid_body: Option<Template>,
    second: Option<(HeaderName, HeaderValue)>,
    in_flight: Option<InFlight>,
    mismatch_status: StatusCode,
    missing_key: Option<MissingKey>,
    concurrency: u32,
    run: String,
    n: u32,
    /// R9's problem `type`, for R10 to compare with.
    mismatch_type: Option<String>,
}

impl Checker {
    pub(super) fn new(args: &CheckArgs) -> anyhow::Result<Self> {
        let method = Method::from_bytes(args.method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| anyhow::anyhow!("--method `{}` is not a method", args.method))?;
        let mut base = HeaderMap::new();
        for line in &args.headers {
            let (name, value) = header_line("header", line)?;
            base.append(name, value);
        }
        if !base.contains_key(CONTENT_TYPE) {
            base.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let key_header = header_name("key-header", &args.key_header)?;
        anyhow::ensure!(
            !base.contains_key(&key_header),
            "--header sets {key_header}: the checks choose the keys themselves"
        );
        let marker = header_name("replay-header", &args.replay_header)?;
        let ignore = args
            .ignore_header
            .iter()
            .map(|n| header_name("ignore-header", n))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let body = match (&args.body, &args.body_file) {
            (Some(b), _) => b.clone(),
            (None, Some(path)) => read_body_file(path)?,
            (None, None) => DEFAULT_BODY.to_owned(),
        };
        let second = args
            .second_credential
            .as_deref()
            .map(|l| header_line("second-credential", l))
            .transpose()?;
        if let Some((name, value)) = &second {
            anyhow::ensure!(
                base.get_all(name).iter().all(|v| v != value),
                "--second-credential is the same as the --header {name}: give another caller's"
            );
        }
        let mismatch_status = match args.mismatch_status {
            400 | 422 => StatusCode::from_u16(args.mismatch_status)?,
            other => anyhow::bail!("--mismatch-status {other}: expected 422 or 400"),
        };
        anyhow::ensure!(
            args.concurrency >= 2,
            "--concurrency {}: at least 2 duplicates are needed",
            args.concurrency
        );
        anyhow::ensure!(
            args.concurrency <= 256,
            "--concurrency {}: at most 256",
            args.concurrency
        );
        anyhow::ensure!(
            !args.timeout.is_zero(),
            "--timeout must be longer than zero"
        );
        let ep = Endpoint::new(&args.url, method, base, args.timeout, args.budget)?;
        let run = idem::core::record::OwnerToken::random().to_hex()[..12].to_owned();
        Ok(Self {
            ep,
            key_header,
            marker,
            ignore,
            body: Template::new(body),
            invalid_body: args.invalid_body.clone().map(Template::new),
            second,
            in_flight: args.in_flight,
            mismatch_status,
            missing_key: args.missing_key,
            concurrency: args.concurrency,
            run,
            n: 0,
            mismatch_type: None,
        })
    }

    /// Requests a check sends (0: it cannot run for want of a flag).
    pub(super) fn cost(&self, which: Which) -> u32 {
        match which {
            Which::Replay => 2,
            Which::Mismatch if self.body.fresh => 3,
            Which::Mismatch => 0,
            Which::Concurrent => self.concurrency + 1,
            Which::InvalidKey => INVALID_KEYS + 1,
            Which::MissingKey => 1,
            Which::ValidationReplay if self.invalid_body.is_some() => 2,
            Which::Scope if self.second.is_some() => 2,
            Which::ValidationReplay | Which::Scope => 0,
        }
    }

    pub(super) async fn run(mut self) -> Result<Report, TransportError> {
        let mut findings = Vec::new();
        for which in Which::ALL {
            let cost = self.cost(which);
            let finding = |verdict, evidence: String| Finding {
                rule: which.rule(),
                name: which.name(),
                verdict,
                evidence,
            };
            if cost == 0 {
                findings.push(finding(Verdict::Skip, self.why_not(which)));
                continue;
            }
            if !self.ep.reserve(cost) {
                findings.push(finding(
                    Verdict::Skip,
                    format!("needs {cost} requests, {} left in --budget", self.ep.left()),
                ));
                continue;
            }
            let (verdict, evidence) = match which {
                Which::Replay => self.replay().await?,
                Which::Mismatch => self.mismatch().await?,
                Which::Concurrent => self.concurrent().await?,
                Which::InvalidKey => self.invalid_key().await?,
                Which::MissingKey => self.missing_key().await?,
                Which::ValidationReplay => self.validation_replay().await?,
                Which::Scope => self.scope().await?,
            };
            findings.push(finding(verdict, evidence));
        }
        Ok(Report {
            method: self.ep.method().to_string(),
            url: self.ep.url(),
            budget: self.ep.left() + self.ep.sent(),
            sent: self.ep.sent(),
            findings,
        })
    }

    fn why_not(&self, which: Which) -> String {
        match which {
            Which::Mismatch => {
                format!(
                    "the body has no {PLACEHOLDER}, so there is no second body to reuse the key with"
                )
            }
            Which::ValidationReplay => {
                "give --invalid-body with a body the endpoint refuses as invalid (4xx)".to_owned()
            }
            Which::Scope => "give --second-credential with another caller's credential".to_owned(),
            _ => "not run".to_owned(),
        }
    }

    /// A fresh key for a check.
    fn key(&self, label: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("idem-check-{}-{label}", self.run))
            .unwrap_or_else(|_| HeaderValue::from_static("idem-check"))
    }

    /// A fresh operation's body.
    fn next_body(&mut self, template: &Template) -> Bytes {
        self.n += 1;
        template.render(&format!("{}-{}", self.run, self.n))
    }

    fn keyed(&self, key: &HeaderValue, body: &Bytes) -> Call {
        Call {
            headers: vec![(self.key_header.clone(), key.clone())],
            without: Vec::new(),
            body: body.clone(),
        }
    }

    fn marked(&self, a: &Answer) -> bool {
        a.headers.contains_key(&self.marker)
    }

    fn marker_text(&self, a: &Answer) -> String {
        match a.header(self.marker.as_str()) {
            Some(v) => format!("{}: {v}", display_name(&self.marker)),
            None => format!("no {}", display_name(&self.marker)),
        }
    }

    /// R8: a first request, the same again.
    async fn replay(&mut self) -> Result<(Verdict, String), TransportError> {
        let key = self.key("replay");
        let body = self.next_body(&self.body.clone());
        let call = self.keyed(&key, &body);
        let first = self.ep.send(&call).await?;
        if !first.status.is_success() {
            return Ok((Verdict::Fail, not_success(&first)));
        }
        let retry = self.ep.send(&call).await?;
        let diffs = differences(&first, &retry, &self.ignored());
        if !diffs.is_empty() {
            return Ok((
                Verdict::Fail,
                format!(
                    "{} then {} ({}): the retry differs: {}",
                    first.status_text(),
                    retry.status_text(),
                    self.marker_text(&retry),
                    diffs.join("; ")
                ),
            ));
        }
        if !self.marked(&retry) {
            return Ok((
                Verdict::Fail,
                format!(
                    "{} twice, identical, but the retry has no {} header: a replay is marked \
                     (R8; --replay-header names another)",
                    first.status_text(),
                    display_name(&self.marker)
                ),
            ));
        }
        Ok((
            Verdict::Pass,
            format!(
                "{} then {} replayed ({}); {} header(s) and the {}-byte body identical{}",
                first.status_text(),
                retry.status_text(),
                self.marker_text(&retry),
                compared_headers(&first, &self.ignored()),
                first.body.len(),
                if first.headers.contains_key(DATE) {
                    " (Date ignored)"
                } else {
                    ""
                }
            ),
        ))
    }

    /// R9: the key reused with another body, then the first request again.
    async fn mismatch(&mut self) -> Result<(Verdict, String), TransportError> {
        let key = self.key("mismatch");
        let a = self.next_body(&self.body.clone());
        let b = self.next_body(&self.body.clone());
        let first = self.ep.send(&self.keyed(&key, &a)).await?;
        if !first.status.is_success() {
            return Ok((Verdict::Fail, not_success(&first)));
        }
        let other = self.ep.send(&self.keyed(&key, &b)).await?;
        let again = self.ep.send(&self.keyed(&key, &a)).await?;
        let kind = problem_text(&other);
        self.mismatch_type = other.problem_type();
        if other.status.is_success() {
            let ran = if other.body == first.body {
                "answered with the first request's response"
            } else {
                "ran the other request"
            };
            return Ok((
                Verdict::Fail,
                format!(
                    "the key reused with another body got {}: it {ran}",
                    other.status_text()
                ),
            ));
        }
        if other.status != self.mismatch_status {
            return Ok((
                Verdict::Fail,
                format!(
                    "the key reused with another body got {}{kind}, expected {} \
                     (--mismatch-status)",
                    other.status_text(),
                    self.mismatch_status.as_u16()
                ),
            ));
        }
        if !other.is_problem() {
            return Ok((
                Verdict::Fail,
                format!(
                    "the key reused with another body got {}, but not as \
                     application/problem+json (R17)",
                    other.status_text()
                ),
            ));
        }
        if again.status != first.status || again.body != first.body || !self.marked(&again) {
            let how = body_difference(&first.body, &again.body)
                .unwrap_or_else(|| self.marker_text(&again));
            return Ok((
                Verdict::Fail,
                format!(
                    "refused with {}{kind}, but then the first request no longer replays: \
                     {} ({how})",
                    other.status_text(),
                    again.status_text()
                ),
            ));
        }
        Ok((
            Verdict::Pass,
            format!(
                "the key reused with another body: {}{kind}; the first request still replays \
                 ({})",
                other.status_text(),
                again.status_text()
            ),
        ))
    }

    /// R10: duplicates at once.
    async fn concurrent(&mut self) -> Result<(Verdict, String), TransportError> {
        let key = self.key("concurrent");
        let body = self.next_body(&self.body.clone());
        let call = self.keyed(&key, &body);
        let calls = vec![call.clone(); self.concurrency as usize];
        let started = std::time::Instant::now();
        let answers = self.ep.send_together(calls).await?;
        let took = started.elapsed();
        let after = self.ep.send(&call).await?;

        let n = answers.len();
        let statuses = tally(&answers);
        let successes: Vec<&Answer> = answers.iter().filter(|a| a.status.is_success()).collect();
        let mut bodies: Vec<&Bytes> = successes.iter().map(|a| &a.body).collect();
        bodies.sort();
        bodies.dedup();
        let unmarked = successes.iter().filter(|a| !self.marked(a)).count();
        let conflicts: Vec<&Answer> = answers.iter().filter(|a| a.status == 409).collect();
        let others: Vec<&Answer> = answers
            .iter()
            .filter(|a| !a.status.is_success() && a.status != 409)
            .collect();
        let head = format!("{n} at once: {statuses}");
        let mut fails = Vec::new();
        if bodies.len() > 1 {
            fails.push(format!(
                "{} distinct bodies among the {} successes: more than one execution \
                 (or replays that differ, see R8)",
                bodies.len(),
                successes.len()
            ));
        } else if unmarked > 1 {
            fails.push(format!(
                "{unmarked} successes without {}: each ran (R10 allows one)",
                display_name(&self.marker)
            ));
        }
        if !others.is_empty() {
            fails.push(format!(
                "{} answered neither a success nor 409: {}",
                others.len(),
                tally(others.iter().copied())
            ));
        }
        if self.in_flight == Some(InFlight::Wait) && !conflicts.is_empty() {
            fails.push(format!(
                "{} got 409, but --in-flight wait promises the replay",
                conflicts.len()
            ));
        }
        if let Some(c) = conflicts.iter().find(|c| !retry_after_ok(c)) {
            fails.push(format!(
                "a 409 without a Retry-After in seconds ({})",
                c.header(RETRY_AFTER.as_str()).unwrap_or("none")
            ));
        }
        if let (Some(mismatch), Some(t)) = (
            &self.mismatch_type,
            conflicts.iter().find_map(|c| c.problem_type()),
        ) && *mismatch == t
        {
            fails.push(format!(
                "the 409's type `{t}` is R9's: a client cannot tell \"retry later\" from \
                 \"key used up\""
            ));
        }
        match successes.first() {
            Some(one) if after.status != one.status || after.body != one.body => {
                let how = body_difference(&one.body, &after.body).unwrap_or_default();
                fails.push(format!(
                    "a retry afterwards got {}, not the replay: {how}",
                    after.status_text()
                ));
            }
            None if !after.status.is_success() => {
                fails.push(format!(
                    "no success at all, and a retry afterwards got {}",
                    after.status_text()
                ));
            }
            _ => {}
        }
        if !fails.is_empty() {
            return Ok((Verdict::Fail, format!("{head}; {}", fails.join("; "))));
        }
        let mut detail = format!("{head}; one execution, ");
        if conflicts.is_empty() {
            detail.push_str("the rest identical replays");
        } else {
            let hint = conflicts
                .iter()
                .find_map(|c| c.header(RETRY_AFTER.as_str()))
                .unwrap_or_default();
            // The hint beside the time the duplicates actually took, so a reader can
            // judge what R10 asks for: short and honest, not the whole lease.
            detail.push_str(&format!(
                "the rest 409 (Retry-After: {hint}, all answered within {}) or identical replays",
                humantime::format_duration(Duration::from_millis(took.as_millis() as u64))
            ));
        }
        detail.push_str(&format!(
            "; a retry afterwards replays it ({})",
            after.status_text()
        ));
        Ok((Verdict::Pass, detail))
    }

    /// R1: keys that are not keys.
    async fn invalid_key(&mut self) -> Result<(Verdict, String), TransportError> {
        let name = self.key_header.clone();
        let prefix = format!("idem-check-{}-", self.run);
        let long = format!("{prefix}{}", "x".repeat(MAX_KEY + 1 - prefix.len()));
        let dup_a = self.key("two-lines-a");
        let dup_b = self.key("two-lines-b");
        let cases: [(&str, Vec<HeaderValue>); INVALID_KEYS as usize] = [
            ("empty", vec![HeaderValue::from_static("")]),
            ("\"\"", vec![HeaderValue::from_static("\"\"")]),
            (
                "256 chars",
                vec![HeaderValue::from_str(&long).unwrap_or(HeaderValue::from_static(""))],
            ),
            ("two lines", vec![dup_a.clone(), dup_b]),
            (
                "unterminated quote",
                vec![
                    HeaderValue::from_str(&format!("\"{prefix}open"))
                        .unwrap_or(HeaderValue::from_static("\"")),
                ],
            ),
        ];
        let mut seen = Vec::new();
        let mut accepted = Vec::new();
        for (label, values) in cases {
            let body = self.next_body(&self.body.clone());
            let call = Call {
                headers: values.into_iter().map(|v| (name.clone(), v)).collect(),
                without: Vec::new(),
                body,
            };
            let a = self.ep.send(&call).await?;
            seen.push(format!("{label} {}", a.status.as_u16()));
            if !a.status.is_client_error() {
                accepted.push(label);
            }
        }
        let mut fails = Vec::new();
        if !accepted.is_empty() {
            fails.push(format!("not refused with 4xx: {}", accepted.join(", ")));
        }
        // The refused two-line request must have left nothing behind under its keys.
        let body = self.next_body(&self.body.clone());
        let follow = self.ep.send(&self.keyed(&dup_a, &body)).await?;
        if self.marked(&follow) {
            fails.push(
                "the first key of the refused two-line request now replays: it was stored"
                    .to_owned(),
            );
        } else if !follow.status.is_success() {
            fails.push(format!(
                "the first key of the refused two-line request is not usable afterwards: {}",
                follow.status_text()
            ));
        }
        let seen = seen.join(", ");
        if fails.is_empty() {
            Ok((
                Verdict::Pass,
                format!(
                    "{seen}; the first key of the two lines is still unused afterwards ({})",
                    follow.status_text()
                ),
            ))
        } else {
            Ok((Verdict::Fail, format!("{seen}: {}", fails.join("; "))))
        }
    }

    /// R3: no key at all.
    async fn missing_key(&mut self) -> Result<(Verdict, String), TransportError> {
        let body = self.next_body(&self.body.clone());
        let call = Call {
            headers: Vec::new(),
            without: vec![self.key_header.clone()],
            body,
        };
        let a = self.ep.send(&call).await?;
        let what = if a.status.is_success() {
            format!("no key: {}, it ran unprotected", a.status_text())
        } else {
            format!("no key: {}{}", a.status_text(), problem_text(&a))
        };
        let verdict = match self.missing_key {
            None => Verdict::Info,
            Some(MissingKey::Run) if a.status.is_success() => Verdict::Pass,
            Some(MissingKey::Refuse) if a.status == StatusCode::BAD_REQUEST && a.is_problem() => {
                Verdict::Pass
            }
            Some(_) => Verdict::Fail,
        };
        let promise = match self.missing_key {
            None => String::new(),
            Some(MissingKey::Run) => "; --missing-key run promises it runs".to_owned(),
            Some(MissingKey::Refuse) => {
                "; --missing-key refuse promises a 400 problem document".to_owned()
            }
        };
        Ok((verdict, format!("{what}{promise}")))
    }

    /// R7, R8: a validation error is stored and replayed.
    async fn validation_replay(&mut self) -> Result<(Verdict, String), TransportError> {
        let Some(template) = self.invalid_body.clone() else {
            return Ok((Verdict::Skip, self.why_not(Which::ValidationReplay)));
        };
        let key = self.key("validation");
        let body = self.next_body(&template);
        let call = self.keyed(&key, &body);
        let first = self.ep.send(&call).await?;
        let kept = first.status.is_client_error()
            && !matches!(first.status.as_u16(), 408 | 409 | 425 | 429);
        if !kept {
            return Ok((
                Verdict::Fail,
                format!(
                    "--invalid-body got {}, not a 4xx validation error (408, 409, 425 and \
                     429 are never stored, R7): give a body the endpoint refuses as invalid",
                    first.status_text()
                ),
            ));
        }
        let retry = self.ep.send(&call).await?;
        let diffs = differences(&first, &retry, &self.ignored());
        if !diffs.is_empty() {
            return Ok((
                Verdict::Fail,
                format!(
                    "{} then {}: the retry is not the stored validation error: {}",
                    first.status_text(),
                    retry.status_text(),
                    diffs.join("; ")
                ),
            ));
        }
        if !self.marked(&retry) {
            return Ok((
                Verdict::Fail,
                format!(
                    "{} twice, identical, but without {}: it ran again instead of replaying",
                    first.status_text(),
                    display_name(&self.marker)
                ),
            ));
        }
        Ok((
            Verdict::Pass,
            format!(
                "{} then the same {} replayed ({}), byte for byte",
                first.status_text(),
                retry.status_text(),
                self.marker_text(&retry)
            ),
        ))
    }

    /// R4: another credential, the same key and body.
    async fn scope(&mut self) -> Result<(Verdict, String), TransportError> {
        let Some((name, value)) = self.second.clone() else {
            return Ok((Verdict::Skip, self.why_not(Which::Scope)));
        };
        let key = self.key("scope");
        let body = self.next_body(&self.body.clone());
        let first = self.ep.send(&self.keyed(&key, &body)).await?;
        let mut call = self.keyed(&key, &body);
        call.without.push(name.clone());
        call.headers.push((name.clone(), value));
        let other = self.ep.send(&call).await?;
        let same = other.status == first.status && other.body == first.body;
        if self.marked(&other) || same {
            return Ok((
                Verdict::Fail,
                format!(
                    "the second credential got {} ({}{}): the first credential's stored \
                     response",
                    other.status_text(),
                    self.marker_text(&other),
                    if same { ", identical body" } else { "" }
                ),
            ));
        }
        Ok((
            Verdict::Pass,
            format!(
                "first credential {}; the second, same key and body: {} with a response of its \
                 own{}",
                first.status_text(),
                other.status_text(),
                body_difference(&first.body, &other.body)
                    .map(|d| format!("; {d}"))
                    .unwrap_or_default()
            ),
        ))
    }

    fn ignored(&self) -> Vec<HeaderName> {
        let mut v = vec![
            DATE,
            self.marker.clone(),
            CONNECTION,
            HeaderName::from_static("keep-alive"),
            TRANSFER_ENCODING,
            CONTENT_LENGTH,
        ];
        v.extend(self.ignore.iter().cloned());
        v
    }
}

/// How many keys [`Checker::invalid_key`] tries.
const INVALID_KEYS: u32 = 5;

/// The longest valid key; one more is over-long.
const MAX_KEY: usize = 255;

fn read_body_file(path: &std::path::Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read --body-file {}: {e}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= MAX_BODY_FILE,
        "--body-file {}: larger than 1 MiB",
        path.display()
    );
    std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read --body-file {}: {e}", path.display()))
}

fn not_success(first: &Answer) -> String {
    format!(
        "the first request got {}{}: the checks need a first request that succeeds (2xx); \
         check the URL, --method, --body and the credential",
        first.status_text(),
        problem_text(first)
    )
}

/// ` `type`` of a problem document (with its leading space), or nothing.
fn problem_text(a: &Answer) -> String {
    match a.problem_type() {
        Some(t) => format!(" `{t}`"),
        None if a.is_problem() => " (a problem document without a type)".to_owned(),
        None => String::new(),
    }
}

fn retry_after_ok(a: &Answer) -> bool {
    a.header(RETRY_AFTER.as_str())
        .is_some_and(|v| v.trim().parse::<u64>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines_parse_or_explain() {
        let (n, v) = header_line("header", "Authorization: Bearer a:b").unwrap();
        assert_eq!(n, "authorization");
        assert_eq!(v, "Bearer a:b");
        assert!(header_line("header", "no colon").is_err());
        assert!(header_line("header", "bad name: x").is_err());
    }
}
