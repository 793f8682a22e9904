//! TLS in `idem serve`, with rustls on ring: to `https://` upstreams, and on the
//! listener (`--tls-cert`, `--tls-key`).
//!
//! **To the upstream.** The upstream's certificate is verified against the system's
//! authorities and those of `--upstream-ca-file`, for the upstream URL's host name,
//! which is also sent as SNI. `--upstream-insecure` turns verification off, for tests
//! only, and says so at start-up. ALPN offers HTTP/2 and HTTP/1.1; the
//! [pool](crate::pool) speaks whichever the upstream picks.
//!
//! **On the listener.** Clients are offered HTTP/2 and HTTP/1.1 over ALPN. The
//! certificate and key are read at start-up, and again on SIGHUP or when either file
//! changes on disk (its modification time, size or inode, looked at every
//! [`POLL`]): new handshakes use the new certificate, open connections keep theirs, the
//! listener stays open. A new file that does not load (unreadable, no PEM in it, a key
//! that does not match the certificate) leaves the previous certificate in use, with an
//! error in the log.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{ListenerTls, ProxyConfig, UpstreamTls};

/// How often the listener's certificate and key files are looked at for a change.
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// The protocols offered over ALPN, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A TLS setting or file that cannot be used; one line naming the flag and the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TlsError(String);

fn provider() -> Arc<CryptoProvider> {
    // Named explicitly: with both rustls providers compiled in (another crate of the
    // build may enable aws-lc-rs), rustls would not pick a process default.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| TlsError(format!("{flag} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{flag} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_key(path: &Path, flag: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        TlsError(format!(
            "{flag} {}: no unencrypted PEM private key could be read ({e})",
            path.display()
        ))
    })
}

/// What `idem serve` needs for TLS, read from the files its settings name.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// The listener's certificate and its rustls configuration, when it terminates TLS.
    pub(crate) listener: Option<(Arc<Certificate>, Arc<ServerConfig>)>,
    /// The client configuration for an `https://` upstream.
    pub(crate) upstream: Option<Arc<ClientConfig>>,
}

/// Reads every TLS file `config` names; the first that cannot be used is the error.
pub(crate) fn load(config: &ProxyConfig) -> Result<Loaded, TlsError> {
    let upstream = if config.upstream.is_tls() {
        Some(client_config(&config.upstream_tls)?)
    } else {
        let t = &config.upstream_tls;
        if t.ca_file.is_some() || t.insecure || t.client_cert.is_some() {
            tracing::warn!(
                upstream = %config.upstream,
                "the upstream TLS settings are ignored: the upstream is not https://"
            );
        }
        None
    };
    let listener = config
        .tls
        .as_ref()
        .map(|files| {
            let cert = Certificate::load(files.clone())?;
            let config = cert.server_config()?;
            Ok::<_, TlsError>((cert, config))
        })
        .transpose()?;
    Ok(Loaded { listener, upstream })
}

/// The client side of TLS to the upstream, from its settings.
pub(crate) fn client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("upstream TLS: {e}")))?;
    let builder = if tls.insecure {
        tracing::warn!(
            "--upstream-insecure: the upstream's certificate is NOT verified, so anyone on \
             the path can read and change the traffic; for tests only"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        let system = rustls_native_certs::load_native_certs();
        let (found, _) = roots.add_parsable_certificates(system.certs);
        if let Some(path) = &tls.ca_file {
            for cert in load_certs(path, "--upstream-ca-file")? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError(format!("--upstream-ca-file {}: {e}", path.display())))?;
            }
        }
        if roots.is_empty() {
            return Err(TlsError(format!(
                "no certificate authority to verify the upstream with: none in the system \
                 store{}, and no --upstream-ca-file",
                system
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )));
        }
        tracing::debug!(
            system = found,
            ca_file = tls.ca_file.is_some(),
            "upstream TLS authorities"
        );
        builder.with_root_certificates(roots)
    };
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert, "--upstream-client-cert")?;
            let key = load_key(key, "--upstream-client-key")?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                TlsError(format!(
                    "--upstream-client-cert {} with its key: {e}",
                    cert.display()
                ))
            })?
        }
        (Some(_), None) => {
            return Err(TlsError(
                "--upstream-client-cert is given without --upstream-client-key".to_owned(),
            ));
        }
        (None, Some(_)) => {
            return Err(TlsError(
                "--upstream-client-key is given without --upstream-client-cert".to_owned(),
            ));
        }
    };
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name the upstream's certificate must carry, also sent as SNI: the URL's host
/// (an IP address is checked against the certificate's IP addresses, without SNI).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    // A bracketed IPv6 host, as URLs write it.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| TlsError(format!("the upstream host `{host}` is no TLS name: {e}")))
}

/// `--upstream-insecure`: any certificate is accepted. The handshake's signatures are
/// still checked, so the session belongs to whoever holds the certificate's key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What identifies one version of a file on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    /// `None` when the file cannot be looked at (it is being replaced, say).
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        })
    }
}

/// The listener's certificate: handed to each new handshake, and swapped in place when
/// its files change.
pub(crate) struct Certificate {
    files: ListenerTls,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files as last read (or tried).
    seen: Mutex<(Option<Stamp>, Option<Stamp>)>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Reads the certificate and its key; they must match.
    pub(crate) fn load(files: ListenerTls) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let seen = (Stamp::of(&files.cert), Stamp::of(&files.key));
        let current = read(&files, &provider)?;
        Ok(Arc::new(Self {
            files,
            provider,
            current: RwLock::new(Arc::new(current)),
            seen: Mutex::new(seen),
        }))
    }

    /// The rustls configuration of the listener: HTTP/2 and HTTP/1.1 over ALPN, the
    /// certificate from `self` at each handshake.
    pub(crate) fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("listener TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Reads the files again; on failure the certificate in use stays, and the log
    /// says why.
    fn reload(&self, why: &str) {
        let stamps = (Stamp::of(&self.files.cert), Stamp::of(&self.files.key));
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = stamps;
        match read(&self.files, &self.provider) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
                tracing::info!(
                    cert = %self.files.cert.display(),
                    reason = why,
                    "TLS certificate reloaded: new connections use it"
                );
            }
            Err(e) => tracing::error!(
                error = %e,
                reason = why,
                "TLS certificate not reloaded: the previous one stays in use"
            ),
        }
    }

    /// Whether either file changed since it was last read.
    fn changed(&self) -> bool {
        let now = (Stamp::of(&self.files.cert), Stamp::of(&self.files.key));
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) != now
    }

    /// Reloads on SIGHUP and when the files change, until the task is aborted. The
    /// signal handler is in place when this returns.
    pub(crate) fn watch(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: the certificate reloads when its files change only");
                None
            }
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hup.as_mut() {
                        Some(s) => {
                            s.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<()>();
                tokio::select! {
                    () = hangup => self.reload("SIGHUP"),
                    _ = tick.tick() => if self.changed() {
                        self.reload("the certificate or key file changed");
                    },
                }
            }
        })
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// The certificate chain and key of `files`, checked to belong together.
fn read(files: &ListenerTls, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(&files.cert, "--tls-cert")?;
    let key = load_key(&files.key, "--tls-key")?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        TlsError(format!(
            "--tls-key {} does not go with --tls-cert {}: {e}",
            files.key.display(),
            files.cert.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_host_is_the_tls_name() {
        assert!(matches!(
            server_name("api.internal"),
            Ok(ServerName::DnsName(n)) if n.as_ref() == "api.internal"
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("bad name").is_err());
    }

    #[test]
    fn unusable_files_name_their_flag() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let err = load_certs(&empty, "--tls-cert").unwrap_err().to_string();
        assert!(
            err.starts_with("--tls-cert ") && err.contains("no PEM"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err = load_key(&missing, "--tls-key").unwrap_err().to_string();
        assert!(err.starts_with("--tls-key "), "{err}");
        let tls = UpstreamTls {
            client_cert: Some(empty),
            ..UpstreamTls::default()
        };
        let err = client_config(&UpstreamTls {
            insecure: true,
            ..tls
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--upstream-client-key"), "{err}");
    }
}
