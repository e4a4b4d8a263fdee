//! A minimal HTTP/1.1 client for the webhook and Alertmanager actions: one POST per connection.
//!
//! Both receivers need nothing more than a JSON body posted over plain HTTP and the status code
//! back, so a few dozen lines over a tokio `TcpStream` replace an HTTP stack and its TLS and
//! connection-pool dependencies. Every request says `Connection: close` and is bounded as a whole
//! by the action's timeout. TLS is deliberately absent: an `https://` URL is refused when the
//! configuration is loaded, pointing at a command action (curl) instead.
//!
//! Retries follow the receiver's answer: a 2xx is done; a 5xx, 408, 429, a refused connection or a
//! timeout may pass, so they are retried with capped exponential backoff; any other status
//! (another 4xx, or a redirect this client does not follow) will not change by asking again.

use std::fmt;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of a response kept: enough for the status, the headers and the start of an error.
const MAX_RESPONSE: usize = 8 * 1024;
/// How long an error response's body may take to arrive once its status is in.
const EXCERPT_WAIT: Duration = Duration::from_secs(1);

/// A parsed `http://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// The host as written, with the brackets of an IPv6 literal.
    host: String,
    /// The port, 80 unless given.
    port: u16,
    /// The path and query, starting with `/`.
    target: String,
}

impl HttpUrl {
    /// Parses `http://host[:port][/path][?query]`. The message of an error is a fragment to
    /// follow the config key's name.
    pub fn parse(text: &str) -> Result<HttpUrl, String> {
        let scheme_end = text.find("://").map(|i| i + 3).unwrap_or(0);
        let scheme = text[..scheme_end].to_ascii_lowercase();
        if scheme == "https://" {
            return Err(format!(
                "{text:?}: https:// is not supported (crashwatch has no TLS); \
                 use a command action running curl for HTTPS"
            ));
        }
        if scheme != "http://" {
            return Err(format!("{text:?} is not an http:// URL"));
        }
        let rest = &text[scheme_end..];
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
                 send them in headers, e.g. headers = {{ Authorization = \"Bearer ...\" }}"
            ));
        }
        let (host, port) = split_host_port(authority).map_err(|why| format!("{text:?}: {why}"))?;
        let target = match target {
            "" => "/".to_owned(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_owned(),
        };
        Ok(HttpUrl {
            host: host.to_owned(),
            port,
            target,
        })
    }

    /// The same server with `suffix` appended to the path (a trailing `/` of the path is
    /// dropped first); the query, if any, is dropped.
    pub fn join(&self, suffix: &str) -> HttpUrl {
        let path = self.target.split('?').next().unwrap_or("/");
        HttpUrl {
            host: self.host.clone(),
            port: self.port,
            target: format!("{}{suffix}", path.trim_end_matches('/')),
        }
    }

    /// The `Host` header's value.
    fn host_header(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The host to connect to: an IPv6 literal without its brackets.
    fn connect_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Shown without the query, which may carry a token.
impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.target.split('?').next().unwrap_or("/");
        write!(f, "http://{}:{}{path}", self.host, self.port)
    }
}

fn split_host_port(authority: &str) -> Result<(&str, u16), String> {
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
        None => 80,
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
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!("the value of {name} contains a line break or NUL"));
    }
    Ok(())
}

/// A receiver's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The start of the body, on one line, for the log.
    pub excerpt: String,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No connection could be made.
    #[error("connecting: {0}")]
    Connect(io::Error),
    /// The connection broke while sending or receiving.
    #[error("exchanging: {0}")]
    Exchange(io::Error),
    /// No complete answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer was not HTTP.
    #[error("the answer is not HTTP")]
    Malformed,
}

/// POSTs `body` as JSON to `url` with `headers` and returns the status, all within `timeout`.
pub async fn post(
    url: &HttpUrl,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    tokio::time::timeout(timeout, exchange(url, headers, body))
        .await
        .unwrap_or(Err(HttpError::Timeout(timeout)))
}

async fn exchange(
    url: &HttpUrl,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Response, HttpError> {
    let mut stream = TcpStream::connect((url.connect_host(), url.port))
        .await
        .map_err(HttpError::Connect)?;
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: crashwatch/{}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        url.target,
        url.host_header(),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut message = request.into_bytes();
    message.extend_from_slice(body);
    stream
        .write_all(&message)
        .await
        .map_err(HttpError::Exchange)?;

    let mut raw = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            break end;
        }
        if raw.len() >= MAX_RESPONSE || !read_some(&mut stream, &mut raw).await? {
            return Err(HttpError::Malformed);
        }
    };
    let status = parse_status(&raw[..head_end]).ok_or(HttpError::Malformed)?;
    if !(200..300).contains(&status) {
        // The reason is usually in the body (Alertmanager: "start time must be before end
        // time"); wait a little for it, never long.
        let _ = tokio::time::timeout(EXCERPT_WAIT, async {
            while raw.len() < MAX_RESPONSE
                && matches!(read_some(&mut stream, &mut raw).await, Ok(true))
            {}
        })
        .await;
    }
    let body = String::from_utf8_lossy(&raw[head_end + 4..]);
    let excerpt: String = body
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect();
    Ok(Response { status, excerpt })
}

/// Reads what is there into `raw`; false at the end of the stream.
async fn read_some(stream: &mut TcpStream, raw: &mut Vec<u8>) -> Result<bool, HttpError> {
    let mut chunk = [0u8; 2048];
    let n = stream.read(&mut chunk).await.map_err(HttpError::Exchange)?;
    raw.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The code of `HTTP/1.x NNN reason`.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// How a request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The bound on one attempt, connecting to reading the status.
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
    /// Every attempt failed; the last error.
    Failed(String),
}

/// POSTs `body` until it is accepted, rejected, or `retry` is spent.
pub async fn post_with_retries(
    url: &HttpUrl,
    headers: &[(String, String)],
    body: &[u8],
    retry: Retry,
) -> Delivered {
    let mut last = String::new();
    for attempt in 0..=retry.retries {
        if attempt > 0 {
            let wait = retry.wait_before(attempt);
            tracing::debug!(url = %url, error = %last, ?wait, "Delivery failed; retrying.");
            tokio::time::sleep(wait).await;
        }
        match post(url, headers, body, retry.timeout).await {
            Ok(r) if (200..300).contains(&r.status) => return Delivered::Accepted,
            Ok(r) if retryable(r.status) => last = format!("HTTP {}: {}", r.status, r.excerpt),
            Ok(r) => return Delivered::Rejected(r),
            Err(e) => last = e.to_string(),
        }
    }
    Delivered::Failed(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::actions::tests::runtime;
    use std::io::{Read, Write};

    #[test]
    fn urls_are_parsed_and_https_is_refused_with_a_way_out() {
        let url = HttpUrl::parse("http://127.0.0.1:8080/hook?token=x").expect("valid");
        assert_eq!(url.connect_host(), "127.0.0.1");
        assert_eq!(url.port, 8080);
        assert_eq!(url.target, "/hook?token=x");
        assert_eq!(url.host_header(), "127.0.0.1:8080");
        assert_eq!(url.to_string(), "http://127.0.0.1:8080/hook");
        let url = HttpUrl::parse("HTTP://[::1]").expect("valid");
        assert_eq!((url.connect_host(), url.port), ("::1", 80));
        assert_eq!(url.host_header(), "[::1]");
        assert_eq!(url.target, "/");
        let am = HttpUrl::parse("http://am:9093/prefix/").expect("valid");
        assert_eq!(am.join("/api/v2/alerts").target, "/prefix/api/v2/alerts");
        let https = HttpUrl::parse("https://example.org/hook").expect_err("https");
        assert!(https.contains("TLS") && https.contains("curl"), "{https}");
        for bad in [
            "ftp://x/",
            "127.0.0.1:80",
            "http://",
            "http://a b/",
            "http://host:0/",
            "http://host:99999/",
            "http://user:pw@host/",
            "http://host/p#frag",
            "http://[::1/",
            "http://ho\"st/",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
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

    /// Answers each connection with the next of `answers`, returning every request received.
    fn receiver(answers: Vec<&'static str>) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handle = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in answers {
                let (mut s, _) = listener.accept().expect("accept");
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut raw = Vec::new();
                let mut chunk = [0u8; 1024];
                // Headers, then the body as long as Content-Length says.
                loop {
                    let n = s.read(&mut chunk).expect("read");
                    raw.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&raw).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                requests.push(String::from_utf8_lossy(&raw).to_string());
                s.write_all(answer.as_bytes()).expect("write");
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

    #[test]
    fn a_5xx_is_retried_and_a_request_is_well_formed() {
        let (port, server) = receiver(vec![
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
            "HTTP/1.1 204 No Content\r\n\r\n",
        ]);
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/hook")).expect("url");
        let headers = vec![("Authorization".to_owned(), "Bearer t".to_owned())];
        let delivered = runtime().block_on(post_with_retries(
            &url,
            &headers,
            b"{\"a\":1}",
            quick_retry(2),
        ));
        assert_eq!(delivered, Delivered::Accepted);
        let requests = server.join().expect("receiver");
        assert_eq!(requests.len(), 2);
        let first = &requests[0];
        assert!(first.starts_with("POST /hook HTTP/1.1\r\n"), "{first}");
        for line in [
            format!("Host: 127.0.0.1:{port}\r\n"),
            "Content-Type: application/json\r\n".to_owned(),
            "Content-Length: 7\r\n".to_owned(),
            "Connection: close\r\n".to_owned(),
            "Authorization: Bearer t\r\n".to_owned(),
        ] {
            assert!(first.contains(&line), "{line:?} missing in {first:?}");
        }
        assert!(first.ends_with("\r\n\r\n{\"a\":1}"), "{first:?}");
    }

    #[test]
    fn a_4xx_is_not_retried_and_keeps_its_reason() {
        let (port, server) = receiver(vec![
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 31\r\n\r\nstart time must be before end\n",
        ]);
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/")).expect("url");
        let delivered = runtime().block_on(post_with_retries(&url, &[], b"[]", quick_retry(3)));
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
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/")).expect("url");
        match runtime().block_on(post_with_retries(&url, &[], b"{}", quick_retry(1))) {
            Delivered::Failed(e) => assert!(e.contains("connecting"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn statuses_are_read_from_the_status_line_only() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 500 Oops\r\nX: y"), Some(500));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2000 OK"), None);
    }
}
