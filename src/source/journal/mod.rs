//! History from the journal: what systemd wrote about each unit, read back as transitions.
//!
//! crashwatch hears systemd live, so on its own everything before its start is lost: a unit in
//! the middle of a crash loop looks healthy after crashwatch is upgraded or restarted, until
//! `threshold` more restarts come. journald already keeps what PID 1 said about every unit,
//! tagged with the MESSAGE_IDs systemd documents in its catalog
//! (`/usr/lib/systemd/catalog/systemd.catalog`; the names are those of `sd-messages.h`). So at
//! start-up crashwatch reads the recent
//! lifecycle messages ([`history`]) and rebuilds each unit's window ([`seed`]), and
//! `crashwatch replay` runs the same parser and the same detector over a `journalctl -o json`
//! export ([`replay`]), for post-mortems.
//!
//! The journal holds messages, not states, so [`Parser`] keeps a little per unit and applies the
//! rules the live tracker applies too, from their one home (`source::systemd::verdict`):
//!
//! - a new `INVOCATION_ID` is a new run; its start message (or the first message of the run, when
//!   the last run crashed) gives Starting, preceded by a Restart when the last run crashed,
//!   whoever started it: automatic when systemd scheduled the restart, external otherwise;
//! - a crash is a failure nobody asked for ("Unit failed", with `UNIT_RESULT`), or a run that
//!   systemd scheduled an automatic restart for ("Scheduled restart job", with `N_RESTARTS`):
//!   under `Restart=always` a clean exit is a crash too. A failure after a stop job began is a
//!   stop, not a crash;
//! - a clean exit ("Unit succeeded") is judged by what follows: a scheduled restart, or a stop or
//!   restart job finishing (systemd runs none on a unit that is already inactive, so the unit was
//!   waiting to restart) make it a crash; a new start makes it a plain stop. Left unjudged at the
//!   end of the input, it is left out;
//! - a failure after the restart was scheduled, with no new run, is systemd giving up (start
//!   limit hit), as the live tracker's `auto-restart` → `failed`.
//!
//! `UNIT=` is believed only from PID 1: `_PID` is a trusted field that journald sets and no
//! client can, so a local user cannot fake a crash loop by logging a lifecycle MESSAGE_ID.
//! Times are the sender's (`_SOURCE_REALTIME_TIMESTAMP`), else journald's
//! (`__REALTIME_TIMESTAMP`): a busy journald may receive a message late, exactly during a loop.
//!
//! History only seeds windows. It is never counted: the `*_total` counters of a restarted
//! crashwatch start at zero and count what it hears live, and entries at or after the live
//! snapshot are ignored because the snapshot covers them.

use std::collections::HashMap;
use std::io::{self, BufRead, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use metrics::counter;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::detect::{Detector, LoopChange, Update};
use crate::engine::{self, Limits};
use crate::event::{
    printable, signal_number, ExitCause, ExitCode, LoopEvent, LoopOutcome, Micros, SourceKind,
    Transition, TransitionKind, UnitState,
};
use crate::source::systemd::verdict::{self, Ending, Sequel, Verdict};
use crate::time::format_timestamp;

use crate::engine::units::UnitTable;

/// "A start job for unit @UNIT@ has begun execution" (`SD_MESSAGE_UNIT_STARTING`).
pub const UNIT_STARTING: &str = "7d4958e842da4a758f6c1cdc7b36dcc5";
/// "A start job for unit @UNIT@ has finished successfully" (`SD_MESSAGE_UNIT_STARTED`).
pub const UNIT_STARTED: &str = "39f53479d3a045ac8e11786248231fbf";
/// "A start job for unit @UNIT@ has failed" (`SD_MESSAGE_UNIT_FAILED`), with `JOB_RESULT`.
pub const UNIT_START_FAILED: &str = "be02cf6855d2428ba40df7e9d022f03d";
/// "A stop job for unit @UNIT@ has begun execution" (`SD_MESSAGE_UNIT_STOPPING`).
pub const UNIT_STOPPING: &str = "de5b426a63be47a7b6ac3eaac82e2f6f";
/// "A stop job for unit @UNIT@ has finished" (`SD_MESSAGE_UNIT_STOPPED`), with `JOB_TYPE`
/// (`stop`, or `restart` for the stop half of a restart job).
pub const UNIT_STOPPED: &str = "9d1aaa27d60140bd96365438aad20286";
/// "Unit succeeded" (`SD_MESSAGE_UNIT_SUCCESS`): the unit went down with result `success`.
pub const UNIT_SUCCEEDED: &str = "7ad2d189f7e94e70a38c781354912448";
/// "Unit failed" (`SD_MESSAGE_UNIT_FAILURE_RESULT`), with `UNIT_RESULT`.
pub const UNIT_FAILED: &str = "d9b373ed55a64feb8242e02dbe79a49c";
/// "Unit process exited" (`SD_MESSAGE_UNIT_PROCESS_EXIT`), with `EXIT_CODE`, `EXIT_STATUS`,
/// `COMMAND`.
pub const UNIT_PROCESS_EXITED: &str = "98e322203f7a4ed290d09fe03c09fe15";
/// "Automatic restarting of a unit has been scheduled" (`SD_MESSAGE_UNIT_RESTART_SCHEDULED`),
/// with `N_RESTARTS`.
pub const UNIT_RESTART_SCHEDULED: &str = "5eb03494b6584870a536b337290809b3";

/// Every MESSAGE_ID the parser reads; the start-up query asks journalctl for these only.
pub const LIFECYCLE_MESSAGE_IDS: [&str; 9] = [
    UNIT_STARTING,
    UNIT_STARTED,
    UNIT_START_FAILED,
    UNIT_STOPPING,
    UNIT_STOPPED,
    UNIT_SUCCEEDED,
    UNIT_FAILED,
    UNIT_PROCESS_EXITED,
    UNIT_RESTART_SCHEDULED,
];

/// The fields the parser reads, so journalctl sends nothing else (`--output-fields`). The cursor
/// and `__REALTIME_TIMESTAMP` always come.
const FIELDS: &str = "MESSAGE_ID,UNIT,USER_UNIT,INVOCATION_ID,UNIT_RESULT,EXIT_CODE,EXIT_STATUS,\
COMMAND,N_RESTARTS,JOB_TYPE,JOB_RESULT,_PID,_UID,_SOURCE_REALTIME_TIMESTAMP";

/// The longest line read; a journal entry longer than this is skipped as malformed, so one
/// runaway line cannot take the memory of a replay.
pub const MAX_LINE: usize = 1 << 20;

/// Units the parser remembers before it forgets those with nothing pending, so a long export
/// full of one-off transient units stays bounded.
const MAX_UNITS_HELD: usize = 100_000;

/// How long the start-up read may take before journalctl is killed and history skipped.
pub const HISTORY_TIMEOUT: Duration = Duration::from_secs(10);

/// The most journalctl output read at start-up. Entries are read newest first, so beyond it
/// only the oldest are lost.
pub const HISTORY_MAX_BYTES: usize = 32 << 20;

/// What the lifecycle messages are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Message {
    Starting,
    Started,
    StartFailed,
    Stopping,
    Stopped,
    Succeeded,
    Failed,
    ProcessExited,
    RestartScheduled,
}

impl Message {
    fn from_id(id: &str) -> Option<Message> {
        Some(match id {
            UNIT_STARTING => Message::Starting,
            UNIT_STARTED => Message::Started,
            UNIT_START_FAILED => Message::StartFailed,
            UNIT_STOPPING => Message::Stopping,
            UNIT_STOPPED => Message::Stopped,
            UNIT_SUCCEEDED => Message::Succeeded,
            UNIT_FAILED => Message::Failed,
            UNIT_PROCESS_EXITED => Message::ProcessExited,
            UNIT_RESTART_SCHEDULED => Message::RestartScheduled,
            _ => return None,
        })
    }
}

/// How the current run of a unit stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Run {
    /// No run known yet.
    #[default]
    Unknown,
    /// Started, and not known to be down.
    Running,
    /// The main process exited cleanly at this time; a crash if systemd restarts it by itself.
    CleanExit(Micros),
    /// Ended in a crash.
    Crashed,
    /// Ended, with no crash.
    Stopped,
}

/// What the parser keeps per unit between messages.
#[derive(Clone, Debug, Default)]
struct UnitLog {
    /// The state the messages imply, for the records.
    state: UnitState,
    invocation: Option<String>,
    run: Run,
    /// Started was reported for the current run.
    up: bool,
    /// A stop job began for the current run.
    stop_requested: bool,
    /// How the current run's main process ended, and when.
    exit: Option<(ExitCause, Micros)>,
    /// The last run crashed and nothing has started since: the next start is a restart.
    crash_pending: bool,
    /// systemd scheduled an automatic restart after that crash.
    restart_scheduled: bool,
    /// systemd's restart counter, from the last scheduled restart.
    n_restarts: Option<u32>,
    /// Giving up was reported for the last crash.
    gave_up: bool,
    /// The current run was begun by a start job ("Starting") that has not finished yet: a
    /// "Failed to start" is that run's own failure, not a start refused after it.
    start_job_open: bool,
}

impl UnitLog {
    /// Nothing here changes what a later message means.
    fn is_idle(&self) -> bool {
        matches!(self.run, Run::Unknown | Run::Stopped) && !self.crash_pending
    }
}

/// One lifecycle message, as far as the rules need it.
struct Entry<'a> {
    map: &'a Map<String, Value>,
    unit: String,
    message: Message,
    at: Micros,
    invocation: Option<String>,
}

impl Entry<'_> {
    fn field(&self, name: &str) -> Option<String> {
        field(self.map, name)
    }
}

/// Turns `journalctl -o json` lines into transitions, one unit state machine per unit.
///
/// Feed lines in the journal's order with [`Parser::line`]. Transitions come out in the order
/// their messages arrive, except a clean exit, which is judged (and stamped with its own time)
/// when the unit's next message says what it was. Malformed lines are counted and skipped.
#[derive(Debug, Default)]
pub struct Parser {
    units: HashMap<(Option<String>, String), UnitLog>,
    until: Option<Micros>,
    entries: u64,
    lifecycle: u64,
    malformed: u64,
}

impl Parser {
    /// A parser with nothing seen yet.
    pub fn new() -> Parser {
        Parser::default()
    }

    /// A parser that ignores entries at or after `until` (the live snapshot covers them).
    pub fn until(until: Micros) -> Parser {
        Parser {
            until: Some(until),
            ..Parser::default()
        }
    }

    /// Journal entries read (lifecycle or not).
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Lifecycle messages about a unit that were read.
    pub fn lifecycle_messages(&self) -> u64 {
        self.lifecycle
    }

    /// Lines that were not journal entries: not JSON, not an object, no timestamp, too long.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Counts a line that was skipped before it reached the parser (too long).
    pub fn skip_malformed(&mut self) {
        self.malformed += 1;
    }

    /// Reads one line, appending the transitions it completes to `out`. Returns the entry's
    /// time for any journal entry, lifecycle or not, so the caller can move its clock; `None`
    /// for a blank or malformed line, or an entry at or after the cut-off.
    pub fn line(&mut self, line: &[u8], out: &mut Vec<Transition>) -> Option<Micros> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(line) else {
            self.malformed += 1;
            return None;
        };
        // The sender's clock first: journald may receive a message late when it is busy.
        let at = ["_SOURCE_REALTIME_TIMESTAMP", "__REALTIME_TIMESTAMP"]
            .iter()
            .find_map(|name| field(&map, name)?.trim().parse::<Micros>().ok());
        let Some(at) = at else {
            self.malformed += 1;
            return None;
        };
        if self.until.is_some_and(|until| at >= until) {
            return None;
        }
        self.entries += 1;
        self.entry(&map, at, out);
        Some(at)
    }

    /// Ends the input. A clean exit not judged by now is left out: whether systemd restarts it
    /// is not known.
    pub fn finish(&mut self) {
        self.units.clear();
    }

    fn entry(&mut self, map: &Map<String, Value>, at: Micros, out: &mut Vec<Transition>) {
        let Some(message) = field(map, "MESSAGE_ID").and_then(|id| Message::from_id(id.trim()))
        else {
            return;
        };
        // System units are named by PID 1 in UNIT=; user units by their user manager in
        // USER_UNIT=. UNIT= from any other process is not systemd speaking.
        let (scope, unit) = match (field(map, "UNIT"), field(map, "USER_UNIT")) {
            (Some(unit), _) => {
                if field(map, "_PID").is_some_and(|pid| pid.trim() != "1") {
                    return;
                }
                (None, unit)
            }
            (None, Some(unit)) => (Some(field(map, "_UID").unwrap_or_default()), unit),
            (None, None) => return,
        };
        if unit.is_empty() {
            return;
        }
        self.lifecycle += 1;
        if self.units.len() >= MAX_UNITS_HELD {
            self.units.retain(|_, log| !log.is_idle());
        }
        let entry = Entry {
            map,
            invocation: field(map, "INVOCATION_ID").filter(|id| !id.is_empty()),
            unit,
            message,
            at,
        };
        let log = self.units.entry((scope, entry.unit.clone())).or_default();
        apply(log, &entry, out);
    }
}

/// Applies one lifecycle message to its unit.
fn apply(log: &mut UnitLog, entry: &Entry<'_>, out: &mut Vec<Transition>) {
    let starts = matches!(entry.message, Message::Starting | Message::Started);
    let new_run = match &entry.invocation {
        Some(id) => log.invocation.as_ref() != Some(id),
        // Without InvocationIDs (hand-made input), a start message after the run ended starts a
        // new one; a oneshot's "Finished" right after its clean exit does not.
        None => {
            starts
                && match log.run {
                    Run::Running => false,
                    Run::CleanExit(_) => entry.message == Message::Starting,
                    _ => true,
                }
        }
    };
    if new_run {
        begin_run(log, entry, starts || log.crash_pending, out);
    }
    let at = entry.at;
    match entry.message {
        Message::Starting => {}
        Message::Started => {
            log.start_job_open = false;
            if log.run == Run::Running && !log.up {
                log.up = true;
                push(
                    log,
                    entry,
                    TransitionKind::Started,
                    ("active", "running"),
                    at,
                    out,
                );
            }
        }
        Message::ProcessExited => {
            // ExecStop= and ExecStopPost= run after the main process ended; they say nothing
            // about why it did.
            let command = entry.field("COMMAND").unwrap_or_default();
            if !command.starts_with("ExecStop") {
                if let Some(exit) = exit_cause(entry) {
                    log.exit = Some((exit, at));
                }
            }
        }
        Message::Failed => {
            let result = entry.field("UNIT_RESULT").unwrap_or_default();
            let result = if result.is_empty() {
                "unknown".to_owned()
            } else {
                result
            };
            let restart_refused = log.run == Run::Crashed && log.restart_scheduled;
            if verdict::gave_up(restart_refused, Some(&result)) {
                give_up(log, entry, Some(result), out);
            } else if log.run == Run::Running {
                match verdict::judge(Ending::Failed, Some(&result), log.stop_requested) {
                    Verdict::Crash(reason) => {
                        crash(log, entry, TransitionKind::Failed, &reason, at, out)
                    }
                    Verdict::Stop | Verdict::AwaitSequel => {
                        let mut t = transition(
                            log,
                            entry,
                            TransitionKind::Failed,
                            ("failed", "failed"),
                            at,
                        );
                        t.result = Some(result);
                        log.run = Run::Stopped;
                        out.push(t);
                    }
                }
            }
        }
        Message::Succeeded => {
            if log.run == Run::Running {
                let ending = Ending::Exited { result_ok: true };
                match verdict::judge(ending, None, log.stop_requested) {
                    Verdict::AwaitSequel => log.run = Run::CleanExit(at),
                    Verdict::Crash(reason) => {
                        crash(log, entry, TransitionKind::Stopped, &reason, at, out)
                    }
                    Verdict::Stop => {
                        log.run = Run::Stopped;
                        push(
                            log,
                            entry,
                            TransitionKind::Stopped,
                            ("inactive", "dead"),
                            at,
                            out,
                        );
                    }
                }
            }
        }
        Message::RestartScheduled => {
            log.n_restarts = entry
                .field("N_RESTARTS")
                .and_then(|n| n.trim().parse().ok());
            match log.run {
                Run::CleanExit(exit_at) => {
                    decide_clean_exit(log, entry, Sequel::RestartScheduled, exit_at, out)
                }
                Run::Crashed => {}
                // The failure itself was not in the input; the restart says there was one.
                _ => {
                    if let Verdict::Crash(reason) =
                        verdict::judge(Ending::RestartScheduled, None, false)
                    {
                        crash(log, entry, TransitionKind::Failed, &reason, at, out);
                    }
                }
            }
            log.restart_scheduled = true;
        }
        Message::Stopping => {
            if log.run == Run::Running && !log.stop_requested {
                log.stop_requested = true;
                push(
                    log,
                    entry,
                    TransitionKind::Stopping,
                    ("deactivating", "stop"),
                    at,
                    out,
                );
            }
        }
        Message::Stopped => {
            let stop_job = entry.field("JOB_TYPE").is_none_or(|job| job == "stop");
            if let Run::CleanExit(exit_at) = log.run {
                // systemd runs no stop or restart job on a unit that is already inactive: this
                // one was waiting for its automatic restart.
                decide_clean_exit(log, entry, Sequel::RestartScheduled, exit_at, out);
            }
            match log.run {
                Run::Running => {
                    log.run = Run::Stopped;
                    push(
                        log,
                        entry,
                        TransitionKind::Stopped,
                        ("inactive", "dead"),
                        at,
                        out,
                    );
                }
                // Stopped on purpose while down or waiting to restart: the loop is over.
                Run::Crashed | Run::Unknown if stop_job => {
                    log.run = Run::Stopped;
                    log.restart_scheduled = false;
                    push(
                        log,
                        entry,
                        TransitionKind::Stopped,
                        ("inactive", "dead"),
                        at,
                        out,
                    );
                }
                _ => {}
            }
        }
        Message::StartFailed => {
            let result = entry.field("JOB_RESULT");
            // A start job that failed with no run of it, after a crash: the start was refused
            // (the start limit), whoever asked for it: Restart=, a socket, a timer.
            let refused = log.run == Run::Crashed
                && !log.start_job_open
                && result.as_deref().is_none_or(|r| r == "failed");
            log.start_job_open = false;
            if verdict::gave_up(refused, None) {
                give_up(log, entry, None, out);
            } else if log.run == Run::Running {
                if let Verdict::Crash(reason) =
                    verdict::judge(Ending::Failed, result.as_deref(), false)
                {
                    crash(log, entry, TransitionKind::Failed, &reason, at, out);
                }
            }
        }
    }
}

/// A new run: a clean exit still waiting is judged a plain stop (the unit was inactive, as no
/// restart was scheduled), then the start is reported, as a restart if the last run crashed.
fn begin_run(log: &mut UnitLog, entry: &Entry<'_>, report: bool, out: &mut Vec<Transition>) {
    if let Run::CleanExit(exit_at) = log.run {
        decide_clean_exit(log, entry, Sequel::Other, exit_at, out);
    }
    log.invocation = entry.invocation.clone();
    let automatic = log.restart_scheduled;
    if !automatic {
        // systemd sets NRestarts back to zero on any start it did not schedule itself.
        log.n_restarts = None;
    }
    if report {
        if log.crash_pending {
            let mut t = transition(
                log,
                entry,
                TransitionKind::Restart,
                ("activating", "start"),
                entry.at,
            );
            t.restart_cause = Some(verdict::restart_cause(automatic));
            out.push(t);
        }
        push(
            log,
            entry,
            TransitionKind::Starting,
            ("activating", "start"),
            entry.at,
            out,
        );
    }
    log.run = Run::Running;
    log.start_job_open = entry.message == Message::Starting;
    log.up = false;
    log.stop_requested = false;
    log.exit = None;
    log.crash_pending = false;
    log.restart_scheduled = false;
    log.gave_up = false;
}

/// Records what a clean exit at `exit_at` was, now that `sequel` says.
fn decide_clean_exit(
    log: &mut UnitLog,
    entry: &Entry<'_>,
    sequel: Sequel,
    exit_at: Micros,
    out: &mut Vec<Transition>,
) {
    match verdict::decide(sequel) {
        Verdict::Crash(reason) => crash(log, entry, TransitionKind::Stopped, &reason, exit_at, out),
        Verdict::Stop | Verdict::AwaitSequel => {
            log.run = Run::Stopped;
            push(
                log,
                entry,
                TransitionKind::Stopped,
                ("inactive", "dead"),
                exit_at,
                out,
            );
        }
    }
}

/// The current run crashed at `at` (its main process's exit time when known).
fn crash(
    log: &mut UnitLog,
    entry: &Entry<'_>,
    kind: TransitionKind,
    reason: &str,
    at: Micros,
    out: &mut Vec<Transition>,
) {
    let at = log.exit.map_or(at, |(_, exited)| exited.min(at));
    let to = if kind == TransitionKind::Stopped {
        ("activating", "auto-restart")
    } else {
        ("failed", "failed")
    };
    let mut t = transition(log, entry, kind, to, at);
    t.result = Some(reason.to_owned());
    t.exit = log.exit.map(|(exit, _)| exit);
    t.crash = Some(reason.to_owned());
    log.run = Run::Crashed;
    log.crash_pending = true;
    out.push(t);
}

/// systemd will not restart the unit by itself any more.
fn give_up(
    log: &mut UnitLog,
    entry: &Entry<'_>,
    result: Option<String>,
    out: &mut Vec<Transition>,
) {
    if log.gave_up {
        return;
    }
    let mut t = transition(
        log,
        entry,
        TransitionKind::Failed,
        ("failed", "failed"),
        entry.at,
    );
    t.result = result;
    t.gave_up = true;
    log.gave_up = true;
    log.restart_scheduled = false;
    log.run = Run::Crashed;
    out.push(t);
}

fn push(
    log: &mut UnitLog,
    entry: &Entry<'_>,
    kind: TransitionKind,
    to: (&str, &str),
    at: Micros,
    out: &mut Vec<Transition>,
) {
    let t = transition(log, entry, kind, to, at);
    out.push(t);
}

/// A transition of the entry's unit to the state `to`; the journal carries no states, so these
/// are the states the message implies.
fn transition(
    log: &mut UnitLog,
    entry: &Entry<'_>,
    kind: TransitionKind,
    to: (&str, &str),
    at: Micros,
) -> Transition {
    let to = UnitState::new(to.0, to.1);
    let from = std::mem::replace(&mut log.state, to.clone());
    let mut t = Transition::new(entry.unit.clone(), SourceKind::Systemd, at, kind, from, to);
    t.invocation_id = log.invocation.clone();
    t.n_restarts = log.n_restarts;
    t
}

/// `EXIT_CODE` and `EXIT_STATUS` of a process exit. systemd writes the status as a number; a
/// signal name (`KILL`, `SIGSEGV`, `RTMIN+3`) is read too.
fn exit_cause(entry: &Entry<'_>) -> Option<ExitCause> {
    let code = match entry.field("EXIT_CODE")?.trim() {
        "exited" => ExitCode::Exited,
        "killed" => ExitCode::Killed,
        "dumped" => ExitCode::Dumped,
        _ => return None,
    };
    let status = entry.field("EXIT_STATUS")?;
    let status = status.trim();
    let status = status.parse().ok().or_else(|| {
        let bare = status.strip_prefix("SIG").unwrap_or(status);
        match bare.strip_prefix("RTMIN+") {
            // SIGRTMIN is 34 on Linux with glibc, as systemd numbers it.
            Some(n) => n.parse::<i32>().ok().and_then(|n| n.checked_add(34)),
            None => signal_number(bare),
        }
    })?;
    Some(ExitCause { code, status })
}

/// A field as text. journalctl writes a value as a string, a value that is not valid UTF-8 as an
/// array of bytes, and a field set more than once as an array of those (the first counts); a
/// value too large to print is `null`, which is as good as absent.
fn field(map: &Map<String, Value>, name: &str) -> Option<String> {
    text(map.get(name)?)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_u64) => {
            let bytes: Option<Vec<u8>> = items
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            Some(String::from_utf8_lossy(&bytes?).into_owned())
        }
        Value::Array(items) => items.first().and_then(text),
        _ => None,
    }
}

/// Reads one line into `buf` (without its newline), keeping at most `max` bytes. Returns
/// `Ok(None)` at the end of the input and `Ok(Some(false))` for a line that was longer than
/// `max`, whose rest was read and dropped.
pub fn read_line_capped(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<bool>> {
    buf.clear();
    let mut any = false;
    let mut fits = true;
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(any.then_some(fits));
        }
        any = true;
        let (chunk, used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if fits && buf.len() + chunk.len() <= max {
            buf.extend_from_slice(chunk);
        } else {
            fits = false;
            buf.clear();
        }
        input.consume(used);
        if done {
            return Ok(Some(fits));
        }
    }
}

/// Moves the detector's clock to `to` one deadline at a time, so each change is stamped with
/// the moment it was due rather than with the time of the next entry. Never moves back.
fn advance_to(
    detector: &mut Detector,
    clock: &mut Micros,
    to: Micros,
    mut each: impl FnMut(Update),
) {
    if to < *clock {
        return;
    }
    while let Some(due) = detector.next_deadline() {
        if due > to {
            break;
        }
        // An observation older than the clock can leave a deadline behind it; it is due now.
        let at = due.max(*clock);
        *clock = at;
        detector.advance(at).into_iter().for_each(&mut each);
    }
    *clock = to;
    detector.advance(to).into_iter().for_each(each);
}

// ------------------------------------------------------------------------------------------------
// Start-up history
// ------------------------------------------------------------------------------------------------

/// Why the journal could not be read at start-up. Never fatal: crashwatch starts without history.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// journalctl could not be started.
    #[error("cannot run journalctl: {0}")]
    Spawn(io::Error),
    /// journalctl's output could not be read.
    #[error("reading journalctl's output: {0}")]
    Read(io::Error),
    /// journalctl took longer than allowed and was killed.
    #[error("journalctl did not finish within {}s", .0.as_secs())]
    Timeout(Duration),
    /// journalctl failed.
    #[error("journalctl failed ({status}): {message}")]
    Failed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The first line it wrote to stderr.
        message: String,
    },
}

/// Reading the journal at start-up failed; crashwatch goes on without history.
struct JournalReadError<'a> {
    error: &'a JournalError,
}

impl JournalReadError<'_> {
    fn emit(self) {
        counter!("crashwatch_errors_total", "component" => "journal", "error_type" => "history_read_failed")
            .increment(1);
        tracing::warn!(error = %self.error, "Could not read history from the journal; crash-loop windows start empty.");
    }
}

/// What to read at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    /// A journal directory (`journalctl --directory`); `None` for the system journal.
    pub directory: Option<PathBuf>,
    /// The oldest entries wanted (µs since the epoch; journalctl is asked from the second before).
    pub since: Micros,
    /// Entries at or after this are ignored: the live snapshot covers them.
    pub until: Micros,
}

impl HistoryQuery {
    /// journalctl's arguments: JSON, newest first (so a size limit loses only the oldest), only
    /// PID 1's lifecycle messages, only the fields the parser reads. No unit name is passed: the
    /// filter is applied afterwards, so nothing from outside reaches the command line.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--output=json".to_owned(),
            "--no-pager".to_owned(),
            "--quiet".to_owned(),
            "--reverse".to_owned(),
            format!("--since=@{}", self.since / 1_000_000),
            format!("--output-fields={FIELDS}"),
        ];
        if let Some(directory) = &self.directory {
            args.push(format!("--directory={}", directory.display()));
        }
        // Matches on different fields are ANDed, on the same field ORed (journalctl(1)).
        args.push("_PID=1".to_owned());
        args.extend(
            LIFECYCLE_MESSAGE_IDS
                .iter()
                .map(|id| format!("MESSAGE_ID={id}")),
        );
        args
    }
}

/// History read from the journal, ready for [`seed`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// The transitions, in time order.
    pub transitions: Vec<Transition>,
    /// The live snapshot's time: history ends here.
    pub until: Micros,
}

/// What a bounded run of a command produced.
struct Bounded {
    stdout: Vec<u8>,
    truncated: bool,
}

/// Runs `command` (argv only, no shell) with stdin closed, reading at most `max_bytes` of its
/// output within `timeout`; a command that overruns either is killed. Only this child is ever
/// signalled, by its own handle.
fn run_bounded(
    mut command: Command,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Bounded, JournalError> {
    let deadline = Instant::now() + timeout;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(JournalError::Spawn)?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(JournalError::Spawn(io::Error::other(
            "no pipes to the child",
        )));
    };
    let (out_tx, out_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let limit = u64::try_from(max_bytes)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let result = stdout.take(limit).read_to_end(&mut buf);
        let _ = out_tx.send(result.map(|_| buf));
    });
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.take(4096).read_to_end(&mut buf);
        let _ = err_tx.send(buf);
    });
    let received = out_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    let mut stdout = match received {
        Ok(Ok(buf)) => buf,
        Ok(Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(JournalError::Read(e));
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(JournalError::Timeout(timeout));
        }
    };
    let truncated = stdout.len() > max_bytes;
    if truncated {
        stdout.truncate(max_bytes);
        let _ = child.kill();
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let Some(status) = status else {
        return Err(JournalError::Timeout(timeout));
    };
    if !status.success() && !truncated {
        let stderr = err_rx
            .recv_timeout(Duration::from_millis(100))
            .unwrap_or_default();
        let message = String::from_utf8_lossy(&stderr)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no message")
            .to_owned();
        return Err(JournalError::Failed { status, message });
    }
    Ok(Bounded { stdout, truncated })
}

/// Runs journalctl for `query` and parses what it prints, oldest first. Blocking; bounded by
/// [`HISTORY_TIMEOUT`] and [`HISTORY_MAX_BYTES`].
pub fn read_history(query: &HistoryQuery) -> Result<History, JournalError> {
    let mut command = Command::new("journalctl");
    command.args(query.args());
    let output = run_bounded(command, HISTORY_TIMEOUT, HISTORY_MAX_BYTES)?;
    if output.truncated {
        tracing::warn!(
            bytes = HISTORY_MAX_BYTES,
            "The journal holds more history than crashwatch reads; the oldest entries are left out."
        );
    }
    let mut lines: Vec<&[u8]> = output.stdout.split(|&b| b == b'\n').collect();
    if output.truncated {
        // Cut in the middle of an entry.
        lines.pop();
    }
    let mut parser = Parser::until(query.until);
    let mut transitions = Vec::new();
    for line in lines.into_iter().rev() {
        parser.line(line, &mut transitions);
    }
    parser.finish();
    if parser.malformed() > 0 {
        tracing::warn!(
            lines = parser.malformed(),
            "Skipped journal lines that were not JSON entries."
        );
    }
    // A clean exit is judged after later messages; put it back at its own time.
    transitions.sort_by_key(|t| t.timestamp);
    Ok(History {
        transitions,
        until: query.until,
    })
}

/// The start-up history for `config`, or none: when `[history] journal` is off, when there is
/// no journal (no `journal_directory` set and journald not running here), or when reading it
/// fails (counted and logged). `snapshot_at` is taken before the live snapshot: entries at or
/// after it are left to the live source.
pub async fn history(config: &Config, snapshot_at: Micros) -> History {
    let empty = History {
        transitions: Vec::new(),
        until: snapshot_at,
    };
    if !config.history.journal {
        return empty;
    }
    let directory = config.history.journal_directory.clone();
    // journald creates /run/systemd/journal; without it the system journal holds nothing recent.
    if directory.is_none() && !std::path::Path::new("/run/systemd/journal").exists() {
        tracing::info!("journald is not running; crash-loop windows start empty.");
        return empty;
    }
    // Twice the longest window: the crash before the oldest restart in the window is needed to
    // count that restart, and a loop that began before the window may still be open.
    let longest = config
        .overrides
        .iter()
        .map(|(_, policy)| policy.window)
        .chain([config.policy.window])
        .max()
        .unwrap_or_default();
    let span = u64::try_from(longest.saturating_mul(2).as_micros()).unwrap_or(u64::MAX);
    let query = HistoryQuery {
        directory,
        since: snapshot_at.saturating_sub(span),
        until: snapshot_at,
    };
    let read = tokio::task::spawn_blocking(move || read_history(&query)).await;
    let mut history = match read {
        Ok(Ok(history)) => history,
        Ok(Err(error)) => {
            JournalReadError { error: &error }.emit();
            return empty;
        }
        Err(join) => {
            let error = JournalError::Read(io::Error::other(join.to_string()));
            JournalReadError { error: &error }.emit();
            return empty;
        }
    };
    history
        .transitions
        .retain(|t| config.filter.allows(&t.unit));
    tracing::info!(
        transitions = history.transitions.len(),
        "Read the recent history of the watched units from the journal."
    );
    history
}

/// Rebuilds the detector's windows from `history` before the live source is heard, and shows
/// them in the `crashlooping` and `restarts_in_window` gauges. Nothing is counted: the `*_total`
/// counters only count what is heard live. Units are folded and capped as the detector task
/// does. Returns how many units hold restarts or a loop from history.
pub fn seed(
    detector: &mut Detector,
    table: &mut UnitTable,
    history: &History,
    limits: Limits,
) -> usize {
    let mut units: HashMap<String, SourceKind> = HashMap::new();
    let mut clock = 0;
    for t in &history.transitions {
        let folded = limits
            .fold_instances
            .then(|| engine::fold_instance(&t.unit))
            .flatten();
        let unit = folded.unwrap_or_else(|| t.unit.clone());
        if !units.contains_key(&unit) {
            if units.len() >= limits.max_units {
                continue;
            }
            units.insert(unit.clone(), t.source);
        }
        advance_to(detector, &mut clock, t.timestamp, drop);
        if let Some(observation) = engine::observation(t) {
            detector.observe(&unit, observation, t.timestamp);
        }
    }
    advance_to(detector, &mut clock, history.until, drop);
    let mut seeded: Vec<(&String, &SourceKind)> = units
        .iter()
        .filter(|(unit, _)| detector.restarts_in_window(unit) > 0 || detector.is_looping(unit))
        .collect();
    seeded.sort_by(|a, b| a.0.cmp(b.0));
    for (unit, &source) in &seeded {
        table.register(unit, source, detector.policy_for(unit));
        engine::show_window(detector, table, unit);
        if detector.is_looping(unit) {
            tracing::info!(
                unit = unit.as_str(),
                restarts_in_window = detector.restarts_in_window(unit),
                "Crash loop in progress, from the journal."
            );
        }
    }
    seeded.len()
}

// ------------------------------------------------------------------------------------------------
// Replay
// ------------------------------------------------------------------------------------------------

/// A crash loop found by [`replay`].
#[derive(Clone, Debug, PartialEq)]
pub struct FoundLoop {
    /// The unit.
    pub unit: String,
    /// When it was flagged.
    pub started: Micros,
    /// When and how it ended; `None` when still open at the end of the input.
    pub ended: Option<(Micros, LoopOutcome)>,
    /// Restarts within the window when it was flagged.
    pub restarts_in_window: u32,
    /// The most restarts within the window while it lasted.
    pub peak: u32,
}

/// What [`replay`] read and found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayReport {
    /// The loops, in the order they started.
    pub loops: Vec<FoundLoop>,
    /// Journal entries read.
    pub entries: u64,
    /// Lifecycle messages among them.
    pub lifecycle_messages: u64,
    /// Lines skipped as malformed.
    pub malformed: u64,
}

/// Runs the detector over a `journalctl -o json` export, with `config`'s unit filter, threshold,
/// window and overrides, moving its clock by the journal's timestamps. Calls `on_event` for each
/// loop start and end as it is found, and returns every loop. Fails only when `input` cannot be
/// read; malformed lines are counted.
pub fn replay(
    mut input: impl BufRead,
    config: &Config,
    mut on_event: impl FnMut(&LoopEvent),
) -> io::Result<ReplayReport> {
    let mut parser = Parser::new();
    let mut detector = Detector::new(config.policy, config.overrides.clone());
    let mut clock = 0;
    let mut found = Found::default();
    let mut line = Vec::new();
    let mut transitions = Vec::new();
    while let Some(fits) = read_line_capped(&mut input, &mut line, MAX_LINE)? {
        if !fits {
            parser.skip_malformed();
            continue;
        }
        let Some(at) = parser.line(&line, &mut transitions) else {
            continue;
        };
        advance_to(&mut detector, &mut clock, at, |u| {
            found.update(u, &mut on_event)
        });
        for t in transitions.drain(..) {
            if !config.filter.allows(&t.unit) {
                continue;
            }
            let Some(observation) = engine::observation(&t) else {
                continue;
            };
            if let Some(update) = detector.observe(&t.unit, observation, t.timestamp) {
                found.update(update, &mut on_event);
            }
        }
    }
    parser.finish();
    Ok(ReplayReport {
        loops: found.loops,
        entries: parser.entries(),
        lifecycle_messages: parser.lifecycle_messages(),
        malformed: parser.malformed(),
    })
}

/// The loops of a replay, open ones by unit.
#[derive(Default)]
struct Found {
    loops: Vec<FoundLoop>,
    open: HashMap<String, usize>,
}

impl Found {
    fn update(&mut self, update: Update, on_event: &mut impl FnMut(&LoopEvent)) {
        let open = self.open.get(&update.unit).copied();
        match (update.loop_change, open) {
            // With a threshold of one a loop can end and start again in one step; one row.
            (Some(LoopChange::Started), None) => {
                self.open.insert(update.unit.clone(), self.loops.len());
                self.loops.push(FoundLoop {
                    unit: update.unit.clone(),
                    started: update.at,
                    ended: None,
                    restarts_in_window: update.restarts_in_window,
                    peak: update.restarts_in_window,
                });
                on_event(&loop_event(&update, None));
            }
            (Some(LoopChange::Ended(outcome)), Some(i)) => {
                self.open.remove(&update.unit);
                if let Some(found) = self.loops.get_mut(i) {
                    found.ended = Some((update.at, outcome));
                }
                on_event(&loop_event(&update, Some(outcome)));
            }
            (_, Some(i)) => {
                if let Some(found) = self.loops.get_mut(i) {
                    found.peak = found.peak.max(update.restarts_in_window);
                }
            }
            _ => {}
        }
    }
}

fn loop_event(update: &Update, ended: Option<LoopOutcome>) -> LoopEvent {
    LoopEvent {
        unit: update.unit.clone(),
        source: SourceKind::Systemd,
        timestamp: update.at,
        ended,
        restarts_in_window: update.restarts_in_window,
        threshold: update.policy.threshold,
        window_seconds: update.policy.window.as_secs_f64(),
    }
}

/// The loops as a table, one row each: unit, when flagged and when ended (UTC), how it ended
/// (`open` when still looping at the end of the input), restarts within the window when
/// flagged, and the most within the window while it lasted.
pub fn loop_table(loops: &[FoundLoop]) -> String {
    let header = ["UNIT", "STARTED", "ENDED", "OUTCOME", "RESTARTS", "PEAK"];
    let rows: Vec<[String; 6]> = loops
        .iter()
        .map(|l| {
            let (ended, outcome) = match l.ended {
                Some((at, outcome)) => (format_timestamp(at), outcome.as_str().to_owned()),
                None => ("-".to_owned(), "open".to_owned()),
            };
            [
                printable(&l.unit),
                format_timestamp(l.started),
                ended,
                outcome,
                l.restarts_in_window.to_string(),
                l.peak.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_owned);
    for cells in std::iter::once(&header).chain(&rows) {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
            // Counts align right, names and times left.
            if i >= 4 {
                text.push_str(&pad);
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&pad);
            }
            text.push_str("  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_file, Overrides};
    use crate::detect::Policy;
    use crate::event::RestartCause;

    const SECOND: Micros = 1_000_000;
    /// 2026-11-21T06:50:52Z, when the sample journal below was written.
    const T0: Micros = 1_795_243_852_000_000;

    /// One journal line as `journalctl -o json` prints it for a message of PID 1 about `unit`,
    /// with the fields journald adds.
    fn line(at: Micros, id: &str, unit: &str, invocation: &str, fields: &[(&str, &str)]) -> String {
        let mut entry = serde_json::json!({
            "__CURSOR": format!("s=b7c9ae87c618440c9562c2b133eb5204;i={at:x}"),
            "__REALTIME_TIMESTAMP": (at + 40).to_string(),
            "__MONOTONIC_TIMESTAMP": "4139625487",
            "_BOOT_ID": "7410cf931b7a4a77a98a85206a4167e6",
            "_SOURCE_REALTIME_TIMESTAMP": at.to_string(),
            "_PID": "1",
            "_UID": "0",
            "_COMM": "systemd",
            "PRIORITY": "6",
            "SYSLOG_IDENTIFIER": "systemd",
            "MESSAGE_ID": id,
            "UNIT": unit,
            "INVOCATION_ID": invocation,
            "MESSAGE": "(text as systemd writes it)",
        });
        for (name, value) in fields {
            entry[*name] = Value::from(*value);
        }
        entry.to_string()
    }

    /// "Started …": a start job of `unit` done, as systemd writes it.
    fn started(at: Micros, unit: &str, invocation: &str) -> String {
        line(
            at,
            UNIT_STARTED,
            unit,
            invocation,
            &[("JOB_TYPE", "start"), ("JOB_RESULT", "done")],
        )
    }

    /// The journal of one run of `unit` that fails the way `/bin/false` does, with
    /// `Restart=always`: started, main process exited 1, failed, restart scheduled, the restart
    /// job's stop half. As systemd 252 writes it (see the sandbox journal in tests/).
    fn failing_run(unit: &str, start: Micros, invocation: &str, n: u32) -> Vec<String> {
        vec![
            started(start, unit, invocation),
            line(
                start + 2_000,
                UNIT_PROCESS_EXITED,
                unit,
                invocation,
                &[
                    ("COMMAND", "ExecStart"),
                    ("EXIT_CODE", "exited"),
                    ("EXIT_STATUS", "1"),
                ],
            ),
            line(
                start + 2_200,
                UNIT_FAILED,
                unit,
                invocation,
                &[("UNIT_RESULT", "exit-code")],
            ),
            line(
                start + 220_000,
                UNIT_RESTART_SCHEDULED,
                unit,
                invocation,
                &[("N_RESTARTS", &n.to_string())],
            ),
            line(
                start + 220_100,
                UNIT_STOPPED,
                unit,
                invocation,
                &[("JOB_TYPE", "restart"), ("JOB_RESULT", "done")],
            ),
        ]
    }

    fn parse(lines: &[String]) -> (Vec<Transition>, Parser) {
        let mut parser = Parser::new();
        let mut out = Vec::new();
        for l in lines {
            parser.line(l.as_bytes(), &mut out);
        }
        parser.finish();
        (out, parser)
    }

    fn kinds(transitions: &[Transition]) -> Vec<(TransitionKind, bool)> {
        transitions
            .iter()
            .map(|t| (t.kind, t.crash.is_some()))
            .collect()
    }

    fn config(text: &str) -> Config {
        let file = parse_file(text, std::path::Path::new("test.toml")).expect("valid TOML");
        Config::resolve(file, Overrides::default(), "test.toml").expect("valid config")
    }

    fn replay_lines(lines: &[String], config: &Config) -> (ReplayReport, Vec<LoopEvent>) {
        let input = lines.join("\n");
        let mut events = Vec::new();
        let report = replay(input.as_bytes(), config, |e| events.push(e.clone())).expect("replay");
        (report, events)
    }

    #[test]
    fn a_restart_always_loop_is_crashes_and_automatic_restarts() {
        let mut lines = Vec::new();
        for run in 0..4u32 {
            let start = T0 + u64::from(run) * 250_000;
            lines.extend(failing_run(
                "crashy.service",
                start,
                &format!("inv{run}"),
                run + 1,
            ));
        }
        // The operator stops it while it waits for the fifth start.
        lines.push(line(
            T0 + 1_100_000,
            UNIT_STOPPED,
            "crashy.service",
            "inv3",
            &[("JOB_TYPE", "stop"), ("JOB_RESULT", "done")],
        ));
        let (out, parser) = parse(&lines);
        assert_eq!(parser.malformed(), 0);
        assert_eq!(parser.lifecycle_messages(), 21);

        use TransitionKind::*;
        let mut expected = vec![(Starting, false), (Started, false), (Failed, true)];
        for _ in 1..4 {
            expected.extend([
                (Restart, false),
                (Starting, false),
                (Started, false),
                (Failed, true),
            ]);
        }
        expected.push((Stopped, false));
        assert_eq!(kinds(&out), expected);

        let crash = &out[2];
        assert_eq!(crash.crash.as_deref(), Some("exit-code"));
        assert_eq!(crash.result.as_deref(), Some("exit-code"));
        assert_eq!(
            crash.exit,
            Some(ExitCause {
                code: ExitCode::Exited,
                status: 1
            })
        );
        assert_eq!(
            crash.timestamp,
            T0 + 2_000,
            "stamped with the main process's exit"
        );
        assert_eq!(crash.invocation_id.as_deref(), Some("inv0"));
        let restarts: Vec<&Transition> = out.iter().filter(|t| t.kind == Restart).collect();
        assert_eq!(restarts.len(), 3);
        for (i, restart) in restarts.iter().enumerate() {
            assert_eq!(restart.restart_cause, Some(RestartCause::Automatic));
            assert_eq!(restart.n_restarts, Some(i as u32 + 1));
            assert_eq!(
                restart.invocation_id.as_deref(),
                Some(format!("inv{}", i + 1).as_str())
            );
        }
        assert!(out
            .iter()
            .all(|t| t.unit == "crashy.service" && t.source == SourceKind::Systemd));

        // The detector flags the loop at the third restart; the stop ends it.
        let (report, events) = replay_lines(&lines, &config(""));
        assert_eq!(report.loops.len(), 1, "{report:?}");
        let found = &report.loops[0];
        assert_eq!(found.unit, "crashy.service");
        assert_eq!(found.started, T0 + 750_000);
        assert_eq!(found.ended, Some((T0 + 1_100_000, LoopOutcome::Stopped)));
        assert_eq!((found.restarts_in_window, found.peak), (3, 3));
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].ended, None);
        assert_eq!(events[0].threshold, 3);
        assert_eq!(events[1].ended, Some(LoopOutcome::Stopped));
    }

    #[test]
    fn an_outside_driven_loop_counts_restarts_whoever_started_them() {
        // Restart=no; a keepalive script starts it again after every failure. systemd schedules
        // nothing, so NRestarts stays 0, but each start after a crash is a restart.
        let unit = "keepalive.service";
        let mut lines = Vec::new();
        for run in 0..4u64 {
            let start = T0 + run * 30 * SECOND;
            let inv = format!("run{run}");
            lines.push(line(
                start,
                UNIT_STARTING,
                unit,
                &inv,
                &[("JOB_TYPE", "start")],
            ));
            lines.push(started(start + 10, unit, &inv));
            lines.push(line(
                start + 5 * SECOND,
                UNIT_PROCESS_EXITED,
                unit,
                &inv,
                &[
                    ("COMMAND", "ExecStart"),
                    ("EXIT_CODE", "killed"),
                    ("EXIT_STATUS", "SEGV"),
                ],
            ));
            lines.push(line(
                start + 5 * SECOND + 100,
                UNIT_FAILED,
                unit,
                &inv,
                &[("UNIT_RESULT", "signal")],
            ));
        }
        let (out, _) = parse(&lines);
        let restarts: Vec<&Transition> = out
            .iter()
            .filter(|t| t.kind == TransitionKind::Restart)
            .collect();
        assert_eq!(restarts.len(), 3);
        assert!(restarts
            .iter()
            .all(|t| t.restart_cause == Some(RestartCause::External)));
        assert!(restarts.iter().all(|t| t.n_restarts.is_none()));
        let crashes: Vec<&Transition> = out.iter().filter(|t| t.crash.is_some()).collect();
        assert_eq!(crashes.len(), 4);
        assert_eq!(crashes[0].crash.as_deref(), Some("signal"));
        assert_eq!(
            crashes[0].exit,
            Some(ExitCause {
                code: ExitCode::Killed,
                status: 11
            })
        );
        // Each restart comes before its run's Starting, as the live tracker reports them.
        let order: Vec<TransitionKind> = out.iter().map(|t| t.kind).take(7).collect();
        use TransitionKind::*;
        assert_eq!(
            order,
            [Starting, Started, Failed, Restart, Starting, Started, Failed]
        );

        let (report, _) = replay_lines(&lines, &config(""));
        assert_eq!(report.loops.len(), 1);
        assert_eq!(report.loops[0].started, T0 + 90 * SECOND);
        // Down since its last crash, then nothing for a window: still open at the end of input.
        assert_eq!(report.loops[0].ended, None);
    }

    #[test]
    fn a_clean_restart_is_no_crash_and_no_restart() {
        // `systemctl restart steady.service`, as systemd 252 writes it.
        let unit = "steady.service";
        let lines = vec![
            started(T0, unit, "a"),
            line(
                T0 + SECOND,
                UNIT_STOPPING,
                unit,
                "a",
                &[("JOB_TYPE", "stop")],
            ),
            line(T0 + SECOND + 500, UNIT_SUCCEEDED, unit, "a", &[]),
            line(
                T0 + SECOND + 700,
                UNIT_STOPPED,
                unit,
                "a",
                &[("JOB_TYPE", "restart"), ("JOB_RESULT", "done")],
            ),
            started(T0 + SECOND + 1_800, unit, "b"),
        ];
        let mut all = Vec::new();
        for i in 0..5 {
            // Restarted by hand five times in a row: never a loop.
            all.extend(lines.iter().map(|l| {
                l.replace("\"a\"", &format!("\"a{i}\""))
                    .replace("\"b\"", &format!("\"b{i}\""))
            }));
        }
        let (out, _) = parse(&lines);
        use TransitionKind::*;
        assert_eq!(
            kinds(&out),
            [
                (Starting, false),
                (Started, false),
                (Stopping, false),
                (Stopped, false),
                (Starting, false),
                (Started, false)
            ]
        );
        let (report, _) = replay_lines(&all, &config("[detect]\nthreshold = 1\n"));
        assert!(report.loops.is_empty(), "{report:?}");
    }

    #[test]
    fn a_clean_exit_under_restart_always_is_a_crash() {
        let unit = "clean.service";
        let lines = vec![
            started(T0, unit, "a"),
            line(T0 + 2_000, UNIT_SUCCEEDED, unit, "a", &[]),
            line(
                T0 + 30 * SECOND,
                UNIT_RESTART_SCHEDULED,
                unit,
                "a",
                &[("N_RESTARTS", "1")],
            ),
            line(
                T0 + 30 * SECOND + 100,
                UNIT_STOPPED,
                unit,
                "a",
                &[("JOB_TYPE", "restart"), ("JOB_RESULT", "done")],
            ),
            started(T0 + 30 * SECOND + 900, unit, "b"),
            line(T0 + 31 * SECOND, UNIT_SUCCEEDED, unit, "b", &[]),
            // Stopped by hand while waiting for the next restart: no restart is scheduled,
            // but the stop job says it was waiting for one.
            line(
                T0 + 40 * SECOND,
                UNIT_STOPPED,
                unit,
                "b",
                &[("JOB_TYPE", "stop"), ("JOB_RESULT", "done")],
            ),
        ];
        let (out, _) = parse(&lines);
        use TransitionKind::*;
        assert_eq!(
            kinds(&out),
            [
                (Starting, false),
                (Started, false),
                (Stopped, true),
                (Restart, false),
                (Starting, false),
                (Started, false),
                (Stopped, true),
                (Stopped, false)
            ]
        );
        assert_eq!(out[2].crash.as_deref(), Some("success"));
        assert_eq!(
            out[2].timestamp,
            T0 + 2_000,
            "judged later, stamped at the exit"
        );
        assert_eq!(out[6].timestamp, T0 + 31 * SECOND);
        assert_eq!(out[3].restart_cause, Some(RestartCause::Automatic));
    }

    #[test]
    fn a_clean_exit_with_nothing_after_it_is_a_plain_stop_or_left_out() {
        let unit = "oneshot.service";
        // A timer's oneshot: starting, done, "Finished" (the same MESSAGE_ID as Started).
        let mut lines = Vec::new();
        for (i, start) in [T0, T0 + 60 * SECOND].into_iter().enumerate() {
            let inv = format!("t{i}");
            lines.push(line(
                start,
                UNIT_STARTING,
                unit,
                &inv,
                &[("JOB_TYPE", "start")],
            ));
            lines.push(line(start + 300, UNIT_SUCCEEDED, unit, &inv, &[]));
            lines.push(started(start + 400, unit, &inv));
        }
        let (out, _) = parse(&lines);
        use TransitionKind::*;
        // The second run judges the first exit a stop; the second exit is never judged.
        assert_eq!(
            kinds(&out),
            [(Starting, false), (Stopped, false), (Starting, false)]
        );
        assert_eq!(out[1].timestamp, T0 + 300);
        assert!(out.iter().all(|t| t.kind != Restart));
    }

    #[test]
    fn the_start_limit_is_systemd_giving_up() {
        let unit = "limited.service";
        let mut lines = Vec::new();
        for run in 0..4u32 {
            lines.extend(failing_run(
                unit,
                T0 + u64::from(run) * 250_000,
                &format!("l{run}"),
                run + 1,
            ));
        }
        // After the fourth scheduled restart systemd refuses: the same run fails again.
        lines.push(line(
            T0 + 1_050_000,
            UNIT_FAILED,
            unit,
            "l3",
            &[("UNIT_RESULT", "exit-code")],
        ));
        lines.push(line(
            T0 + 1_050_100,
            UNIT_START_FAILED,
            unit,
            "l3",
            &[("JOB_TYPE", "start"), ("JOB_RESULT", "failed")],
        ));
        let (out, _) = parse(&lines);
        let last = out.last().expect("transitions");
        assert_eq!(last.kind, TransitionKind::Failed);
        assert!(last.gave_up && last.crash.is_none());
        assert_eq!(out.iter().filter(|t| t.gave_up).count(), 1, "once");
        assert_eq!(out.iter().filter(|t| t.crash.is_some()).count(), 4);

        let (report, _) = replay_lines(&lines, &config(""));
        assert_eq!(report.loops.len(), 1);
        assert_eq!(
            report.loops[0].ended,
            Some((T0 + 1_050_000, LoopOutcome::GaveUp))
        );
    }

    #[test]
    fn a_start_refused_after_a_crash_gives_up_but_a_run_that_fails_its_start_does_not() {
        // A socket starts the unit again after each crash (no Restart=, no scheduled restart);
        // the start limit then refuses a start: "Failed to start" with no run of its own.
        let unit = "sock.service";
        let crash = |at: Micros, invocation: &str| {
            vec![
                line(
                    at,
                    UNIT_STARTING,
                    unit,
                    invocation,
                    &[("JOB_TYPE", "start")],
                ),
                started(at + 1_000, unit, invocation),
                line(
                    at + 2_000,
                    UNIT_FAILED,
                    unit,
                    invocation,
                    &[("UNIT_RESULT", "exit-code")],
                ),
            ]
        };
        let mut lines = [crash(T0, "s0"), crash(T0 + 10_000, "s1")].concat();
        lines.push(line(
            T0 + 20_000,
            UNIT_START_FAILED,
            unit,
            "s1",
            &[("JOB_TYPE", "start"), ("JOB_RESULT", "failed")],
        ));
        let (out, _) = parse(&lines);
        let last = out.last().expect("transitions");
        assert!(last.gave_up && last.crash.is_none(), "{last:#?}");

        // ExecStartPre fails: the start job's own run fails, then the job is reported failed.
        let mut lines = vec![line(
            T0,
            UNIT_STARTING,
            unit,
            "p0",
            &[("JOB_TYPE", "start")],
        )];
        lines.push(line(
            T0 + 2_000,
            UNIT_FAILED,
            unit,
            "p0",
            &[("UNIT_RESULT", "exit-code")],
        ));
        lines.push(line(
            T0 + 2_100,
            UNIT_START_FAILED,
            unit,
            "p0",
            &[("JOB_TYPE", "start"), ("JOB_RESULT", "failed")],
        ));
        let (out, _) = parse(&lines);
        assert_eq!(out.iter().filter(|t| t.crash.is_some()).count(), 1);
        assert!(out.iter().all(|t| !t.gave_up), "{out:#?}");
    }

    #[test]
    fn a_failure_after_a_stop_began_is_a_stop() {
        let unit = "slowstop.service";
        let lines = vec![
            started(T0, unit, "a"),
            line(
                T0 + SECOND,
                UNIT_STOPPING,
                unit,
                "a",
                &[("JOB_TYPE", "stop")],
            ),
            line(
                T0 + 2 * SECOND,
                UNIT_PROCESS_EXITED,
                unit,
                "a",
                &[("EXIT_CODE", "exited"), ("EXIT_STATUS", "143")],
            ),
            line(
                T0 + 2 * SECOND + 5,
                UNIT_FAILED,
                unit,
                "a",
                &[("UNIT_RESULT", "exit-code")],
            ),
            line(
                T0 + 2 * SECOND + 9,
                UNIT_STOPPED,
                unit,
                "a",
                &[("JOB_TYPE", "stop"), ("JOB_RESULT", "done")],
            ),
            started(T0 + 3 * SECOND, unit, "b"),
        ];
        let (out, _) = parse(&lines);
        assert!(
            out.iter()
                .all(|t| t.crash.is_none() && t.kind != TransitionKind::Restart),
            "{out:?}"
        );
    }

    #[test]
    fn malformed_lines_are_counted_and_skipped_never_fatal() {
        let good = failing_run("crashy.service", T0, "x", 1);
        let long = format!("{{\"MESSAGE\":\"{}\"}}", "a".repeat(MAX_LINE));
        let input = [
            "not json at all",
            "[1, 2, 3]",
            "{\"MESSAGE_ID\": \"39f53479d3a045ac8e11786248231fbf\", \"UNIT\": \"x.service\"}",
            "{\"__REALTIME_TIMESTAMP\": \"soon\"}",
            "{\"__REALTIME_TIMESTAMP\": ",
            "",
            "   ",
            "\u{0}\u{1}\u{ff}",
            &long,
            &good.join("\n"),
            "{\"__REALTIME_TIMESTAMP\": \"1\", \"MESSAGE_ID\": 7, \"UNIT\": null}",
        ]
        .join("\n");
        let mut events = Vec::new();
        let report =
            replay(input.as_bytes(), &config(""), |e| events.push(e.clone())).expect("replay");
        assert_eq!(report.malformed, 7, "blank lines are not malformed");
        assert_eq!(report.lifecycle_messages, 5);
        assert_eq!(report.entries, 6);

        // Binary fields and fields set twice, as journalctl prints them.
        let mut parser = Parser::new();
        let mut out = Vec::new();
        let odd = serde_json::json!({
            "__REALTIME_TIMESTAMP": T0.to_string(),
            "_PID": ["1"],
            "MESSAGE_ID": UNIT_STARTED.bytes().collect::<Vec<u8>>(),
            "UNIT": ["weird\u{1b}.service", "second.service"],
            "INVOCATION_ID": [[0x61, 0xff]],
        });
        assert_eq!(parser.line(odd.to_string().as_bytes(), &mut out), Some(T0));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].unit, "weird\u{1b}.service");
        assert_eq!(out[0].invocation_id.as_deref(), Some("a\u{fffd}"));
        assert_eq!(parser.malformed(), 0);
    }

    #[test]
    fn unit_from_a_process_other_than_pid_1_is_not_believed() {
        let forged = line(
            T0,
            UNIT_FAILED,
            "nginx.service",
            "f",
            &[("_PID", "4242"), ("UNIT_RESULT", "exit-code")],
        );
        let (out, parser) = parse(&[forged]);
        assert!(out.is_empty());
        assert_eq!(parser.lifecycle_messages(), 0);
        assert_eq!(parser.entries(), 1);

        // A user manager names its units in USER_UNIT=, from its own pid.
        let mut user: Value = serde_json::from_str(&line(
            T0,
            UNIT_STARTED,
            "",
            "u",
            &[("_PID", "1234"), ("_UID", "1000")],
        ))
        .expect("JSON");
        if let Some(map) = user.as_object_mut() {
            map.remove("UNIT");
            map.insert("USER_UNIT".to_owned(), Value::from("pipewire.service"));
        }
        let (out, _) = parse(&[user.to_string()]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].unit, "pipewire.service");
    }

    #[test]
    fn entries_at_or_after_the_cutoff_are_ignored() {
        let lines = failing_run("crashy.service", T0, "x", 1);
        let mut parser = Parser::until(T0 + 2_200);
        let mut out = Vec::new();
        for l in &lines {
            parser.line(l.as_bytes(), &mut out);
        }
        assert_eq!(parser.entries(), 2);
        assert!(
            out.iter().all(|t| t.crash.is_none()),
            "the failure is the snapshot's"
        );
    }

    #[test]
    fn seeding_rebuilds_the_window_and_counts_nothing() {
        let mut lines = Vec::new();
        for run in 0..5u32 {
            lines.extend(failing_run(
                "crashy.service",
                T0 + u64::from(run) * SECOND,
                &format!("i{run}"),
                run + 1,
            ));
        }
        // A unit restarted once long ago, and one restarted by hand once, recently.
        lines.splice(
            0..0,
            failing_run("old.service", T0 - 3_600 * SECOND, "o1", 1),
        );
        let (mut transitions, _) = parse(&lines);
        transitions.sort_by_key(|t| t.timestamp);
        let history = History {
            transitions,
            until: T0 + 6 * SECOND,
        };
        let mut detector = Detector::new(Policy::default(), Vec::new());
        let limits = Limits {
            max_units: 100,
            fold_instances: false,
            unloaded_retention: std::time::Duration::from_secs(60),
        };
        let mut table = UnitTable::new();
        let seeded = seed(&mut detector, &mut table, &history, limits);
        assert_eq!(seeded, 1, "only crashy.service holds anything now");
        assert!(detector.is_looping("crashy.service"));
        assert_eq!(detector.restarts_in_window("crashy.service"), 4);
        assert!(!detector.is_looping("old.service"));

        let crashy = table.get("crashy.service").expect("registered");
        assert!(crashy.crashlooping);
        assert_eq!(crashy.restarts_in_window, 4);
        // Nothing counted: the counters count only what is heard live.
        assert_eq!(
            (crashy.restarts, crashy.crashloops, crashy.starts),
            (0, 0, 0)
        );
        assert!(!table.contains("old.service"));

        // Live again: the next restart is the fifth in the window, not a new loop.
        let update = detector
            .observe(
                "crashy.service",
                crate::detect::Observation::Restart,
                T0 + 7 * SECOND,
            )
            .expect("count changed");
        assert_eq!(update.restarts_in_window, 5);
        assert_eq!(update.loop_change, None);
    }

    #[test]
    fn replay_honours_the_unit_filter_and_overrides() {
        let mut lines = Vec::new();
        for run in 0..4u32 {
            let start = T0 + u64::from(run) * SECOND;
            lines.extend(failing_run("a.service", start, &format!("a{run}"), run + 1));
            lines.extend(failing_run(
                "b.service",
                start + 1_000,
                &format!("b{run}"),
                run + 1,
            ));
        }
        let (report, _) = replay_lines(
            &lines,
            &config("[source.systemd]\nunit_exclude = [\"b*\"]\n"),
        );
        assert_eq!(
            report
                .loops
                .iter()
                .map(|l| l.unit.as_str())
                .collect::<Vec<_>>(),
            ["a.service"]
        );
        let (report, _) = replay_lines(
            &lines,
            &config("[[detect.override]]\nunits = \"a*\"\nthreshold = 10\n"),
        );
        assert_eq!(
            report
                .loops
                .iter()
                .map(|l| l.unit.as_str())
                .collect::<Vec<_>>(),
            ["b.service"]
        );
    }

    #[test]
    fn a_loop_that_recovers_ends_when_it_was_due() {
        let mut lines = Vec::new();
        for run in 0..4u32 {
            lines.extend(failing_run(
                "flaky.service",
                T0 + u64::from(run) * SECOND,
                &format!("f{run}"),
                run + 1,
            ));
        }
        // The fifth run stays up; much later another unit logs something.
        lines.push(started(T0 + 4 * SECOND, "flaky.service", "f4"));
        lines.push(started(T0 + 3_600 * SECOND, "other.service", "o"));
        let (report, _) = replay_lines(&lines, &config("[detect]\nwindow = \"1m\"\n"));
        assert_eq!(report.loops.len(), 1);
        let found = &report.loops[0];
        assert_eq!(
            found.ended,
            Some((T0 + 4 * SECOND + 60 * SECOND, LoopOutcome::Recovered))
        );
        assert_eq!(found.peak, 4);

        let table = loop_table(&report.loops);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].starts_with("UNIT           STARTED"), "{table}");
        assert_eq!(
            rows[1],
            "flaky.service  2026-11-21T06:50:55.000Z  2026-11-21T06:51:56.000Z  recovered         3     4"
        );
    }

    #[test]
    fn control_characters_are_made_printable() {
        assert_eq!(printable("a\u{1b}[31mb"), "a\\u{1b}[31mb");
    }

    #[test]
    fn long_lines_are_dropped_whole() {
        let input = format!("short\n{}\nafter\nlast", "x".repeat(100));
        let mut reader = io::BufReader::with_capacity(16, input.as_bytes());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(fits) = read_line_capped(&mut reader, &mut buf, 50).expect("read") {
            got.push((fits, String::from_utf8_lossy(&buf).into_owned()));
        }
        assert_eq!(
            got,
            [
                (true, "short".to_owned()),
                (false, String::new()),
                (true, "after".to_owned()),
                (true, "last".to_owned())
            ]
        );
    }

    #[test]
    fn the_query_asks_pid_1_for_lifecycle_messages_only() {
        let query = HistoryQuery {
            directory: Some(PathBuf::from("/run/log/journal")),
            since: T0,
            until: T0 + 600 * SECOND,
        };
        let args = query.args();
        assert!(args.contains(&"--output=json".to_owned()));
        assert!(args.contains(&"--reverse".to_owned()));
        assert!(args.contains(&"--directory=/run/log/journal".to_owned()));
        assert!(args.contains(&format!("--since=@{}", T0 / SECOND)));
        assert!(args.contains(&"_PID=1".to_owned()));
        for id in LIFECYCLE_MESSAGE_IDS {
            assert!(args.contains(&format!("MESSAGE_ID={id}")), "{id}");
        }
        let fields = args
            .iter()
            .find_map(|a| a.strip_prefix("--output-fields="))
            .expect("fields");
        for needed in [
            "MESSAGE_ID",
            "UNIT",
            "INVOCATION_ID",
            "_PID",
            "_SOURCE_REALTIME_TIMESTAMP",
            "N_RESTARTS",
        ] {
            assert!(fields.split(',').any(|f| f == needed), "{needed}");
        }
    }

    #[test]
    fn the_child_is_bounded_in_time_and_output() {
        let mut sleeper = Command::new("sleep");
        sleeper.arg("5");
        let started = Instant::now();
        let result = run_bounded(sleeper, Duration::from_millis(200), 1024);
        assert!(
            matches!(result, Err(JournalError::Timeout(_))),
            "{:?}",
            result.err()
        );
        assert!(started.elapsed() < Duration::from_secs(3));

        let mut endless = Command::new("yes");
        endless.arg("entry");
        let output =
            run_bounded(endless, Duration::from_secs(5), 1000).expect("truncated, not failed");
        assert!(output.truncated);
        assert_eq!(output.stdout.len(), 1000);

        let mut failing = Command::new("sh");
        failing.args(["-c", "echo 'No journal files were found.' >&2; exit 1"]);
        let error = run_bounded(failing, Duration::from_secs(5), 1000)
            .err()
            .expect("fails");
        assert!(
            error.to_string().contains("No journal files were found."),
            "{error}"
        );

        let missing = Command::new("/nonexistent/journalctl");
        assert!(matches!(
            run_bounded(missing, Duration::from_secs(1), 10),
            Err(JournalError::Spawn(_))
        ));
    }
}
