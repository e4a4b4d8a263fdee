//! The event record: every transition and every crash-loop start and end, one JSON object a line.
//!
//! A file is opened for append, so two crashwatch runs never overwrite each other, and written
//! one whole record per `write(2)`, unbuffered: a record is in one file or, when the disk is full,
//! in none. A write the disk cut short is cut back off the file (a torn line would also spoil the
//! next one), and every record that could not be written is counted; writing resumes with the
//! next record once there is room again. The sink runs on a thread of its own behind a bounded
//! queue (see [`ThreadedSink`](super::ThreadedSink)), so a slow or full disk never stalls the
//! event path.
//!
//! The file rotates itself by size ([`Rotation`]): before a record would take it past
//! `max_size`, `events.jsonl` becomes `events.jsonl.1`, `.1` becomes `.2` and so on up to
//! `max_files`, the oldest is deleted, and a fresh `events.jsonl` is opened. Rotating between
//! records is what keeps every record whole. An outside rotation works too: the file is reopened
//! at its path when the path stops naming it (checked before each batch), and on request
//! ([`ReopenFlag`], raised on SIGHUP, checked before each record), so logrotate can move it away
//! and signal. Standard output, and any target that is not a regular file, is never rotated; it
//! is written through a buffer flushed whenever the queue runs dry.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::event::Event;
use crate::internal_events::{EventsRotateError, SinkWriteError};

/// The size a file of the record may reach before it is rotated, unless told otherwise. With
/// [`DEFAULT_MAX_FILES`] rotated files kept besides the live one, the record takes at most 5
/// files of 16 MiB, 80 MiB: under 100 MiB with room to spare for logrotate's compressed archives
/// (packaging/crashwatch.logrotate), and still about 14 hours of a unit that crash-loops every
/// second (some 1.6 KB/s of records).
pub const DEFAULT_MAX_SIZE: u64 = 16 * 1024 * 1024;
/// Rotated files kept besides the live one unless told otherwise (see [`DEFAULT_MAX_SIZE`]).
pub const DEFAULT_MAX_FILES: u32 = 4;
/// The most rotated files that may be kept: each rotation renames every one of them.
pub const MAX_FILES_LIMIT: u32 = 1000;

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

/// How the record's file is rotated by size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The file is rotated before a record would take it past this many bytes. A record larger
    /// than this on its own gets a file of its own.
    pub max_size: u64,
    /// Rotated files kept besides the live one: `.1` (the newest) to `.{max_files}`.
    pub max_files: u32,
}

/// A size: a number of bytes, optionally followed by a unit: `KB`, `MB`, `GB` (powers of 1000)
/// or `KiB`, `MiB`, `GiB` (powers of 1024), in any case, e.g. `16MiB`, `10MB`, `512KiB`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size (e.g. 16MiB, 10MB, 512KiB or a number of bytes)");
    let trimmed = text.trim();
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let (number, unit) = trimmed.split_at(digits);
    let factor: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{text:?} is too large a size"))
}

/// The name of the `n`th rotated file of `path`: `events.jsonl` → `events.jsonl.1`.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Makes room for a fresh file at `path`: `path.{max_files - 1}` becomes `path.{max_files}`
/// (replacing the oldest), ..., `path` becomes `path.1`. Files numbered beyond `max_files`, left
/// by a larger setting before, are deleted, so the cap holds after it is lowered.
fn shift(path: &Path, max_files: u32) -> std::io::Result<()> {
    let mut beyond = max_files.saturating_add(1);
    while beyond < u32::MAX && std::fs::remove_file(rotated_path(path, beyond)).is_ok() {
        beyond += 1;
    }
    for n in (1..max_files).rev() {
        match std::fs::rename(rotated_path(path, n), rotated_path(path, n + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(path, rotated_path(path, 1))
}

/// A request to reopen the record's file at its path: raised by whoever hears SIGHUP (after
/// logrotate moved the file away), taken by the sink's thread before its next record. Clones
/// share the request.
#[derive(Clone, Debug, Default)]
pub struct ReopenFlag(Arc<AtomicBool>);

impl ReopenFlag {
    /// Asks for the file to be reopened before the next record.
    pub fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a reopen was asked for since the last call.
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// An open record: standard output, or a file.
pub enum EventsWriter {
    /// Standard output.
    Stdout(BufWriter<std::io::Stdout>),
    /// A file.
    File(RecordFile),
}

/// The record's file, opened for append: rotated by size, and reopened when its path stops
/// naming it (deleted, or moved away by a rotation without copytruncate) or when asked to, so
/// lines never go to a file nobody can see.
pub struct RecordFile {
    /// Where it should be.
    path: PathBuf,
    /// The open file.
    file: File,
    /// Its inode, to notice when the path names another file or none.
    inode: u64,
    /// Its length as far as known: the length when opened plus what was written since.
    size: u64,
    /// Whether it is a regular file. A device or a pipe (`/dev/stderr`, `/dev/full`) is never
    /// rotated nor cut back.
    regular: bool,
    /// The size rotation; `None` when it is off.
    rotation: Option<Rotation>,
    /// Asks for a reopen.
    reopen: ReopenFlag,
}

/// Opens the target; failing here, at start-up, is better than losing the record later.
/// `rotation` and `reopen` apply to a file only.
pub fn open(
    target: &EventsTarget,
    rotation: Option<Rotation>,
    reopen: ReopenFlag,
) -> std::io::Result<EventsWriter> {
    Ok(match target {
        EventsTarget::Stdout => EventsWriter::Stdout(BufWriter::new(std::io::stdout())),
        EventsTarget::File(path) => EventsWriter::File(RecordFile::open(path, rotation, reopen)?),
    })
}

/// An open file of the record with its inode, length and whether it is a regular file.
fn open_append(path: &Path) -> std::io::Result<(File, u64, u64, bool)> {
    use std::os::unix::fs::MetadataExt;
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let meta = file.metadata()?;
    Ok((file, meta.ino(), meta.len(), meta.file_type().is_file()))
}

impl RecordFile {
    fn open(
        path: &Path,
        rotation: Option<Rotation>,
        reopen: ReopenFlag,
    ) -> std::io::Result<RecordFile> {
        let (file, inode, size, regular) = open_append(path)?;
        Ok(RecordFile {
            path: path.to_owned(),
            file,
            inode,
            size,
            regular,
            rotation,
            reopen,
        })
    }

    /// Opens the path afresh and writes there from now on; on failure keeps the file it has, so
    /// records still go somewhere, and says why.
    fn reopen(&mut self, why: &str) {
        match open_append(&self.path) {
            Ok((file, inode, size, regular)) => {
                self.file = file;
                self.inode = inode;
                self.size = size;
                self.regular = regular;
                tracing::info!(path = %self.path.display(), "Reopened the event record: {why}.");
            }
            Err(e) => SinkWriteError {
                sink: "events",
                error: &format!("reopening {}: {e}", self.path.display()),
            }
            .emit(),
        }
    }

    /// Whether the path still names the open file.
    fn names_open_file(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode)
    }

    /// Makes sure the path still names the open file, reopening it if not. Called before each
    /// batch, so a line is never written to a file that was deleted while the sink was idle.
    fn follow_path(&mut self) {
        if !self.names_open_file() {
            self.reopen("its file was moved or deleted");
        }
    }

    /// Writes one record, whole, after reopening or rotating the file if that is due.
    fn write_record(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.reopen.take() {
            self.reopen("asked to on SIGHUP");
        }
        if let Some(rotation) = self.rotation {
            let len = line.len() as u64;
            if self.regular && self.would_pass(len, rotation) {
                // The count goes stale when someone else empties the file (copytruncate).
                if let Ok(meta) = self.file.metadata() {
                    self.size = meta.len();
                }
                if self.would_pass(len, rotation) {
                    self.rotate(rotation);
                }
            }
        }
        self.append(line)
    }

    /// Whether `len` more bytes would take a file that is not empty past the cap.
    fn would_pass(&self, len: u64, rotation: Rotation) -> bool {
        self.size > 0 && self.size.saturating_add(len) > rotation.max_size
    }

    /// Moves the full file aside and opens a fresh one at the path. A file someone else already
    /// moved away is not shifted again: only a fresh one is opened.
    fn rotate(&mut self, rotation: Rotation) {
        if self.names_open_file() {
            if let Err(e) = shift(&self.path, rotation.max_files) {
                EventsRotateError {
                    path: &self.path.display().to_string(),
                    error: &e.to_string(),
                }
                .emit();
                return;
            }
        }
        self.reopen("it reached its size limit and was rotated");
    }

    /// One `write(2)` of the whole line. A short write (the disk filled up under it) is cut back
    /// off the file and reported as a failure, so no torn line is left for the next to join.
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let written = loop {
            match (&self.file).write(line) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                result => break result?,
            }
        };
        if written == line.len() {
            self.size = self.size.saturating_add(written as u64);
            return Ok(());
        }
        if self.regular && written > 0 {
            // Appending leaves the offset at the end of what was just written.
            let end = (&self.file).stream_position()?;
            self.file.set_len(end.saturating_sub(written as u64))?;
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "only {written} of {} bytes could be written; the record was dropped",
                line.len()
            ),
        ))
    }
}

impl EventsWriter {
    fn write_record(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            EventsWriter::Stdout(out) => out.write_all(line),
            EventsWriter::File(file) => file.write_record(line),
        }
    }

    /// Writes out what is buffered (standard output only: a file is written unbuffered).
    fn flush(&mut self) {
        let EventsWriter::Stdout(out) = self else {
            return;
        };
        if let Err(e) = out.flush() {
            SinkWriteError {
                sink: "events",
                error: &e.to_string(),
            }
            .emit();
        }
    }

    /// Reopens a file whose path stopped naming it.
    fn follow_path(&mut self) {
        if let EventsWriter::File(file) = self {
            file.follow_path();
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
        Event::CrashContext {
            unit,
            source,
            timestamp,
            invocation,
            context,
        } => json!({
            "event": "crash_context",
            "timestamp_us": timestamp,
            "unit": unit,
            "source": source,
            "invocation_id": invocation,
            "status": context.status,
            "lines": context.lines,
            "reason": context.reason,
            "core_dump": context.core_dump,
            "oom_kill": context.oom_kill,
        }),
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
        if let Err(e) = out.write_record(line.as_bytes()) {
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

    #[test]
    fn a_crash_context_is_a_record_of_its_own() {
        let line = to_json(&Event::CrashContext {
            unit: "a.service".into(),
            source: SourceKind::Systemd,
            timestamp: 7,
            invocation: Some("0123456789abcdef0123456789abcdef".into()),
            context: crate::event::CrashContext::found(vec!["config error\\n".into()]),
        })
        .to_string();
        assert!(!line.contains('\n'));
        let back: Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(back["event"], "crash_context");
        assert_eq!(back["status"], "ok");
        assert_eq!(back["lines"][0], "config error\\n");
        assert_eq!(back["invocation_id"], "0123456789abcdef0123456789abcdef");
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
        let out = open(
            &EventsTarget::File(path.clone()),
            None,
            ReopenFlag::default(),
        )
        .expect("opening");
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

#[cfg(test)]
mod rotation_tests {
    use super::*;

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("crashwatch-rotation-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Scratch(dir)
        }

        /// The record's path in it.
        fn path(&self) -> PathBuf {
            self.0.join("events.jsonl")
        }

        /// The record opened there, rotated at `max_size` bytes with `max_files` kept.
        fn rotating(&self, max_size: u64, max_files: u32) -> RecordFile {
            let rotation = Rotation {
                max_size,
                max_files,
            };
            RecordFile::open(&self.path(), Some(rotation), ReopenFlag::default()).expect("opening")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn record(n: usize) -> Vec<u8> {
        format!("{{\"n\":{n},\"padding\":\"{}\"}}\n", "x".repeat(n % 7)).into_bytes()
    }

    /// The numbers of the records in a file, each line checked to be whole JSON.
    fn numbers(path: &Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
                v["n"].as_u64().expect("a number")
            })
            .collect()
    }

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        for (text, bytes) in [
            ("4096", 4096),
            ("0", 0),
            ("100MiB", 100 << 20),
            ("10MB", 10_000_000),
            ("512KiB", 512 << 10),
            ("4KiB", 4096),
            ("2GiB", 2 << 30),
            ("1GB", 1_000_000_000),
            ("16 mib", 16 << 20),
            ("7B", 7),
            (" 1kb ", 1000),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text:?}");
        }
        for text in ["", "MiB", "12XB", "-1", "1.5MiB", "16 MiB extra", "0x10"] {
            let message = parse_size(text).expect_err(text);
            assert!(message.contains("is not a size"), "{text:?}: {message}");
        }
        let message = parse_size("99999999999GiB").expect_err("overflow");
        assert!(message.contains("too large"), "{message}");
    }

    #[test]
    fn rotated_files_are_numbered_after_the_record() {
        let path = Path::new("/var/log/crashwatch/events.jsonl");
        assert_eq!(
            rotated_path(path, 1),
            Path::new("/var/log/crashwatch/events.jsonl.1")
        );
        assert_eq!(
            rotated_path(path, 12),
            Path::new("/var/log/crashwatch/events.jsonl.12")
        );
    }

    #[test]
    fn rotation_keeps_max_files_of_whole_contiguous_records_under_the_cap() {
        let dir = Scratch::new("cap");
        let path = dir.path();
        let mut file = dir.rotating(300, 3);
        for n in 0..200 {
            file.write_record(&record(n)).expect("writing");
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir.0)
            .expect("listing")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "events.jsonl",
                "events.jsonl.1",
                "events.jsonl.2",
                "events.jsonl.3"
            ]
        );
        let mut all = Vec::new();
        for n in (1..=3).rev() {
            let rotated = rotated_path(&path, n);
            let len = std::fs::metadata(&rotated).expect("rotated file").len();
            assert!(len <= 300 && len > 250, "{rotated:?} has {len} bytes");
            all.extend(numbers(&rotated));
        }
        all.extend(numbers(&path));
        assert_eq!(all.last(), Some(&199));
        let first = all[0];
        assert_eq!(
            all,
            (first..200).collect::<Vec<_>>(),
            "records lost or reordered"
        );
    }

    #[test]
    fn a_record_larger_than_the_cap_gets_a_file_of_its_own() {
        let dir = Scratch::new("large");
        let path = dir.path();
        let mut file = dir.rotating(10, 2);
        for n in 0..3 {
            file.write_record(&record(n)).expect("writing");
        }
        assert_eq!(numbers(&rotated_path(&path, 2)), [0]);
        assert_eq!(numbers(&rotated_path(&path, 1)), [1]);
        assert_eq!(numbers(&path), [2]);
    }

    #[test]
    fn lowering_max_files_deletes_the_files_beyond_it() {
        let dir = Scratch::new("lower");
        let path = dir.path();
        for n in 1..=6 {
            std::fs::write(rotated_path(&path, n), record(100 + n as usize)).expect("writing");
        }
        let mut file = dir.rotating(30, 2);
        file.write_record(&record(0)).expect("writing");
        file.write_record(&record(1)).expect("writing");
        assert_eq!(numbers(&rotated_path(&path, 1)), [0]);
        assert_eq!(numbers(&rotated_path(&path, 2)), [101]);
        for n in 3..=6 {
            assert!(!rotated_path(&path, n).exists(), ".{n} is left");
        }
    }

    #[test]
    fn a_raised_flag_reopens_the_path_before_the_next_record() {
        let dir = Scratch::new("reopen");
        let path = dir.path();
        let moved = dir.0.join("events.jsonl-20240501");
        let reopen = ReopenFlag::default();
        let mut file = RecordFile::open(&path, None, reopen.clone()).expect("opening");
        file.write_record(&record(0)).expect("writing");
        std::fs::rename(&path, &moved).expect("moving the record away");
        // Until asked, records follow the open file (a rename alone is noticed between batches).
        file.write_record(&record(1)).expect("writing");
        reopen.raise();
        file.write_record(&record(2)).expect("writing");
        assert_eq!(numbers(&moved), [0, 1]);
        assert_eq!(numbers(&path), [2]);
    }

    #[test]
    fn a_rotation_that_fails_keeps_writing_to_the_live_file() {
        let dir = Scratch::new("refused");
        let path = dir.path();
        // A directory in the way of the rename.
        std::fs::create_dir_all(rotated_path(&path, 1).join("in-the-way")).expect("a directory");
        let mut file = dir.rotating(30, 1);
        for n in 0..4 {
            file.write_record(&record(n)).expect("writing");
        }
        assert_eq!(numbers(&path), [0, 1, 2, 3]);
    }

    #[test]
    fn a_file_emptied_under_the_writer_is_not_rotated() {
        let dir = Scratch::new("truncated");
        let path = dir.path();
        let mut file = dir.rotating(60, 2);
        file.write_record(&record(0)).expect("writing");
        file.write_record(&record(1)).expect("writing");
        // logrotate's copytruncate: the content copied away, the file emptied in place.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(0))
            .expect("truncating");
        file.write_record(&record(2)).expect("writing");
        assert_eq!(numbers(&path), [2]);
        assert!(!rotated_path(&path, 1).exists());
    }

    #[test]
    fn a_target_that_is_not_a_regular_file_is_never_rotated() {
        let dir = Scratch::new("device");
        let path = dir.path();
        std::os::unix::fs::symlink("/dev/null", &path).expect("linking /dev/null");
        let mut file = dir.rotating(1, 1);
        for n in 0..3 {
            file.write_record(&record(n)).expect("writing");
        }
        assert!(std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()));
        assert!(!rotated_path(&path, 1).exists());
    }
}
