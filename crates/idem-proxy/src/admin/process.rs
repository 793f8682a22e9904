//! The process metrics every Prometheus client library exports (`process_*`), read
//! from `/proc` at each scrape, so the usual dashboards and alerts (CPU, memory, file
//! descriptors, restarts) work on idem as on any other target.
//!
//! They are rendered here rather than through the `metrics` facade because its
//! counters hold whole numbers, and `process_cpu_seconds_total` is a counter of
//! fractional seconds. Off Linux nothing is rendered.

use std::fmt::Write as _;

/// Appends the process metrics in the Prometheus text format to `out`. A value that
/// cannot be read (a `/proc` file missing or unparsable) is left out, never guessed.
pub(super) fn render(out: &mut String) {
    #[cfg(target_os = "linux")]
    for (name, kind, help, value) in linux::sample() {
        if let Some(value) = value {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
                format_value(value)
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = out;
}

/// A sample value as the text format spells it (`+Inf` for an unlimited limit).
fn format_value(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

#[cfg(target_os = "linux")]
mod linux {
    /// Name, type, help and value of each process metric.
    pub(super) type Sample = (&'static str, &'static str, &'static str, Option<f64>);

    pub(super) fn sample() -> [Sample; 6] {
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| Stat::parse(&s));
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as f64;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s));
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as f64);
        [
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                stat.map(|s| (s.utime + s.stime) as f64 / ticks),
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                stat.map(|s| s.rss_pages as f64 * page),
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                stat.map(|s| s.vsize as f64),
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                open_fds,
            ),
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                limits.as_deref().and_then(max_open_files),
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                stat.zip(boot)
                    .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / ticks),
            ),
        ]
    }

    /// The fields of `/proc/self/stat` that the metrics use.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(super) struct Stat {
        pub(super) utime: u64,
        pub(super) stime: u64,
        pub(super) start_ticks: u64,
        pub(super) vsize: u64,
        pub(super) rss_pages: u64,
    }

    impl Stat {
        /// Parses `/proc/<pid>/stat` (proc(5)). The command name (field 2) is in
        /// parentheses and may itself hold spaces and parentheses, so the fields are
        /// counted from the last `)`.
        pub(super) fn parse(text: &str) -> Option<Self> {
            let (_, rest) = text.rsplit_once(')')?;
            // rest starts at field 3 (state): field n is at index n - 3.
            let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
            let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
            Some(Self {
                utime: field(14)?,
                stime: field(15)?,
                start_ticks: field(22)?,
                vsize: field(23)?,
                rss_pages: field(24)?,
            })
        }
    }

    /// Boot time (seconds since the epoch) from `/proc/stat`'s `btime` line.
    pub(super) fn boot_time(text: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The soft limit on open files from `/proc/self/limits`; `unlimited` is +Inf.
    pub(super) fn max_open_files(text: &str) -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        let soft = line
            .strip_prefix("Max open files")?
            .split_ascii_whitespace()
            .next()?;
        if soft == "unlimited" {
            Some(f64::INFINITY)
        } else {
            soft.parse::<u64>().ok().map(|v| v as f64)
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::linux::{Stat, boot_time, max_open_files, sample};
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with spaces and a `)` in it must not shift the fields.
        let text = "4242 (idem (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    150 25 0 0 20 0 3 0 98765 123456789 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            Stat::parse(text),
            Some(Stat {
                utime: 150,
                stime: 25,
                start_ticks: 98765,
                vsize: 123_456_789,
                rss_pages: 2048,
            })
        );
        assert_eq!(Stat::parse("4242 (idem) S 1 2"), None);
        assert_eq!(Stat::parse("garbage"), None);
    }

    #[test]
    fn limits_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             127583               127583               processes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(max_open_files(unlimited), Some(f64::INFINITY));
        assert_eq!(max_open_files("Max processes 1 1\n"), None);
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn this_process_renders_every_metric_with_its_type() {
        // Which metrics, of which types, is checked against a running idem in
        // tests/observability; here: each one this process can read renders whole.
        let mut out = String::new();
        render(&mut out);
        for (name, kind, _, _) in sample() {
            assert!(out.contains(&format!("# TYPE {name} {kind}\n")), "{out}");
            let value: f64 = out
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing: {out}"))
                .parse()
                .unwrap();
            assert!(value >= 0.0, "{name} {value}");
        }
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(0.25), "0.25");
    }
}
