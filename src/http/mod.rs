//! The HTTP server: `/metrics` for Prometheus and the status API (`/api/units`) next to it.
//!
//! A small server of our own rather than a framework: it serves only GET and HEAD, bounds how long
//! a client may take to send its request or to take the answer, and caps connections, so a
//! scraper that connects and never reads costs a counted error, not a stuck task. Nothing it
//! serves needs more than a request line.

pub mod api;
pub mod landing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::engine::units::SharedUnits;
use crate::internal_events::HttpRequestError;
use crate::sink::prometheus::Exposition;

/// How long a client may take to send its request, and to take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more wait for a free slot.
const MAX_CONNECTIONS: usize = 64;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

/// Binds the listener. Separate from [`serve`] so a busy port fails at start-up.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// What the server answers from.
#[derive(Clone)]
pub struct Routes {
    /// `/metrics`.
    pub exposition: Exposition,
    /// `/api/units`.
    pub units: SharedUnits,
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, routes: Routes, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else {
            // Out of file descriptors and the like: wait a little rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            if let Err(reason) = answer(stream, &routes).await {
                HttpRequestError { reason: &reason }.emit();
            }
            drop(permit);
        });
    }
}

/// An answer: status line, content type and a body in parts (shared, not copied).
struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: Vec<Arc<str>>,
}

impl Answer {
    fn new(status: &'static str, content_type: &'static str, body: impl Into<Arc<str>>) -> Answer {
        Answer {
            status,
            content_type,
            body: vec![body.into()],
        }
    }

    fn json(status: &'static str, value: &serde_json::Value) -> Answer {
        let mut text = value.to_string();
        text.push('\n');
        Answer::new(status, JSON, text)
    }

    fn not_found(what: &str) -> Answer {
        Answer::json("404 Not Found", &serde_json::json!({ "error": what }))
    }
}

async fn answer(mut stream: TcpStream, routes: &Routes) -> Result<(), String> {
    let head = tokio::time::timeout(CLIENT_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| "request not received in time".to_owned())??;
    let request_line = head.lines().next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    let answer = if method == "GET" || head_only {
        route(path, routes)
    } else {
        Answer::new(
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n",
        )
    };
    let length: usize = answer.body.iter().map(|part| part.len()).sum();
    let header = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n",
        answer.status, answer.content_type
    );
    tokio::time::timeout(CLIENT_TIMEOUT, async {
        stream.write_all(header.as_bytes()).await?;
        if !head_only {
            for part in &answer.body {
                stream.write_all(part.as_bytes()).await?;
            }
        }
        stream.shutdown().await
    })
    .await
    .map_err(|_| "response not taken in time".to_owned())?
    .map_err(|e| format!("writing the response: {e}"))
}

fn route(path: &str, routes: &Routes) -> Answer {
    match path {
        "/metrics" => Answer {
            status: "200 OK",
            content_type: PROMETHEUS_TEXT,
            body: routes.exposition.render().into(),
        },
        "/" => Answer::new(
            "200 OK",
            "text/html; charset=utf-8",
            landing::page(&routes.units.lock(), true),
        ),
        "/api/units" | "/api/units/" => {
            let document = api::units_document(&routes.units.lock());
            Answer::json("200 OK", &document)
        }
        _ => {
            let Some(rest) = path.strip_prefix("/api/units/") else {
                return Answer::new("404 Not Found", "text/plain", "not found\n");
            };
            // A unit name never holds `/`, so `{unit}/events` and `{unit}` cannot be confused.
            let (unit, events) = match rest.strip_suffix("/events") {
                Some(unit) => (unit, true),
                None if !rest.contains('/') => (rest, false),
                None => return Answer::new("404 Not Found", "text/plain", "not found\n"),
            };
            let Some(unit) = percent_decode(unit) else {
                return Answer::json(
                    "400 Bad Request",
                    &serde_json::json!({ "error": "the unit name is not valid percent-encoded UTF-8" }),
                );
            };
            let table = routes.units.lock();
            let document = if events {
                api::events_document(&table, &unit)
            } else {
                api::unit_document(&table, &unit)
            };
            drop(table);
            match document {
                Some(document) => Answer::json("200 OK", &document),
                None => Answer::not_found("no such unit is watched"),
            }
        }
    }
}

/// Decodes `%XX` escapes: unit names carry `\`, `@` and other characters a client escapes.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes every byte outside RFC 3986's unreserved set, for a unit name in a path.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

async fn read_head(stream: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("connection closed before the request ended".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_REQUEST {
            return Err("request head too large".to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_survive_percent_encoding() {
        for name in [
            "nginx.service",
            "getty@tty1.service",
            r"sys-devices-a\x2db.device",
            "tty (tty1)",
            "ünï/cødé?#%.service",
        ] {
            assert_eq!(percent_decode(&percent_encode(name)).as_deref(), Some(name));
        }
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
