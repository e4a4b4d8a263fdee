//! What each path answers: `/metrics` from the exposition, `/` the landing page, `/api/units...`
//! the status API's documents (unless the API is turned off); and the gzip encoding of an
//! answer for a client that accepts it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::write::GzEncoder;
use hyper::body::{Body, Frame, SizeHint};
use hyper::StatusCode;

use super::{api, landing, Routes};

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// An answer before encoding: status, content type, and the body in parts (shared, not copied).
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body, in parts.
    pub body: Vec<Bytes>,
    /// Whether the body is worth compressing for a client that accepts gzip.
    pub compressible: bool,
}

impl Answer {
    /// A plain-text answer (errors, refusals): never compressed.
    pub fn text(status: StatusCode, body: &str) -> Answer {
        Answer {
            status,
            content_type: TEXT,
            body: vec![Bytes::copy_from_slice(body.as_bytes())],
            compressible: false,
        }
    }

    fn json(status: StatusCode, value: &serde_json::Value) -> Answer {
        let mut text = value.to_string();
        text.push('\n');
        Answer {
            status,
            content_type: JSON,
            body: vec![Bytes::from(text)],
            compressible: true,
        }
    }

    fn not_found() -> Answer {
        Answer::text(StatusCode::NOT_FOUND, "not found\n")
    }

    /// The body as sent: gzip-compressed when `gzip`, else the parts themselves.
    pub fn encode(self, gzip: bool) -> Parts {
        if gzip {
            let length: usize = self.body.iter().map(Bytes::len).sum();
            // Fast compression: a scrape's text shrinks about tenfold at this level already,
            // and the daemon shares its one thread with the engine.
            let mut encoder =
                GzEncoder::new(Vec::with_capacity(length / 8), flate2::Compression::fast());
            for part in &self.body {
                // Writing into a Vec cannot fail.
                let _ = encoder.write_all(part);
            }
            return Parts::new(vec![Bytes::from(encoder.finish().unwrap_or_default())]);
        }
        Parts::new(self.body)
    }
}

/// A response body sent as the parts it was made of. The exposition's parts are shared with
/// its cache, so a scrape of a megabyte copies nothing before the socket write, which takes
/// the parts together (vectored).
pub struct Parts {
    parts: VecDeque<Bytes>,
    remaining: u64,
}

impl Parts {
    fn new(parts: Vec<Bytes>) -> Parts {
        let parts: VecDeque<Bytes> = parts.into_iter().filter(|part| !part.is_empty()).collect();
        let remaining = parts.iter().map(|part| part.len() as u64).sum();
        Parts { parts, remaining }
    }
}

impl Body for Parts {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.parts.pop_front();
        if let Some(part) = &next {
            self.remaining -= part.len() as u64;
        }
        Poll::Ready(next.map(|part| Ok(Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Whether an `Accept-Encoding` value accepts gzip (RFC 9110 12.5.3): `gzip` or `*` with a
/// non-zero quality, unless gzip itself is given quality 0.
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    let mut star = false;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let quality = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            return quality > 0.0;
        }
        if coding == "*" {
            star = quality > 0.0;
        }
    }
    star
}

/// The answer to a GET (or HEAD) of `path`.
pub fn route(path: &str, routes: &Routes) -> Answer {
    match path {
        "/metrics" => Answer {
            status: StatusCode::OK,
            content_type: PROMETHEUS_TEXT,
            body: routes.exposition.render().into(),
            compressible: true,
        },
        "/" => {
            let page = landing::page(&routes.units.lock(), routes.api);
            Answer {
                status: StatusCode::OK,
                content_type: HTML,
                body: vec![Bytes::from(page)],
                compressible: true,
            }
        }
        _ if !routes.api => Answer::not_found(),
        "/api/units" | "/api/units/" => {
            let document = api::units_document(&routes.units.lock());
            Answer::json(StatusCode::OK, &document)
        }
        _ => {
            let Some(rest) = path.strip_prefix("/api/units/") else {
                return Answer::not_found();
            };
            // A unit name never holds `/`, so `{unit}/events` and `{unit}` cannot be confused.
            let (unit, events) = match rest.strip_suffix("/events") {
                Some(unit) => (unit, true),
                None if !rest.contains('/') => (rest, false),
                None => return Answer::not_found(),
            };
            let Some(unit) = percent_decode(unit) else {
                return Answer::json(
                    StatusCode::BAD_REQUEST,
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
                Some(document) => Answer::json(StatusCode::OK, &document),
                None => Answer::json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({ "error": "no such unit is watched" }),
                ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// The frames of a body, in order.
    fn frames(mut body: Parts) -> Vec<Bytes> {
        let mut context = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut context) {
            out.push(
                frame
                    .expect("infallible")
                    .into_data()
                    .expect("a data frame"),
            );
        }
        out
    }

    fn collect(body: Parts) -> Vec<u8> {
        frames(body).concat()
    }

    #[test]
    fn a_plain_body_is_its_parts_shared_not_copied() {
        let own = Bytes::from("own 1\n".to_string());
        let units = Bytes::from("unit 2\n".to_string());
        let answer = Answer {
            status: StatusCode::OK,
            content_type: PROMETHEUS_TEXT,
            body: vec![own.clone(), Bytes::new(), units.clone()],
            compressible: true,
        };
        let body = answer.encode(false);
        assert_eq!(body.size_hint().exact(), Some(13));
        let sent = frames(body);
        assert_eq!(sent, [own.clone(), units.clone()]);
        assert_eq!(sent[0].as_ptr(), own.as_ptr());
        assert_eq!(sent[1].as_ptr(), units.as_ptr());
    }

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

    #[test]
    fn gzip_is_taken_only_when_offered() {
        for yes in [
            "gzip",
            "deflate, gzip;q=1.0, *;q=0.5",
            "GZIP",
            "br, gzip;q=0.1",
            "*",
            "identity, *;q=0.3",
            "x-gzip",
        ] {
            assert!(accepts_gzip(yes), "{yes}");
        }
        for no in [
            "",
            "identity",
            "br, deflate",
            "gzip;q=0",
            "*;q=0",
            "gzip;q=0, *",
        ] {
            assert!(!accepts_gzip(no), "{no}");
        }
    }

    #[test]
    fn a_gzipped_body_unpacks_to_the_parts_joined() {
        let answer = Answer {
            status: StatusCode::OK,
            content_type: PROMETHEUS_TEXT,
            body: vec![Bytes::from("a 1\n".repeat(1000)), Bytes::from("b 2\n")],
            compressible: true,
        };
        let plain: Vec<u8> = answer.body.concat();
        assert_eq!(plain.len(), 4004);
        let packed = collect(answer.encode(true));
        assert!(packed.len() < plain.len() / 10, "{} bytes", packed.len());
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut unpacked)
            .expect("valid gzip");
        assert_eq!(unpacked, plain);
    }
}
