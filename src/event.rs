//! The records that flow from sources through the detector to the sinks.
//!
//! Every source, whatever it listens to, reduces what it hears to [`Transition`]s: one record
//! per lifecycle step of one unit, stamped with the source's own clock. The detector task turns
//! them into [`Event`]s, which every sink consumes. Nothing here knows D-Bus or Upstart, so
//! sinks and the detector work the same for every source.

use std::fmt;

use serde::Serialize;

pub use crate::time::Micros;

/// Which kind of init system a transition came from. Used as the `source` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// systemd, heard over D-Bus.
    Systemd,
    /// Upstart, heard over D-Bus or from its job hook.
    Upstart,
}

impl SourceKind {
    /// The label value for this source.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Systemd => "systemd",
            SourceKind::Upstart => "upstart",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One lifecycle step of a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransitionKind {
    /// A new run of the unit began (systemd: a new InvocationID).
    Starting,
    /// The unit reached its running state.
    Started,
    /// The unit is on its way down.
    Stopping,
    /// The unit stopped (cleanly, or with `crash` set when nobody asked it to).
    Stopped,
    /// The unit entered a failed state.
    Failed,
    /// A start that follows a crash of the same unit, whoever started it.
    Restart,
}

impl TransitionKind {
    /// Every kind, in lifecycle order; used to pre-register series.
    pub const ALL: [TransitionKind; 6] = [
        TransitionKind::Starting,
        TransitionKind::Started,
        TransitionKind::Stopping,
        TransitionKind::Stopped,
        TransitionKind::Failed,
        TransitionKind::Restart,
    ];

    /// The label value for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Starting => "starting",
            TransitionKind::Started => "started",
            TransitionKind::Stopping => "stopping",
            TransitionKind::Stopped => "stopped",
            TransitionKind::Failed => "failed",
            TransitionKind::Restart => "restart",
        }
    }
}

/// Who brought a unit back after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartCause {
    /// The init system's own restart policy (systemd `Restart=`, Upstart `respawn`).
    Automatic,
    /// Anyone else: an operator, a cron job, a keepalive script.
    External,
}

/// How the main process ended, as the init system reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ExitCause {
    /// `exited`, `killed` or `dumped`.
    pub code: ExitCode,
    /// The exit status for `exited`, the signal number otherwise.
    pub status: i32,
}

/// The kind of ending of a main process (systemd's `ExecMainCode`, from waitid's `si_code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitCode {
    /// It called exit(); the status is its exit code.
    Exited,
    /// A signal killed it; the status is the signal number.
    Killed,
    /// A signal killed it and it dumped core.
    Dumped,
}

impl ExitCode {
    /// Maps a `CLD_*` code; other values carry no exit information.
    pub fn from_cld(code: i32) -> Option<ExitCode> {
        match code {
            1 => Some(ExitCode::Exited),
            2 => Some(ExitCode::Killed),
            3 => Some(ExitCode::Dumped),
            _ => None,
        }
    }
}

/// A unit's state as the source names it (systemd: ActiveState and SubState).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UnitState {
    /// The coarse state: active, inactive, failed, activating, deactivating, ...
    pub active: String,
    /// The fine state: running, dead, auto-restart, exited, ...
    pub sub: String,
}

impl UnitState {
    /// A state from its two names.
    pub fn new(active: impl Into<String>, sub: impl Into<String>) -> UnitState {
        UnitState {
            active: active.into(),
            sub: sub.into(),
        }
    }
}

/// One lifecycle step of one unit, as a source reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The unit's full name, e.g. `nginx.service` or `tty (tty1)`.
    pub unit: String,
    /// The source that heard it.
    pub source: SourceKind,
    /// When it happened, by the source's clock; receive time only when the source gives none.
    pub timestamp: Micros,
    /// What happened.
    pub kind: TransitionKind,
    /// The state before.
    pub from: UnitState,
    /// The state after.
    pub to: UnitState,
    /// The source's verdict on the last run (systemd `Result`: success, exit-code, signal, ...).
    pub result: Option<String>,
    /// How the main process ended, when known.
    pub exit: Option<ExitCause>,
    /// The run this belongs to (systemd InvocationID, hex).
    pub invocation_id: Option<String>,
    /// For a crash: when the run's main process started (systemd ExecMainStartTimestamp), so
    /// how long the run lasted can be told.
    pub run_started: Option<Micros>,
    /// The init system's own automatic-restart counter (systemd NRestarts).
    pub n_restarts: Option<u32>,
    /// Set when this step is a crash: a stop nobody asked for. Holds the reason (from Result).
    pub crash: Option<String>,
    /// For [`TransitionKind::Restart`]: who started the unit again.
    pub restart_cause: Option<RestartCause>,
    /// The init system will not restart the unit again by itself (start limit, respawn limit).
    pub gave_up: bool,
    /// Reconstructed from counters after signals were merged or missed, not heard as it happened.
    pub inferred: bool,
    /// After this step the source cannot tell whether the unit is up: it hears runs begin and
    /// end but not reach their running state (Upstart's job hook when it is not run for
    /// `started`). The unit's up-or-down becomes unknown rather than keeping its last value.
    pub up_unknown: bool,
}

impl Transition {
    /// A transition with no exit details, for sources to fill in.
    pub fn new(
        unit: impl Into<String>,
        source: SourceKind,
        timestamp: Micros,
        kind: TransitionKind,
        from: UnitState,
        to: UnitState,
    ) -> Transition {
        Transition {
            unit: unit.into(),
            source,
            timestamp,
            kind,
            from,
            to,
            result: None,
            exit: None,
            invocation_id: None,
            run_started: None,
            n_restarts: None,
            crash: None,
            restart_cause: None,
            gave_up: false,
            inferred: false,
            up_unknown: false,
        }
    }
}

/// How a crash loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopOutcome {
    /// The unit stayed up for a full window.
    Recovered,
    /// Someone stopped it on purpose.
    Stopped,
    /// The init system stopped restarting it, or it stayed down for a full window.
    GaveUp,
}

impl LoopOutcome {
    /// The label and JSON value for this outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            LoopOutcome::Recovered => "recovered",
            LoopOutcome::Stopped => "stopped",
            LoopOutcome::GaveUp => "gave_up",
        }
    }
}

/// A crash loop started or ended.
#[derive(Clone, Debug, PartialEq)]
pub struct LoopEvent {
    /// The unit's full name.
    pub unit: String,
    /// The source of the unit.
    pub source: SourceKind,
    /// When the detector decided.
    pub timestamp: Micros,
    /// `None` when the loop starts; how it ended otherwise.
    pub ended: Option<LoopOutcome>,
    /// Restarts within the window at that moment.
    pub restarts_in_window: u32,
    /// The threshold in force for the unit.
    pub threshold: u32,
    /// The window in force for the unit, in seconds.
    pub window_seconds: f64,
}

/// How a unit's last crash ended its main process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastExit {
    /// When the crash was, in microseconds since the Unix epoch: which crash it is.
    pub crashed_at: Micros,
    /// The init system's verdict, e.g. `exit-code`, `signal`, `core-dump`.
    pub reason: String,
    /// The exit status, or the signal number for a signal.
    pub status: Option<i32>,
}

/// What the detector task hands to every sink.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A transition, with crashwatch's running restart count for its unit.
    Transition {
        /// The transition as the source reported it.
        transition: Transition,
        /// Restarts counted for the unit since crashwatch started.
        restarts: u64,
    },
    /// A crash loop started or ended.
    Loop(LoopEvent),
    /// What a crashed run wrote last, once the lookup answered (for the event record, when it
    /// is asked to carry it).
    CrashContext {
        /// The unit's full name, as counted.
        unit: String,
        /// The source of the unit.
        source: SourceKind,
        /// When the answer arrived, in microseconds since the Unix epoch.
        timestamp: Micros,
        /// The crashed run (systemd InvocationID, hex), when the init system names runs.
        invocation: Option<String>,
        /// The lines, or why there are none.
        context: CrashContext,
    },
    /// The number of restarts within a unit's window changed (a restart entered it, or one left).
    Window {
        /// The unit's full name.
        unit: String,
        /// The source of the unit.
        source: SourceKind,
        /// Restarts within the window now.
        restarts_in_window: u32,
    },
}

/// What a source sends down the channel to the detector task.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    /// A lifecycle step of a unit.
    Transition(Transition),
    /// A unit a snapshot found (at start-up, after a reconnect or a resync), with its state then.
    /// Gives every watched unit its series from the start, counters at zero, so the first crash
    /// of a unit that was running before crashwatch is an increase too. Nothing is counted.
    Present {
        /// The unit's full name.
        unit: String,
        /// The source of the unit.
        source: SourceKind,
        /// Its state in the snapshot.
        state: UnitState,
    },
    /// What happened before crashwatch started, read back from a record of it (the journal):
    /// sent once, before anything live. It rebuilds the windows and counts nothing.
    History(History),
    /// What a crashed run wrote last, looked up off the event path after its crash was sent.
    /// Attached to the unit's last crash only when that crash is of the same run.
    CrashContext {
        /// The unit's full name.
        unit: String,
        /// The run the lines belong to (systemd InvocationID, hex), when the init system names
        /// runs.
        invocation: Option<String>,
        /// When that run ended: with the invocation, which crash the lines are of.
        ended: Micros,
        /// The lines, or why there are none.
        context: CrashContext,
    },
    /// The init system unloaded a unit (systemd garbage-collected it, an Upstart instance went
    /// away). Its series are kept for a while, so the last of it is scraped, then dropped.
    Unloaded {
        /// The unit's full name.
        unit: String,
        /// When it was heard, in microseconds since the Unix epoch.
        at: Micros,
    },
}

/// Transitions from before crashwatch started, in time order, up to the moment the live source
/// took over.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// The transitions, in time order.
    pub transitions: Vec<Transition>,
    /// When the live source took over (its snapshot): history ends here.
    pub until: Micros,
}

/// A crash whose context is wanted: what the failed run wrote last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextRequest {
    /// The unit's full name as the source gave it (never folded).
    pub unit: String,
    /// The failed run (systemd InvocationID, hex); `None` where the init system does not name
    /// runs (Upstart).
    pub invocation: Option<String>,
    /// When the run's main process started, when known.
    pub run_started: Option<Micros>,
    /// When it ended (the crash's time).
    pub ended: Micros,
    /// The init system's verdict on the run (`core-dump`, `oom-kill`, ...): which evidence
    /// besides the lines is worth looking for.
    pub verdict: Option<String>,
}

/// Whether a crash's context is known yet, and what became of the lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContextStatus {
    /// Lines were found.
    Ok,
    /// The run wrote nothing the journal kept.
    Empty,
    /// No lookup can be made (no journal, no run ID) or the lookup failed.
    Unavailable,
    /// Asked for, not answered yet.
    Pending,
}

/// The last lines a crashed run wrote, made safe to print, or why there are none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CrashContext {
    /// What became of the lookup.
    pub status: ContextStatus,
    /// The lines, oldest first: each printable and capped, all of them within a byte cap.
    pub lines: Vec<String>,
    /// Where the lines came from (`journal`, or `job log` under Upstart).
    pub source: &'static str,
    /// Why there are no lines, for `unavailable`.
    pub reason: Option<String>,
    /// What systemd-coredump recorded of the run's core dump, when it dumped core and the
    /// record was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core_dump: Option<CoreDump>,
    /// What the kernel logged when its OOM killer ended the run, when the journal has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<OomKill>,
}

/// A core dump as systemd-coredump recorded it in the journal: each value printable and capped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CoreDump {
    /// The process that dumped core (`COREDUMP_PID`).
    pub pid: Option<u32>,
    /// The signal that ended it, by name (`SIGSEGV`).
    pub signal: Option<String>,
    /// The executable (`COREDUMP_EXE`).
    pub executable: Option<String>,
    /// The first frames of the crashing thread's backtrace, as systemd-coredump printed them
    /// without their addresses (`#0 __kill (libc.so.6 + 0x3c267)`); empty when it made none.
    pub frames: Vec<String>,
}

impl CoreDump {
    /// One line: `SIGSEGV in /usr/bin/bash (pid 94)`.
    pub fn summary(&self) -> String {
        let mut text = self.signal.clone().unwrap_or_else(|| "a signal".to_owned());
        if let Some(executable) = &self.executable {
            text.push_str(" in ");
            text.push_str(executable);
        }
        if let Some(pid) = self.pid {
            text.push_str(&format!(" (pid {pid})"));
        }
        text
    }
}

/// The kernel's lines about the OOM kill of a run's process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OomKill {
    /// The lines, oldest first (`oom-kill:constraint=...`, `Memory cgroup out of memory: ...`).
    pub kernel_lines: Vec<String>,
}

impl CrashContext {
    /// A context that cannot be had, and why.
    pub fn unavailable(reason: impl Into<String>) -> CrashContext {
        CrashContext {
            status: ContextStatus::Unavailable,
            lines: Vec::new(),
            source: "journal",
            reason: Some(reason.into()),
            core_dump: None,
            oom_kill: None,
        }
    }

    /// This context, said to come from `source` (`journal` unless said otherwise).
    pub fn read_from(mut self, source: &'static str) -> CrashContext {
        self.source = source;
        self
    }

    /// A context asked for and not answered yet.
    pub fn pending() -> CrashContext {
        CrashContext {
            status: ContextStatus::Pending,
            lines: Vec::new(),
            source: "journal",
            reason: None,
            core_dump: None,
            oom_kill: None,
        }
    }

    /// The lines found, `empty` when there are none.
    pub fn found(lines: Vec<String>) -> CrashContext {
        let status = if lines.is_empty() {
            ContextStatus::Empty
        } else {
            ContextStatus::Ok
        };
        CrashContext {
            status,
            lines,
            source: "journal",
            reason: None,
            core_dump: None,
            oom_kill: None,
        }
    }
}

impl From<Transition> for SourceEvent {
    fn from(transition: Transition) -> SourceEvent {
        SourceEvent::Transition(transition)
    }
}

/// A name from outside (a unit, a pattern), safe to print on a terminal or in a one-line
/// message: control characters are escaped.
pub fn printable(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
/// Linux signal numbers by name, with or without `SIG` (`SEGV`, `SIGSEGV`), as Upstart prints
/// them (`nih_signal_to_name`) and the journal records them; unknown signals are given as numbers.
pub fn signal_number(name: &str) -> Option<i32> {
    const NAMES: [(&str, i32); 33] = [
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ILL", 4),
        ("TRAP", 5),
        ("ABRT", 6),
        ("IOT", 6),
        ("BUS", 7),
        ("FPE", 8),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
        ("STKFLT", 16),
        ("CHLD", 17),
        ("CONT", 18),
        ("STOP", 19),
        ("TSTP", 20),
        ("TTIN", 21),
        ("TTOU", 22),
        ("URG", 23),
        ("XCPU", 24),
        ("XFSZ", 25),
        ("VTALRM", 26),
        ("PROF", 27),
        ("WINCH", 28),
        ("IO", 29),
        ("POLL", 29),
        ("PWR", 30),
        ("SYS", 31),
    ];
    let name = name.trim();
    let bare = name.strip_prefix("SIG").unwrap_or(name);
    NAMES
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, number)| *number)
        .or_else(|| name.parse().ok())
}
