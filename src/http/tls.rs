//! TLS for the web server: a rustls `ServerConfig` (ring provider) built from the checked
//! `tls_server_config` of the web configuration file, with its certificate, key and client CA
//! read from disk.
//!
//! Go's client authentication types map onto rustls as follows: `RequireAndVerifyClientCert` and
//! `VerifyClientCertIfGiven` are webpki's client verifier (mandatory or not), while
//! `RequestClientCert` and `RequireAnyClientCert` take any certificate whose holder proves it
//! has the key, as Go does, through [`AnyClientCert`]. `client_allowed_sans` is checked on the
//! client's certificate during the handshake, as exporter-toolkit's `VerifyPeerCertificate`
//! does, so a refused client never gets to send a request.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{ring as provider, CryptoProvider};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::web_config::{ClientAuth, Curve, Pem, TlsSettings, TlsVersion};

/// Builds the server's TLS configuration, reading the certificate, key and client CA. The error
/// names the key and file, never a key's content.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(crypto_provider(settings));
    let chain = read_certificates(&settings.cert, "cert_file", "cert")?;
    let key = read_key(&settings.key)?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (settings.min_version..=settings.max_version).contains(v))
    .map(|(_, version)| version)
    .collect();
    let verifier = client_verifier(settings, &provider)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "tls_server_config: {} and {} do not go together: {e}",
                settings.cert.describe("cert_file", "cert"),
                settings.key.describe("key_file", "key"),
            )
        })?;
    config.ignore_client_order = settings.prefer_server_cipher_suites;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The ring provider cut down to the suites and groups the settings name, in their order.
fn crypto_provider(settings: &TlsSettings) -> CryptoProvider {
    // rustls marks the ring provider deprecated for lacking post-quantum key exchange; it is
    // kept on purpose: aws-lc-rs would bring a C and assembly build into the dependency tree.
    #[allow(deprecated)]
    let mut provider = provider::default_provider();
    if !settings.cipher_suites.is_empty() {
        let all = provider.cipher_suites.clone();
        let tls13 = all
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .copied();
        let tls12 = settings.cipher_suites.iter().filter_map(|name| {
            all.iter()
                .find(|s| s.suite().as_str() == Some(*name))
                .copied()
        });
        provider.cipher_suites = tls13.chain(tls12).collect();
    }
    if !settings.curves.is_empty() {
        provider.kx_groups = settings
            .curves
            .iter()
            .map(|curve| match curve {
                Curve::X25519 => provider::kx_group::X25519,
                Curve::P256 => provider::kx_group::SECP256R1,
                Curve::P384 => provider::kx_group::SECP384R1,
            })
            .collect();
    }
    provider
}

fn client_verifier(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let verifier: Arc<dyn ClientCertVerifier> = match settings.client_auth {
        ClientAuth::None => return Ok(WebPkiClientVerifier::no_client_auth()),
        ClientAuth::Request | ClientAuth::RequireAny => Arc::new(AnyClientCert {
            mandatory: settings.client_auth == ClientAuth::RequireAny,
            provider: provider.clone(),
        }),
        ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify => {
            let pem = settings
                .client_ca
                .as_ref()
                .ok_or("tls_server_config: client_ca_file is missing")?;
            let mut roots = rustls::RootCertStore::empty();
            for certificate in read_certificates(pem, "client_ca_file", "client_ca")? {
                roots.add(certificate).map_err(|e| {
                    format!(
                        "tls_server_config: {}: {e}",
                        pem.describe("client_ca_file", "client_ca")
                    )
                })?;
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = if settings.client_auth == ClientAuth::VerifyIfGiven {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder
                .build()
                .map_err(|e| format!("tls_server_config: client CA: {e}"))?
        }
    };
    Ok(match &settings.client_allowed_sans {
        Some(allowed) => Arc::new(AllowedSans {
            allowed: allowed.clone(),
            inner: verifier,
        }),
        None => verifier,
    })
}

fn read_certificates(
    pem: &Pem,
    file_key: &str,
    inline_key: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = pem.describe(file_key, inline_key);
    let bytes = pem
        .read()
        .map_err(|e| format!("tls_server_config: {what}: {e}"))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls_server_config: {what}: not PEM certificates: {e}"))?;
    if certificates.is_empty() {
        return Err(format!(
            "tls_server_config: {what}: holds no PEM certificate"
        ));
    }
    Ok(certificates)
}

fn read_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, String> {
    let what = pem.describe("key_file", "key");
    let bytes = pem
        .read()
        .map_err(|e| format!("tls_server_config: {what}: {e}"))?;
    // The parser's error says only what kind of PEM section it missed, never the key.
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|_| format!("tls_server_config: {what}: holds no PEM private key"))
}

/// `RequestClientCert` and `RequireAnyClientCert`: any certificate, unchecked against a CA, but
/// its holder must still sign the handshake with its key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

/// `client_allowed_sans`: the client's certificate must hold one of these subject alternative
/// names (DNS, IP, e-mail or URI, compared exactly), checked before the inner verifier.
#[derive(Debug)]
struct AllowedSans {
    allowed: Vec<String>,
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let names = subject_alt_names(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        if !names.iter().any(|name| self.allowed.contains(name)) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One DER element: its tag and contents, and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (length, &rest[count..])
    };
    if rest.len() < length {
        return None;
    }
    Some((tag, &rest[..length], &rest[length..]))
}

/// The subject alternative names of a certificate as Go's `x509.Certificate` gives them (DNS
/// names, e-mail addresses, IP addresses in their usual text form, URIs); `None` when the
/// certificate cannot be read, an empty list when it has none.
pub fn subject_alt_names(certificate: &[u8]) -> Option<Vec<String>> {
    const SEQUENCE: u8 = 0x30;
    const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17
    let (tag, certificate, _) = der_element(certificate)?;
    let (tbs_tag, tbs, _) = der_element(certificate)?;
    if tag != SEQUENCE || tbs_tag != SEQUENCE {
        return None;
    }
    // TBSCertificate: [0] version?, serial, signature, issuer, validity, subject, spki,
    // [1] issuerUniqueID?, [2] subjectUniqueID?, [3] extensions?
    let mut rest = tbs;
    let mut extensions = None;
    while !rest.is_empty() {
        let (tag, contents, next) = der_element(rest)?;
        if tag == 0xa3 {
            extensions = Some(contents);
        }
        rest = next;
    }
    let mut names = Vec::new();
    let Some(extensions) = extensions else {
        return Some(names);
    };
    let (tag, mut list, _) = der_element(extensions)?;
    if tag != SEQUENCE {
        return None;
    }
    while !list.is_empty() {
        let (_, extension, next) = der_element(list)?;
        list = next;
        let (oid_tag, oid, mut fields) = der_element(extension)?;
        if oid_tag != 0x06 || oid != SAN_OID {
            continue;
        }
        // An optional BOOLEAN (critical) comes before the OCTET STRING.
        let mut value = None;
        while !fields.is_empty() {
            let (tag, contents, next) = der_element(fields)?;
            if tag == 0x04 {
                value = Some(contents);
            }
            fields = next;
        }
        let (tag, mut general_names, _) = der_element(value?)?;
        if tag != SEQUENCE {
            return None;
        }
        while !general_names.is_empty() {
            let (tag, contents, next) = der_element(general_names)?;
            general_names = next;
            let text = || String::from_utf8(contents.to_vec()).ok();
            match tag {
                // rfc822Name, dNSName, uniformResourceIdentifier: IA5String.
                0x81 | 0x82 | 0x86 => names.push(text()?),
                // iPAddress: 4 or 16 bytes.
                0x87 => match contents.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(contents).ok()?).to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(contents).ok()?).to_string(),
                    ),
                    _ => return None,
                },
                _ => {}
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element with a definite length.
    fn element(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if contents.len() < 0x80 {
            out.push(contents.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(contents.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(contents);
        out
    }

    /// The skeleton of a certificate: a TBSCertificate with placeholder fields and the given
    /// extensions.
    fn certificate(extensions: &[Vec<u8>]) -> Vec<u8> {
        let mut tbs = element(0xa0, &element(0x02, &[2]));
        tbs.extend(element(0x02, &[1])); // serial
        for _ in 0..5 {
            tbs.extend(element(0x30, &[])); // signature, issuer, validity, subject, spki
        }
        if !extensions.is_empty() {
            tbs.extend(element(0xa3, &element(0x30, &extensions.concat())));
        }
        let mut body = element(0x30, &tbs);
        body.extend(element(0x30, &[])); // signatureAlgorithm
        body.extend(element(0x03, &[0])); // signature
        element(0x30, &body)
    }

    fn san_extension(names: &[(u8, &[u8])], critical: bool) -> Vec<u8> {
        let general: Vec<u8> = names
            .iter()
            .flat_map(|(tag, value)| element(*tag, value))
            .collect();
        let mut extension = element(0x06, &[0x55, 0x1d, 0x11]);
        if critical {
            extension.extend(element(0x01, &[0xff]));
        }
        extension.extend(element(0x04, &element(0x30, &general)));
        element(0x30, &extension)
    }

    #[test]
    fn every_kind_of_name_is_read_as_go_prints_it() {
        let other = {
            let mut e = element(0x06, &[0x55, 0x1d, 0x0f]); // keyUsage
            e.extend(element(0x04, &[0x03, 0x02, 0x05, 0xa0]));
            element(0x30, &e)
        };
        let der = certificate(&[
            other,
            san_extension(
                &[
                    (0x82, b"scraper.example.org"),
                    (0x81, b"ops@example.org"),
                    (0x87, &[10, 0, 0, 1]),
                    (
                        0x87,
                        &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    ),
                    (0x86, b"spiffe://example.org/prometheus"),
                    (0xa4, &element(0x30, &[])), // directoryName: not a SAN Go compares
                ],
                true,
            ),
        ]);
        assert_eq!(
            subject_alt_names(&der).expect("readable"),
            [
                "scraper.example.org",
                "ops@example.org",
                "10.0.0.1",
                "2001:db8::1",
                "spiffe://example.org/prometheus"
            ]
        );
        assert_eq!(subject_alt_names(&certificate(&[])), Some(Vec::new()));
    }

    #[test]
    fn broken_certificates_are_refused_not_misread() {
        let der = certificate(&[san_extension(&[(0x82, b"a.example")], false)]);
        for cut in 0..der.len() {
            // Any prefix either fails or is read without panicking.
            let _ = subject_alt_names(&der[..cut]);
        }
        assert_eq!(subject_alt_names(&[]), None);
        assert_eq!(subject_alt_names(&der[..der.len() - 1]), None);
        let bad_ip = certificate(&[san_extension(&[(0x87, &[1, 2, 3])], false)]);
        assert_eq!(subject_alt_names(&bad_ip), None);
    }

    #[test]
    fn a_missing_file_is_named() {
        let settings = TlsSettings {
            cert: Pem::File("/nonexistent/server.pem".into()),
            key: Pem::Inline("not a key".into()),
            client_ca: None,
            client_auth: ClientAuth::None,
            client_allowed_sans: None,
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
            prefer_server_cipher_suites: true,
            curves: Vec::new(),
        };
        let message = server_config(&settings).expect_err("missing file");
        assert!(
            message.starts_with("tls_server_config: cert_file /nonexistent/server.pem: "),
            "{message}"
        );
    }
}
