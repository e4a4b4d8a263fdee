//! The StatsD sink: counters per unit and a crash-loop gauge, over UDP.
//!
//! Unit names come from outside, and StatsD's line protocol gives meaning to `:`, `|`, `@`, `#`,
//! `.` and newlines, so a name is reduced to `[A-Za-z0-9_-]` before it becomes part of a metric
//! name. Long names are cut and given a hash of the whole name, so two long names that share a
//! prefix stay apart. That reduction makes `a.service` and `a_service` one series, so with
//! [`Naming::Tags`] the unit travels as a DogStatsD tag instead (`unit.restarts:1|c|#unit:a.service,
//! source:systemd`), where only what would break the datagram is replaced ([`tag`]).
//!
//! Datagrams go out from this sink's own thread, so a black-holed or refusing server never slows
//! the event path. They are sent on a socket of our own, connected to the server, rather than
//! with the `statsd` crate, which sends unconnected and drops every error: a server that refuses
//! went unnoticed. On a connected socket the kernel reports an ICMP port-unreachable as
//! `ECONNREFUSED` on a later send (udp(7)), and every failed send is counted in
//! `crashwatch_errors_total{component="statsd",error_type="send_failed"}`. The datagram is lost;
//! nothing is retried or queued.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::mpsc::Receiver;

use crate::event::{Event, SourceKind, TransitionKind};
use crate::internal_events::StatsdSendError;

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

/// The longest DogStatsD tag, key and value together, in characters: Datadog's limit.
pub const MAX_TAG: usize = 200;

/// The largest datagram of several lines. One event's lines share a datagram up to this size; a
/// single longer line goes alone. 512 bytes fits any path MTU, as StatsD's own docs advise.
pub const MAX_DATAGRAM: usize = 512;

/// `key:value` as a DogStatsD tag. `,` (between tags), `|` (between fields), `#` (the start of
/// the tags), whitespace and control characters (a newline ends the line) become `_`; every other
/// character, Unicode included, is kept, for Datadog applies its own rules (lowercase, `_` for
/// other punctuation) on its side. An empty value becomes `_`, and so does a trailing `:`, which
/// Datadog refuses. Past [`MAX_TAG`] characters the value is cut and `_` plus 8 hex digits of an
/// FNV-1a hash of the full value are appended, so long values that share a beginning stay apart.
pub fn tag(key: &str, value: &str) -> String {
    let mut clean: String = value
        .chars()
        .map(|c| {
            if matches!(c, ',' | '|' | '#') || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if clean.is_empty() || clean.ends_with(':') {
        clean.push('_');
    }
    let room = MAX_TAG.saturating_sub(key.chars().count() + 1);
    if clean.chars().count() > room {
        clean = clean.chars().take(room.saturating_sub(9)).collect();
        clean.push_str(&format!("_{:08x}", fnv1a(value.as_bytes())));
    }
    format!("{key}:{clean}")
}

/// Where a unit's name goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// Into the metric name, sanitized: `unit.UNIT.restarts`. Plain StatsD.
    Plain,
    /// Into DogStatsD tags: `unit.restarts|#unit:NAME,source:KIND`.
    Tags,
}

/// Whether a [`Stat`] counts or sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A counter increment (`|c`).
    Count,
    /// A gauge value (`|g`).
    Gauge,
}

/// One StatsD metric update.
#[derive(Clone, Debug, PartialEq)]
pub struct Stat {
    /// The name below the prefix.
    pub name: String,
    /// Counter or gauge.
    pub kind: Kind,
    /// The increment or the gauge's value.
    pub value: f64,
    /// DogStatsD tags, already made safe, comma-separated; empty for none.
    pub tags: String,
}

impl Stat {
    /// The line as it goes on the wire, without the prefix.
    pub fn line(&self) -> String {
        let kind = match self.kind {
            Kind::Count => "c",
            Kind::Gauge => "g",
        };
        if self.tags.is_empty() {
            format!("{}:{}|{kind}", self.name, self.value)
        } else {
            format!("{}:{}|{kind}|#{}", self.name, self.value, self.tags)
        }
    }
}

/// The updates one event becomes.
pub fn stats(event: &Event, naming: Naming) -> Vec<Stat> {
    let (unit, source) = match event {
        Event::Transition { transition: t, .. } => (&t.unit, t.source),
        Event::Loop(event) => (&event.unit, event.source),
        Event::Window { .. } | Event::CrashContext { .. } => return Vec::new(),
    };
    let (base, tags) = match naming {
        Naming::Plain => (format!("unit.{}", sanitize(unit)), String::new()),
        Naming::Tags => ("unit".to_owned(), unit_tags(unit, source)),
    };
    let stat = |what: &str, kind: Kind, value: f64| Stat {
        name: format!("{base}.{what}"),
        kind,
        value,
        tags: tags.clone(),
    };
    match event {
        Event::Transition { transition: t, .. } => {
            let mut out = vec![stat(
                &format!("transitions.{}", t.kind.as_str()),
                Kind::Count,
                1.0,
            )];
            match t.kind {
                TransitionKind::Starting => out.push(stat("starts", Kind::Count, 1.0)),
                TransitionKind::Restart => out.push(stat("restarts", Kind::Count, 1.0)),
                _ => {}
            }
            if t.crash.is_some() {
                out.push(stat("crashes", Kind::Count, 1.0));
            }
            out
        }
        Event::Loop(event) => {
            let looping = event.ended.is_none();
            let mut out = vec![stat(
                "crashlooping",
                Kind::Gauge,
                f64::from(u8::from(looping)),
            )];
            if looping {
                out.push(stat("crashloops", Kind::Count, 1.0));
            }
            out
        }
        Event::Window { .. } | Event::CrashContext { .. } => Vec::new(),
    }
}

/// A unit's tags: its full name and its source.
fn unit_tags(unit: &str, source: SourceKind) -> String {
    format!("{},{}", tag("unit", unit), tag("source", source.as_str()))
}

/// Joins lines into datagrams of at most [`MAX_DATAGRAM`] bytes, one per line when a line alone
/// is longer.
pub fn datagrams(lines: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in lines {
        match out.last_mut() {
            Some(datagram) if datagram.len() + 1 + line.len() <= MAX_DATAGRAM => {
                datagram.push('\n');
                datagram.push_str(line);
            }
            _ => out.push(line.clone()),
        }
    }
    out
}

/// A UDP socket connected to the StatsD server, with the prefix and naming to send under.
pub struct Client {
    socket: UdpSocket,
    address: SocketAddr,
    prefix: String,
    naming: Naming,
}

impl Client {
    /// Resolves `address` (`host:port`, once, at start-up) and connects a socket of its family
    /// there. Creates the send-failure counter at zero, so the first failure is an increase.
    pub fn connect(address: &str, prefix: &str, naming: Naming) -> io::Result<Client> {
        let address = address.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address")
        })?;
        let local: SocketAddr = if address.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(address)?;
        StatsdSendError::register();
        Ok(Client {
            socket,
            address,
            prefix: prefix.to_owned(),
            naming,
        })
    }

    /// Sends one event's updates; a failed send is counted and logged.
    fn send(&self, event: &Event) {
        let lines: Vec<String> = stats(event, self.naming)
            .iter()
            .map(|stat| match self.prefix.as_str() {
                "" => stat.line(),
                prefix => format!("{prefix}.{}", stat.line()),
            })
            .collect();
        for datagram in datagrams(&lines) {
            if let Err(error) = self.socket.send(datagram.as_bytes()) {
                StatsdSendError {
                    address: self.address,
                    error: &error,
                }
                .emit();
            }
        }
    }
}

/// Sends every event's updates to `client`, one datagram per event, until the queue closes.
pub fn run(client: Client, events: Receiver<Box<Event>>) {
    for event in events {
        client.send(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{LoopEvent, Transition, UnitState};

    fn restart(unit: &str, source: SourceKind) -> Event {
        let mut t = Transition::new(
            unit,
            source,
            1,
            TransitionKind::Restart,
            UnitState::default(),
            UnitState::default(),
        );
        t.crash = None;
        Event::Transition {
            transition: t,
            restarts: 1,
        }
    }

    fn lines(event: &Event, naming: Naming) -> Vec<String> {
        stats(event, naming).iter().map(Stat::line).collect()
    }

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
        let event = restart("we|ird:name.service", SourceKind::Systemd);
        assert_eq!(
            lines(&event, Naming::Plain),
            [
                "unit.we_ird_name_service.transitions.restart:1|c",
                "unit.we_ird_name_service.restarts:1|c"
            ]
        );
        assert_eq!(
            lines(&event, Naming::Tags),
            [
                "unit.transitions.restart:1|c|#unit:we_ird:name.service,source:systemd",
                "unit.restarts:1|c|#unit:we_ird:name.service,source:systemd"
            ]
        );
    }

    #[test]
    fn a_loop_sets_the_gauge_with_tags() {
        let event = Event::Loop(LoopEvent {
            unit: "www (tty 1)".to_owned(),
            source: SourceKind::Upstart,
            timestamp: 1,
            ended: None,
            restarts_in_window: 3,
            threshold: 3,
            window_seconds: 300.0,
        });
        assert_eq!(
            lines(&event, Naming::Tags),
            [
                "unit.crashlooping:1|g|#unit:www_(tty_1),source:upstart",
                "unit.crashloops:1|c|#unit:www_(tty_1),source:upstart"
            ]
        );
    }

    #[test]
    fn tags_keep_names_apart_that_plain_names_merge() {
        assert_eq!(sanitize("a.service"), sanitize("a_service"));
        assert_eq!(tag("unit", "a.service"), "unit:a.service");
        assert_eq!(tag("unit", "a_service"), "unit:a_service");
        assert_eq!(tag("unit", "getty@tty1.service"), "unit:getty@tty1.service");
        assert_eq!(tag("unit", "ünïcödé/ジョブ:1"), "unit:ünïcödé/ジョブ:1");
    }

    #[test]
    fn hostile_tag_values_cannot_break_the_datagram() {
        for (value, expected) in [
            ("a,b|c#d", "unit:a_b_c_d"),
            ("new\nline\r\tand space", "unit:new_line__and_space"),
            ("nul\0del\u{7f}nel\u{85}", "unit:nul_del_nel_"),
            ("", "unit:_"),
            ("ends:", "unit:ends:_"),
            ("::", "unit:::_"),
        ] {
            assert_eq!(tag("unit", value), expected, "{value:?}");
        }
    }

    #[test]
    fn long_tag_values_are_cut_to_the_limit_and_kept_apart() {
        let a = format!("{}a.service", "ü".repeat(300));
        let b = format!("{}b.service", "ü".repeat(300));
        let (ta, tb) = (tag("unit", &a), tag("unit", &b));
        assert_eq!(ta.chars().count(), MAX_TAG, "{ta}");
        assert_ne!(ta, tb);
        let just = "x".repeat(MAX_TAG - "unit:".len());
        assert_eq!(tag("unit", &just), format!("unit:{just}"));
        let over = format!("{just}y");
        assert_eq!(tag("unit", &over).chars().count(), MAX_TAG);
        assert_ne!(tag("unit", &over), format!("unit:{just}"));
    }

    #[test]
    fn lines_share_datagrams_up_to_the_limit() {
        let short: Vec<String> = (0..3).map(|i| format!("a.b:{i}|c")).collect();
        assert_eq!(datagrams(&short), ["a.b:0|c\na.b:1|c\na.b:2|c"]);
        let long = "x".repeat(300);
        let mixed = vec![long.clone(), long.clone(), "y:1|c".to_owned()];
        assert_eq!(datagrams(&mixed), [long.clone(), format!("{long}\ny:1|c")]);
        let huge = "z".repeat(MAX_DATAGRAM + 1);
        assert_eq!(datagrams(std::slice::from_ref(&huge)), [huge]);
        assert!(datagrams(&[]).is_empty());
    }

    #[test]
    fn a_refusing_server_is_counted_from_zero() {
        use metrics_exporter_prometheus::PrometheusBuilder;
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let series = "crashwatch_errors_total{component=\"statsd\",error_type=\"send_failed\"}";
        let failures = || -> Option<f64> {
            let text = handle.render();
            let line = text.lines().find(|l| l.starts_with(series))?;
            line.rsplit(' ').next()?.parse().ok()
        };
        // A port that was just free: nothing listens there.
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port")
            .port();
        let client = metrics::with_local_recorder(&recorder, || {
            Client::connect(&format!("127.0.0.1:{port}"), "crashwatch", Naming::Plain)
        })
        .expect("a client");
        assert_eq!(failures(), Some(0.0), "registered at zero");
        metrics::with_local_recorder(&recorder, || {
            for _ in 0..10 {
                client.send(&restart("a.service", SourceKind::Systemd));
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        let failed = failures().unwrap_or_default();
        assert!(failed >= 1.0, "{}", handle.render());
    }

    #[test]
    fn prefixes_keep_their_dots_only() {
        assert_eq!(sanitize_prefix("crashwatch"), "crashwatch");
        assert_eq!(sanitize_prefix("dc1.host:7|x"), "dc1.host_7_x");
        assert_eq!(sanitize_prefix(".a..b."), "a.b");
    }
}
