//! Running the `idem` binary in tests.

#![allow(dead_code, unreachable_pub)] // shared by test binaries, each using its own part

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_idem");

/// A loopback address nothing listens on (yet).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// `idem serve` on the memory store in front of an upstream nothing listens on: the
/// start of a command line whose further settings a test expects to be refused.
pub fn serve_command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--upstream",
        "http://127.0.0.1:9",
        "--store",
        "memory",
    ]);
    cmd
}

/// An `idem serve` process, killed when dropped.
#[derive(Debug)]
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Proc {
    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `idem serve ARGS` on a free port and waits until it accepts connections.
pub async fn serve(args: &[&str]) -> Proc {
    start(args, Stdio::null()).await
}

/// [`serve`], with its log (stderr) written to `log`.
pub async fn serve_logged(args: &[&str], log: &std::path::Path) -> Proc {
    start(args, std::fs::File::create(log).unwrap().into()).await
}

async fn start(args: &[&str], stderr: Stdio) -> Proc {
    let addr = free_addr();
    let child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", &addr.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let proc = Proc { child, addr };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idem did not start: {args:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proc
}
