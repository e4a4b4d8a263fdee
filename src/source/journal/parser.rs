//! The journal parser: PID 1's lifecycle messages, a line of `journalctl -o json` at a time,
//! turned into transitions by a little state kept per unit (see the module above for the rules).

use std::collections::HashMap;
use std::io::{self, BufRead};

use serde_json::{Map, Value};

use crate::event::{
    signal_number, ExitCause, ExitCode, Micros, SourceKind, Transition, TransitionKind, UnitState,
};
use crate::source::systemd::verdict::{self, Ending, Sequel, Verdict};

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

/// The longest line read; a journal entry longer than this is skipped as malformed, so one
/// runaway line cannot take the memory of a replay.
pub const MAX_LINE: usize = 1 << 20;

/// Units the parser remembers before it forgets those with nothing pending, so a long export
/// full of one-off transient units stays bounded.
const MAX_UNITS_HELD: usize = 100_000;

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{printable, RestartCause};

    pub(crate) const SECOND: Micros = 1_000_000;
    /// 2026-11-21T06:50:52Z, when the sample journal below was written.
    pub(crate) const T0: Micros = 1_795_243_852_000_000;

    /// One journal line as `journalctl -o json` prints it for a message of PID 1 about `unit`,
    /// with the fields journald adds.
    pub(crate) fn line(
        at: Micros,
        id: &str,
        unit: &str,
        invocation: &str,
        fields: &[(&str, &str)],
    ) -> String {
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
    pub(crate) fn started(at: Micros, unit: &str, invocation: &str) -> String {
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
    pub(crate) fn failing_run(unit: &str, start: Micros, invocation: &str, n: u32) -> Vec<String> {
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

    pub(crate) fn parse(lines: &[String]) -> (Vec<Transition>, Parser) {
        let mut parser = Parser::new();
        let mut out = Vec::new();
        for l in lines {
            parser.line(l.as_bytes(), &mut out);
        }
        parser.finish();
        (out, parser)
    }

    pub(crate) fn kinds(transitions: &[Transition]) -> Vec<(TransitionKind, bool)> {
        transitions
            .iter()
            .map(|t| (t.kind, t.crash.is_some()))
            .collect()
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
}
