//! The units document read as a table: the rows `crashwatch status` prints and the landing page
//! shows, in one order and with one set of cells, so the terminal and the browser never disagree.
//!
//! The document may come from outside (`crashwatch status` reads whatever answers on the port), so
//! nothing in it is trusted: a field that is missing, null or of another type reads as `-`, and a
//! text has its control characters escaped. Cells are `Display` values borrowing from the
//! document rather than strings: the landing page writes a thousand rows straight into its one
//! output string, and the terminal, which needs each cell's width, collects them itself.

use std::fmt::{self, Display, Formatter};

use serde_json::Value;

use crate::event::printable;
use crate::time::format_duration;

/// The column headings, in order.
pub const HEADER: [&str; 6] = [
    "UNIT",
    "SOURCE",
    "STATE",
    "LOOPING",
    "RESTARTS",
    "LAST CRASH",
];

/// What a missing, null or mistyped field reads as.
pub const MISSING: &str = "-";

/// Where a unit stands, worst first: the `LOOPING` column's marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The init system stopped restarting it: down, and nothing will bring it back.
    GaveUp,
    /// Crash-looping.
    Looping,
    /// Not crash-looping.
    Steady,
    /// The document does not say.
    Unknown,
}

impl Standing {
    /// The marker the table shows.
    pub fn marker(self) -> &'static str {
        match self {
            Standing::GaveUp => "GAVE UP",
            Standing::Looping => "LOOPING",
            Standing::Steady => "no",
            Standing::Unknown => MISSING,
        }
    }
}

/// One unit of the document.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    unit: &'a Value,
}

impl<'a> Row<'a> {
    /// The unit's name as the document gives it, unescaped; `None` if it is not a string.
    pub fn name(&self) -> Option<&'a str> {
        self.unit["unit"].as_str()
    }

    /// Given up is worse than looping: the unit is down and nothing will bring it back.
    pub fn standing(&self) -> Standing {
        if self.unit["gave_up"].as_bool().unwrap_or(false) {
            return Standing::GaveUp;
        }
        match self.unit["crashlooping"].as_bool() {
            Some(true) => Standing::Looping,
            Some(false) => Standing::Steady,
            None => Standing::Unknown,
        }
    }

    /// The cells under [`HEADER`].
    pub fn cells(&self) -> [Cell<'a>; 6] {
        let u = self.unit;
        [
            Cell::Text(&u["unit"]),
            Cell::Text(&u["source"]),
            Cell::State(&u["state"], &u["substate"]),
            Cell::Standing(self.standing()),
            Cell::Window(u),
            // Indexing a `Value` yields null for a missing key or a non-object; a `Map` would
            // panic, so the crash is read as a `Value` too.
            Cell::LastCrash(&u["last_crash"]),
        ]
    }
}

/// One cell, written by its `Display`.
#[derive(Clone, Copy, Debug)]
pub enum Cell<'a> {
    /// A text field.
    Text(&'a Value),
    /// `state/substate`.
    State(&'a Value, &'a Value),
    /// The marker of a [`Standing`].
    Standing(Standing),
    /// `restarts_in_window/threshold in window`, from the unit's entry.
    Window(&'a Value),
    /// `time reason (code status)`, from the unit's `last_crash`.
    LastCrash(&'a Value),
}

impl Display for Cell<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match *self {
            Cell::Text(value) => text(f, value),
            Cell::State(state, substate) => {
                text(f, state)?;
                f.write_str("/")?;
                text(f, substate)
            }
            Cell::Standing(standing) => f.write_str(standing.marker()),
            Cell::Window(u) => {
                number(f, &u["restarts_in_window"])?;
                f.write_str("/")?;
                number(f, &u["threshold"])?;
                f.write_str(" in ")?;
                match u["window_seconds"]
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                {
                    Some(seconds) => f.write_str(&format_duration(seconds)),
                    None => f.write_str(MISSING),
                }
            }
            Cell::LastCrash(crash) if crash.is_object() => {
                text(f, &crash["time"])?;
                f.write_str(" ")?;
                text(f, &crash["reason"])?;
                if let (Some(code), Some(status)) =
                    (crash["exit_code"].as_str(), crash["exit_status"].as_i64())
                {
                    f.write_str(" (")?;
                    printable_text(f, code)?;
                    write!(f, " {status})")?;
                }
                Ok(())
            }
            Cell::LastCrash(_) => f.write_str(MISSING),
        }
    }
}

/// A text field, its control characters escaped; `-` if it is not a string.
fn text(f: &mut Formatter<'_>, value: &Value) -> fmt::Result {
    match value.as_str() {
        Some(s) => printable_text(f, s),
        None => f.write_str(MISSING),
    }
}

/// `s` as [`printable`] makes it, copied only when it holds a control character at all.
fn printable_text(f: &mut Formatter<'_>, s: &str) -> fmt::Result {
    if s.chars().any(char::is_control) {
        f.write_str(&printable(s))
    } else {
        f.write_str(s)
    }
}

/// A count; `-` if it is not a whole number that fits in 64 bits.
fn number(f: &mut Formatter<'_>, value: &Value) -> fmt::Result {
    match value.as_u64() {
        Some(n) => write!(f, "{n}"),
        None => f.write_str(MISSING),
    }
}

/// The document's units, given-up units first, then crash-looping ones, then by restarts in the
/// window, then by name.
pub fn rows(document: &Value) -> Vec<Row<'_>> {
    let mut rows: Vec<Row<'_>> = document["units"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|unit| Row { unit })
        .collect();
    rows.sort_by(|a, b| {
        let looping = |r: &Row<'_>| r.unit["crashlooping"].as_bool().unwrap_or(false);
        let gave_up = |r: &Row<'_>| r.unit["gave_up"].as_bool().unwrap_or(false);
        let in_window = |r: &Row<'_>| r.unit["restarts_in_window"].as_u64().unwrap_or(0);
        gave_up(b)
            .cmp(&gave_up(a))
            .then(looping(b).cmp(&looping(a)))
            .then(in_window(b).cmp(&in_window(a)))
            .then(a.name().cmp(&b.name()))
    });
    rows
}

/// The line under the table: `3 units watched, 1 crash-looping, 1 given up.`
pub fn summary(document: &Value, rows: usize) -> Summary<'_> {
    Summary { document, rows }
}

/// See [`summary`].
#[derive(Clone, Copy, Debug)]
pub struct Summary<'a> {
    document: &'a Value,
    rows: usize,
}

impl Display for Summary<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{} units watched, ", self.rows)?;
        number(f, &self.document["crashlooping"])?;
        f.write_str(" crash-looping")?;
        match self.document["gave_up"].as_u64() {
            Some(0) | None => f.write_str("."),
            Some(gave_up) => write!(f, ", {gave_up} given up."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::api::tests::table_with;
    use crate::http::api::units_document;

    fn cells(row: &Row<'_>) -> Vec<String> {
        row.cells().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_unit_reads_as_six_cells_under_the_header() {
        let document = units_document(&table_with(&[("a.service", true, 4)]));
        let rows = rows(&document);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name(), Some("a.service"));
        assert_eq!(rows[0].standing(), Standing::Looping);
        assert_eq!(
            cells(&rows[0]),
            [
                "a.service",
                "systemd",
                "activating/auto-restart",
                "LOOPING",
                &format!("4/{} in 5m", crate::detect::Policy::default().threshold),
                "2023-11-14T22:13:20.000Z exit-code (exited 1)",
            ]
        );
        assert_eq!(
            summary(&document, rows.len()).to_string(),
            "1 units watched, 1 crash-looping."
        );
    }

    #[test]
    fn what_is_missing_or_mistyped_reads_as_a_dash_and_control_characters_are_escaped() {
        let document = serde_json::json!({
            "units": [
                {"unit": "b\u{1b}[2J.service", "crashlooping": "yes", "restarts_in_window": -1,
                 "window_seconds": f64::MAX, "last_crash": []},
                {"unit": 7, "gave_up": true, "window_seconds": -3.0,
                 "last_crash": {"reason": "a\nb", "exit_code": "\u{7f}", "exit_status": -9}},
            ],
            "gave_up": 1,
        });
        let rows = rows(&document);
        assert_eq!(rows[0].standing(), Standing::GaveUp);
        assert_eq!(
            cells(&rows[0]),
            [
                "-",
                "-",
                "-/-",
                "GAVE UP",
                "-/- in -",
                "- a\\nb (\\u{7f} -9)"
            ]
        );
        assert_eq!(rows[1].standing(), Standing::Unknown);
        assert_eq!(cells(&rows[1])[0], "b\\u{1b}[2J.service");
        assert_eq!(cells(&rows[1])[5], "-");
        assert_eq!(
            summary(&document, rows.len()).to_string(),
            "2 units watched, - crash-looping, 1 given up."
        );
        assert!(super::rows(&serde_json::json!([1, 2])).is_empty());
    }
}
