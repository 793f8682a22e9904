//! [`TestPki`]: certificates for TLS tests, made with the `openssl` command: an
//! authority, a server certificate it signed for `localhost`, a client certificate it
//! signed, and a second authority that signed nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run;

/// The files of a test PKI in one directory (PEM, keys unencrypted).
#[derive(Clone, Debug)]
pub struct TestPki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").args(args).current_dir(dir));
}

/// A certificate authority `name` (`name.crt`, `name.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let subject = format!("/CN=idem test {name}");
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &key,
            "-out",
            &crt,
        ],
    );
}

/// A leaf certificate `name` for `cn`, signed by the authority `ca`, with `ext` (the
/// lines of an openssl extension section).
fn make_leaf(dir: &Path, name: &str, cn: &str, ca: &str, ext: &str) {
    let ext_file = format!("{name}.ext");
    std::fs::write(dir.join(&ext_file), ext).unwrap();
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    let subject = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &subject,
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            &crt,
        ],
    );
}

impl TestPki {
    /// Makes the PKI in `dir`. The server certificate names `localhost` only (not
    /// `127.0.0.1`, so a test can tell a chain check from a name check); the client
    /// certificate's subject is `CN=postgres`.
    pub fn make(dir: &Path) -> Self {
        make_ca(dir, "ca");
        make_ca(dir, "other-ca");
        make_leaf(
            dir,
            "server",
            "localhost",
            "ca",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost\n",
        );
        make_leaf(
            dir,
            "client",
            "postgres",
            "ca",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        );
        Self::at(dir)
    }

    /// Another server certificate for `localhost`, signed by the same authority, with
    /// subject `CN=cn` and a serial of its own: `(certificate, key)` (for rotations).
    pub fn server_leaf(&self, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        make_leaf(
            &self.dir,
            name,
            cn,
            "ca",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost\n",
        );
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// The PKI made earlier in `dir`.
    pub fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The authority that signed the server's and the client's certificates.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// An authority that signed nothing here: verification against it must fail.
    pub fn other_ca_cert(&self) -> PathBuf {
        self.dir.join("other-ca.crt")
    }

    /// The server's certificate, for `localhost`.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    /// The server certificate's private key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The client certificate.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.crt")
    }

    /// The client certificate's private key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
}
