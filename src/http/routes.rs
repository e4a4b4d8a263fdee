//! What each path answers: `/metrics` from the exposition, `/` the landing page, `/api/units...`
//! the status API's documents (unless the API is turned off); and the gzip encoding of an
//! answer for a client that accepts it.

use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use flate2::write::GzEncoder;
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
    pub body: Vec<Arc<str>>,
    /// Whether the body is worth compressing for a client that accepts gzip.
    pub compressible: bool,
}

impl Answer {
    /// A plain-text answer (errors, refusals): never compressed.
    pub fn text(status: StatusCode, body: &str) -> Answer {
        Answer {
            status,
            content_type: TEXT,
            body: vec![Arc::from(body)],
            compressible: false,
        }
    }

    fn json(status: StatusCode, value: &serde_json::Value) -> Answer {
        let mut text = value.to_string();
        text.push('\n');
        Answer {
            status,
            content_type: JSON,
            body: vec![Arc::from(text)],
            compressible: true,
        }
    }

    fn not_found() -> Answer {
        Answer::text(StatusCode::NOT_FOUND, "not found\n")
    }

    /// The body as sent: gzip-compressed when `gzip`, else the parts joined.
    pub fn encode(&self, gzip: bool) -> Bytes {
        if gzip {
            let length: usize = self.body.iter().map(|part| part.len()).sum();
            // Fast compression: a scrape's text shrinks about tenfold at this level already,
            // and the daemon shares its one thread with the engine.
            let mut encoder =
                GzEncoder::new(Vec::with_capacity(length / 8), flate2::Compression::fast());
            for part in &self.body {
                // Writing into a Vec cannot fail.
                let _ = encoder.write_all(part.as_bytes());
            }
            return Bytes::from(encoder.finish().unwrap_or_default());
        }
        if let [only] = &self.body[..] {
            return Bytes::copy_from_slice(only.as_bytes());
        }
        Bytes::from(self.body.concat())
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
                body: vec![Arc::from(page)],
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
            body: vec![Arc::from("a 1\n".repeat(1000)), Arc::from("b 2\n")],
            compressible: true,
        };
        let plain = answer.encode(false);
        assert_eq!(plain.len(), 4004);
        let packed = answer.encode(true);
        assert!(packed.len() < plain.len() / 10, "{} bytes", packed.len());
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut unpacked)
            .expect("valid gzip");
        assert_eq!(unpacked, plain);
    }
}
