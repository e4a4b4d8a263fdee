//! `crashwatch status`: reads the status API of a running daemon and prints it as tables.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use super::table::{columns, Align};
use super::{resolve_config, write_stdout, PACKAGED_CONFIG};
use crate::cli::StatusArgs;
use crate::config::Overrides;
use crate::http::api::table::{rows, summary, HEADER, MISSING};
use crate::sink::actions::http::{
    exchange, Auth, BasicAuthSection, Endpoint, HttpError, HttpUrl, Method,
};
use crate::sink::actions::tls::{TlsSection, TlsSettings};

use crate::event::printable;

/// `crashwatch status`: the daemon's units as a table (or JSON), or one unit's transitions.
pub fn run(args: StatusArgs) -> ExitCode {
    let daemon = match daemon_endpoint(&args) {
        Ok(daemon) => daemon,
        Err(code) => return code,
    };
    let path = match &args.unit {
        Some(unit) => format!("/api/units/{}/events", crate::http::percent_encode(unit)),
        None => "/api/units".to_owned(),
    };
    let document = match crate::commands::status::fetch(&daemon, &path) {
        Ok(document) => document,
        Err(e) => {
            crate::logging::fatal(&e);
            return ExitCode::FAILURE;
        }
    };
    let text = if args.json {
        format!("{document:#}\n")
    } else if let Some(unit) = &args.unit {
        let path = format!("/api/units/{}", crate::http::percent_encode(unit));
        let crash = match crate::commands::status::fetch(&daemon, &path) {
            Ok(summary) => crash_block(&summary),
            Err(e) => {
                crate::logging::fatal(&e);
                return ExitCode::FAILURE;
            }
        };
        crash + &crate::commands::status::events_table(&document)
    } else {
        crate::commands::status::units_table(&document)
    };
    write_stdout(text.as_bytes())
}

/// Where the daemon is and how to reach it, from `--address` (else the configuration's listen
/// address) and the TLS and basic authentication flags. A bad flag is one line and exit 2.
fn daemon_endpoint(args: &StatusArgs) -> Result<Endpoint, ExitCode> {
    let usage = |message: String| {
        crate::logging::fatal(&message);
        ExitCode::from(2)
    };
    let tls_flags = args.tls_ca_file.is_some()
        || args.tls_cert_file.is_some()
        || args.tls_key_file.is_some()
        || args.tls_server_name.is_some()
        || args.tls_insecure_skip_verify;
    let url = match &args.address {
        Some(text) if text.contains("://") => {
            let url = HttpUrl::parse(text).map_err(|e| usage(format!("--address {e}")))?;
            if tls_flags && !url.is_https() {
                return Err(usage(format!(
                    "--address {text:?}: the --tls.* flags need an https:// address"
                )));
            }
            url
        }
        given => {
            let address = match given {
                Some(text) => text.parse::<SocketAddr>().map_err(|_| {
                    usage(format!(
                        "--address {text:?} is not IP:PORT or an http(s):// URL"
                    ))
                })?,
                None => {
                    // The packaged file may hold secrets, so only root and the service's group
                    // read it; anyone else looks at the default address.
                    let path = args.config.clone().or_else(|| {
                        let packaged = Path::new(PACKAGED_CONFIG);
                        std::fs::File::open(packaged)
                            .is_ok()
                            .then(|| packaged.to_path_buf())
                    });
                    resolve_config(path.as_deref(), Overrides::default())?.listen
                }
            };
            // A daemon listening on every address answers on loopback too.
            let ip = match address.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            let scheme = if tls_flags { "https" } else { "http" };
            HttpUrl::parse(&format!(
                "{scheme}://{}",
                SocketAddr::new(ip, address.port())
            ))
            .map_err(|e| usage(format!("--address {e}")))?
        }
    };
    let tls = if url.is_https() {
        let section = TlsSection {
            ca_file: args.tls_ca_file.clone(),
            cert_file: args.tls_cert_file.clone(),
            key_file: args.tls_key_file.clone(),
            server_name: args.tls_server_name.clone(),
            insecure_skip_verify: Some(args.tls_insecure_skip_verify),
        };
        TlsSettings::resolve(&section, "--tls").map_err(|e| usage(flag_names(&e)))?
    } else {
        TlsSettings::default()
    };
    let auth = match (&args.basic_auth_username, &args.basic_auth_password_file) {
        (Some(username), Some(password_file)) => {
            let section = BasicAuthSection {
                username: Some(username.clone()),
                password_file: Some(password_file.clone()),
                ..BasicAuthSection::default()
            };
            Auth::resolve(Some(&section), None).map_err(|e| usage(flag_names(&e)))?
        }
        (None, None) => None,
        _ => {
            return Err(usage(
                "--basic-auth.username and --basic-auth.password-file go together".to_owned(),
            ))
        }
    };
    Ok(Endpoint {
        url,
        headers: Vec::new(),
        auth,
        tls,
    })
}

/// A message about configuration keys, with the flags' names instead.
fn flag_names(message: &str) -> String {
    [
        ("--tls.ca_file", "--tls.ca-file"),
        ("--tls.cert_file", "--tls.cert-file"),
        ("--tls.key_file", "--tls.key-file"),
        ("--tls.server_name", "--tls.server-name"),
        ("basic_auth.username", "--basic-auth.username"),
        ("basic_auth.password_file", "--basic-auth.password-file"),
    ]
    .iter()
    .fold(message.to_owned(), |text, (key, flag)| {
        text.replace(key, flag)
    })
}

/// Why the daemon's status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing listens there.
    #[error("no crashwatch daemon answers on {address} ({reason}); is it running, and is that its listen address?")]
    NotRunning {
        /// Where it was asked.
        address: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// TLS with the daemon failed.
    #[error("TLS with {address} failed: {reason}; see --tls.ca-file and --tls.server-name")]
    Tls {
        /// Where it was asked.
        address: String,
        /// What TLS said.
        reason: String,
    },
    /// The daemon wants credentials, or refused the ones given.
    #[error("{address} refused the request (HTTP {status}); give --basic-auth.username and --basic-auth.password-file")]
    Unauthorized {
        /// Where it was asked.
        address: String,
        /// 401 or 403.
        status: u16,
    },
    /// A file named by a flag could not be used, or a proxy variable not understood.
    #[error("{0}")]
    Setup(String),
    /// Something answered, but not with the status API.
    #[error("{address} did not answer like crashwatch: {reason}")]
    BadAnswer {
        /// Where it was asked.
        address: String,
        /// What was wrong.
        reason: String,
    },
}

/// How long `crashwatch status` waits for the daemon.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest document read: the unit list of a node at the largest `max_units`.
const MAX_DOCUMENT: usize = 64 * 1024 * 1024;

/// Reads `path` of the daemon's API as JSON.
pub fn fetch(daemon: &Endpoint, path: &str) -> Result<Value, StatusError> {
    // The address as given: IP:PORT for a plain daemon, as the listen address is written.
    let address = match daemon.url.is_https() {
        false => daemon
            .url
            .to_string()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned(),
        true => daemon.url.to_string().trim_end_matches('/').to_owned(),
    };
    let endpoint = Endpoint {
        url: daemon.url.join(path),
        ..daemon.clone()
    };
    let bad = |reason: String| StatusError::BadAnswer {
        address: address.clone(),
        reason,
    };
    let answer = exchange(&endpoint, Method::Get, &[], CLIENT_TIMEOUT, MAX_DOCUMENT).map_err(
        |e| match e {
            HttpError::Connect(reason) => StatusError::NotRunning {
                address: address.clone(),
                reason,
            },
            HttpError::Tls(reason) => StatusError::Tls {
                address: address.clone(),
                reason,
            },
            HttpError::Setup(reason) => StatusError::Setup(reason),
            other => bad(other.to_string()),
        },
    )?;
    if matches!(answer.status, 401 | 403) {
        return Err(StatusError::Unauthorized {
            address,
            status: answer.status,
        });
    }
    if !answer.complete {
        return Err(bad(format!(
            "{path}: the answer is cut short or larger than {} MiB",
            MAX_DOCUMENT >> 20
        )));
    }
    let status = answer.status;
    let document: Value = serde_json::from_slice(&answer.body)
        .map_err(|_| bad(format!("{path} answered HTTP {status}, not JSON")))?;
    if status != 200 {
        let error = document["error"]
            .as_str()
            .map_or_else(|| format!("HTTP {status}"), str::to_owned);
        return Err(bad(format!("{path}: {}", printable(&error))));
    }
    Ok(document)
}

/// `crashwatch status` as a table: given-up units first, then crash-looping ones, then by restarts
/// in the window, then by name (the [`rows`], which the landing page shows too).
///
/// The document comes from outside (a daemon of another version, or anything that answers on the
/// port), so nothing in it is trusted: a field that is missing, null or of another type prints as
/// `-`, and every text is printed with its control characters escaped.
pub fn units_table(document: &Value) -> String {
    let cells: Vec<[String; 6]> = rows(document)
        .iter()
        .map(|row| row.cells().map(|cell| cell.to_string()))
        .collect();
    let mut out = columns(HEADER, &cells, [Align::Left; 6]);
    out.push_str(&format!("\n{}\n", summary(document, cells.len())));
    out
}

/// One unit's recent transitions as a table, oldest first. Like [`units_table`], it prints what
/// is missing or of another type as `-`.
pub fn events_table(document: &Value) -> String {
    let empty = Vec::new();
    let events = document["events"].as_array().unwrap_or(&empty);
    let rows: Vec<[String; 4]> = events
        .iter()
        .map(|e| {
            let mut detail = Vec::new();
            if let Some(reason) = e["crash_reason"].as_str() {
                detail.push(format!("crash: {}", printable(reason)));
            }
            if let (Some(code), Some(status)) = (e["exit_code"].as_str(), e["exit_status"].as_i64())
            {
                detail.push(format!("{} {status}", printable(code)));
            }
            if let Some(cause) = e["restart_cause"].as_str() {
                detail.push(format!("restart: {}", printable(cause)));
            }
            if e["inferred"].as_bool().unwrap_or(false) {
                detail.push("inferred".to_owned());
            }
            [
                text(&e["time"]),
                text(&e["transition"]),
                format!("{}/{}", text(&e["to_state"]), text(&e["to_substate"])),
                detail.join(", "),
            ]
        })
        .collect();
    let mut out = format!(
        "{} ({})\n",
        text(&document["unit"]),
        text(&document["source"])
    );
    out.push_str(&columns(
        ["TIME", "TRANSITION", "STATE", "DETAIL"],
        &rows,
        [Align::Left; 4],
    ));
    out
}

/// One unit's last crash, from its `GET /api/units/{unit}` document: reason, exit, how long the
/// run lasted, when, and the last lines it wrote, indented. Empty when the unit has not crashed;
/// whatever is missing or mistyped prints as `-`.
pub fn crash_block(summary: &Value) -> String {
    let crash = &summary["last_crash"];
    if !crash.is_object() {
        return String::new();
    }
    let exit = match (crash["exit_code"].as_str(), crash["exit_status"].as_i64()) {
        (Some(code), Some(status)) => format!("{} {status}", printable(code)),
        _ => MISSING.to_owned(),
    };
    let run = crash["run_seconds"]
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or_else(|| MISSING.to_owned(), |s| format!("{s:.3}s"));
    let context = &crash["context"];
    let mut out = format!(
        "Last crash: {} (exit: {exit}, ran {run}) at {}\n",
        text(&crash["reason"]),
        text(&crash["time"]),
    );
    let lines = context["lines"].as_array().filter(|l| !l.is_empty());
    match lines {
        Some(lines) => {
            out.push_str("Last lines (journal):\n");
            for line in lines {
                out.push_str("  ");
                out.push_str(&text(line));
                out.push('\n');
            }
        }
        None => {
            let status = text(&context["status"]);
            match context["reason"].as_str() {
                Some(reason) => {
                    out.push_str(&format!("Last lines: {status} ({})\n", printable(reason)))
                }
                None => out.push_str(&format!("Last lines: {status}\n")),
            }
        }
    }
    let dump = &context["core_dump"];
    if dump.is_object() {
        out.push_str(&format!(
            "Core dump: {} in {} (pid {})\n",
            text(&dump["signal"]),
            text(&dump["executable"]),
            dump["pid"]
                .as_u64()
                .map_or_else(|| MISSING.to_owned(), |p| p.to_string()),
        ));
        for frame in dump["frames"].as_array().into_iter().flatten() {
            out.push_str("  ");
            out.push_str(&text(frame));
            out.push('\n');
        }
    }
    if let Some(lines) = context["oom_kill"]["kernel_lines"].as_array() {
        out.push_str("Killed by the kernel's OOM killer:\n");
        for line in lines {
            out.push_str("  ");
            out.push_str(&text(line));
            out.push('\n');
        }
    }
    out.push('\n');
    out
}

/// A text field, its control characters escaped; `-` if it is not a string.
fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| MISSING.to_owned(), printable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, SourceKind, Transition, TransitionKind, UnitState};
    use crate::http::api::tests::table_with;
    use crate::http::api::{events_document, units_document};

    #[test]
    fn the_events_table_names_the_unit_and_each_crash() {
        let table = table_with(&[("a.service", false, 0)]);
        let document = events_document(&table, "a.service").unwrap();
        let text = events_table(&document);
        assert!(text.starts_with("a.service (systemd)\nTIME"), "{text}");
        assert!(
            text.contains("failed      activating/auto-restart  crash: exit-code, exited 1"),
            "{text}"
        );
    }

    #[test]
    fn the_table_puts_crash_looping_units_first() {
        let table = table_with(&[
            ("a.service", false, 2),
            ("b.service", true, 4),
            ("c\nd.service", false, 0),
        ]);
        let text = units_table(&units_document(&table));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("UNIT"), "{text}");
        assert!(
            lines[1].starts_with("b.service") && lines[1].contains("LOOPING"),
            "{text}"
        );
        assert!(lines[2].starts_with("a.service"), "{text}");
        assert!(lines[3].starts_with("c\\nd.service"), "{text}");
        assert!(lines[1].contains("exit-code (exited 1)"), "{text}");
        assert!(
            text.ends_with("3 units watched, 1 crash-looping.\n"),
            "{text}"
        );
    }

    /// The init system giving up on `unit` at 1_700_000_001 s, as the engine records it.
    fn give_up(unit: &str, source: SourceKind, from: UnitState, to: UnitState) -> Event {
        let mut transition = Transition::new(
            unit,
            source,
            1_700_000_001_000_000,
            TransitionKind::Failed,
            from,
            to,
        );
        transition.gave_up = true;
        Event::Transition {
            transition,
            restarts: 0,
        }
    }

    #[test]
    fn a_unit_the_init_system_gave_up_on_comes_first() {
        let mut table = table_with(&[("a.service", true, 4), ("b.service", false, 0)]);
        let gave_up = give_up(
            "b.service",
            SourceKind::Systemd,
            UnitState::new("activating", "auto-restart"),
            UnitState::new("failed", "failed"),
        );
        table.record(&gave_up);
        let document = units_document(&table);
        assert_eq!(document["gave_up"], 1);
        assert_eq!(document["units"][1]["gave_up"], true);
        assert_eq!(
            document["units"][1]["gave_up_at"],
            "2023-11-14T22:13:21.000Z"
        );
        assert_eq!(document["units"][0]["gave_up"], false);
        let text = units_table(&document);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with("b.service") && lines[1].contains("GAVE UP"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("a.service") && lines[2].contains("LOOPING"),
            "{text}"
        );
        assert!(
            text.ends_with("2 units watched, 1 crash-looping, 1 given up.\n"),
            "{text}"
        );

        // Started again, by hand or otherwise: no longer given up.
        let start = Transition::new(
            "b.service",
            SourceKind::Systemd,
            1_700_000_002_000_000,
            TransitionKind::Starting,
            UnitState::new("failed", "failed"),
            UnitState::new("activating", "start"),
        );
        table.record(&Event::Transition {
            transition: start,
            restarts: 0,
        });
        assert_eq!(units_document(&table)["gave_up"], 0);
    }

    #[test]
    fn a_crash_without_exit_details_and_missing_fields_print_as_a_dash() {
        // An Upstart crash from a respawn has a reason but no exit code or status.
        let document = serde_json::json!({
            "units": [{
                "unit": "www",
                "source": "upstart",
                "state": "start",
                "substate": null,
                "last_crash": {"reason": "unknown", "time": "2026-12-05T03:47:10.680Z"},
            }],
        });
        let text = units_table(&document);
        let row = text.lines().nth(1).expect("a row");
        assert!(row.starts_with("www"), "{text}");
        assert!(row.contains("start/-"), "{text}");
        assert!(row.contains("-/- in -"), "{text}");
        assert!(row.ends_with("2026-12-05T03:47:10.680Z unknown"), "{text}");
        assert!(
            text.ends_with("1 units watched, - crash-looping.\n"),
            "{text}"
        );
        let text = events_table(&serde_json::json!({"events": [{"transition": 7}]}));
        assert!(text.starts_with("- (-)\nTIME"), "{text}");
        assert!(
            text.lines()
                .nth(2)
                .is_some_and(|l| l == "-     -           -/-"),
            "{text}"
        );
    }

    /// xorshift64*: a small deterministic generator, so a failure is reproducible by its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    /// Every key the two documents use, so generated objects hit the fields the printers read.
    const KEYS: [&str; 28] = [
        "units",
        "events",
        "unit",
        "source",
        "state",
        "substate",
        "active",
        "crashlooping",
        "gave_up",
        "gave_up_at",
        "restarts_in_window",
        "threshold",
        "window_seconds",
        "last_crash",
        "last_transition",
        "reason",
        "exit_code",
        "exit_status",
        "time",
        "timestamp_us",
        "transition",
        "to_state",
        "to_substate",
        "crash_reason",
        "restart_cause",
        "inferred",
        "unloaded",
        "\u{1b}[31mkey",
    ];

    fn any_string(rng: &mut Rng) -> String {
        const PIECES: [&str; 12] = [
            "www",
            "a.service",
            "\u{0}",
            "\n",
            "\r",
            "\u{1b}[2J",
            "\u{7f}",
            "\u{9b}",
            "é",
            "\u{202e}",
            "-",
            "",
        ];
        let mut s = String::new();
        for _ in 0..rng.below(6) {
            let piece: &&str = rng.pick(&PIECES);
            s.push_str(piece);
        }
        if rng.below(20) == 0 {
            s.push_str(&"x".repeat(rng.below(5_000) as usize));
        }
        s
    }

    fn any_number(rng: &mut Rng) -> Value {
        match rng.below(10) {
            0 => Value::from(u64::MAX),
            1 => Value::from(i64::MIN),
            2 => Value::from(-1),
            3 => Value::from(f64::MAX),
            4 => Value::from(-f64::MAX),
            5 => Value::from(f64::MIN_POSITIVE),
            6 => Value::from(-0.5),
            7 => Value::from(rng.next() as f64 / 7.0),
            8 => Value::from(rng.next()),
            _ => Value::from(rng.below(10)),
        }
    }

    fn any_value(rng: &mut Rng, depth: u32) -> Value {
        let composite = if depth == 0 { 0 } else { 2 };
        match rng.below(5 + composite) {
            0 => Value::Null,
            1 => Value::Bool(rng.below(2) == 0),
            2 => any_number(rng),
            3 | 4 => Value::String(any_string(rng)),
            5 => Value::Array(
                (0..rng.below(5))
                    .map(|_| any_value(rng, depth - 1))
                    .collect(),
            ),
            _ => any_object(rng, depth - 1),
        }
    }

    fn any_object(rng: &mut Rng, depth: u32) -> Value {
        let mut map = serde_json::Map::new();
        for _ in 0..rng.below(KEYS.len() as u64) {
            let key = if rng.below(8) == 0 {
                any_string(rng)
            } else {
                (*rng.pick(&KEYS)).to_owned()
            };
            map.insert(key, any_value(rng, depth));
        }
        Value::Object(map)
    }

    /// A document of roughly the right shape (a list of units or of events, of objects that are
    /// often units or transitions), or anything at all.
    fn any_document(rng: &mut Rng) -> Value {
        let list = |rng: &mut Rng| -> Value {
            Value::Array(
                (0..rng.below(6))
                    .map(|_| match rng.below(6) {
                        0 => any_value(rng, 2),
                        _ => any_object(rng, 2),
                    })
                    .collect(),
            )
        };
        match rng.below(4) {
            0 => any_value(rng, 3),
            _ => {
                let mut document = any_object(rng, 1);
                if let Value::Object(map) = &mut document {
                    map.insert("units".to_owned(), list(rng));
                    map.insert("events".to_owned(), list(rng));
                }
                document
            }
        }
    }

    /// Removes, nulls or retypes one field somewhere in `value`.
    fn mutate(rng: &mut Rng, value: &mut Value) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                let key = map
                    .keys()
                    .nth(rng.below(map.len() as u64) as usize)
                    .cloned()
                    .unwrap_or_default();
                match rng.below(4) {
                    0 => {
                        map.remove(&key);
                    }
                    1 => {
                        map.insert(key, Value::Null);
                    }
                    2 => {
                        map.insert(key, any_value(rng, 1));
                    }
                    _ => {
                        if let Some(inner) = map.get_mut(&key) {
                            mutate(rng, inner);
                        }
                    }
                }
            }
            Value::Array(items) if !items.is_empty() => {
                let index = rng.below(items.len() as u64) as usize;
                mutate(rng, &mut items[index]);
            }
            _ => *value = any_value(rng, 1),
        }
    }

    fn assert_printable(text: &str, document: &Value) {
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "a control character reached the terminal: {text:?}\nfrom {document}"
        );
    }

    #[test]
    fn the_printers_take_any_document_without_panicking() {
        let mut table = table_with(&[("a.service", true, 4), ("b\u{1b}.service", false, 0)]);
        let mut gave_up = give_up(
            "a.service",
            SourceKind::Upstart,
            UnitState::new("start", "running"),
            UnitState::new("stop", "waiting"),
        );
        if let Event::Transition { transition, .. } = &mut gave_up {
            transition.crash = Some("unknown".into());
        }
        table.record(&gave_up);
        let real = [
            units_document(&table),
            events_document(&table, "a.service").expect("watched"),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..4_000 {
            let document = if round % 2 == 0 {
                any_document(&mut rng)
            } else {
                let mut document = real[round / 2 % 2].clone();
                for _ in 0..=rng.below(4) {
                    mutate(&mut rng, &mut document);
                }
                document
            };
            assert_printable(&units_table(&document), &document);
            assert_printable(&events_table(&document), &document);
            assert_printable(&crash_block(&document), &document);
        }
    }

    #[test]
    fn the_crash_block_shows_the_last_lines_and_dashes_for_what_is_missing() {
        let table = table_with(&[("a.service", true, 3)]);
        let summary = crate::http::api::unit_document(&table, "a.service").expect("watched");
        let text = crash_block(&summary);
        assert!(
            text.starts_with(
                "Last crash: exit-code (exit: exited 1, ran -) at 2023-11-14T22:13:20.000Z\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("Last lines: - \n") || text.contains("Last lines: -\n"),
            "{text}"
        );
        let document = serde_json::json!({"last_crash": {"run_seconds": 1.5, "context": {
            "status": "ok", "lines": ["config error: missing key X", 7, "\u{1b}[31m"]}}});
        let text = crash_block(&document);
        assert!(text.contains("(exit: -, ran 1.500s) at -"), "{text}");
        assert!(
            text.contains("  config error: missing key X\n  -\n"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "{text}");
        let document = serde_json::json!({"last_crash": {"reason": "core-dump", "context": {
            "status": "empty", "lines": [],
            "core_dump": {"pid": 94, "signal": "SIGSEGV", "executable": "/usr/bin/bash",
                          "frames": ["#0 __kill (libc.so.6 + 0x3c267)", "#1 main (bash + 0x1)"]},
            "oom_kill": {"kernel_lines": ["Memory cgroup out of memory: Killed process 94 (x)"]}}}});
        let text = crash_block(&document);
        assert!(
            text.contains(
                "Core dump: SIGSEGV in /usr/bin/bash (pid 94)\n  #0 __kill (libc.so.6 + 0x3c267)\n  #1 main (bash + 0x1)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("Killed by the kernel's OOM killer:\n  Memory cgroup out of memory: Killed process 94 (x)\n"),
            "{text}"
        );
        assert_eq!(crash_block(&serde_json::json!({"last_crash": null})), "");
        assert_eq!(crash_block(&serde_json::json!([1])), "");
    }

    #[test]
    fn no_daemon_is_said_plainly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let daemon = Endpoint::plain(HttpUrl::parse(&format!("http://{address}")).unwrap());
        let error = fetch(&daemon, "/api/units").unwrap_err();
        assert!(matches!(error, StatusError::NotRunning { .. }), "{error}");
        assert!(error
            .to_string()
            .starts_with("no crashwatch daemon answers on"));
    }
}
