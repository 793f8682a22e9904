//! The operator artefacts under `deploy/` against the real tools: the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), every Grafana
//! dashboard query is valid PromQL, and a real Prometheus server scraping a real
//! `idem serve` reads the series back, answers every dashboard query with data and
//! evaluates every alert rule without error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use http::Method;
use idem_testkit::{Client, CountingUpstream};
use serde_json::Value;

use crate::{common, serve_logged};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

/// Makes sure `promtool` and `prometheus` are installed (scripts/prometheus.sh installs
/// Debian's package when they are not), failing loudly when they cannot be had.
fn ensure_prometheus() {
    let have = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("promtool") && have("prometheus") {
        return;
    }
    let out = Command::new(repo_root().join("scripts/prometheus.sh"))
        .output()
        .expect("cannot run scripts/prometheus.sh");
    assert!(
        out.status.success() && have("promtool") && have("prometheus"),
        "promtool and prometheus are missing and scripts/prometheus.sh could not install them: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn promtool(args: &[&str]) -> Output {
    ensure_prometheus();
    Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run promtool")
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let check = promtool(&["check", "rules", "deploy/prometheus/idem-alerts.yml"]);
    assert_ok("promtool check rules", &check);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(text.contains("SUCCESS: 8 rules found"), "{text}");
    let test = promtool(&["test", "rules", "deploy/prometheus/idem-alerts.test.yml"]);
    assert_ok("promtool test rules", &test);
    // Every alert has a unit test that expects it to fire.
    let rules = std::fs::read_to_string(deploy("prometheus/idem-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/idem-alerts.test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let firing = format!("alertname: {alert}\n        exp_alerts:\n          - exp_labels");
        assert!(tests.contains(&firing), "{alert} has no firing test");
    }
}

/// The dashboard's query expressions, with Grafana's variables replaced by what the
/// query would read with every job and instance selected and `rate_window`.
fn dashboard_queries(rate_window: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana/idem-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "idem-overview");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "job", "instance"]);
    let mut ids = std::collections::HashSet::new();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_owned();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id reused"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{title} overflows the grid");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", rate_window)
                .replace("$__range", rate_window)
                .replace("$job", ".+")
                .replace("$instance", ".+");
            assert!(!expr.contains('$'), "{title}: unknown variable in {expr}");
            out.push((title.clone(), expr));
        }
    }
    out
}

#[test]
fn every_dashboard_query_is_valid_promql_and_every_metric_is_shown() {
    let queries = dashboard_queries("5m");
    // Each query as a recording rule: promtool parses every expression.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert_ok("promtool check rules (dashboard queries)", &out);
    for (name, _) in idem_proxy::admin::all_metrics() {
        assert!(
            queries.iter().any(|(_, q)| q.contains(name)),
            "no dashboard panel shows {name}"
        );
    }
}

/// A Prometheus server of the test's own (temporary config and storage), killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` every second as job `idem` and evaluates the alert rules.
    fn start(target: SocketAddr) -> Self {
        ensure_prometheus();
        let dir = tempfile::tempdir().unwrap();
        let rules = deploy("prometheus/idem-alerts.yml").canonicalize().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: idem\n    static_configs:\n      - targets: ['{target}']\n",
                serde_json::to_string(rules.to_str().unwrap()).unwrap()
            ),
        )
        .unwrap();
        let addr = common::free_addr();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("stderr.log")).unwrap(),
            ))
            .spawn()
            .expect("start prometheus");
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// `GET path` on the HTTP API; None while the server is not up yet.
    async fn get(&self, path: &str) -> Option<Value> {
        tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let resp = Client::new(self.addr)
            .send(Method::GET, path, &[], b"")
            .await;
        assert_eq!(resp.status, 200, "{path}: {:?}", resp.body);
        let body = resp.json();
        assert_eq!(body["status"], "success", "{path}: {body}");
        Some(body["data"].clone())
    }

    /// The instant vector `query` evaluates to (empty while nothing matches).
    async fn query(&self, query: &str) -> Option<Vec<Value>> {
        let data = self
            .get(&format!("/api/v1/query?query={}", percent_encode(query)))
            .await?;
        Some(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls `query` until `done` holds for its result, for at most 30 s.
    async fn wait_for(&self, query: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(result) = self.query(query).await
                && done(&result)
            {
                return result;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{query} never satisfied; last: {:?}; prometheus log: {}",
                self.query(query).await,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn sample_value(series: &Value) -> f64 {
    series["value"][1].as_str().unwrap().parse().unwrap()
}

// A real Prometheus scraping a real `idem serve`: the counter is there at 0 before any
// request, counts the request sent, every dashboard query answers with data and every
// alert rule evaluates without error (and none fires on a healthy instance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_idem_serve() {
    let upstream = CountingUpstream::spawn().await;
    let up = format!("http://{}", upstream.addr());
    let front = serve_logged(&["--store", "memory", "--upstream", &up]).await;
    let prom = Prometheus::start(front.admin);

    let executed = r#"idem_requests_total{job="idem", outcome="executed"}"#;
    let before = prom.wait_for(executed, |r| !r.is_empty()).await;
    assert_eq!(sample_value(&before[0]), 0.0, "{before:?}");

    let resp = Client::new(front.proc.addr)
        .post("/charges", "k-prom", "{}")
        .await;
    assert_eq!(resp.status, 201);
    let after = prom
        .wait_for(executed, |r| r.len() == 1 && sample_value(&r[0]) == 1.0)
        .await;
    assert_eq!(after[0]["metric"]["instance"], front.admin.to_string());

    // rate() needs two scrapes in its window: wait for the upstream histogram's second.
    prom.wait_for(
        "count_over_time(idem_upstream_duration_seconds_count[10s]) >= 2",
        |r| !r.is_empty(),
    )
    .await;
    for (title, expr) in dashboard_queries("10s") {
        let result = prom.wait_for(&expr, |_| true).await;
        assert!(!result.is_empty(), "panel {title}: {expr} has no data");
    }

    // Every rule loaded and evaluated cleanly; nothing fires on this healthy instance.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let data = prom.get("/api/v1/rules").await.unwrap();
        let rules: Vec<Value> = data["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        let evaluated = rules.len() == 8
            && rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
        if evaluated {
            for r in &rules {
                assert_eq!(r["health"], "ok", "{r}");
                assert_eq!(r["state"], "inactive", "{r}");
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rules not evaluated: {data}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    front.proc.kill();
}
