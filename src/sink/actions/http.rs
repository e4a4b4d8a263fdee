//! The one HTTP client of crashwatch: webhooks, Alertmanager pushes and `crashwatch status`.
//!
//! ureq speaks HTTP/1.1 (1xx answers, chunked bodies, CONNECT proxies); around it this module
//! keeps what every request here shares. An [`Endpoint`] is a URL with its headers, its
//! credentials (`basic_auth` or `authorization`, Prometheus' keys, each value inline or from a
//! file, see secret.rs) and its `tls_config` (tls.rs). Each request reads the secret files again,
//! takes its proxy from the environment (proxy.rs) and is bounded as a whole by one timeout:
//! connecting, TLS, sending and the answer. At most [`MAX_REDIRECTS`] redirects are followed,
//! by this module rather than ureq, because ureq turns a redirected POST into a GET without
//! its body, which would count a lost webhook as delivered: 301, 302, 307 and 308 send the same
//! request again to the new place, never from `https://` to `http://`, and credentials and
//! configured headers go to the configured origin only. Another 3xx is an answer like a 4xx.
//! Only the start of an answer is read (`limit`), so a receiver cannot fill crashwatch's memory.
//!
//! ureq is blocking; the actions call it on tokio's blocking pool ([`post`]), `status` directly.
//!
//! Retries follow the receiver's answer: a 2xx is done; a 5xx, 408, 429, a refused connection or a
//! timeout may pass, so they are retried with capped exponential backoff; any other status, a
//! TLS failure or a redirect not followed will not change by asking again.

use std::fmt;
use std::io::Read;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{ConnectProxyConnector, Connector, TcpConnector};
use ureq::Agent;

use super::proxy::proxy_for;
use super::secret::{Credential, Secret};
use super::tls::TlsSettings;

/// Redirects followed before a request fails.
pub const MAX_REDIRECTS: u32 = 5;
/// The most of an action's answer read: enough for the reason of an error.
pub const ACTION_ANSWER_LIMIT: usize = 64 * 1024;
/// How much of an answer the log shows.
const EXCERPT_CHARS: usize = 200;

/// A parsed `http://` or `https://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    https: bool,
    /// The host as written, with the brackets of an IPv6 literal, in lowercase.
    host: String,
    /// The port, 80 or 443 unless given.
    port: u16,
    /// The path and query, starting with `/`.
    target: String,
}

impl HttpUrl {
    /// Parses `http[s]://host[:port][/path][?query]`. The message of an error is a fragment to
    /// follow the config key's name.
    pub fn parse(text: &str) -> Result<HttpUrl, String> {
        let (scheme, rest) = text.split_once("://").unwrap_or(("", text));
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(format!("{text:?} is not an http:// or https:// URL")),
        };
        if let Some(bad) = rest.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{text:?} contains {bad:?}"));
        }
        if rest.contains('#') {
            return Err(format!(
                "{text:?} has a fragment (#), which HTTP never sends"
            ));
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err(format!(
                "{text:?}: credentials in the URL are not supported; \
                 use basic_auth or authorization"
            ));
        }
        let (host, port) = split_host_port(authority, if https { 443 } else { 80 })
            .map_err(|why| format!("{text:?}: {why}"))?;
        let target = match target {
            "" => "/".to_owned(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_owned(),
        };
        Ok(HttpUrl {
            https,
            host: host.to_ascii_lowercase(),
            port,
            target,
        })
    }

    /// The same server with `suffix` appended to the path (a trailing `/` of the path is
    /// dropped first); the query, if any, is dropped.
    pub fn join(&self, suffix: &str) -> HttpUrl {
        HttpUrl {
            target: format!("{}{suffix}", self.path().trim_end_matches('/')),
            ..self.clone()
        }
    }

    /// Whether it is an `https://` URL.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The host to connect to: an IPv6 literal without its brackets.
    pub fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("/")
    }

    /// The whole URL, query included, for the request.
    fn uri(&self) -> String {
        format!(
            "{}://{}:{}{}",
            self.scheme(),
            self.host,
            self.port,
            self.target
        )
    }

    /// Whether `other` is the same scheme, host and port.
    fn same_origin(&self, other: &HttpUrl) -> bool {
        self.https == other.https && self.host == other.host && self.port == other.port
    }

    /// The URL a `Location` header names, relative to this one.
    pub fn follow(&self, location: &str) -> Result<HttpUrl, String> {
        let location = location.split('#').next().unwrap_or_default();
        if location.contains("://") {
            return HttpUrl::parse(location);
        }
        if let Some(rest) = location.strip_prefix("//") {
            return HttpUrl::parse(&format!("{}://{rest}", self.scheme()));
        }
        if location
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "{location:?} contains a space or a control character"
            ));
        }
        let target = if location.starts_with('/') {
            location.to_owned()
        } else if location.starts_with('?') {
            format!("{}{location}", self.path())
        } else {
            let dir = &self.path()[..=self.path().rfind('/').unwrap_or(0)];
            format!("{dir}{location}")
        };
        Ok(HttpUrl {
            target,
            ..self.clone()
        })
    }
}

/// Shown without the query, which may carry a token.
impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}{}",
            self.scheme(),
            self.host,
            self.port,
            self.path()
        )
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Result<(&str, u16), String> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or("unclosed [ in the host")?;
        let (host, after) = authority.split_at(end + 1);
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("unexpected {after:?} after the host")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'));
    if !host_ok {
        return Err("no valid host".to_owned());
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("port {p:?} is not between 1 and 65535")),
        },
    };
    Ok((host, port))
}

/// Checks one extra header from the configuration: a token for a name, no line breaks in the
/// value (a header cannot be used to smuggle another), and none of the headers the client sets.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    check_header_name(name)?;
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!("the value of {name} contains a line break or NUL"));
    }
    Ok(())
}

fn check_header_name(name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!("{name:?} is not a valid header name"));
    }
    const OWN: [&str; 5] = [
        "host",
        "content-length",
        "content-type",
        "connection",
        "transfer-encoding",
    ];
    if OWN.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("{name} is set by crashwatch and cannot be given"));
    }
    Ok(())
}

/// `basic_auth`, as Prometheus writes it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthSection {
    /// The user name.
    pub username: Option<String>,
    /// A file holding the user name.
    pub username_file: Option<String>,
    /// The password, written here; `password_file` keeps it out of the configuration.
    pub password: Option<Secret>,
    /// A file holding the password.
    pub password_file: Option<String>,
}

/// `authorization`, as Prometheus writes it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationSection {
    /// The scheme. Default `Bearer`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The credentials, written here; `credentials_file` keeps them out of the configuration.
    pub credentials: Option<Secret>,
    /// A file holding the credentials.
    pub credentials_file: Option<String>,
}

/// How a request proves who sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Basic ...`.
    Basic {
        /// The user name.
        username: Credential,
        /// The password; none sends an empty one.
        password: Option<Credential>,
    },
    /// `Authorization: <scheme> <credentials>`.
    Authorization {
        /// `Bearer` unless configured.
        scheme: String,
        /// The token.
        credentials: Credential,
    },
}

impl Auth {
    /// Checks `basic_auth` and `authorization`, at most one of which may be given.
    pub fn resolve(
        basic: Option<&BasicAuthSection>,
        authorization: Option<&AuthorizationSection>,
    ) -> Result<Option<Auth>, String> {
        match (basic, authorization) {
            (Some(_), Some(_)) => Err("give basic_auth or authorization, not both".to_owned()),
            (Some(basic), None) => {
                let username = Credential::either(
                    "basic_auth.username",
                    basic.username.as_ref(),
                    "basic_auth.username_file",
                    basic.username_file.as_ref(),
                )?
                .ok_or("basic_auth needs username or username_file")?;
                let password = match (&basic.password, &basic.password_file) {
                    (Some(_), Some(_)) => {
                        return Err(
                            "give basic_auth.password or basic_auth.password_file, not both"
                                .to_owned(),
                        )
                    }
                    (Some(password), None) => Some(Credential::Inline(password.clone())),
                    (None, file) => Credential::either(
                        "basic_auth.password",
                        None,
                        "basic_auth.password_file",
                        file.as_ref(),
                    )?,
                };
                if let Credential::Inline(name) = &username {
                    if name.expose().contains(':') {
                        return Err("basic_auth.username must not contain ':'".to_owned());
                    }
                }
                Ok(Some(Auth::Basic { username, password }))
            }
            (None, Some(authorization)) => {
                let scheme = authorization
                    .kind
                    .clone()
                    .unwrap_or_else(|| "Bearer".to_owned());
                if scheme.eq_ignore_ascii_case("basic") {
                    return Err("authorization.type Basic: use basic_auth instead".to_owned());
                }
                let token = !scheme.is_empty()
                    && scheme
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token {
                    return Err(format!(
                        "authorization.type: {scheme:?} is not a scheme name"
                    ));
                }
                let credentials =
                    match (&authorization.credentials, &authorization.credentials_file) {
                        (Some(_), Some(_)) => {
                            return Err("give authorization.credentials or \
                                    authorization.credentials_file, not both"
                                .to_owned())
                        }
                        (Some(inline), None) => Credential::Inline(inline.clone()),
                        (None, file) => Credential::either(
                            "authorization.credentials",
                            None,
                            "authorization.credentials_file",
                            file.as_ref(),
                        )?
                        .ok_or("authorization needs credentials or credentials_file")?,
                    };
                Ok(Some(Auth::Authorization {
                    scheme,
                    credentials,
                }))
            }
            (None, None) => Ok(None),
        }
    }

    /// The `Authorization` header's value now, secret files read again.
    fn header(&self) -> Result<Secret, String> {
        match self {
            Auth::Basic { username, password } => {
                let username = username.read()?;
                if username.expose().contains(':') {
                    return Err("basic_auth.username_file: the name contains ':'".to_owned());
                }
                let password = match password {
                    Some(password) => password.read()?,
                    None => Secret::new(String::new()),
                };
                let pair = format!("{}:{}", username.expose(), password.expose());
                Ok(Secret::new(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )))
            }
            Auth::Authorization {
                scheme,
                credentials,
            } => Ok(Secret::new(format!(
                "{scheme} {}",
                credentials.read()?.expose()
            ))),
        }
    }
}

/// Where a request goes and with what: the URL, extra headers, credentials and TLS settings.
/// Holds secrets only as [`Secret`]s or files, so its `Debug` shows none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to send.
    pub url: HttpUrl,
    /// Extra headers (`headers` and `header_files`), in order.
    pub headers: Vec<(String, Credential)>,
    /// `basic_auth` or `authorization`.
    pub auth: Option<Auth>,
    /// `tls_config`, for `https://`.
    pub tls: TlsSettings,
}

impl Endpoint {
    /// An endpoint without credentials or TLS settings.
    pub fn plain(url: HttpUrl) -> Endpoint {
        Endpoint {
            url,
            headers: Vec::new(),
            auth: None,
            tls: TlsSettings::default(),
        }
    }
}

/// What a request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Reads a JSON document.
    Get,
    /// Posts a JSON document.
    Post,
}

/// A receiver's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The start of the body, at most the limit asked for.
    pub body: Vec<u8>,
    /// Whether `body` is the whole body.
    pub complete: bool,
}

impl Answer {
    /// The start of the body on one line, printable, for the log.
    pub fn excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .take(EXCERPT_CHARS)
            .collect()
    }
}

/// Why a request got no answer. Messages name neither the query nor a secret.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A secret or TLS file could not be used, or a proxy variable not understood.
    #[error("{0}")]
    Setup(String),
    /// No connection could be made.
    #[error("connecting: {0}")]
    Connect(String),
    /// TLS failed: the server's certificate, or the server refused ours.
    #[error("TLS: {0}")]
    Tls(String),
    /// No complete answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A redirect not followed.
    #[error("{0}")]
    Redirect(String),
    /// The exchange broke, or the answer was not HTTP.
    #[error("exchanging: {0}")]
    Exchange(String),
}

impl HttpError {
    /// Whether asking again may get an answer.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            HttpError::Connect(_) | HttpError::Timeout(_) | HttpError::Exchange(_)
        )
    }

    fn from_ureq(error: ureq::Error, timeout: Duration) -> HttpError {
        use std::io::ErrorKind;
        match error {
            ureq::Error::Timeout(_) => HttpError::Timeout(timeout),
            ureq::Error::Io(e) => {
                if let Some(tls) = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                {
                    return HttpError::Tls(tls.to_string());
                }
                match e.kind() {
                    ErrorKind::TimedOut | ErrorKind::WouldBlock => HttpError::Timeout(timeout),
                    ErrorKind::ConnectionRefused
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable => HttpError::Connect(e.to_string()),
                    _ => HttpError::Exchange(e.to_string()),
                }
            }
            ureq::Error::HostNotFound => HttpError::Connect("host not found".to_owned()),
            ureq::Error::ConnectionFailed => HttpError::Connect("no address answered".to_owned()),
            ureq::Error::ConnectProxyFailed(why) => {
                HttpError::Connect(format!("through the proxy: {why}"))
            }
            ureq::Error::TlsRequired => HttpError::Tls("no TLS on an https:// connection".into()),
            ureq::Error::BadUri(_) => HttpError::Setup("the URL is not valid".to_owned()),
            ureq::Error::Http(e) => HttpError::Setup(format!("the request is not valid: {e}")),
            ureq::Error::LargeResponseHeader(_, limit) => HttpError::Exchange(format!(
                "the answer's headers are larger than {limit} bytes"
            )),
            other => HttpError::Exchange(other.to_string()),
        }
    }
}

/// The `User-Agent` of every request.
fn user_agent() -> String {
    format!("crashwatch/{}", env!("CARGO_PKG_VERSION"))
}

/// Sends one request and reads at most `limit` bytes of the answer, all within `timeout`,
/// following redirects as the module says. Blocking.
pub fn exchange(
    endpoint: &Endpoint,
    method: Method,
    body: &[u8],
    timeout: Duration,
    limit: usize,
) -> Result<Answer, HttpError> {
    let deadline = Instant::now() + timeout;
    let mut headers: Vec<(String, Secret)> = Vec::with_capacity(endpoint.headers.len() + 1);
    for (name, value) in &endpoint.headers {
        let value = value.read().map_err(HttpError::Setup)?;
        check_header(name, value.expose())
            .map_err(|e| HttpError::Setup(format!("headers: {e}")))?;
        headers.push((name.clone(), value));
    }
    if let Some(auth) = &endpoint.auth {
        headers.push((
            "Authorization".to_owned(),
            auth.header().map_err(HttpError::Setup)?,
        ));
    }
    let mut tls_config = None;
    let mut url = endpoint.url.clone();
    for redirects in 0..=MAX_REDIRECTS {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HttpError::Timeout(timeout));
        }
        let same_origin = url.same_origin(&endpoint.url);
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(remaining))
            .max_idle_connections(0)
            .proxy(proxy_for(&url).map_err(HttpError::Setup)?)
            .user_agent(user_agent())
            .build();
        let plain = ().chain(ConnectProxyConnector::default()).chain(TcpConnector::default());
        let agent = if url.is_https() {
            let config_now = match &tls_config {
                Some(built) => std::sync::Arc::clone(built),
                None => {
                    let built = endpoint.tls.client_config().map_err(HttpError::Setup)?;
                    tls_config = Some(std::sync::Arc::clone(&built));
                    built
                }
            };
            let tls = endpoint
                .tls
                .connector(config_now, same_origin)
                .map_err(HttpError::Setup)?;
            Agent::with_parts(config, plain.chain(tls), DefaultResolver::default())
        } else {
            Agent::with_parts(config, plain, DefaultResolver::default())
        };
        let uri = url.uri();
        let sent = if same_origin { &headers[..] } else { &[] };
        let result = match method {
            Method::Post => {
                let mut request = agent.post(&uri).header("Content-Type", "application/json");
                for (name, value) in sent {
                    request = request.header(name.as_str(), value.expose());
                }
                request.send(body)
            }
            Method::Get => {
                let mut request = agent.get(&uri).header("Accept", "application/json");
                for (name, value) in sent {
                    request = request.header(name.as_str(), value.expose());
                }
                request.call()
            }
        };
        let response = result.map_err(|e| HttpError::from_ureq(e, timeout))?;
        let status = response.status().as_u16();
        if matches!(status, 301 | 302 | 307 | 308) {
            if redirects == MAX_REDIRECTS {
                return Err(HttpError::Redirect(format!(
                    "more than {MAX_REDIRECTS} redirects; the last to {url}"
                )));
            }
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    HttpError::Redirect(format!("HTTP {status} from {url} without a Location"))
                })?;
            let next = url.follow(location).map_err(|e| {
                HttpError::Redirect(format!("HTTP {status} from {url} to a bad Location: {e}"))
            })?;
            if url.is_https() && !next.is_https() {
                return Err(HttpError::Redirect(format!(
                    "HTTP {status} from {url} to {next}: not followed from https:// to http://"
                )));
            }
            url = next;
            continue;
        }
        let mut body = Vec::new();
        let read = response
            .into_body()
            .into_reader()
            .take(limit as u64 + 1)
            .read_to_end(&mut body);
        let complete = read.is_ok() && body.len() <= limit;
        body.truncate(limit);
        return Ok(Answer {
            status,
            body,
            complete,
        });
    }
    unreachable!("the loop returns on its last round")
}

/// [`exchange`] a POST on tokio's blocking pool, reading at most [`ACTION_ANSWER_LIMIT`].
pub async fn post(
    endpoint: &Endpoint,
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, HttpError> {
    let endpoint = endpoint.clone();
    let body = body.to_vec();
    let blocking = tokio::task::spawn_blocking(move || {
        exchange(&endpoint, Method::Post, &body, timeout, ACTION_ANSWER_LIMIT)
    });
    // ureq bounds the request; this bounds a name lookup ureq cannot interrupt.
    match tokio::time::timeout(timeout + Duration::from_secs(1), blocking).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(HttpError::Exchange(format!(
            "the request's thread failed: {e}"
        ))),
        Err(_) => Err(HttpError::Timeout(timeout)),
    }
}

/// A receiver's answer, as the log shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The start of the body, on one line, for the log.
    pub excerpt: String,
}

/// How a request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The bound on one attempt, connecting to reading the answer.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// The wait before the first retry; it doubles for each next one.
    pub backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Retry {
    /// The wait before retry number `retry` (1 for the first).
    pub fn wait_before(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// Whether asking again may get another answer.
fn retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// How a delivery ended after its retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// A 2xx answer.
    Accepted,
    /// An answer asking again will not change; not retried.
    Rejected(Response),
    /// Every attempt failed, or one failed in a way asking again will not change; the error.
    Failed(String),
}

/// POSTs `body` until it is accepted, rejected, or `retry` is spent.
pub async fn post_with_retries(endpoint: &Endpoint, body: &[u8], retry: Retry) -> Delivered {
    let mut last = String::new();
    for attempt in 0..=retry.retries {
        if attempt > 0 {
            let wait = retry.wait_before(attempt);
            tracing::debug!(url = %endpoint.url, error = %last, ?wait, "Delivery failed; retrying.");
            tokio::time::sleep(wait).await;
        }
        match post(endpoint, body, retry.timeout).await {
            Ok(a) if (200..300).contains(&a.status) => return Delivered::Accepted,
            Ok(a) if retryable(a.status) => last = format!("HTTP {}: {}", a.status, a.excerpt()),
            Ok(a) => {
                return Delivered::Rejected(Response {
                    status: a.status,
                    excerpt: a.excerpt(),
                })
            }
            Err(e) if e.retryable() => last = e.to_string(),
            Err(e) => return Delivered::Failed(e.to_string()),
        }
    }
    Delivered::Failed(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::actions::secret::SecretFile;
    use crate::sink::actions::tests::runtime;
    use std::io::Write;

    #[test]
    fn urls_are_parsed_and_shown_without_their_query() {
        let url = HttpUrl::parse("http://127.0.0.1:8080/hook?token=x").expect("valid");
        assert_eq!(url.bare_host(), "127.0.0.1");
        assert_eq!(url.port, 8080);
        assert_eq!(url.target, "/hook?token=x");
        assert_eq!(url.uri(), "http://127.0.0.1:8080/hook?token=x");
        assert_eq!(url.to_string(), "http://127.0.0.1:8080/hook");
        let url = HttpUrl::parse("HTTP://[::1]").expect("valid");
        assert_eq!((url.bare_host(), url.port), ("::1", 80));
        assert_eq!(url.target, "/");
        let am = HttpUrl::parse("http://am:9093/prefix/").expect("valid");
        assert_eq!(am.join("/api/v2/alerts").target, "/prefix/api/v2/alerts");
        let https = HttpUrl::parse("https://Hooks.Example.org/hook").expect("https");
        assert!(https.is_https());
        assert_eq!(https.to_string(), "https://hooks.example.org:443/hook");
        for bad in [
            "ftp://x/",
            "127.0.0.1:80",
            "http://",
            "http://a b/",
            "http://host:0/",
            "http://host:99999/",
            "https://user:pw@host/",
            "http://host/p#frag",
            "http://[::1/",
            "http://ho\"st/",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
        let credentials = HttpUrl::parse("https://user:pw@host/").expect_err("credentials");
        assert!(!credentials.contains("pw@") || credentials.starts_with('"'));
    }

    #[test]
    fn locations_are_resolved_against_the_request() {
        let url = HttpUrl::parse("https://a:8443/api/v2/alerts?x=1").expect("valid");
        let follow = |l: &str| url.follow(l).expect("valid").uri();
        assert_eq!(follow("/other"), "https://a:8443/other");
        assert_eq!(follow("next"), "https://a:8443/api/v2/next");
        assert_eq!(follow("?y=2"), "https://a:8443/api/v2/alerts?y=2");
        assert_eq!(follow("//b/x"), "https://b:443/x");
        assert_eq!(follow("http://c:81/z#f"), "http://c:81/z");
        assert!(url.follow("/a b").is_err());
        assert!(url.same_origin(&url.follow("/x").expect("valid")));
        assert!(!url.same_origin(&url.follow("//b/x").expect("valid")));
    }

    #[test]
    fn headers_cannot_smuggle_lines_or_replace_our_own() {
        assert!(check_header("Authorization", "Bearer x").is_ok());
        assert!(check_header("X-Team", "web").is_ok());
        assert!(check_header("X-Evil", "a\r\nHost: b").is_err());
        assert!(check_header("Bad Name", "x").is_err());
        assert!(check_header("", "x").is_err());
        assert!(check_header("content-length", "1").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let retry = Retry {
            timeout: Duration::from_secs(1),
            retries: 10,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(3),
        };
        let waits: Vec<u128> = (1..=5).map(|r| retry.wait_before(r).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000]);
        assert_eq!(retry.wait_before(1000), Duration::from_secs(3));
    }

    #[test]
    fn auth_is_checked_and_secret_in_debug() {
        let basic = BasicAuthSection {
            username: Some("crashwatch".to_owned()),
            password: Some(Secret::new("pw-s3cr3t".to_owned())),
            ..BasicAuthSection::default()
        };
        let auth = Auth::resolve(Some(&basic), None)
            .expect("valid")
            .expect("given");
        assert_eq!(
            auth.header().expect("inline").expose(),
            "Basic Y3Jhc2h3YXRjaDpwdy1zM2NyM3Q="
        );
        assert!(!format!("{auth:?} {basic:?}").contains("s3cr3t"));
        let bearer = AuthorizationSection {
            credentials: Some(Secret::new("tok".to_owned())),
            ..AuthorizationSection::default()
        };
        let auth = Auth::resolve(None, Some(&bearer))
            .expect("valid")
            .expect("given");
        assert_eq!(auth.header().expect("inline").expose(), "Bearer tok");
        assert_eq!(
            Auth::resolve(Some(&basic), Some(&bearer)).expect_err("both"),
            "give basic_auth or authorization, not both"
        );
        let no_user = BasicAuthSection::default();
        assert_eq!(
            Auth::resolve(Some(&no_user), None).expect_err("no user"),
            "basic_auth needs username or username_file"
        );
        let empty = AuthorizationSection::default();
        assert_eq!(
            Auth::resolve(None, Some(&empty)).expect_err("no credentials"),
            "authorization needs credentials or credentials_file"
        );
        let basic_type = AuthorizationSection {
            kind: Some("basic".to_owned()),
            ..bearer.clone()
        };
        assert_eq!(
            Auth::resolve(None, Some(&basic_type)).expect_err("basic"),
            "authorization.type Basic: use basic_auth instead"
        );
        let missing = AuthorizationSection {
            credentials_file: Some("/nonexistent/token".to_owned()),
            ..AuthorizationSection::default()
        };
        let error = Auth::resolve(None, Some(&missing)).expect_err("missing file");
        assert!(
            error.starts_with("authorization.credentials_file: reading /nonexistent/token"),
            "{error}"
        );
    }

    /// One request a receiver took: its head and its body.
    type Taken = (String, Vec<u8>);

    /// Answers each connection with the next of `answers`, returning every request received.
    fn receiver(answers: Vec<Vec<u8>>) -> (u16, std::thread::JoinHandle<Vec<Taken>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handle = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in answers {
                let (mut s, _) = listener.accept().expect("accept");
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut raw = Vec::new();
                let mut chunk = [0u8; 1024];
                let taken = loop {
                    let n = s.read(&mut chunk).expect("read");
                    raw.extend_from_slice(&chunk[..n]);
                    if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&raw[..end]).to_string();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if raw.len() >= end + 4 + length {
                            break (head, raw[end + 4..end + 4 + length].to_vec());
                        }
                    }
                    assert!(n > 0, "the request ended early");
                };
                requests.push(taken);
                // The answer may be refused halfway when it is too long to be read.
                let _ = s.write_all(&answer);
            }
            requests
        });
        (port, handle)
    }

    fn quick_retry(retries: u32) -> Retry {
        Retry {
            timeout: Duration::from_secs(5),
            retries,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
        }
    }

    fn endpoint(port: u16, path: &str) -> Endpoint {
        Endpoint::plain(HttpUrl::parse(&format!("http://127.0.0.1:{port}{path}")).expect("url"))
    }

    #[test]
    fn a_5xx_is_retried_and_a_request_is_well_formed() {
        let (port, server) = receiver(vec![
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy".to_vec(),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        ]);
        let mut endpoint = endpoint(port, "/hook?k=v");
        endpoint.headers.push((
            "X-Team".to_owned(),
            Credential::Inline(Secret::new("web".to_owned())),
        ));
        endpoint.auth = Some(Auth::Authorization {
            scheme: "Bearer".to_owned(),
            credentials: Credential::Inline(Secret::new("t".to_owned())),
        });
        let delivered =
            runtime().block_on(post_with_retries(&endpoint, b"{\"a\":1}", quick_retry(2)));
        assert_eq!(delivered, Delivered::Accepted);
        let requests = server.join().expect("receiver");
        assert_eq!(requests.len(), 2);
        let (head, body) = &requests[0];
        assert!(head.starts_with("POST /hook?k=v HTTP/1.1\r\n"), "{head}");
        let head = head.to_ascii_lowercase();
        for line in [
            format!("host: 127.0.0.1:{port}"),
            "content-type: application/json".to_owned(),
            "content-length: 7".to_owned(),
            "authorization: bearer t".to_owned(),
            "x-team: web".to_owned(),
            format!("user-agent: crashwatch/{}", env!("CARGO_PKG_VERSION")),
        ] {
            assert!(head.contains(&line), "{line:?} missing in {head:?}");
        }
        assert_eq!(body, b"{\"a\":1}");
    }

    #[test]
    fn a_4xx_is_not_retried_and_keeps_its_reason() {
        let (port, server) = receiver(vec![
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 31\r\n\r\nstart time must be before end\n"
                .to_vec(),
        ]);
        let delivered = runtime().block_on(post_with_retries(
            &endpoint(port, "/"),
            b"[]",
            quick_retry(3),
        ));
        assert_eq!(
            delivered,
            Delivered::Rejected(Response {
                status: 400,
                excerpt: "start time must be before end".to_owned()
            })
        );
        assert_eq!(server.join().expect("receiver").len(), 1);
    }

    #[test]
    fn a_closed_port_fails_after_every_retry() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        match runtime().block_on(post_with_retries(
            &endpoint(port, "/"),
            b"{}",
            quick_retry(1),
        )) {
            Delivered::Failed(e) => assert!(e.starts_with("connecting: "), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_redirected_post_is_sent_again_with_its_body_and_credentials_stay_home() {
        let (other_port, other) = receiver(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()
        ]);
        let (port, server) = receiver(vec![
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /moved\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
            format!(
                "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{other_port}/elsewhere\r\n\
                 Content-Length: 0\r\n\r\n"
            )
            .into_bytes(),
        ]);
        let mut endpoint = endpoint(port, "/hook");
        endpoint.auth = Some(Auth::Authorization {
            scheme: "Bearer".to_owned(),
            credentials: Credential::Inline(Secret::new("t".to_owned())),
        });
        let answer = exchange(&endpoint, Method::Post, b"{}", Duration::from_secs(5), 1024)
            .expect("answered");
        assert_eq!(answer.status, 200);
        let here = server.join().expect("receiver");
        assert!(here[1].0.starts_with("POST /moved "), "{:?}", here[1].0);
        assert_eq!(here[1].1, b"{}");
        assert!(here[1]
            .0
            .to_ascii_lowercase()
            .contains("authorization: bearer t"));
        let there = other.join().expect("receiver");
        assert!(
            there[0].0.starts_with("POST /elsewhere "),
            "{:?}",
            there[0].0
        );
        assert_eq!(there[0].1, b"{}");
        assert!(
            !there[0].0.to_ascii_lowercase().contains("authorization"),
            "credentials went to another origin: {}",
            there[0].0
        );
    }

    #[test]
    fn answers_are_read_up_to_the_limit_only() {
        let big = vec![b'x'; 1 << 20];
        let mut answer =
            format!("HTTP/1.1 500 Oops\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
        answer.extend_from_slice(&big);
        let (port, _server) = receiver(vec![answer]);
        let answer = exchange(
            &endpoint(port, "/"),
            Method::Post,
            b"{}",
            Duration::from_secs(5),
            ACTION_ANSWER_LIMIT,
        )
        .expect("answered");
        assert_eq!(answer.status, 500);
        assert_eq!(answer.body.len(), ACTION_ANSWER_LIMIT);
        assert!(!answer.complete);
        assert_eq!(answer.excerpt().len(), EXCERPT_CHARS);
    }

    #[test]
    fn a_secret_file_is_read_at_each_request() {
        let dir = std::env::temp_dir().join(format!("cw-http-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let token = dir.join("token");
        std::fs::write(&token, "first\n").expect("write");
        let (port, server) = receiver(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ]);
        let mut endpoint = endpoint(port, "/");
        endpoint.auth = Some(Auth::Authorization {
            scheme: "Bearer".to_owned(),
            credentials: Credential::File(
                SecretFile::open("authorization.credentials_file", token.to_str().unwrap())
                    .expect("readable"),
            ),
        });
        let timeout = Duration::from_secs(5);
        exchange(&endpoint, Method::Post, b"{}", timeout, 0).expect("first");
        std::fs::write(&token, "second\n").expect("write");
        exchange(&endpoint, Method::Post, b"{}", timeout, 0).expect("second");
        std::fs::remove_file(&token).expect("remove");
        let gone = exchange(&endpoint, Method::Post, b"{}", timeout, 0).expect_err("gone");
        assert!(!gone.retryable());
        assert!(
            gone.to_string()
                .starts_with("authorization.credentials_file: reading "),
            "{gone}"
        );
        let requests = server.join().expect("receiver");
        assert!(requests[0].0.contains("Bearer first"), "{}", requests[0].0);
        assert!(requests[1].0.contains("Bearer second"), "{}", requests[1].0);
        std::fs::remove_dir_all(&dir).ok();
    }
}
