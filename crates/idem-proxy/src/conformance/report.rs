//! The findings as a table for people, JSON for scripts, JUnit XML for CI.

use std::fmt::Write as _;

use super::{Report, Verdict};

/// The findings as a table, then a summary line.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "idem check {} {}", report.method, report.url);
    let _ = writeln!(w, "{:<6} {:<6} {:<18} evidence", "result", "rule", "check");
    for f in &report.findings {
        let _ = writeln!(
            w,
            "{:<6} {:<6} {:<18} {}",
            f.verdict.to_string(),
            f.rule,
            f.name,
            f.evidence
        );
    }
    let _ = writeln!(w, "{}", summary(report));
    out
}

fn summary(report: &Report) -> String {
    format!(
        "{} checks: {} PASS, {} FAIL, {} INFO, {} SKIP; {} of {} requests (--budget) sent",
        report.findings.len(),
        report.count(Verdict::Pass),
        report.count(Verdict::Fail),
        report.count(Verdict::Info),
        report.count(Verdict::Skip),
        report.sent,
        report.budget
    )
}

/// The findings as one JSON document.
pub fn to_json(report: &Report) -> String {
    let checks: Vec<serde_json::Value> = report
        .findings
        .iter()
        .map(|f| {
            serde_json::json!({
                "rule": f.rule,
                "check": f.name,
                "result": f.verdict.to_string(),
                "evidence": f.evidence,
            })
        })
        .collect();
    serde_json::json!({
        "method": report.method,
        "url": report.url,
        "budget": report.budget,
        "requests": report.sent,
        "passed": report.count(Verdict::Pass),
        "failed": report.count(Verdict::Fail),
        "checks": checks,
    })
    .to_string()
}

/// The findings as a JUnit XML report: one test case per check, INFO as a passed case
/// with its evidence as output.
pub fn junit(report: &Report) -> String {
    let failures = report.count(Verdict::Fail);
    let skipped = report.count(Verdict::Skip);
    let tests = report.findings.len();
    let suite = xml(&format!("idem check {} {}", report.method, report.url));
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    let _ = writeln!(
        w,
        "<testsuites name=\"idem check\" tests=\"{tests}\" failures=\"{failures}\" \
         skipped=\"{skipped}\">"
    );
    let _ = writeln!(
        w,
        "  <testsuite name=\"{suite}\" tests=\"{tests}\" failures=\"{failures}\" \
         skipped=\"{skipped}\">"
    );
    for f in &report.findings {
        let name = xml(&format!("{} {}", f.rule, f.name));
        let evidence = xml(&f.evidence);
        let _ = write!(w, "    <testcase classname=\"idem.check\" name=\"{name}\">");
        match f.verdict {
            Verdict::Fail => {
                let _ = write!(w, "<failure message=\"{evidence}\"/>");
            }
            Verdict::Skip => {
                let _ = write!(w, "<skipped message=\"{evidence}\"/>");
            }
            Verdict::Pass | Verdict::Info => {
                let _ = write!(w, "<system-out>{} {evidence}</system-out>", f.verdict);
            }
        }
        let _ = writeln!(w, "</testcase>");
    }
    let _ = writeln!(w, "  </testsuite>");
    let _ = writeln!(w, "</testsuites>");
    out
}

/// Escapes text for an XML attribute or element; characters XML 1.0 cannot carry at all
/// become U+FFFD.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Finding;
    use super::*;

    #[test]
    fn junit_escapes_and_counts() {
        let report = Report {
            method: "POST".into(),
            url: "http://h/x?a=1&b=2".into(),
            budget: 60,
            sent: 3,
            findings: vec![
                Finding {
                    rule: "R8",
                    name: "replay",
                    verdict: Verdict::Fail,
                    evidence: "body \"<a>\" \u{1}".into(),
                },
                Finding {
                    rule: "R4",
                    name: "scope",
                    verdict: Verdict::Skip,
                    evidence: "give it".into(),
                },
            ],
        };
        let x = junit(&report);
        assert!(x.contains("tests=\"2\" failures=\"1\" skipped=\"1\""));
        assert!(x.contains("x?a=1&amp;b=2"));
        assert!(x.contains("<failure message=\"body &quot;&lt;a&gt;&quot; \u{fffd}\"/>"));
        assert!(x.contains("<testcase classname=\"idem.check\" name=\"R4 scope\"><skipped"));
    }
}
