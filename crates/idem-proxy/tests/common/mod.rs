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
    serve_command_on("memory")
}

/// `idem serve` on `store`, on any free port, in front of an upstream nothing listens
/// on: for a test that expects it to refuse to start.
pub fn serve_command_on(store: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]).args([
        "--upstream",
        "http://127.0.0.1:9",
        "--store",
        store,
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

    /// Stops it with SIGTERM, a graceful shutdown, and asserts that it exits with 0.
    /// Waits in place: call it on a multi-threaded runtime, whose other workers go on
    /// serving what the process talks to meanwhile.
    pub fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::task::block_in_place(|| self.child.wait()).unwrap();
        assert!(exit.success(), "{exit:?}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts connections on `addr`; panics naming `what` if nothing
/// does within 60 s.
pub async fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not start on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Spawns `cmd`, an `idem serve` told to listen on `addr`, and waits until it accepts
/// connections there and on each of `also` (its admin listener, say).
pub async fn start(cmd: &mut Command, addr: SocketAddr, also: &[SocketAddr]) -> Proc {
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let proc = Proc { child, addr };
    for a in std::iter::once(addr).chain(also.iter().copied()) {
        wait_listening(a, "idem").await;
    }
    proc
}

/// Runs `idem serve ARGS` on a free port and waits until it accepts connections.
pub async fn serve(args: &[&str]) -> Proc {
    serve_to(args, Stdio::null()).await
}

/// [`serve`], with its log (stderr) written to `log`.
pub async fn serve_logged(args: &[&str], log: &std::path::Path) -> Proc {
    serve_to(args, std::fs::File::create(log).unwrap().into()).await
}

async fn serve_to(args: &[&str], stderr: Stdio) -> Proc {
    let addr = free_addr();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(["--listen", &addr.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(stderr);
    start(&mut cmd, addr, &[]).await
}

/// `redis-server` on `addr` (loopback), with nothing more on its command line.
pub fn redis_command(addr: SocketAddr) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// A `redis-server` of the test's own, without persistence (the shared one must stay
/// up), killed on drop.
pub struct OwnRedis(Child);

impl OwnRedis {
    /// Starts one on `addr` and waits until it accepts connections.
    pub async fn start(addr: SocketAddr) -> Self {
        let child = redis_command(addr)
            .args(["--save", "", "--appendonly", "no"])
            .spawn()
            .expect("redis-server must be installed (scripts/services.sh installs it)");
        let redis = Self(child);
        wait_listening(addr, "redis-server").await;
        redis
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads one HTTP/1.1 request whose body, if any, has a `Content-Length`, for the raw
/// upstreams of tests; `None` when the connection ends first.
pub async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(buf);
            }
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
