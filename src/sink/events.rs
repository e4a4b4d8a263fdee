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

/// An open record: standard output, or a file that is reopened when its path stops naming it
/// (deleted, or moved away by a rotation without copytruncate), so lines never go to a file
/// nobody can see.
pub enum EventsWriter {
    /// Standard output.
    Stdout(BufWriter<std::io::Stdout>),
    /// A file opened for append.
    File {
        /// Where it should be.
        path: PathBuf,
        /// The open file.
        file: BufWriter<std::fs::File>,
        /// Its inode, to notice when the path names another file or none.
        inode: u64,
    },
}

/// Opens the target; failing here, at start-up, is better than losing the record later.
pub fn open(target: &EventsTarget) -> std::io::Result<EventsWriter> {
    Ok(match target {
        EventsTarget::Stdout => EventsWriter::Stdout(BufWriter::new(std::io::stdout())),
        EventsTarget::File(path) => {
            let (file, inode) = open_append(path)?;
            EventsWriter::File {
                path: path.clone(),
                file: BufWriter::new(file),
                inode,
            }
        }
    })
}

fn open_append(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    use std::os::unix::fs::MetadataExt;
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let inode = file.metadata()?.ino();
    Ok((file, inode))
}

impl EventsWriter {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            EventsWriter::Stdout(out) => out.write_all(line),
            EventsWriter::File { file, .. } => file.write_all(line),
        }
    }

    /// Writes out what is buffered.
    fn flush(&mut self) {
        let result = match self {
            EventsWriter::Stdout(out) => out.flush(),
            EventsWriter::File { file, .. } => file.flush(),
        };
        if let Err(e) = result {
            SinkWriteError {
                sink: "events",
                error: &e.to_string(),
            }
            .emit();
        }
    }

    /// Makes sure the path still names the open file, reopening it if not. Called before each
    /// batch, so a line is never written to a file that was deleted while the sink was idle.
    fn follow_path(&mut self) {
        let EventsWriter::File { path, file, inode } = self else {
            return;
        };
        use std::os::unix::fs::MetadataExt;
        let current = std::fs::metadata(&*path).map(|m| m.ino()).ok();
        if current == Some(*inode) {
            return;
        }
        match open_append(path) {
            Ok((reopened, new_inode)) => {
                *file = BufWriter::new(reopened);
                *inode = new_inode;
                tracing::info!(path = %path.display(), "The event record's file was moved or deleted; reopened it.");
            }
            Err(e) => SinkWriteError {
                sink: "events",
                error: &format!("reopening {}: {e}", path.display()),
            }
            .emit(),
        }
    }
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
pub fn run(mut out: EventsWriter, events: Receiver<Box<Event>>) {
    loop {
        let event = match events.try_recv() {
            Ok(event) => event,
            Err(TryRecvError::Empty) => {
                out.flush();
                match events.recv() {
                    Ok(event) => {
                        out.follow_path();
                        event
                    }
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
        if let Err(e) = out.write_line(line.as_bytes()) {
            SinkWriteError {
                sink: "events",
                error: &e.to_string(),
            }
            .emit();
        }
    }
    out.flush();
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

#[cfg(test)]
mod reopen_tests {
    use super::*;
    use crate::event::{SourceKind, Transition, TransitionKind, UnitState};

    #[test]
    fn a_deleted_record_is_recreated() {
        let dir = std::env::temp_dir().join(format!("crashwatch-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("events.jsonl");
        let out = open(&EventsTarget::File(path.clone())).expect("opening");
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let writer = std::thread::spawn(move || run(out, rx));
        let event = || Event::Transition {
            transition: Transition::new(
                "a.service",
                SourceKind::Systemd,
                1,
                TransitionKind::Started,
                UnitState::default(),
                UnitState::default(),
            ),
            restarts: 0,
        };
        tx.send(Box::new(event())).expect("send");
        assert!(wait_for(
            || std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() == 1)
        ));
        std::fs::remove_file(&path).expect("deleting the record");
        tx.send(Box::new(event())).expect("send");
        drop(tx);
        writer.join().expect("writer thread");
        let text = std::fs::read_to_string(&path).expect("the record is back");
        assert_eq!(text.lines().count(), 1, "{text:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
        (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            cond()
        })
    }
}
