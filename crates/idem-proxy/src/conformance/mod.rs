//! `idem check URL`: a black-box conformance check of a live endpoint against the
//! idempotency rules, from the outside, with nothing but HTTP.
//!
//! Each check is named after the rule it exercises and ends PASS, FAIL, INFO (what the
//! endpoint did where the rules leave the choice to it) or SKIP (not enough budget, or
//! a flag it needs was not given), with the evidence: statuses, the differing header,
//! the first differing byte of a body.
//!
//! | rule | check | what is sent |
//! |---|---|---|
//! | R8 | `replay` | a first request, then the same again: status, headers and body byte for byte, plus the replay marker |
//! | R9 | `mismatch` | a first request, the same key with another body (refused with `--mismatch-status`), the first again (still replayed) |
//! | R10 | `concurrent` | `--concurrency` duplicates at once: one execution, the rest 409 with `Retry-After` or identical replays |
//! | R1 | `invalid-key` | empty, `""`, 256 characters, two header lines, an unterminated quote: each 4xx, nothing stored |
//! | R3 | `missing-key` | no key: INFO, or checked against `--missing-key` |
//! | R7/R8 | `validation-replay` | `--invalid-body` twice: the 4xx is stored and replayed, not answered as a duplicate |
//! | R4 | `scope` | the same key under `--second-credential`: never the first credential's response |
//!
//! It sends at most `--budget` requests, all to the URL given (never following a
//! redirect), each check with fresh keys and, through `{{n}}` in the body, a fresh
//! operation; so it creates real operations on the endpoint.

mod checks;
mod client;
mod compare;
mod report;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

pub use client::{Answer, Call, Endpoint, TransportError};
pub use report::{junit, table, to_json};

use crate::settings::parse_duration;
use checks::Checker;

/// The placeholder a body template's fresh value replaces; `{{ n }}` is the same.
pub const PLACEHOLDER: &str = "{{n}}";

/// [`PLACEHOLDER`] with spaces, as template languages allow (and as `--help` shows it:
/// clap turns the unspaced form's inner braces into a line break).
const PLACEHOLDER_SPACED: &str = "{{ n }}";

/// The body sent when none is given.
pub const DEFAULT_BODY: &str = "{\"idem_check\":\"{{n}}\"}";

/// Flags of `idem check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The endpoint, e.g. http://127.0.0.1:8080/v1/charges (http only; the query is
    /// sent as given).
    pub url: String,
    /// The method of every request.
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// The request body; `{{ n }}` in it becomes a fresh value per operation (no spaces
    /// needed). Default: {"idem_check":"{{ n }}"} as application/json.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Read the body template from a file (`{{ n }}` as in --body).
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// A header sent with every request, e.g. "Authorization: Bearer test_123";
    /// repeatable. Content-Type defaults to application/json.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The key header's name.
    #[arg(long, default_value = "Idempotency-Key")]
    pub key_header: String,
    /// The header that marks a replay (R8).
    #[arg(long, default_value = "Idempotent-Replayed")]
    pub replay_header: String,
    /// A response header that differs on every response by design (a request id),
    /// left out of the replay comparison; repeatable. Date always is.
    #[arg(long, value_name = "NAME")]
    pub ignore_header: Vec<String>,
    /// The most requests sent, all checks together; a check that no longer fits is
    /// skipped.
    #[arg(long, default_value_t = 60)]
    pub budget: u32,
    /// How many duplicates the concurrency check (R10) sends at once (2 or more).
    #[arg(long, default_value_t = 8)]
    pub concurrency: u32,
    /// What the endpoint promises a duplicate still in progress: `conflict` (409 with
    /// Retry-After) or `wait` (the replay); unset, either passes.
    #[arg(long, value_enum)]
    pub in_flight: Option<InFlight>,
    /// The status the endpoint promises for a key reused with another body (R9).
    #[arg(long, default_value_t = 422)]
    pub mismatch_status: u16,
    /// What the endpoint promises a request without a key (R3): `run` (unprotected) or
    /// `refuse` (400); unset, what it does is reported as INFO.
    #[arg(long, value_enum)]
    pub missing_key: Option<MissingKey>,
    /// A body the endpoint refuses with a 4xx validation error (`{{ n }}` allowed), to
    /// check that the error is replayed (R7, R8); unset, that check is skipped.
    #[arg(long, value_name = "BODY")]
    pub invalid_body: Option<String>,
    /// Another caller's credential, e.g. "Authorization: Bearer other_456", to check
    /// that it never receives the first caller's response (R4); it replaces the --header
    /// of the same name.
    #[arg(long, value_name = "NAME: VALUE")]
    pub second_credential: Option<String>,
    /// Time allowed for each connection and each response.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Print the findings as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the findings as a JUnit XML report to FILE, for CI.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

/// What a duplicate in progress gets (R10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InFlight {
    /// 409 with `Retry-After`.
    Conflict,
    /// It waits, then gets the replay.
    Wait,
}

/// What a covered request without a key gets (R3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MissingKey {
    /// It runs, unprotected.
    Run,
    /// 400 with a problem document.
    Refuse,
}

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The endpoint keeps the rule.
    Pass,
    /// It breaks it; the evidence says how.
    Fail,
    /// What it does where the rule leaves the choice to it.
    Info,
    /// Not run.
    Skip,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Info => "INFO",
            Self::Skip => "SKIP",
        })
    }
}

/// One check's result.
#[derive(Clone, Debug)]
pub struct Finding {
    /// The rule it exercises, e.g. `R8`.
    pub rule: &'static str,
    /// The check's name, e.g. `replay`.
    pub name: &'static str,
    /// How it ended.
    pub verdict: Verdict,
    /// What was seen.
    pub evidence: String,
}

/// The whole run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The method checked.
    pub method: String,
    /// The URL checked.
    pub url: String,
    /// The budget.
    pub budget: u32,
    /// Requests sent.
    pub sent: u32,
    /// One per check, in order.
    pub findings: Vec<Finding>,
}

impl Report {
    /// How many checks ended with `verdict`.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.findings
            .iter()
            .filter(|f| f.verdict == verdict)
            .count()
    }
}

/// Some checks failed: `idem check` exits with 1.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} checks failed")]
pub struct Failed {
    /// Failed checks.
    pub failed: usize,
    /// All checks.
    pub total: usize,
}

/// `idem check`: runs the checks, prints the table (or JSON) on stdout, writes the
/// JUnit file if asked; [`Failed`] when a check failed, another error for a bad flag or
/// an endpoint that cannot be reached.
pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let checker = Checker::new(&args)?;
    let planned: u32 = Which::ALL.iter().map(|w| checker.cost(*w)).sum();
    eprintln!(
        "idem check: up to {} requests (--budget {}) to {} {}, and nowhere else; redirects \
         are not followed.\nidem check: each check makes real operations on that endpoint: \
         point it at a test environment.",
        planned.min(args.budget),
        args.budget,
        checker.ep.method(),
        checker.ep.url()
    );
    if !checker.body.fresh {
        eprintln!(
            "idem check: the body has no {PLACEHOLDER}, so every operation sends the same \
             body; the R9 check needs a second body and is skipped"
        );
    }
    let report = checker.run().await?;
    if args.json {
        println!("{}", to_json(&report));
    } else {
        print!("{}", table(&report));
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, junit(&report))
            .map_err(|e| anyhow::anyhow!("cannot write --junit {}: {e}", path.display()))?;
    }
    let failed = report.count(Verdict::Fail);
    if failed > 0 {
        return Err(Failed {
            failed,
            total: report.findings.len(),
        }
        .into());
    }
    Ok(())
}

/// The checks, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Replay,
    Mismatch,
    Concurrent,
    InvalidKey,
    MissingKey,
    ValidationReplay,
    Scope,
}

impl Which {
    const ALL: [Self; 7] = [
        Self::Replay,
        Self::Mismatch,
        Self::Concurrent,
        Self::InvalidKey,
        Self::MissingKey,
        Self::ValidationReplay,
        Self::Scope,
    ];

    fn rule(self) -> &'static str {
        match self {
            Self::Replay => "R8",
            Self::Mismatch => "R9",
            Self::Concurrent => "R10",
            Self::InvalidKey => "R1",
            Self::MissingKey => "R3",
            Self::ValidationReplay => "R7/R8",
            Self::Scope => "R4",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Mismatch => "mismatch",
            Self::Concurrent => "concurrent",
            Self::InvalidKey => "invalid-key",
            Self::MissingKey => "missing-key",
            Self::ValidationReplay => "validation-replay",
            Self::Scope => "scope",
        }
    }
}
