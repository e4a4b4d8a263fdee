//! The landing page at `/`: what this is, where its metrics and API are, and the node's units as
//! `crashwatch status` prints them, for whoever opens the port in a browser.
//!
//! Shaped like the landing page every Prometheus exporter serves (exporter-toolkit's
//! `web/landing_page.go`): a coloured header with the name, a line saying what it does, the
//! version, a list of links. Below it the units table, the rows of [`table::rows`], so the page
//! and the terminal show the same cells in the same order. The page is rendered on the server in
//! one string, with its CSS inline and no JavaScript: it loads nothing but itself, works with
//! scripts off, and costs one pass over the table. On a narrow screen each row becomes a card of
//! labelled cells rather than a table wider than the phone.
//!
//! Unit names and every other value of the table come from outside (systemd, Upstart, whoever
//! named the service), so each is HTML-escaped as it is written.

use std::fmt::{self, Display, Write as _};

use super::api::table::{self, Standing, HEADER};
use super::api::units_document;
use super::percent_encode;
use crate::engine::units::UnitTable;

/// The colour of the header bar.
const HEADER_COLOR: &str = "#24476b";

/// The page: name, version, description, links (the status API's only when `api_enabled`), and
/// every unit of `table`.
pub fn page(table: &UnitTable, api_enabled: bool) -> String {
    let document = units_document(table);
    let rows = table::rows(&document);
    // More than a row takes, so the string is allocated once and never grows.
    let mut out = String::with_capacity(4096 + rows.len() * 320);
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>crashwatch</title>\n",
    );
    // Without an icon of its own the browser asks for /favicon.ico: a request the page does not
    // need, and a 404 in its console.
    out.push_str("<link rel=\"icon\" href=\"data:,\">\n<style>\n");
    style(&mut out);
    out.push_str("</style>\n</head>\n<body>\n<header><h1>crashwatch</h1></header>\n<main>\n");
    out.push_str("<p class=\"description\">");
    escaped(&mut out, env!("CARGO_PKG_DESCRIPTION"));
    out.push_str(".</p>\n<p>Version: ");
    escaped(&mut out, env!("CARGO_PKG_VERSION"));
    // Relative links, so the page still leads to them behind a proxy that serves it under a path.
    out.push_str(
        "</p>\n<ul class=\"links\">\n\
         <li><a href=\"metrics\">Metrics</a>: for Prometheus</li>\n",
    );
    if api_enabled {
        out.push_str(
            "<li><a href=\"api/units\">Units</a>: the status API, as JSON \
             (<code>crashwatch status</code> reads it)</li>\n",
        );
    }
    out.push_str("</ul>\n<h2>Units</h2>\n");
    if rows.is_empty() {
        out.push_str(
            "<p class=\"empty\">No units are watched: crashwatch has heard of no service on \
             this node yet.</p>\n",
        );
    } else {
        out.push_str("<p class=\"summary\">");
        escaped(&mut out, table::summary(&document, rows.len()));
        out.push_str("</p>\n<div class=\"units\">\n<table>\n<thead><tr>");
        for heading in HEADER {
            out.push_str("<th scope=\"col\">");
            out.push_str(heading);
            out.push_str("</th>");
        }
        out.push_str("</tr></thead>\n<tbody>\n");
        for row in &rows {
            let standing = row.standing();
            out.push_str(match standing {
                Standing::GaveUp => "<tr class=\"gave-up\">",
                Standing::Looping => "<tr class=\"looping\">",
                Standing::Steady | Standing::Unknown => "<tr>",
            });
            let [unit, rest @ ..] = row.cells();
            out.push_str("<td>");
            match row.name().filter(|_| api_enabled) {
                Some(name) => {
                    // Percent-encoded, the name holds nothing HTML would read.
                    out.push_str("<a href=\"api/units/");
                    out.push_str(&percent_encode(name));
                    out.push_str("\">");
                    escaped(&mut out, unit);
                    out.push_str("</a>");
                }
                None => escaped(&mut out, unit),
            }
            out.push_str("</td>");
            for cell in rest {
                out.push_str("<td>");
                match cell {
                    table::Cell::Standing(Standing::GaveUp | Standing::Looping) => {
                        out.push_str("<strong>");
                        escaped(&mut out, cell);
                        out.push_str("</strong>");
                    }
                    _ => escaped(&mut out, cell),
                }
                out.push_str("</td>");
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody>\n</table>\n</div>\n");
    }
    if let Some(at) = document["generated_at"].as_str() {
        out.push_str("<p class=\"generated\">As of ");
        escaped(&mut out, at);
        out.push_str("; reload for the latest.</p>\n");
    }
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

/// The page's CSS. Every column but the names keeps to one line, and names wrap, so a wide
/// screen shows the whole table; a table wider still scrolls in its own box. Below 40rem the
/// table turns into one card per unit, each cell on a line of its own after its heading (written
/// here from [`HEADER`], not repeated in every cell): the page never gets wider than the screen.
fn style(out: &mut String) {
    let _ = write!(
        out,
        "*{{box-sizing:border-box}}\n\
         body{{margin:0;color:#1f2328;background:#fff;line-height:1.4;\
         font-family:-apple-system,BlinkMacSystemFont,\"Segoe UI\",Roboto,\"Helvetica Neue\",\
         Arial,\"Noto Sans\",\"Liberation Sans\",sans-serif}}\n\
         header{{background:{HEADER_COLOR};color:#fff;padding:1rem}}\n\
         h1{{margin:0;font-size:1.5rem}}\n\
         h2{{font-size:1.15rem;margin:1.5rem 0 .5rem}}\n\
         main{{padding:1rem}}\n\
         a{{color:#0550ae}}\n\
         .description{{font-size:1.1rem;margin-top:0}}\n\
         .units{{overflow-x:auto}}\n\
         table{{border-collapse:collapse;font-size:.875rem;\
         font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,\"Liberation Mono\",monospace}}\n\
         th,td{{text-align:left;vertical-align:top;padding:.3rem .75rem;white-space:nowrap;\
         border-bottom:1px solid #d0d7de}}\n\
         th{{background:#f6f8fa}}\n\
         td:first-child{{white-space:normal;overflow-wrap:anywhere;min-width:12ch}}\n\
         tr.looping td{{background:#fff1c2}}\n\
         tr.looping td:first-child{{box-shadow:inset 4px 0 #bf8700}}\n\
         tr.gave-up td{{background:#ffd8d3;color:#82071e}}\n\
         tr.gave-up td:first-child{{box-shadow:inset 4px 0 #cf222e}}\n\
         .generated{{color:#59636e;font-size:.875rem}}\n\
         @media (max-width:40rem){{\n\
         table,tbody,tr,td{{display:block}}\n\
         thead{{position:absolute;width:1px;height:1px;overflow:hidden;clip-path:inset(50%)}}\n\
         tr{{border:1px solid #d0d7de;border-radius:6px;margin-bottom:.75rem;overflow:hidden}}\n\
         td{{display:grid;grid-template-columns:6.5rem minmax(0,1fr);gap:.5rem;\
         white-space:normal;overflow-wrap:anywhere}}\n\
         tr td:first-child{{box-shadow:none}}\n\
         tr.looping{{border-left:6px solid #bf8700}}\n\
         tr.gave-up{{border-left:6px solid #cf222e}}\n\
         td:last-child{{border-bottom:0}}\n\
         td::before{{font-weight:600;color:#59636e}}\n"
    );
    for (n, heading) in HEADER.iter().enumerate() {
        let _ = writeln!(
            out,
            "td:nth-child({})::before{{content:\"{heading}\"}}",
            n + 1
        );
    }
    out.push_str("}\n");
}

/// Writes `value` into `out` with `&`, `<`, `>`, `"` and `'` escaped, without a copy of its text.
fn escaped(out: &mut String, value: impl Display) {
    let _ = write!(Escaping(out), "{value}");
}

/// A `fmt::Write` that HTML-escapes what passes through it.
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, byte) in s.bytes().enumerate() {
            let entity = match byte {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                b'\'' => "&#39;",
                _ => continue,
            };
            self.0.push_str(&s[plain..i]);
            self.0.push_str(entity);
            plain = i + 1;
        }
        self.0.push_str(&s[plain..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Policy;
    use crate::event::{Event, SourceKind, Transition, TransitionKind, UnitState};
    use crate::http::api::tests::table_with;

    /// The text of each `<tr>` of the body: its class and its cells' inner HTML.
    fn body_rows(page: &str) -> Vec<(Option<&str>, Vec<&str>)> {
        let Some(body) = page.split_once("<tbody>\n").map(|(_, rest)| rest) else {
            return Vec::new();
        };
        let body = body.split_once("</tbody>").map_or(body, |(rows, _)| rows);
        body.lines()
            .map(|line| {
                let class = line
                    .strip_prefix("<tr class=\"")
                    .and_then(|rest| rest.split_once('"'))
                    .map(|(class, _)| class);
                let cells = line
                    .split("<td>")
                    .skip(1)
                    .map(|cell| cell.split_once("</td>").map_or(cell, |(inner, _)| inner))
                    .collect();
                (class, cells)
            })
            .collect()
    }

    #[test]
    fn names_and_values_from_outside_are_escaped() {
        let hostile = "<script>alert('x')</script> & \"q\".service";
        let table = table_with(&[(hostile, true, 4), ("a\u{1b}b.service", false, 0)]);
        let page = page(&table, true);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains(hostile), "{page}");
        let rows = body_rows(&page);
        assert_eq!(rows.len(), 2, "{page}");
        assert_eq!(
            rows[0].1[0],
            "<a href=\"api/units/%3Cscript%3Ealert%28%27x%27%29%3C%2Fscript%3E%20%26%20%22q%22.service\">\
             &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;.service</a>",
        );
        // Control characters are escaped as the terminal shows them.
        assert!(rows[1].1[0].contains("a\\u{1b}b.service"), "{page}");
        assert!(!page.contains('\u{1b}'));

        // A value other than the name (the state systemd reports), and a name without the API links.
        let mut table = table_with(&[("a.service", false, 0)]);
        let odd_state = Transition::new(
            "a.service",
            SourceKind::Systemd,
            1_700_000_005_000_000,
            TransitionKind::Stopped,
            UnitState::new("active", "running"),
            UnitState::new("<b>x</b>", "\"&'"),
        );
        table.record(&Event::Transition {
            transition: odd_state,
            restarts: 0,
        });
        let page = super::page(&table, false);
        let rows = body_rows(&page);
        assert_eq!(rows[0].1[0], "a.service");
        assert_eq!(rows[0].1[2], "&lt;b&gt;x&lt;/b&gt;/&quot;&amp;&#39;");
        assert!(!page.contains("<b>"), "{page}");
    }

    #[test]
    fn no_units_is_said_plainly() {
        let page = page(&UnitTable::new(), true);
        assert!(
            page.contains("<p class=\"empty\">No units are watched"),
            "{page}"
        );
        assert!(!page.contains("<table"), "{page}");
        assert!(page.contains("<h1>crashwatch</h1>"));
        assert!(page.contains(concat!("Version: ", env!("CARGO_PKG_VERSION"))));
    }

    #[test]
    fn rows_come_in_the_order_and_with_the_cells_of_crashwatch_status() {
        let mut table = table_with(&[
            ("a.service", false, 2),
            ("b.service", true, 4),
            ("c.service", false, 0),
            ("d.service", false, 0),
        ]);
        let mut gave_up = Transition::new(
            "d.service",
            SourceKind::Systemd,
            1_700_000_001_000_000,
            TransitionKind::Failed,
            UnitState::new("activating", "auto-restart"),
            UnitState::new("failed", "failed"),
        );
        gave_up.gave_up = true;
        table.record(&Event::Transition {
            transition: gave_up,
            restarts: 0,
        });
        let page = page(&table, false);
        let rows = body_rows(&page);
        let names: Vec<&str> = rows.iter().map(|(_, cells)| cells[0]).collect();
        assert_eq!(names, ["d.service", "b.service", "a.service", "c.service"]);
        assert_eq!(rows[0].0, Some("gave-up"));
        assert_eq!(rows[0].1[3], "<strong>GAVE UP</strong>");
        assert_eq!(rows[1].0, Some("looping"));
        assert_eq!(rows[1].1[3], "<strong>LOOPING</strong>");
        assert_eq!((rows[2].0, rows[2].1[3]), (None, "no"));

        // The cells `crashwatch status` prints, the marker emphasised.
        let threshold = Policy::default().threshold;
        assert_eq!(
            rows[1].1[1..],
            [
                "systemd",
                "activating/auto-restart",
                "<strong>LOOPING</strong>",
                &format!("4/{threshold} in 5m"),
                "2023-11-14T22:13:20.000Z exit-code (exited 1)",
            ]
        );
        let headings: Vec<String> = HEADER
            .iter()
            .map(|h| format!("<th scope=\"col\">{h}</th>"))
            .collect();
        assert!(page.contains(&headings.concat()), "{page}");
        assert!(
            page.contains("<p class=\"summary\">4 units watched, 1 crash-looping, 1 given up.</p>"),
            "{page}"
        );
    }

    #[test]
    fn the_api_link_shows_only_when_the_api_is_served() {
        let table = table_with(&[("a.service", false, 0)]);
        let with = page(&table, true);
        assert!(with.contains("<a href=\"metrics\">"), "{with}");
        assert!(with.contains("<a href=\"api/units\">"), "{with}");
        assert!(with.contains("<a href=\"api/units/a.service\">"), "{with}");
        let without = page(&table, false);
        assert!(without.contains("<a href=\"metrics\">"), "{without}");
        assert!(!without.contains("api/units"), "{without}");
    }

    #[test]
    fn the_page_loads_nothing_but_itself() {
        let page = page(&table_with(&[("a.service", true, 4)]), true);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page
            .contains("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"));
        for outside in ["<script", "src=", "@import", "url(", "http://", "https://"] {
            assert!(!page.contains(outside), "{outside} in {page}");
        }
        // No event handler attributes (`onload=`) either.
        let handler = page.match_indices(" on").any(|(at, _)| {
            let rest = &page[at + 3..];
            let name = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_lowercase())
                    .len();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!handler, "{page}");
    }

    #[test]
    fn a_thousand_units_render_in_one_string() {
        let names: Vec<String> = (0..1_000).map(|i| format!("unit-{i:04}.service")).collect();
        let units: Vec<(&str, bool, u32)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i % 10 == 0, (i % 7) as u32))
            .collect();
        let page = page(&table_with(&units), true);
        let rows = body_rows(&page);
        assert_eq!(rows.len(), 1_000);
        assert_eq!(
            rows.iter()
                .filter(|(class, _)| *class == Some("looping"))
                .count(),
            100
        );
        // Looping first, then by restarts in the window.
        assert!(rows[..100]
            .iter()
            .all(|(class, _)| *class == Some("looping")));
        assert!(rows[0].1[4].starts_with("6/"), "{:?}", rows[0]);
        // The estimate held: the string was allocated once and never had to grow.
        assert!(page.len() <= 4096 + 1_000 * 320, "{} bytes", page.len());
        assert_eq!(page.capacity(), 4096 + 1_000 * 320);
    }
}
