//! `crashwatch status`: reads the status API of a running daemon and prints it as tables.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use super::table::{columns, Align};
use super::{resolve_config, write_stdout, PACKAGED_CONFIG};
use crate::cli::StatusArgs;
use crate::config::Overrides;

use crate::event::printable;
use crate::time::format_duration;

/// `crashwatch status`: the daemon's units as a table (or JSON), or one unit's transitions.
pub fn run(args: StatusArgs) -> ExitCode {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    let address = match &args.address {
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(address) => address,
            Err(_) => {
                crate::logging::fatal(&format_args!("--address {text:?} is not IP:PORT"));
                return ExitCode::from(2);
            }
        },
        None => {
            let path = args.config.clone().or_else(|| {
                let packaged = Path::new(PACKAGED_CONFIG);
                packaged.exists().then(|| packaged.to_path_buf())
            });
            match resolve_config(path.as_deref(), Overrides::default()) {
                Ok(config) => config.listen,
                Err(code) => return code,
            }
        }
    };
    // A daemon listening on every address answers on loopback too.
    let address = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), address.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), address.port())
        }
        _ => address,
    };
    let path = match &args.unit {
        Some(unit) => format!("/api/units/{}/events", crate::http::percent_encode(unit)),
        None => "/api/units".to_owned(),
    };
    let document = match crate::commands::status::fetch(address, &path) {
        Ok(document) => document,
        Err(e) => {
            crate::logging::fatal(&e);
            return ExitCode::FAILURE;
        }
    };
    let text = if args.json {
        format!("{document:#}\n")
    } else if args.unit.is_some() {
        crate::commands::status::events_table(&document)
    } else {
        crate::commands::status::units_table(&document)
    };
    write_stdout(text.as_bytes())
}

/// Why the daemon's status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing listens there.
    #[error("no crashwatch daemon answers on {address} ({reason}); is it running, and is that its listen address?")]
    NotRunning {
        /// Where it was asked.
        address: SocketAddr,
        /// What the connection attempt said.
        reason: String,
    },
    /// Something answered, but not with the status API.
    #[error("{address} did not answer like crashwatch: {reason}")]
    BadAnswer {
        /// Where it was asked.
        address: SocketAddr,
        /// What was wrong.
        reason: String,
    },
}

/// How long `crashwatch status` waits for the daemon.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads `path` of the daemon's API at `address` as JSON.
pub fn fetch(address: SocketAddr, path: &str) -> Result<Value, StatusError> {
    let not_running = |e: std::io::Error| StatusError::NotRunning {
        address,
        reason: e.to_string(),
    };
    let bad = |reason: String| StatusError::BadAnswer { address, reason };
    let mut stream = TcpStream::connect_timeout(&address, CLIENT_TIMEOUT).map_err(not_running)?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CLIENT_TIMEOUT)))
        .map_err(|e| bad(e.to_string()))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| bad(format!("sending the request: {e}")))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| bad(format!("reading the answer: {e}")))?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no HTTP answer".to_owned()))?;
    let status = head.lines().next().unwrap_or("");
    let document: Value = serde_json::from_str(body)
        .map_err(|_| bad(format!("{path} answered {status:?}, not JSON")))?;
    if !status.contains(" 200 ") {
        let error = document["error"].as_str().unwrap_or(status);
        return Err(bad(format!("{path}: {error}")));
    }
    Ok(document)
}

/// `crashwatch status` as a table: crash-looping units first, then by restarts in the window,
/// then by name.
pub fn units_table(document: &Value) -> String {
    let empty = Vec::new();
    let mut units: Vec<&Value> = document["units"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .collect();
    units.sort_by(|a, b| {
        let looping = |u: &Value| u["crashlooping"].as_bool().unwrap_or(false);
        let gave_up = |u: &Value| u["gave_up"].as_bool().unwrap_or(false);
        let in_window = |u: &Value| u["restarts_in_window"].as_u64().unwrap_or(0);
        gave_up(b)
            .cmp(&gave_up(a))
            .then(looping(b).cmp(&looping(a)))
            .then(in_window(b).cmp(&in_window(a)))
            .then(a["unit"].as_str().cmp(&b["unit"].as_str()))
    });
    let rows: Vec<[String; 6]> = units
        .iter()
        .map(|u| {
            let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            let state = format!("{}/{}", text(&u["state"]), text(&u["substate"]));
            // Given up is worse than looping: the unit is down and nothing will bring it back.
            let looping = if u["gave_up"].as_bool().unwrap_or(false) {
                "GAVE UP"
            } else if u["crashlooping"].as_bool().unwrap_or(false) {
                "LOOPING"
            } else {
                "no"
            };
            let window = format!(
                "{}/{} in {}",
                u["restarts_in_window"].as_u64().unwrap_or(0),
                u["threshold"].as_u64().unwrap_or(0),
                format_duration(u["window_seconds"].as_f64().unwrap_or(0.0))
            );
            let last_crash = match u["last_crash"].as_object() {
                Some(crash) => {
                    let mut cause = text(&crash["reason"]);
                    if let (Some(code), Some(status)) =
                        (crash["exit_code"].as_str(), crash["exit_status"].as_i64())
                    {
                        cause.push_str(&format!(" ({code} {status})"));
                    }
                    format!("{} {cause}", text(&crash["time"]))
                }
                None => "-".to_owned(),
            };
            [
                printable(&text(&u["unit"])),
                text(&u["source"]),
                state,
                looping.to_owned(),
                window,
                last_crash,
            ]
        })
        .collect();
    let header = [
        "UNIT",
        "SOURCE",
        "STATE",
        "LOOPING",
        "RESTARTS",
        "LAST CRASH",
    ];
    let mut out = columns(header, &rows, [Align::Left; 6]);
    let looping = document["crashlooping"].as_u64().unwrap_or(0);
    out.push_str(&format!(
        "\n{} units watched, {looping} crash-looping",
        rows.len()
    ));
    match document["gave_up"].as_u64().unwrap_or(0) {
        0 => out.push_str(".\n"),
        gave_up => out.push_str(&format!(", {gave_up} given up.\n")),
    }
    out
}

/// One unit's recent transitions as a table, oldest first.
pub fn events_table(document: &Value) -> String {
    let empty = Vec::new();
    let events = document["events"].as_array().unwrap_or(&empty);
    let rows: Vec<[String; 4]> = events
        .iter()
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            let mut detail = Vec::new();
            if let Some(reason) = e["crash_reason"].as_str() {
                detail.push(format!("crash: {reason}"));
            }
            if let (Some(code), Some(status)) = (e["exit_code"].as_str(), e["exit_status"].as_i64())
            {
                detail.push(format!("{code} {status}"));
            }
            if let Some(cause) = e["restart_cause"].as_str() {
                detail.push(format!("restart: {cause}"));
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
        printable(document["unit"].as_str().unwrap_or("?")),
        document["source"].as_str().unwrap_or("?")
    );
    out.push_str(&columns(
        ["TIME", "TRANSITION", "STATE", "DETAIL"],
        &rows,
        [Align::Left; 4],
    ));
    out
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

    #[test]
    fn a_unit_the_init_system_gave_up_on_comes_first() {
        let mut table = table_with(&[("a.service", true, 4), ("b.service", false, 0)]);
        let mut gave_up = Transition::new(
            "b.service",
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
    fn no_daemon_is_said_plainly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let error = fetch(address, "/api/units").unwrap_err();
        assert!(matches!(error, StatusError::NotRunning { .. }), "{error}");
        assert!(error
            .to_string()
            .starts_with("no crashwatch daemon answers on"));
    }
}
