//! [`PgCluster`]: a PostgreSQL server of a test's own, made with the installed
//! PostgreSQL's `initdb` in a temporary directory, on a free loopback port, optionally
//! serving TLS only (certificates from [`TestPki`](crate::pki::TestPki)).
//!
//! The shared server on 127.0.0.1:5432 stays as it is; a test that needs other server
//! settings (TLS, client certificates) starts one of these. Tests running as root run
//! the server as the `postgres` user, since PostgreSQL refuses root.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::run;

/// What the cluster serves.
#[derive(Clone, Copy, Debug, Default)]
pub struct PgClusterOptions {
    /// TLS on, and only `hostssl` lines in `pg_hba.conf`: a plain connection is refused.
    /// The server's certificate names `localhost` only (not `127.0.0.1`, so a test can
    /// tell `verify-ca` from `verify-full`) and is signed by [`PgCluster::ca_cert`].
    pub ssl: bool,
    /// With `ssl`: clients must present a certificate signed by the same authority
    /// ([`PgCluster::client_cert`]).
    pub client_certs: bool,
}

/// A running PostgreSQL server, stopped (immediate shutdown) and deleted when dropped,
/// or when the test process exits: the server's watcher stops it once its stdin
/// closes.
#[derive(Debug)]
pub struct PgCluster {
    port: u16,
    dir: tempfile::TempDir,
    watcher: Option<(Child, ChildStdin)>,
}

/// Who runs the server: the `postgres` user when the tests run as root (PostgreSQL
/// refuses root), else the user running the tests.
fn server_user() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt as _;
    let me = std::fs::metadata("/proc/self").expect("/proc/self");
    if me.uid() == 0 {
        postgres_user()
    } else {
        (me.uid(), me.gid())
    }
}

/// The `postgres` user's uid and gid, from `/etc/passwd`.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .expect(
            "a `postgres` user (the postgresql package makes it; scripts/services.sh installs it)",
        )
}

/// The newest installed server's `bin` directory, or `$IDEM_TEST_PG_BIN`.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("IDEM_TEST_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL server binaries in /usr/lib/postgresql (scripts/services.sh installs them)",
        )
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

impl PgCluster {
    /// Makes and starts a cluster; waits until it accepts connections. Panics with the
    /// server's log when it does not come up within a minute.
    pub fn start(opts: PgClusterOptions) -> Self {
        let (uid, gid) = server_user();
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("idem-pg-")
            .tempdir()
            .expect("temporary directory");
        let root = dir.path();
        let data = root.join("data");
        if opts.ssl {
            crate::pki::TestPki::make(root);
        }
        let hba = if !opts.ssl {
            "host all all 127.0.0.1/32 trust\n".to_owned()
        } else if opts.client_certs {
            "hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n".to_owned()
        } else {
            "hostssl all all 127.0.0.1/32 trust\n".to_owned()
        };
        std::fs::write(root.join("pg_hba.conf"), hba).unwrap();
        // The server reads its files as `postgres`; the key must be private to it.
        for entry in std::fs::read_dir(root).unwrap() {
            std::os::unix::fs::chown(entry.unwrap().path(), Some(uid), Some(gid)).unwrap();
        }
        std::os::unix::fs::chown(root, Some(uid), Some(gid)).unwrap();
        if opts.ssl {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(
                root.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }

        run(Command::new(bin.join("initdb"))
            .args(["-D", data.to_str().unwrap()])
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .uid(uid)
            .gid(gid)
            .current_dir(root));

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut settings = vec![
            format!("port={port}"),
            "listen_addresses=127.0.0.1".to_owned(),
            "unix_socket_directories=".to_owned(),
            format!("hba_file={}", root.join("pg_hba.conf").display()),
            "fsync=off".to_owned(),
            // Test binaries run their tests side by side, each with a pool.
            "max_connections=300".to_owned(),
        ];
        if opts.ssl {
            settings.extend([
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", root.join("server.crt").display()),
                format!("ssl_key_file={}", root.join("server.key").display()),
                format!("ssl_ca_file={}", root.join("ca.crt").display()),
            ]);
        }
        let mut postgres = format!("exec {:?} -D {:?}", bin.join("postgres"), data);
        for s in &settings {
            postgres.push_str(&format!(" -c {s:?}"));
        }
        // The watcher: runs the server, and once its stdin closes (the cluster drops,
        // or the test process ends however it ends, a cluster in a static included)
        // stops it (immediate shutdown) and deletes the directory.
        let script = format!(
            "({postgres}) >>{log:?} 2>&1 </dev/null &\n\
             pid=$!\n\
             read -r _ || true\n\
             kill -QUIT $pid 2>/dev/null\n\
             wait $pid\n\
             rm -rf {root:?}\n",
            log = root.join("server.log"),
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .uid(uid)
            .gid(gid)
            .current_dir(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let stdin = child.stdin.take().expect("piped stdin");
        let cluster = Self {
            port,
            dir,
            watcher: Some((child, stdin)),
        };
        cluster.wait_ready(&bin);
        cluster
    }

    fn wait_ready(&self, bin: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // pg_isready reports the server's state, whatever pg_hba.conf says of us.
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test PostgreSQL did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@HOST:PORT/postgres` with `params` (`k=v&…`, may be empty)
    /// as its query. `host` is `localhost` (the name in the server's certificate) or
    /// `127.0.0.1`.
    pub fn url(&self, host: &str, params: &str) -> String {
        let mut url = format!("postgres://postgres@{host}:{}/postgres", self.port);
        if !params.is_empty() {
            url.push('?');
            url.push_str(params);
        }
        url
    }

    fn pki(&self) -> crate::pki::TestPki {
        assert!(
            self.dir.path().join("ca.crt").exists(),
            "start the cluster with ssl"
        );
        crate::pki::TestPki::at(self.dir.path())
    }

    /// The authority that signed the server's and the client's certificates (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.pki().ca_cert()
    }

    /// An authority that signed nothing here: verification against it must fail.
    pub fn other_ca_cert(&self) -> PathBuf {
        self.pki().other_ca_cert()
    }

    /// A client certificate for user `postgres`, signed by [`ca_cert`](Self::ca_cert).
    pub fn client_cert(&self) -> PathBuf {
        self.pki().client_cert()
    }

    /// The private key of [`client_cert`](Self::client_cert) (PEM, unencrypted).
    pub fn client_key(&self) -> PathBuf {
        self.pki().client_key()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some((mut child, mut stdin)) = self.watcher.take() {
            let _ = stdin.write_all(b"stop\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}
