//! TLS for the HTTP client: the `tls_config` of an action (Prometheus' keys: `ca_file`,
//! `cert_file`, `key_file`, `server_name`, `insecure_skip_verify`), the system's trusted CAs, and
//! the ureq connector that wraps a connection in rustls with the ring provider.
//!
//! ureq's own rustls connector takes the name to verify from the URL and trusts either a bundled
//! copy of Mozilla's roots or a list given in code. Operators expect what Go programs such as
//! Prometheus do: the system's CA bundle (`$SSL_CERT_FILE`, else the distribution's file, plus
//! `$SSL_CERT_DIR`), replaced by `ca_file` when one is given, and `server_name` to check a
//! certificate against another name than the URL's host (an IP address in the URL, a tunnel).
//! So crashwatch builds its own `ClientConfig` and connector: about as long as the options.
//!
//! The files are read and the configuration built for each request, so renewed certificates are
//! picked up without a restart; the system bundle is read once per process, as Go does.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::Deserialize;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
    TransportAdapter,
};

use super::secret::{SecretFile, MAX_SECRET_FILE};

/// The most of a CA or certificate file read: a whole system bundle is about 200 KiB.
const MAX_CERTIFICATE_FILE: u64 = 4 * 1024 * 1024;

/// `tls_config` as written in the configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM CA certificates to trust instead of the system's.
    pub ca_file: Option<String>,
    /// A PEM client certificate (chain) to present; needs `key_file`.
    pub cert_file: Option<String>,
    /// The PEM private key of `cert_file`.
    pub key_file: Option<String>,
    /// The name the server's certificate must carry, and the SNI sent; default the URL's host.
    pub server_name: Option<String>,
    /// Accept any server certificate. Default false.
    pub insecure_skip_verify: Option<bool>,
}

/// Checked TLS settings; paths are resolved, nothing secret is held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// CA certificates to trust instead of the system's.
    pub ca_file: Option<SecretFile>,
    /// The client certificate and its key.
    pub client: Option<(SecretFile, SecretFile)>,
    /// The name to verify and send instead of the URL's host.
    pub server_name: Option<String>,
    /// Skip verifying the server's certificate.
    pub insecure_skip_verify: bool,
}

impl TlsSettings {
    /// Checks `section`, whose keys are named `{prefix}.key` in errors, and builds its
    /// configuration once so that a bad file is reported now.
    pub fn resolve(section: &TlsSection, prefix: &str) -> Result<TlsSettings, String> {
        let file = |key: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| SecretFile::locate(&format!("{prefix}.{key}"), t))
                .transpose()
        };
        let client = match (
            file("cert_file", &section.cert_file)?,
            file("key_file", &section.key_file)?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "{prefix}.cert_file and {prefix}.key_file go together"
                ))
            }
        };
        let server_name = match &section.server_name {
            Some(name) => {
                ServerName::try_from(name.as_str())
                    .map_err(|_| format!("{prefix}.server_name: {name:?} is not a host name"))?;
                Some(name.clone())
            }
            None => None,
        };
        let settings = TlsSettings {
            ca_file: file("ca_file", &section.ca_file)?,
            client,
            server_name,
            insecure_skip_verify: section.insecure_skip_verify.unwrap_or(false),
        };
        settings.client_config()?;
        Ok(settings)
    }

    /// A rustls configuration from the files as they are now. Errors name the key.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let provider = Arc::new(ring_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            let roots = match &self.ca_file {
                Some(file) => Arc::new(ca_file_roots(file)?),
                None => system_roots()?,
            };
            builder.with_root_certificates(roots)
        };
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let pem = cert_file.read_bytes(MAX_CERTIFICATE_FILE)?;
                let chain = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pem_error(cert_file, &e))?;
                if chain.is_empty() {
                    return Err(format!(
                        "{}: {} holds no PEM certificate",
                        cert_file.key(),
                        cert_file.path().display()
                    ));
                }
                let pem = key_file.read_bytes(MAX_SECRET_FILE)?;
                // The key's own parse error is not shown: it could quote the key.
                let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
                    format!(
                        "{}: {} holds no PEM private key",
                        key_file.key(),
                        key_file.path().display()
                    )
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{} and {}: {e}", cert_file.key(), key_file.key()))?
            }
        };
        Ok(Arc::new(config))
    }

    /// The connector for one request to `host`: the server name override applies to the
    /// configured host only, never to one a redirect leads to.
    pub fn connector(
        &self,
        config: Arc<ClientConfig>,
        configured_host: bool,
    ) -> Result<TlsConnector, String> {
        let server_name = match (&self.server_name, configured_host) {
            (Some(name), true) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| format!("tls_config.server_name: {name:?} is not a host name"))?,
            ),
            _ => None,
        };
        Ok(TlsConnector {
            config,
            server_name,
        })
    }
}

fn pem_error(file: &SecretFile, e: &rustls_pki_types::pem::Error) -> String {
    format!("{}: {}: {e}", file.key(), file.path().display())
}

/// The certificates of a `ca_file` as the only roots.
fn ca_file_roots(file: &SecretFile) -> Result<RootCertStore, String> {
    let pem = file.read_bytes(MAX_CERTIFICATE_FILE)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(file, &e))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(format!(
            "{}: {} holds no usable PEM CA certificate",
            file.key(),
            file.path().display()
        ));
    }
    Ok(roots)
}

/// rustls with *ring*, which builds with a C compiler alone, unlike aws-lc-rs (cmake, and a
/// larger binary). rustls marks this provider deprecated because *ring* offers no post-quantum
/// key exchange; X25519 and the NIST curves it does offer are what every receiver here accepts.
#[allow(deprecated)]
fn ring_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Where Go looks for the system's CA bundle on Linux, in its order (crypto/x509/root_linux.go).
const SYSTEM_BUNDLES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
/// Directories of single certificates Go reads when no bundle is found.
const SYSTEM_DIRECTORIES: [&str; 2] = ["/etc/ssl/certs", "/etc/pki/tls/certs"];

/// The system's trusted CAs, read once: `$SSL_CERT_FILE` or the first bundle found, plus every
/// certificate in `$SSL_CERT_DIR` (colon-separated), or in the usual directories when neither
/// variable nor a bundle gave any.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
            let roots = load_roots(var("SSL_CERT_FILE").map(PathBuf::from), var("SSL_CERT_DIR"));
            if roots.is_empty() {
                Err(
                    "no trusted CA certificates: the system has none (install ca-certificates, \
                     or set $SSL_CERT_FILE); or give tls_config.ca_file"
                        .to_owned(),
                )
            } else {
                Ok(Arc::new(roots))
            }
        })
        .clone()
}

fn load_roots(cert_file: Option<PathBuf>, cert_dir: Option<std::ffi::OsString>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let add_file = |path: &Path, roots: &mut RootCertStore| -> bool {
        let Ok(pem) = std::fs::read(path) else {
            return false;
        };
        let certificates = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
        roots.add_parsable_certificates(certificates).0 > 0
    };
    let found_bundle = match &cert_file {
        Some(path) => add_file(path, &mut roots),
        None => SYSTEM_BUNDLES
            .iter()
            .any(|path| add_file(Path::new(path), &mut roots)),
    };
    let directories: Vec<PathBuf> = match &cert_dir {
        Some(dirs) => std::env::split_paths(dirs).collect(),
        None if !found_bundle && cert_file.is_none() => {
            SYSTEM_DIRECTORIES.iter().map(PathBuf::from).collect()
        }
        None => Vec::new(),
    };
    for dir in directories {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            add_file(&entry.path(), &mut roots);
        }
    }
    roots
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake's signatures are still
/// checked, as Go's `InsecureSkipVerify` does.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Wraps the connection of an `https://` request in TLS, after ureq's proxy and TCP connectors.
#[derive(Debug)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl<In: Transport> Connector<In> for TlsConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        // The connection to a CONNECT proxy itself is plain; the tunnel through it is not.
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => {
                let host = details
                    .uri
                    .host()
                    .unwrap_or_default()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                ServerName::try_from(host.to_owned())
                    .map_err(|_| ureq::Error::BadUri(format!("{host:?} is not a host name")))?
            }
        };
        let mut connection = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| ureq::Error::Io(std::io::Error::other(e)))?;
        let mut socket = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        socket.set_timeout(details.timeout);
        connection.complete_io(&mut socket)?;
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TlsTransport {
            buffers,
            stream: StreamOwned::new(connection, socket),
        })))
    }
}

/// An HTTP connection inside TLS.
pub struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport").finish_non_exhaustive()
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_and_key_go_together_and_names_are_checked() {
        let section = TlsSection {
            cert_file: Some("/etc/hostname".to_owned()),
            ..TlsSection::default()
        };
        assert_eq!(
            TlsSettings::resolve(&section, "tls_config").expect_err("no key"),
            "tls_config.cert_file and tls_config.key_file go together"
        );
        let section = TlsSection {
            server_name: Some("bad name".to_owned()),
            ..TlsSection::default()
        };
        assert_eq!(
            TlsSettings::resolve(&section, "tls_config").expect_err("bad name"),
            "tls_config.server_name: \"bad name\" is not a host name"
        );
        let section = TlsSection {
            ca_file: Some("/nonexistent/ca.pem".to_owned()),
            ..TlsSection::default()
        };
        let missing = TlsSettings::resolve(&section, "tls_config").expect_err("missing");
        assert!(
            missing.starts_with("tls_config.ca_file: reading /nonexistent/ca.pem: "),
            "{missing}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_named() {
        let section = TlsSection {
            ca_file: Some("/etc/hostname".to_owned()),
            ..TlsSection::default()
        };
        let error = TlsSettings::resolve(&section, "tls_config").expect_err("no certificate");
        assert_eq!(
            error,
            "tls_config.ca_file: /etc/hostname holds no usable PEM CA certificate"
        );
    }

    #[test]
    fn the_system_bundle_is_found_where_go_finds_it() {
        // Debian's bundle, which the test machines have (package ca-certificates).
        let bundle = Path::new(SYSTEM_BUNDLES[0]);
        assert!(bundle.is_file(), "no {}", bundle.display());
        let from_default = load_roots(None, None);
        assert!(from_default.len() > 10, "{} roots", from_default.len());
        let from_variable = load_roots(Some(bundle.to_owned()), None);
        assert_eq!(from_variable.len(), from_default.len());
        let none = load_roots(Some(PathBuf::from("/nonexistent")), None);
        assert!(none.is_empty(), "$SSL_CERT_FILE replaces the bundles");
        let from_dir = load_roots(
            Some(PathBuf::from("/nonexistent")),
            Some("/etc/ssl/certs".into()),
        );
        assert!(!from_dir.is_empty());
    }
}
