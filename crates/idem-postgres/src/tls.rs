//! TLS for the store's connections, set in the database URL as libpq sets it, with
//! rustls (ring) doing the handshakes.
//!
//! | parameter | meaning |
//! |---|---|
//! | `sslmode=disable` | plain TCP |
//! | `sslmode=prefer` (default) | TLS when the server offers it, the certificate not checked |
//! | `sslmode=require` | TLS or no connection; the certificate not checked, unless `sslrootcert` is given: then as `verify-ca` (as libpq does) |
//! | `sslmode=verify-ca` | TLS, the server's chain must lead to a certificate of `sslrootcert` |
//! | `sslmode=verify-full` | as `verify-ca`, and the certificate must name the host connected to |
//! | `sslrootcert=PATH` | the PEM file of the certificate authorities to trust; `system` for the operating system's store |
//! | `sslcert=PATH`, `sslkey=PATH` | a client certificate chain and its unencrypted private key (PEM), for servers that ask for one |
//!
//! Both the URL form (`postgres://u@db:5432/app?sslmode=verify-full&sslrootcert=/etc/ca.pem`)
//! and the `key=value` form take them. Unlike libpq, a verifying mode without
//! `sslrootcert` is refused rather than looking in `~/.postgresql/root.crt`: a service
//! should say which authorities it trusts. `sslmode=allow` (plain first, then TLS) is
//! refused too: use `prefer`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::ConfigError;

/// The TLS connector for a store's connections, made from the URL's `ssl*`
/// parameters by [`parse_url`]. Give it to [`tokio_postgres::Config::connect`] to open
/// more connections with the same settings.
#[derive(Clone)]
pub struct Tls {
    inner: MakeRustlsConnect,
    mode: Mode,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("mode", &self.mode).finish()
    }
}

impl<S> MakeTlsConnect<S> for Tls
where
    MakeRustlsConnect: MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        MakeTlsConnect::<S>::make_tls_connect(&mut self.inner, domain)
    }
}

/// libpq's `sslmode` values that this store takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(value: &str) -> Result<Self, ConfigError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(tls_error(
                    "sslmode=allow is not supported (plain first, then TLS): use prefer or require",
                ));
            }
            other => {
                return Err(tls_error(format!(
                    "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }
}

/// The `ssl*` parameters taken out of a URL before tokio-postgres reads the rest.
#[derive(Debug, Default, PartialEq, Eq)]
struct SslParams {
    mode: Option<String>,
    rootcert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl SslParams {
    /// Takes `key = value` if it is one of ours; answers whether it was.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.mode,
            "sslrootcert" => &mut self.rootcert,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            _ => return false,
        };
        // As libpq: a later occurrence wins.
        *slot = Some(value);
        true
    }
}

/// Parses a database URL (`postgres://` or `key=value`), its `ssl*` parameters
/// included, into the configuration tokio-postgres connects with and the TLS
/// connector those parameters ask for.
///
/// # Errors
///
/// [`ConfigError::Url`] when the URL does not parse, [`ConfigError::Tls`] when a TLS
/// parameter is unusable (an unknown mode, a certificate file that cannot be read).
pub fn parse_url(url: &str) -> Result<(tokio_postgres::Config, Tls), ConfigError> {
    let (rest, ssl) = split_ssl_params(url)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(ConfigError::Url)?;
    let mode = match ssl.mode.as_deref() {
        Some(m) => Mode::parse(m)?,
        None => Mode::Prefer,
    };
    // libpq: `require` with a CA file named verifies the chain, as `verify-ca`.
    let mode = if mode == Mode::Require && ssl.rootcert.is_some() {
        Mode::VerifyCa
    } else {
        mode
    };
    config.ssl_mode(match mode {
        Mode::Disable => SslMode::Disable,
        Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
    });
    let client_config = client_config(mode, &ssl)?;
    Ok((
        config,
        Tls {
            inner: MakeRustlsConnect::new(client_config),
            mode,
        },
    ))
}

fn tls_error(why: impl Into<String>) -> ConfigError {
    ConfigError::Tls(why.into())
}

fn provider() -> Arc<CryptoProvider> {
    // Named explicitly: with both rustls providers compiled in (another crate of the
    // build may enable aws-lc-rs), rustls would not pick a process default.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(mode: Mode, ssl: &SslParams) -> Result<ClientConfig, ConfigError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        Mode::Disable | Mode::Prefer | Mode::Require => Arc::new(EncryptOnly(provider.clone())),
        Mode::VerifyCa | Mode::VerifyFull => {
            let Some(rootcert) = ssl.rootcert.as_deref() else {
                return Err(tls_error(format!(
                    "sslmode={} needs sslrootcert=PATH (the CA certificates to trust, PEM) \
                     or sslrootcert=system",
                    if mode == Mode::VerifyCa {
                        "verify-ca"
                    } else {
                        "verify-full"
                    }
                )));
            };
            Arc::new(Authenticated {
                roots: load_roots(rootcert)?,
                provider: provider.clone(),
                check_name: mode == Mode::VerifyFull,
            })
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (ssl.cert.as_deref(), ssl.key.as_deref()) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = load_certs(Path::new(cert), "sslcert")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                tls_error(format!(
                    "sslkey {key}: no unencrypted PEM private key could be read ({e})"
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_error(format!("sslcert {cert} with sslkey: {e}")))
        }
        (Some(_), None) => Err(tls_error("sslcert is given without sslkey")),
        (None, Some(_)) => Err(tls_error("sslkey is given without sslcert")),
    }
}

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| tls_error(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_roots(rootcert: &str) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    if rootcert == "system" {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(tls_error(format!(
                "sslrootcert=system: no certificate authority found in the system store{}",
                found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )));
        }
        return Ok(roots);
    }
    let path = PathBuf::from(rootcert);
    for cert in load_certs(&path, "sslrootcert")? {
        roots
            .add(cert)
            .map_err(|e| tls_error(format!("sslrootcert {rootcert}: {e}")))?;
    }
    Ok(roots)
}

/// `prefer` and `require`: the connection is encrypted but the server is not
/// authenticated, as libpq does in those modes. The handshake's signatures are still
/// checked, so the session keys belong to whoever holds the certificate's key.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
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
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

/// `verify-ca` and `verify-full`: the chain must lead to an authority of `sslrootcert`;
/// with `check_name` (`verify-full`) the certificate must also name the host.
#[derive(Debug)]
struct Authenticated {
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
    check_name: bool,
}

impl ServerCertVerifier for Authenticated {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.check_name {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Splits the `ssl*` parameters this module handles off `url`, answering the rest (for
/// tokio-postgres) and them.
fn split_ssl_params(url: &str) -> Result<(String, SslParams), ConfigError> {
    let mut ssl = SslParams::default();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), ssl));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)?;
            if !ssl.take(&key, percent_decode(value)?) {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, ssl));
    }
    let mut kept = Vec::new();
    let mut rest = url;
    while let Some((key, value, raw, after)) = next_pair(rest)? {
        if !ssl.take(key, value) {
            kept.push(raw);
        }
        rest = after;
    }
    Ok((kept.join(" "), ssl))
}

/// The next `key = value` of a libpq `key=value` string: the key, the unquoted and
/// unescaped value, the pair's text as written, and what follows it. None at the end.
fn next_pair(s: &str) -> Result<Option<(&str, String, &str, &str)>, ConfigError> {
    let s = s.trim_start();
    if s.is_empty() {
        return Ok(None);
    }
    let key_end = s
        .find(|c: char| c == '=' || c.is_whitespace())
        .unwrap_or(s.len());
    let key = &s[..key_end];
    let after_key = s[key_end..].trim_start();
    let Some(after_eq) = after_key.strip_prefix('=') else {
        return Err(ConfigError::Tls(format!(
            "connection string: `{key}` has no `=` and value"
        )));
    };
    let v = after_eq.trim_start();
    let mut value = String::new();
    let mut chars = v.char_indices();
    let end = if v.starts_with('\'') {
        chars.next();
        loop {
            match chars.next() {
                Some((i, '\'')) => break i + 1,
                Some((_, '\\')) => match chars.next() {
                    Some((_, c)) => value.push(c),
                    None => return Err(unterminated(key)),
                },
                Some((_, c)) => value.push(c),
                None => return Err(unterminated(key)),
            }
        }
    } else {
        loop {
            match chars.next() {
                Some((i, c)) if c.is_whitespace() => break i,
                Some((_, '\\')) => {
                    if let Some((_, c)) = chars.next() {
                        value.push(c);
                    }
                }
                Some((_, c)) => value.push(c),
                None => break v.len(),
            }
        }
    };
    let consumed = s.len() - v.len() + end;
    Ok(Some((key, value, &s[..consumed], &s[consumed..])))
}

fn unterminated(key: &str) -> ConfigError {
    ConfigError::Tls(format!(
        "connection string: the quoted value of `{key}` does not end"
    ))
}

fn percent_decode(s: &str) -> Result<String, ConfigError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| tls_error(format!("database url: bad percent-escape in `{s}`")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| tls_error(format!("database url: `{s}` is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, SslParams) {
        split_ssl_params(url).unwrap()
    }

    #[test]
    fn url_form_parameters_are_taken_out() {
        let (rest, ssl) = split(
            "postgres://u:p@db:5432/app?application_name=x&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&sslcert=/c.pem&sslkey=/k.pem",
        );
        assert_eq!(rest, "postgres://u:p@db:5432/app?application_name=x");
        assert_eq!(
            ssl,
            SslParams {
                mode: Some("verify-full".into()),
                rootcert: Some("/etc/ca dir/ca.pem".into()),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
            }
        );
        let (rest, ssl) = split("postgresql://db/app?sslmode=require");
        assert_eq!(rest, "postgresql://db/app");
        assert_eq!(ssl.mode.as_deref(), Some("require"));
        assert_eq!(split("postgres://db/app").0, "postgres://db/app");
        assert!(split_ssl_params("postgres://db/app?sslrootcert=%zz").is_err());
    }

    #[test]
    fn key_value_form_parameters_are_taken_out() {
        let (rest, ssl) = split(
            r"host=db  sslmode = verify-ca sslrootcert='/etc/my ca/it\'s.pem' password=a\ b user=u",
        );
        assert_eq!(rest, r"host=db password=a\ b user=u");
        assert_eq!(ssl.mode.as_deref(), Some("verify-ca"));
        assert_eq!(ssl.rootcert.as_deref(), Some("/etc/my ca/it's.pem"));
        let parsed: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"a b"[..]));
        assert!(split_ssl_params("host=db sslrootcert='/x").is_err());
        assert!(split_ssl_params("host").is_err());
    }

    #[test]
    fn modes_map_to_tokio_postgres() {
        for (url, mode) in [
            ("postgres://db/app", SslMode::Prefer),
            ("postgres://db/app?sslmode=disable", SslMode::Disable),
            ("postgres://db/app?sslmode=prefer", SslMode::Prefer),
            ("postgres://db/app?sslmode=require", SslMode::Require),
            ("host=db sslmode=require", SslMode::Require),
        ] {
            let (config, _) = parse_url(url).unwrap();
            assert_eq!(config.get_ssl_mode(), mode, "{url}");
        }
    }

    #[test]
    fn unusable_settings_are_refused_with_the_reason() {
        let err = |url: &str| parse_url(url).unwrap_err().to_string();
        assert!(err("postgres://db/app?sslmode=verify-full").contains("needs sslrootcert"));
        assert!(err("postgres://db/app?sslmode=allow").contains("not supported"));
        assert!(err("postgres://db/app?sslmode=strict").contains("sslmode=strict"));
        assert!(
            err("postgres://db/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .contains("/nonexistent/ca.pem")
        );
        assert!(err("postgres://db/app?sslcert=/c.pem").contains("without sslkey"));
        let dir = std::env::temp_dir().join(format!("idem-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = err(&format!(
            "postgres://db/app?sslmode=verify-ca&sslrootcert={}",
            empty.display()
        ));
        assert!(e.contains("no PEM certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
