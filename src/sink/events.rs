//! The event record: every transition and every crash-loop start and end, one JSON object a line.
//!
//! The file is opened for append, so logrotate's `copytruncate` works and two crashwatch runs
//! never overwrite each other. Lines are written through a buffer that is flushed whenever the
//! queue runs dry, so a burst costs one write and a quiet period leaves nothing unwritten.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};

use serde_json::{json, Value};

use crate::event::Event;
use crate::internal_events::SinkWriteError;

/// Where the record goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventsTarget {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

impl EventsTarget {
    /// `-` is standard output; anything else a path.
    pub fn parse(text: &str) -> EventsTarget {
        if text == "-" {
            EventsTarget::Stdout
        } else {
            EventsTarget::File(PathBuf::from(text))
        }
    }
}

/// Opens the target; failing here, at start-up, is better than losing the record later.
pub fn open(target: &EventsTarget) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        EventsTarget::Stdout => Box::new(std::io::stdout()),
        EventsTarget::File(path) => Box::new(open_append(path)?),
    })
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// One event as its JSON object.
pub fn to_json(event: &Event) -> Value {
    match event {
        Event::Transition {
            transition: t,
            restarts,
        } => json!({
            "event": "transition",
            "timestamp_us": t.timestamp,
            "unit": t.unit,
            "source": t.source,
            "transition": t.kind,
            "from_state": t.from.active,
            "from_substate": t.from.sub,
            "to_state": t.to.active,
            "to_substate": t.to.sub,
            "result": t.result,
            "exit_code": t.exit.map(|e| e.code),
            "exit_status": t.exit.map(|e| e.status),
            "invocation_id": t.invocation_id,
            "n_restarts": t.n_restarts,
            "restarts": restarts,
            "crash": t.crash.is_some(),
            "crash_reason": t.crash,
            "restart_cause": t.restart_cause,
            "gave_up": t.gave_up,
            "inferred": t.inferred,
        }),
        Event::Loop(l) => {
            let mut value = json!({
                "event": if l.ended.is_some() { "crashloop_ended" } else { "crashloop_started" },
                "timestamp_us": l.timestamp,
                "unit": l.unit,
                "source": l.source,
                "restarts_in_window": l.restarts_in_window,
                "threshold": l.threshold,
                "window_seconds": l.window_seconds,
            });
            if let (Some(outcome), Some(map)) = (l.ended, value.as_object_mut()) {
                map.insert("outcome".to_owned(), json!(outcome.as_str()));
            }
            value
        }
        Event::Window { .. } => Value::Null,
    }
}

/// Writes every event as a line to `out` until the queue closes, then flushes.
pub fn run(out: Box<dyn Write + Send>, events: Receiver<Event>) {
    let mut out = BufWriter::new(out);
    loop {
        let event = match events.try_recv() {
            Ok(event) => event,
            Err(TryRecvError::Empty) => {
                flush(&mut out);
                match events.recv() {
                    Ok(event) => event,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let value = to_json(&event);
        if value.is_null() {
            continue;
        }
        let mut line = value.to_string();
        line.push('\n');
        if let Err(e) = out.write_all(line.as_bytes()) {
            SinkWriteError {
                sink: "events",
                error: &e.to_string(),
            }
            .emit();
        }
    }
    flush(&mut out);
}

fn flush(out: &mut impl Write) {
    if let Err(e) = out.flush() {
        SinkWriteError {
            sink: "events",
            error: &e.to_string(),
        }
        .emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{SourceKind, Transition, TransitionKind, UnitState};

    #[test]
    fn hostile_unit_names_stay_one_valid_json_line() {
        let t = Transition::new(
            "evil\"\n\\name\u{2028}.service",
            SourceKind::Systemd,
            7,
            TransitionKind::Failed,
            UnitState::new("active", "running"),
            UnitState::new("failed", "failed"),
        );
        let line = to_json(&Event::Transition {
            transition: t,
            restarts: 0,
        })
        .to_string();
        assert!(!line.contains('\n'));
        let back: Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(back["unit"], "evil\"\n\\name\u{2028}.service");
        assert_eq!(back["transition"], "failed");
    }
}
