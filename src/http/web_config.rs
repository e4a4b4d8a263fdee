//! The web configuration file (`--web.config.file`): TLS, client certificates, basic
//! authentication, response headers and a rate limit, in the YAML format of the Prometheus
//! exporter-toolkit (its docs/web-configuration.md), so the file a node_exporter reads works here
//! unchanged.
//!
//! The format is followed key for key, unknown keys refused as exporter-toolkit's strict
//! unmarshalling does, with relative file names taken from the file's own directory. Where
//! rustls cannot do what Go's TLS stack does (TLS 1.0 and 1.1, CBC or RSA key exchange cipher
//! suites, the P-521 curve) the file is refused with a message that says so, rather than serving
//! something other than what was asked. Checking is done here and in [`super::tls`]; serving the
//! result and reading it again when a file changes is [`super::live`]'s.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::time::parse_duration;

/// A web configuration file that cannot be used. Never holds a secret: messages name keys and
/// files, not values.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct WebConfigError {
    /// The web configuration file, as given.
    pub path: String,
    /// What is wrong, on one line, naming the key.
    pub message: String,
}

/// The file as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    tls_server_config: Option<TlsSection>,
    #[serde(default)]
    http_server_config: Option<HttpSection>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    #[serde(default)]
    rate_limit: Option<RateLimitSection>,
}

/// `tls_server_config`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
}

/// `http_server_config`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    /// HTTP/2 is not served (HTTP/1.1 only), so the setting changes nothing; accepted so that
    /// exporter-toolkit files work unchanged.
    #[allow(dead_code)]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// `rate_limit`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitSection {
    burst: Option<u32>,
    interval: Option<String>,
}

/// The headers a web configuration may add to every answer, with the values allowed where the
/// header has a fixed set (exporter-toolkit's `extraHTTPHeaders`, kept identical so that every
/// Prometheus server accepts the same files).
const EXTRA_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Where a PEM document comes from: a file, or the web configuration itself.
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    /// A file, its name already joined with the configuration's directory.
    File(PathBuf),
    /// Inline text (`cert`, `key`, `client_ca`).
    Inline(String),
}

impl Pem {
    /// The key the document came from, for messages: `cert_file` or `cert`.
    pub fn describe(&self, file_key: &str, inline_key: &str) -> String {
        match self {
            Pem::File(path) => format!("{file_key} {}", path.display()),
            Pem::Inline(_) => inline_key.to_owned(),
        }
    }

    /// The document's bytes.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Pem::File(path) => read_capped(path),
            Pem::Inline(text) => Ok(text.clone().into_bytes()),
        }
    }
}

/// The largest web configuration, certificate or key file read: far above any real one, and
/// small enough that a name like `/dev/zero` cannot exhaust memory.
const MAX_FILE: u64 = 1 << 20;

/// The file at `path`, refused when over [`MAX_FILE`].
fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(bytes)
}

/// `client_auth_type`, with Go's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert`: no certificate asked for.
    None,
    /// `RequestClientCert`: asked for, not required, not checked against a CA.
    Request,
    /// `RequireAnyClientCert`: required, not checked against a CA.
    RequireAny,
    /// `VerifyClientCertIfGiven`: not required, checked against the client CA when given.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`: required and checked against the client CA.
    RequireAndVerify,
}

impl ClientAuth {
    fn parse(text: &str) -> Result<ClientAuth, String> {
        Ok(match text {
            "" | "NoClientCert" => ClientAuth::None,
            "RequestClientCert" => ClientAuth::Request,
            // exporter-toolkit keeps the old name for compatibility.
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAny,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerify,
            other => {
                return Err(format!(
                    "{other:?} is not one of NoClientCert, RequestClientCert, \
                     RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
                ))
            }
        })
    }

    /// Whether the client's certificate is checked against the client CA.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify
        )
    }
}

/// A TLS protocol version rustls implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    fn parse(text: &str) -> Result<TlsVersion, String> {
        match text {
            "TLS12" => Ok(TlsVersion::Tls12),
            "TLS13" => Ok(TlsVersion::Tls13),
            "TLS10" | "TLS11" => Err(format!(
                "{text} is not supported: crashwatch's TLS (rustls) implements only TLS12 and TLS13"
            )),
            other => Err(format!("{other:?} is not one of TLS12, TLS13")),
        }
    }
}

/// The key-exchange groups of `curve_preferences`, with Go's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    /// `X25519`.
    X25519,
    /// `CurveP256` (secp256r1).
    P256,
    /// `CurveP384` (secp384r1).
    P384,
}

impl Curve {
    fn parse(text: &str) -> Result<Curve, String> {
        match text {
            "X25519" => Ok(Curve::X25519),
            "CurveP256" => Ok(Curve::P256),
            "CurveP384" => Ok(Curve::P384),
            "CurveP521" => Err(
                "CurveP521 is not supported: crashwatch's TLS (rustls with ring) offers X25519, \
                 CurveP256 and CurveP384"
                    .to_owned(),
            ),
            other => Err(format!(
                "{other:?} is not one of X25519, CurveP256, CurveP384"
            )),
        }
    }
}

/// The TLS 1.2 cipher suites rustls implements, by the names Go gives them.
pub const TLS12_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// TLS 1.3 suites: Go accepts their names in `cipher_suites` but always enables all three, and
/// so does crashwatch.
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Suites Go knows that rustls deliberately lacks (CBC modes, RSA key exchange, RC4, 3DES).
fn is_go_suite_rustls_lacks(name: &str) -> bool {
    name.starts_with("TLS_RSA_WITH_")
        || name.starts_with("TLS_ECDHE_ECDSA_WITH_")
        || name.starts_with("TLS_ECDHE_RSA_WITH_")
}

/// The checked `tls_server_config`.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The server's certificate chain.
    pub cert: Pem,
    /// The server's private key.
    pub key: Pem,
    /// The CAs client certificates are checked against.
    pub client_ca: Option<Pem>,
    /// How client certificates are asked for and checked.
    pub client_auth: ClientAuth,
    /// Subject alternative names a client certificate must hold one of, when set.
    pub client_allowed_sans: Option<Vec<String>>,
    /// The lowest version accepted.
    pub min_version: TlsVersion,
    /// The highest version accepted.
    pub max_version: TlsVersion,
    /// TLS 1.2 suites by Go name, in order of preference; empty for rustls's defaults.
    pub cipher_suites: Vec<&'static str>,
    /// Whether the server's order of suites wins over the client's.
    pub prefer_server_cipher_suites: bool,
    /// Key-exchange groups in order of preference; empty for rustls's defaults.
    pub curves: Vec<Curve>,
}

impl fmt::Debug for TlsSettings {
    // The key may be inline: it is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert", &self.cert.describe("cert_file", "cert"))
            .field(
                "key",
                &self.key.describe("key_file", "key (inline, not shown)"),
            )
            .field("client_auth", &self.client_auth)
            .field("min_version", &self.min_version)
            .field("max_version", &self.max_version)
            .finish_non_exhaustive()
    }
}

/// `rate_limit`: a token bucket of `burst` requests refilled one per `interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Time between two requests.
    pub interval: Duration,
    /// Requests allowed at once.
    pub burst: u32,
}

/// A checked web configuration file. Its `Debug` shows no password hash and no key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    /// TLS, when `tls_server_config` sets it up; plain HTTP otherwise.
    pub tls: Option<TlsSettings>,
    /// Users and their bcrypt hashes; empty means no authentication.
    pub users: BTreeMap<String, String>,
    /// Headers added to every answer.
    pub headers: Vec<(String, String)>,
    /// The rate limit, if any.
    pub rate_limit: Option<RateLimit>,
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("headers", &self.headers)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

impl WebConfig {
    /// Reads and checks the file at `path` (not the certificates it names: see
    /// [`super::tls::server_config`]).
    pub fn read(path: &Path) -> Result<WebConfig, WebConfigError> {
        let bytes = read_capped(path).map_err(|e| WebConfigError {
            path: path.display().to_string(),
            message: format!("cannot read it: {e}"),
        })?;
        let text = String::from_utf8(bytes).map_err(|_| WebConfigError {
            path: path.display().to_string(),
            message: "is not UTF-8 text".to_owned(),
        })?;
        let directory = path.parent().unwrap_or(Path::new(""));
        WebConfig::parse(&text, directory).map_err(|message| WebConfigError {
            path: path.display().to_string(),
            message,
        })
    }

    /// Checks `text`; relative file names are taken from `directory`. The error is one line
    /// naming the key.
    pub fn parse(text: &str, directory: &Path) -> Result<WebConfig, String> {
        // An empty file (or one of comments only) is a valid configuration: nothing to do.
        let file: Option<FileFormat> =
            serde_norway::from_str(text).map_err(|e| one_line(&e.to_string()))?;
        let file = file.unwrap_or_default();
        let tls = match file.tls_server_config {
            Some(section) => tls_settings(section, directory)?,
            None => None,
        };
        let users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            check_bcrypt(hash).map_err(|e| format!("basic_auth_users: {user:?}: {e}"))?;
        }
        let mut headers = Vec::new();
        let header_section = file.http_server_config.unwrap_or_default();
        for (name, value) in header_section.headers.unwrap_or_default() {
            let Some((_, allowed)) = EXTRA_HEADERS.iter().find(|(known, _)| *known == name) else {
                return Err(format!(
                    "http_server_config.headers: {name:?} cannot be set (only {})",
                    EXTRA_HEADERS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
                return Err(format!(
                    "http_server_config.headers: {name}: {value:?} is not one of {}",
                    allowed.join(", ")
                ));
            }
            if value.is_empty() {
                // "Unset if blank."
                continue;
            }
            if value.chars().any(|c| c.is_control()) {
                return Err(format!(
                    "http_server_config.headers: {name}: the value holds a control character"
                ));
            }
            headers.push((name, value));
        }
        let rate_limit = match file.rate_limit {
            Some(section) => {
                let interval = match section.interval.as_deref() {
                    Some(text) => {
                        parse_duration(text).map_err(|e| format!("rate_limit.interval: {e}"))?
                    }
                    None => Duration::ZERO,
                };
                // An interval of 0 turns the limiter off, as in exporter-toolkit.
                (!interval.is_zero()).then_some(RateLimit {
                    interval,
                    burst: section.burst.unwrap_or(0),
                })
            }
            None => None,
        };
        Ok(WebConfig {
            tls,
            users,
            headers,
            rate_limit,
        })
    }

    /// The files this configuration names (certificate, key, client CA), so that a change to
    /// any of them is noticed.
    pub fn files(&self) -> Vec<PathBuf> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|pem| match pem {
                Pem::File(path) => Some(path.clone()),
                Pem::Inline(_) => None,
            })
            .collect()
    }
}

/// The checked `tls_server_config`; `None` when it sets nothing (exporter-toolkit then serves
/// plain HTTP).
fn tls_settings(section: TlsSection, directory: &Path) -> Result<Option<TlsSettings>, String> {
    let given = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
    let enabled = given(&section.cert)
        || given(&section.key)
        || given(&section.client_ca)
        || given(&section.cert_file)
        || given(&section.key_file)
        || given(&section.client_ca_file)
        || given(&section.client_auth_type);
    if !enabled {
        return Ok(None);
    }
    let pem = |inline: &Option<String>,
               file: &Option<String>,
               inline_key: &str,
               file_key: &str|
     -> Result<Option<Pem>, String> {
        match (given(inline), given(file)) {
            (true, true) => Err(format!(
                "tls_server_config: set {inline_key} or {file_key}, not both"
            )),
            (true, false) => Ok(inline.clone().map(Pem::Inline)),
            (false, true) => Ok(file.as_deref().map(|name| Pem::File(directory.join(name)))),
            (false, false) => Ok(None),
        }
    };
    let cert = pem(&section.cert, &section.cert_file, "cert", "cert_file")?
        .ok_or("tls_server_config: missing one of cert or cert_file")?;
    let key = pem(&section.key, &section.key_file, "key", "key_file")?
        .ok_or("tls_server_config: missing one of key or key_file")?;
    let client_ca = pem(
        &section.client_ca,
        &section.client_ca_file,
        "client_ca",
        "client_ca_file",
    )?;
    let client_auth = ClientAuth::parse(section.client_auth_type.as_deref().unwrap_or(""))
        .map_err(|e| format!("tls_server_config.client_auth_type: {e}"))?;
    if client_ca.is_some() && client_auth == ClientAuth::None {
        return Err(
            "tls_server_config: a client CA is set but client_auth_type is NoClientCert \
             (use RequireAndVerifyClientCert)"
                .to_owned(),
        );
    }
    if client_auth.verifies() && client_ca.is_none() {
        return Err(format!(
            "tls_server_config: client_auth_type {} needs client_ca_file (or client_ca) to check \
             client certificates against",
            section.client_auth_type.as_deref().unwrap_or_default()
        ));
    }
    let version = |text: &Option<String>, key: &str, default: TlsVersion| match text.as_deref() {
        Some(text) => TlsVersion::parse(text).map_err(|e| format!("tls_server_config.{key}: {e}")),
        None => Ok(default),
    };
    let min_version = version(&section.min_version, "min_version", TlsVersion::Tls12)?;
    let max_version = version(&section.max_version, "max_version", TlsVersion::Tls13)?;
    if min_version > max_version {
        return Err("tls_server_config: min_version is above max_version".to_owned());
    }
    let mut cipher_suites = Vec::new();
    for name in section.cipher_suites.unwrap_or_default() {
        if let Some(known) = TLS12_SUITES.iter().find(|known| **known == name) {
            cipher_suites.push(*known);
        } else if TLS13_SUITES.contains(&name.as_str()) {
            // Go ignores TLS 1.3 suites here: all of them are always on.
        } else if is_go_suite_rustls_lacks(&name) {
            return Err(format!(
                "tls_server_config.cipher_suites: {name} is not supported: crashwatch's TLS \
                 (rustls) offers only {}",
                TLS12_SUITES.join(", ")
            ));
        } else {
            return Err(format!(
                "tls_server_config.cipher_suites: {name:?} is not a cipher suite"
            ));
        }
    }
    let curves = section
        .curve_preferences
        .unwrap_or_default()
        .iter()
        .map(|name| Curve::parse(name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls_server_config.curve_preferences: {e}"))?;
    Ok(Some(TlsSettings {
        cert,
        key,
        client_ca,
        client_auth,
        client_allowed_sans: section.client_allowed_sans,
        min_version,
        max_version,
        cipher_suites,
        prefer_server_cipher_suites: section.prefer_server_cipher_suites.unwrap_or(true),
        curves,
    }))
}

/// Whether `hash` is a bcrypt hash (`$2a$`, `$2b$`, `$2x$` or `$2y$`, as `htpasswd -B` writes),
/// with a cost bcrypt accepts. Says what is wrong, never the hash.
pub fn check_bcrypt(hash: &str) -> Result<(), String> {
    let parts: bcrypt::HashParts = hash
        .parse()
        .map_err(|_| "the password is not a bcrypt hash (make one with htpasswd -nBC 10 USER)")?;
    let cost = parts.get_cost();
    if !(4..=31).contains(&cost) {
        return Err(format!("the bcrypt cost {cost} is outside 4 to 31"));
    }
    Ok(())
}

/// The YAML parser's message on one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bcrypt hash of "secret" at cost 4 (the lowest, so tests stay fast), as htpasswd writes.
    pub(crate) const HASH: &str = "$2y$04$zViP7VBRZFCwCsvFMZyBoePzNoauCeUl6n0yRtTdR/8ADbeRGqTfq";

    fn parse(text: &str) -> Result<WebConfig, String> {
        WebConfig::parse(text, Path::new("/etc/crashwatch"))
    }

    #[test]
    fn the_test_hash_is_a_hash_of_the_test_password() {
        assert!(bcrypt::verify("secret", HASH).expect("a valid hash"));
    }

    #[test]
    fn an_empty_file_asks_for_nothing() {
        for text in ["", "# nothing\n", "---\n"] {
            let config = parse(text).expect(text);
            assert_eq!(config, WebConfig::default());
        }
        assert_eq!(parse("tls_server_config: {}\n").unwrap().tls, None);
    }

    #[test]
    fn every_field_of_a_node_exporter_file_is_read() {
        let text = format!(
            r#"
tls_server_config:
  cert_file: server.crt
  key_file: /keys/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  client_allowed_sans: ["scraper.example.org", "10.0.0.1"]
  min_version: TLS13
  max_version: TLS13
  cipher_suites:
    - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
    - TLS_AES_128_GCM_SHA256
    - TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
  prefer_server_cipher_suites: false
  curve_preferences: [CurveP384, X25519]
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Strict-Transport-Security: max-age=31536000
    Content-Security-Policy: ""
basic_auth_users:
  prometheus: {HASH}
rate_limit:
  interval: 100ms
  burst: 5
"#
        );
        let config = parse(&text).expect("valid");
        let tls = config.tls.as_ref().expect("TLS");
        assert!(tls.cert == Pem::File(PathBuf::from("/etc/crashwatch/server.crt")));
        assert!(tls.key == Pem::File(PathBuf::from("/keys/server.key")));
        assert!(tls.client_ca == Some(Pem::File(PathBuf::from("/etc/crashwatch/ca.crt"))));
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerify);
        assert_eq!(
            tls.client_allowed_sans.as_deref(),
            Some(&["scraper.example.org".to_owned(), "10.0.0.1".to_owned()][..])
        );
        assert_eq!(
            (tls.min_version, tls.max_version),
            (TlsVersion::Tls13, TlsVersion::Tls13)
        );
        assert_eq!(
            tls.cipher_suites,
            [
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert!(!tls.prefer_server_cipher_suites);
        assert_eq!(tls.curves, [Curve::P384, Curve::X25519]);
        assert_eq!(
            config.headers,
            [
                (
                    "Strict-Transport-Security".to_owned(),
                    "max-age=31536000".to_owned()
                ),
                ("X-Content-Type-Options".to_owned(), "nosniff".to_owned()),
                ("X-Frame-Options".to_owned(), "deny".to_owned()),
            ],
            "a blank header is left out"
        );
        assert_eq!(
            config.users.get("prometheus").map(String::as_str),
            Some(HASH)
        );
        assert_eq!(
            config.rate_limit,
            Some(RateLimit {
                interval: Duration::from_millis(100),
                burst: 5
            })
        );
        assert_eq!(
            config.files(),
            [
                PathBuf::from("/etc/crashwatch/server.crt"),
                PathBuf::from("/keys/server.key"),
                PathBuf::from("/etc/crashwatch/ca.crt"),
            ]
        );
    }

    #[test]
    fn defaults_follow_exporter_toolkit() {
        let config = parse("tls_server_config:\n  cert: CERT\n  key: KEY\n").expect("valid");
        let tls = config.tls.expect("TLS");
        assert!(tls.cert == Pem::Inline("CERT".to_owned()));
        assert_eq!(tls.client_auth, ClientAuth::None);
        assert_eq!(
            (tls.min_version, tls.max_version),
            (TlsVersion::Tls12, TlsVersion::Tls13)
        );
        assert!(tls.prefer_server_cipher_suites);
        assert!(tls.cipher_suites.is_empty() && tls.curves.is_empty());
        assert!(tls.client_allowed_sans.is_none());
        assert!(config.users.is_empty() && config.headers.is_empty());
        let config = parse("rate_limit:\n  interval: 0s\n  burst: 3\n").expect("valid");
        assert_eq!(config.rate_limit, None, "an interval of 0 turns it off");
    }

    #[test]
    fn every_bad_file_is_one_line_naming_the_key() {
        let tls = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        let cases = [
            (
                "tls_server_config:\n  cert_fil: a\n",
                "unknown field `cert_fil`",
            ),
            (
                "basic_auth_user:\n  a: b\n",
                "unknown field `basic_auth_user`",
            ),
            (
                "http_server_config:\n  header: {}\n",
                "unknown field `header`",
            ),
            ("rate_limit:\n  burst: -1\n", "rate_limit"),
            (
                "tls_server_config:\n  key_file: b\n",
                "missing one of cert or cert_file",
            ),
            (
                "tls_server_config:\n  cert_file: a\n",
                "missing one of key or key_file",
            ),
            (
                "tls_server_config:\n  cert: a\n  cert_file: a\n  key_file: b\n",
                "set cert or cert_file, not both",
            ),
            (
                &format!("{tls}  min_version: TLS10\n"),
                "tls_server_config.min_version: TLS10 is not supported",
            ),
            (
                &format!("{tls}  max_version: TLS11\n"),
                "tls_server_config.max_version: TLS11 is not supported",
            ),
            (
                &format!("{tls}  min_version: TLS14\n"),
                "tls_server_config.min_version: \"TLS14\" is not one of TLS12, TLS13",
            ),
            (
                &format!("{tls}  min_version: TLS13\n  max_version: TLS12\n"),
                "min_version is above max_version",
            ),
            (
                &format!("{tls}  client_auth_type: RequireCert\n"),
                "tls_server_config.client_auth_type: \"RequireCert\" is not one of",
            ),
            (
                &format!("{tls}  client_ca_file: ca\n"),
                "a client CA is set but client_auth_type is NoClientCert",
            ),
            (
                &format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"),
                "needs client_ca_file",
            ),
            (
                &format!("{tls}  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n"),
                "tls_server_config.cipher_suites: TLS_RSA_WITH_AES_128_CBC_SHA is not supported",
            ),
            (
                &format!("{tls}  cipher_suites: [TLS_INVENTED]\n"),
                "\"TLS_INVENTED\" is not a cipher suite",
            ),
            (
                &format!("{tls}  curve_preferences: [CurveP521]\n"),
                "tls_server_config.curve_preferences: CurveP521 is not supported",
            ),
            (
                &format!("{tls}  curve_preferences: [CurveP999]\n"),
                "\"CurveP999\" is not one of",
            ),
            (
                "http_server_config:\n  headers:\n    X-Powered-By: me\n",
                "http_server_config.headers: \"X-Powered-By\" cannot be set",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
                "X-Frame-Options: \"allow\" is not one of deny, sameorigin",
            ),
            (
                "basic_auth_users:\n  alice: plaintext-password\n",
                "basic_auth_users: \"alice\": the password is not a bcrypt hash",
            ),
            ("rate_limit:\n  interval: soon\n", "rate_limit.interval"),
            ("tls_server_config: [1, 2]\n", "tls_server_config"),
            ("basic_auth_users: {a: b\n", "line"),
        ];
        for (text, expected) in cases {
            let message = parse(text).expect_err(text);
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(!message.contains('\n'), "{message}");
            assert!(!message.contains("plaintext-password"), "{message}");
        }
    }

    #[test]
    fn bcrypt_hashes_are_told_from_anything_else() {
        assert_eq!(check_bcrypt(HASH), Ok(()));
        for bad in ["", "secret", "$1$abc$def", &HASH.replace("$04$", "$99$")] {
            let message = check_bcrypt(bad).expect_err(bad);
            assert!(!message.contains(bad) || bad.is_empty(), "{message}");
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let text = format!(
            "tls_server_config:\n  cert: CERT\n  key: PRIVATE-KEY-TEXT\nbasic_auth_users:\n  bob: {HASH}\n"
        );
        let shown = format!("{:?}", parse(&text).expect("valid"));
        assert!(shown.contains("bob"), "{shown}");
        assert!(!shown.contains("PRIVATE-KEY-TEXT"), "{shown}");
        assert!(!shown.contains(HASH), "{shown}");
    }

    #[test]
    fn the_shipped_example_checks_out() {
        let text = include_str!("../../examples/web-config.yml");
        let config = parse(text).expect("examples/web-config.yml");
        let tls = config.tls.expect("TLS");
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerify);
        assert!(tls.cert == Pem::File(PathBuf::from("/etc/crashwatch/tls/server.pem")));
        assert_eq!(config.headers.len(), 2);
    }

    #[test]
    fn the_read_error_names_the_file() {
        let error = WebConfig::read(Path::new("/nonexistent/web.yml")).expect_err("missing");
        let message = error.to_string();
        assert!(
            message.starts_with("/nonexistent/web.yml: cannot read it"),
            "{message}"
        );
        let endless = WebConfig::read(Path::new("/dev/zero")).expect_err("endless");
        assert_eq!(
            endless.to_string(),
            "/dev/zero: cannot read it: larger than 1 MiB"
        );
    }
}
