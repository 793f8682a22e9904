//! Store servers of the run's own, so they can be killed: a `redis-server` with an
//! append-only file fsynced on every write, and a PostgreSQL cluster in a temporary
//! directory. The shared servers are never touched.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use crate::common::{free_addr, redis_command, wait_listening};

/// A store server.
#[derive(Debug)]
pub(crate) enum Server {
    /// `redis-server`.
    Redis {
        /// Where it listens.
        addr: SocketAddr,
        /// Its append-only file's directory.
        dir: PathBuf,
        /// The process.
        child: Mutex<Option<Child>>,
    },
    /// A PostgreSQL cluster.
    Postgres {
        /// Where it listens.
        addr: SocketAddr,
        /// The data directory (also the socket directory).
        dir: tempfile::TempDir,
        /// `pg_ctl`'s directory.
        bin: PathBuf,
    },
}

fn spawn_redis(addr: SocketAddr, dir: &Path) -> Child {
    redis_command(addr)
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .arg("--dir")
        .arg(dir)
        .spawn()
        .expect("redis-server must be installed (scripts/services.sh installs it)")
}

/// PostgreSQL's binaries: on PATH, else the newest under /usr/lib/postgresql.
fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("initdb/pg_ctl must be installed (/usr/lib/postgresql/*/bin)"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (it refuses root).
fn pg(bin: &Path, tool: &str, args: &[&str]) {
    let exe = bin.join(tool);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let out = cmd.args(args).stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success() || tool == "pg_ctl" && args.contains(&"stop"),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Server {
    /// A fresh `redis-server` persisting to `dir`.
    pub(crate) async fn redis(dir: &Path) -> Self {
        let addr = free_addr();
        let child = spawn_redis(addr, dir);
        wait_listening(addr, "redis-server").await;
        Self::Redis {
            addr,
            dir: dir.to_owned(),
            child: Mutex::new(Some(child)),
        }
    }

    /// A fresh PostgreSQL cluster.
    pub(crate) async fn postgres() -> Self {
        let bin = pg_bin();
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown postgres {}", dir.path().display());
        }
        let data = dir.path().to_str().unwrap().to_owned();
        pg(
            &bin,
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        );
        let s = Self::Postgres {
            addr: free_addr(),
            dir,
            bin,
        };
        s.restart().await;
        s
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        match self {
            Self::Redis { addr, .. } | Self::Postgres { addr, .. } => *addr,
        }
    }

    /// The store URL for an instance that reaches the server through `via`.
    pub(crate) fn url_via(&self, via: SocketAddr) -> String {
        match self {
            Self::Redis { .. } => {
                format!("redis://{via}/0?prefix=chaos&command_timeout=500ms&connect_timeout=500ms")
            }
            Self::Postgres { .. } => format!(
                "postgres://postgres@{via}/postgres?schema=chaos&pool_size=4&statement_timeout=1s&connect_timeout=1"
            ),
        }
    }

    /// The fault's name in the table.
    pub(crate) fn restart_kind(&self) -> &'static str {
        match self {
            Self::Redis { .. } => "redis kill -9 and restart (AOF, fsync always)",
            Self::Postgres { .. } => "postgres crash (stop -m immediate) and restart",
        }
    }

    /// Kills the server without letting it shut down cleanly.
    pub(crate) fn kill(&self) {
        match self {
            Self::Redis { child, .. } => {
                if let Some(mut c) = child.lock().unwrap().take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            Self::Postgres { dir, bin, .. } => {
                pg(
                    bin,
                    "pg_ctl",
                    &[
                        "-D",
                        dir.path().to_str().unwrap(),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ],
                );
            }
        }
    }

    /// Starts it again on the same port and data, and waits until it accepts connections.
    pub(crate) async fn restart(&self) {
        match self {
            Self::Redis { addr, dir, child } => {
                *child.lock().unwrap() = Some(spawn_redis(*addr, dir));
                wait_listening(*addr, "redis-server").await;
            }
            Self::Postgres { addr, dir, bin } => {
                let data = dir.path().to_str().unwrap();
                let opts = format!(
                    "-p {} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=60 -c shared_buffers=16MB",
                    addr.port()
                );
                let logfile = format!("{data}/server.log");
                pg(
                    bin,
                    "pg_ctl",
                    &["-D", data, "-o", &opts, "-l", &logfile, "-w", "start"],
                );
                wait_listening(*addr, "postgres").await;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
