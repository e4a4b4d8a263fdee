//! The StatsD sink: counters per unit and a crash-loop gauge, over UDP.
//!
//! Unit names come from outside, and StatsD's line protocol gives meaning to `:`, `|`, `@`, `#`,
//! `.` and newlines, so a name is reduced to `[A-Za-z0-9_-]` before it becomes part of a metric
//! name. Long names are cut and given a hash of the whole name, so two long names that share a
//! prefix stay apart. The client is the `statsd` crate's; it sends from this sink's own thread, so
//! a black-holed or refusing server never slows the event path: datagrams are simply lost.

use std::sync::mpsc::Receiver;

use crate::event::{Event, TransitionKind};

/// The longest sanitized unit name kept whole.
pub const MAX_NAME: usize = 128;

/// Reduces `unit` to a safe StatsD metric-name segment: every byte outside `[A-Za-z0-9_-]`
/// becomes `_`; past [`MAX_NAME`] bytes the name is cut and `_` plus 8 hex digits of an FNV-1a
/// hash of the full name are appended.
pub fn sanitize(unit: &str) -> String {
    let mut clean: String = unit
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        clean.push('_');
    }
    if clean.len() > MAX_NAME {
        clean.truncate(MAX_NAME - 9);
        clean.push_str(&format!("_{:08x}", fnv1a(unit.as_bytes())));
    }
    clean
}

/// Sanitizes a prefix: like a unit name, but dots separate its segments and are kept.
pub fn sanitize_prefix(prefix: &str) -> String {
    prefix
        .split('.')
        .filter(|segment| !segment.is_empty())
        .map(sanitize)
        .collect::<Vec<_>>()
        .join(".")
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// One StatsD metric update.
#[derive(Clone, Debug, PartialEq)]
pub enum Stat {
    /// A counter increment (`|c`).
    Count(String, f64),
    /// A gauge value (`|g`).
    Gauge(String, f64),
}

impl Stat {
    /// The line as it goes on the wire, without the prefix.
    pub fn line(&self) -> String {
        match self {
            Stat::Count(name, value) => format!("{name}:{value}|c"),
            Stat::Gauge(name, value) => format!("{name}:{value}|g"),
        }
    }
}

/// The updates one event becomes.
pub fn stats(event: &Event) -> Vec<Stat> {
    match event {
        Event::Transition { transition: t, .. } => {
            let unit = sanitize(&t.unit);
            let mut out = vec![Stat::Count(
                format!("unit.{unit}.transitions.{}", t.kind.as_str()),
                1.0,
            )];
            match t.kind {
                TransitionKind::Starting => {
                    out.push(Stat::Count(format!("unit.{unit}.starts"), 1.0))
                }
                TransitionKind::Restart => {
                    out.push(Stat::Count(format!("unit.{unit}.restarts"), 1.0))
                }
                _ => {}
            }
            if t.crash.is_some() {
                out.push(Stat::Count(format!("unit.{unit}.crashes"), 1.0));
            }
            out
        }
        Event::Loop(event) => {
            let unit = sanitize(&event.unit);
            let looping = event.ended.is_none();
            let mut out = vec![Stat::Gauge(
                format!("unit.{unit}.crashlooping"),
                f64::from(u8::from(looping)),
            )];
            if looping {
                out.push(Stat::Count(format!("unit.{unit}.crashloops"), 1.0));
            }
            out
        }
        Event::Window { .. } => Vec::new(),
    }
}

/// Sends every event's updates to `client`, one datagram per event, until the queue closes.
pub fn run(client: statsd::Client, events: Receiver<Box<Event>>) {
    for event in events {
        let mut pipeline = client.pipeline();
        for stat in stats(&event) {
            match stat {
                Stat::Count(name, value) => pipeline.count(&name, value),
                Stat::Gauge(name, value) => pipeline.gauge(&name, value),
            }
        }
        pipeline.send(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{SourceKind, Transition, UnitState};

    #[test]
    fn hostile_names_become_one_safe_segment() {
        for name in [
            "a:b|c@d#e,f=g\"h\\i",
            "new\nline service",
            "ünïcödé.service",
            "",
            "....",
        ] {
            let clean = sanitize(name);
            assert!(!clean.is_empty());
            assert!(
                clean
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{name:?} -> {clean:?}"
            );
        }
        assert_eq!(sanitize("crashy.service"), "crashy_service");
    }

    #[test]
    fn long_names_are_cut_and_kept_apart() {
        let a = format!("{}a.service", "x".repeat(300));
        let b = format!("{}b.service", "x".repeat(300));
        assert_eq!(sanitize(&a).len(), MAX_NAME);
        assert_ne!(sanitize(&a), sanitize(&b));
    }

    #[test]
    fn a_restart_becomes_counter_lines() {
        let mut t = Transition::new(
            "we|ird:name.service",
            SourceKind::Systemd,
            1,
            TransitionKind::Restart,
            UnitState::default(),
            UnitState::default(),
        );
        t.crash = None;
        let lines: Vec<String> = stats(&Event::Transition {
            transition: t,
            restarts: 1,
        })
        .iter()
        .map(Stat::line)
        .collect();
        assert_eq!(
            lines,
            vec![
                "unit.we_ird_name_service.transitions.restart:1|c".to_owned(),
                "unit.we_ird_name_service.restarts:1|c".to_owned()
            ]
        );
    }

    #[test]
    fn prefixes_keep_their_dots_only() {
        assert_eq!(sanitize_prefix("crashwatch"), "crashwatch");
        assert_eq!(sanitize_prefix("dc1.host:7|x"), "dc1.host_7_x");
        assert_eq!(sanitize_prefix(".a..b."), "a.b");
    }
}
