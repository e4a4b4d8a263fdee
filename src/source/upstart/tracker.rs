//! Turns what Upstart says about its job instances into transitions, counting each start, crash
//! and restart once, with the same meaning as for systemd units.
//!
//! Upstart tells the same story twice, in two vocabularies that do not line up:
//!
//! - Instance signals (`GoalChanged`, `StateChanged`, `Failed`) arrive as each change is made, in
//!   order, on every Upstart since 1.0. They are the only thing that tells a crash-respawn from an
//!   operator's `initctl restart`: both read `stopping RESULT=ok` then `starting` as events, but
//!   only the restart changes the goal to `stop` first.
//! - Job events (`starting`, `started`, `stopping`, `stopped` with `RESULT`, `PROCESS`,
//!   `EXIT_STATUS`/`EXIT_SIGNAL`) come from `EventEmitted` (Upstart 1.7+) and from the job hook.
//!   `EventEmitted` is sent when an event *finishes*, which for the blocking `starting` and
//!   `stopping` can be after the next state change, so events cannot be ordered against states.
//!
//! So the tracker follows the instance signals whenever it has them (it is *live*: the source is
//! connected and has taken a snapshot). Job events then only add a failure that no `Failed`
//! signal reported, for a run that has already ended, and at most once per run. Without a live
//! connection (the hook alone, or while reconnecting), job events drive the lifecycle; a
//! `stopping RESULT=ok` followed by `starting` without `stopped` is then a crash-respawn, because
//! nothing else can tell it apart. The hook runs for `started` only if its job says so; until it
//! has reported one, a run it saw begin is marked `up_unknown` rather than taken as up or down.
//!
//! What counts:
//! - a *crash* is the end of a run nobody asked for: the run went down while its goal was still
//!   `start` (Upstart is respawning it; the exit cause is not in any signal, so the reason is
//!   `unknown`), or Upstart reported it failed (`Failed(status)` or `RESULT=failed`, with
//!   `exit-code` or `signal` as the reason, `failed` when it could not even be spawned);
//! - `Failed(0)` or `PROCESS=respawn` is Upstart giving up after its respawn limit: the final
//!   crash, marked `gave_up`, so the loop is recorded as ended in failure, not recovered;
//! - Upstart sends `Failed` before it takes the instance down (`GoalChanged("stop")`, `stopping`
//!   … `waiting`, `InstanceRemoved`), so a failure heard while the run is up is held until the
//!   instance comes to rest and then reported, dated by `Failed`, from the state it failed in to
//!   the one it ended in: the record and the unit table then say `stop/waiting`, as Upstart does;
//! - a *restart* is the start of a run after a crash, `automatic` when Upstart respawned it (the
//!   goal never went to `stop`), `external` when someone started it again;
//! - a goal of `stop` (`initctl stop`, `initctl restart`, a `stop on` event) makes the end of the
//!   run a stop, not a crash, and the next start a plain start.
//!
//! Upstart keeps no restart counter, so gaps (a reconnect, `Restarted` after re-exec, a queue
//! that overflowed) are closed with a snapshot: a main process that changed between two snapshots
//! while no start was heard is a crash and a restart that happened while nobody listened.
//!
//! After a reconnect the kernel log can say more (see [`super::kmsg`]): how many main processes
//! ended during the gap, and how. Each end is then a crash, and each run after one a restart.
//!
//! The tracker is pure: values in, transitions out, time passed in, so it is tested without a bus.

use std::collections::{HashMap, HashSet};

use super::kmsg::{Ending, MainProcessEnd};
use super::names::unit_name;
use crate::event::{
    signal_number, ExitCause, ExitCode, Micros, RestartCause, SourceKind, Transition,
    TransitionKind, UnitState,
};

/// The signal Upstart stops a job with (its default `kill signal`).
const SIGTERM: i32 = 15;

/// The job events Upstart emits for every instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEventKind {
    /// The instance is about to start (blocking).
    Starting,
    /// The instance is running.
    Started,
    /// The instance is about to stop (blocking).
    Stopping,
    /// The instance stopped.
    Stopped,
}

impl JobEventKind {
    /// The kind named `name`, if it is one of the four.
    pub fn parse(name: &str) -> Option<JobEventKind> {
        match name {
            "starting" => Some(JobEventKind::Starting),
            "started" => Some(JobEventKind::Started),
            "stopping" => Some(JobEventKind::Stopping),
            "stopped" => Some(JobEventKind::Stopped),
            _ => None,
        }
    }

    /// The event's name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobEventKind::Starting => "starting",
            JobEventKind::Started => "started",
            JobEventKind::Stopping => "stopping",
            JobEventKind::Stopped => "stopped",
        }
    }
}

/// One job event with the environment Upstart gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEvent {
    /// Which event.
    pub kind: JobEventKind,
    /// `JOB`.
    pub job: String,
    /// `INSTANCE`, empty for a singleton.
    pub instance: String,
    /// `RESULT`: `ok` or `failed` (stopping and stopped only).
    pub result: Option<String>,
    /// `PROCESS`: which process failed, or `respawn` when the respawn limit was hit.
    pub process: Option<String>,
    /// `EXIT_STATUS`: the exit code of the failed process.
    pub exit_status: Option<String>,
    /// `EXIT_SIGNAL`: the signal that killed it, by name without `SIG` (`SEGV`) or number.
    pub exit_signal: Option<String>,
}

impl JobEvent {
    /// Reads an `EventEmitted(name, env)`. `None` for events that are not about a job (`startup`,
    /// `runlevel`, ...) or that carry no `JOB`. Each entry splits at its first `=`; the first
    /// occurrence of a variable wins, since exported variables follow Upstart's own.
    pub fn from_env<S: AsRef<str>>(name: &str, env: &[S]) -> Option<JobEvent> {
        let kind = JobEventKind::parse(name)?;
        let mut vars: HashMap<&str, &str> = HashMap::new();
        for entry in env {
            if let Some((key, value)) = entry.as_ref().split_once('=') {
                vars.entry(key).or_insert(value);
            }
        }
        let job = vars.get("JOB").filter(|j| !j.is_empty())?;
        let get = |key: &str| vars.get(key).map(|v| (*v).to_owned());
        Some(JobEvent {
            kind,
            job: (*job).to_owned(),
            instance: get("INSTANCE").unwrap_or_default(),
            result: get("RESULT"),
            process: get("PROCESS"),
            exit_status: get("EXIT_STATUS"),
            exit_signal: get("EXIT_SIGNAL"),
        })
    }

    /// The unit this event is about.
    pub fn unit(&self) -> String {
        unit_name(&self.job, &self.instance)
    }

    /// The failure this event reports, if `RESULT=failed`.
    fn failure(&self) -> Option<Failure> {
        if self.result.as_deref() != Some("failed") {
            return None;
        }
        let mut failure = if self.process.as_deref() == Some("respawn") {
            Failure::gave_up()
        } else if let Some(status) = self.exit_status.as_deref() {
            Failure {
                reason: "exit-code",
                exit: status.trim().parse().ok().map(|status| ExitCause {
                    code: ExitCode::Exited,
                    status,
                }),
                ..Failure::unknown()
            }
        } else if let Some(signal) = self.exit_signal.as_deref() {
            Failure {
                reason: "signal",
                exit: signal_number(signal).map(|status| ExitCause {
                    code: ExitCode::Killed,
                    status,
                }),
                ..Failure::unknown()
            }
        } else {
            Failure::spawn()
        };
        failure.result = Some("failed");
        Some(failure)
    }
}

/// How a run ended when nobody asked it to.
#[derive(Clone, Debug, PartialEq)]
struct Failure {
    /// The crash reason, from the same small set as systemd's `Result`.
    reason: &'static str,
    exit: Option<ExitCause>,
    /// Upstart will not respawn it again (respawn limit).
    gave_up: bool,
    /// Upstart's `RESULT`, when it said one.
    result: Option<&'static str>,
}

impl Failure {
    fn unknown() -> Failure {
        Failure {
            reason: "unknown",
            exit: None,
            gave_up: false,
            result: None,
        }
    }

    fn gave_up() -> Failure {
        Failure {
            gave_up: true,
            ..Failure::unknown()
        }
    }

    fn spawn() -> Failure {
        Failure {
            reason: "failed",
            ..Failure::unknown()
        }
    }

    /// Decodes `Failed(status)`: the exit code, the signal number shifted left by 8, -1 when
    /// spawning failed, 0 when the respawn limit was hit (init/job_process.c).
    fn from_status(status: i32) -> Failure {
        let mut failure = match status {
            0 => Failure::gave_up(),
            -1 => Failure::spawn(),
            s if s >= 256 => Failure {
                reason: "signal",
                exit: Some(ExitCause {
                    code: ExitCode::Killed,
                    status: s >> 8,
                }),
                ..Failure::unknown()
            },
            s if s > 0 => Failure {
                reason: "exit-code",
                exit: Some(ExitCause {
                    code: ExitCode::Exited,
                    status: s,
                }),
                ..Failure::unknown()
            },
            _ => Failure::unknown(),
        };
        failure.result = Some("failed");
        failure
    }
}

impl Failure {
    /// How the kernel log says a main process ended. A clean exit is a crash only because the
    /// goal was still `start`; its reason is then unknown, as for a respawn heard over D-Bus.
    fn from_ending(ending: Ending) -> Failure {
        match ending {
            Ending::Exited(status) => Failure {
                reason: if status == 0 { "unknown" } else { "exit-code" },
                exit: Some(ExitCause {
                    code: ExitCode::Exited,
                    status,
                }),
                ..Failure::unknown()
            },
            Ending::Killed(signal) => Failure {
                reason: "signal",
                exit: signal.map(|status| ExitCause {
                    code: ExitCode::Killed,
                    status,
                }),
                ..Failure::unknown()
            },
        }
    }
}

/// A failure heard before the run went down: what it was, when, and the state it was heard in.
#[derive(Clone, Debug, PartialEq)]
struct PendingFailure {
    failure: Failure,
    at: Micros,
    from: UnitState,
}

/// One instance as a snapshot reads it (`GetAllJobs` → `GetAllInstances` → properties).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceSnapshot {
    /// The unit name, `job` or `job (instance)`.
    pub unit: String,
    /// `goal`: start, stop or respawn.
    pub goal: String,
    /// `state`: waiting, starting, ..., running, ..., post-stop.
    pub state: String,
    /// The pid of the `main` entry of `processes`, if it has one.
    pub main_pid: Option<u32>,
}

/// Where a run stands, from Upstart's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No run (waiting, or no instance at all).
    Down,
    /// A run is starting or running.
    Up,
    /// The run is on its way down.
    Stopping,
}

/// The phase of each Upstart 1.13 state. 1.12 and older lack the `*-ing` states; unknown states
/// leave the phase as it was.
fn phase_of(state: &str) -> Option<Phase> {
    match state {
        "waiting" => Some(Phase::Down),
        "starting" | "security-spawning" | "security" | "pre-starting" | "pre-start"
        | "spawning" | "spawned" | "post-starting" | "post-start" | "running" => Some(Phase::Up),
        "pre-stopping" | "pre-stop" | "stopping" | "killed" | "post-stopping" | "post-stop" => {
            Some(Phase::Stopping)
        }
        _ => None,
    }
}

/// What the tracker remembers of one instance.
#[derive(Clone, Debug)]
struct TrackedUnit {
    name: String,
    goal: String,
    state: String,
    phase: Phase,
    /// `Started` was reported for the current run.
    running: bool,
    /// The goal went to `stop` for a reason other than a failure since the run began.
    stop_requested: bool,
    /// The current run's crash has been reported.
    crashed: bool,
    /// The last run crashed and nothing has started since: the next start is a restart.
    crash_pending: bool,
    /// The goal went to `stop` after that crash: whoever starts it next is not Upstart's respawn.
    stopped_since_crash: bool,
    /// Job events only: a `stopping RESULT=ok` was heard and neither `stopped` nor `starting` yet.
    undecided_stop: bool,
    /// When that `stopping` was heard.
    stopping_at: Micros,
    /// A `Failed` heard while the run was still up, not reported yet: Upstart sends it before it
    /// takes the instance down, and the crash is reported once the instance has come to rest
    /// (`waiting`, or a new start), so that it names the state it really ended in.
    failure: Option<PendingFailure>,
    /// The main pid read by the last snapshot, while running.
    pid: Option<u32>,
    /// Starts heard since the last snapshot; a pid that changed with none heard is a missed run.
    starts_since_snapshot: u32,
}

impl TrackedUnit {
    fn new(name: String) -> TrackedUnit {
        TrackedUnit {
            name,
            goal: "stop".to_owned(),
            state: "waiting".to_owned(),
            phase: Phase::Down,
            running: false,
            stop_requested: false,
            crashed: false,
            crash_pending: false,
            stopped_since_crash: false,
            undecided_stop: false,
            stopping_at: 0,
            failure: None,
            pid: None,
            starts_since_snapshot: 0,
        }
    }

    fn unit_state(&self) -> UnitState {
        UnitState::new(self.goal.clone(), self.state.clone())
    }
}

/// Follows every watched instance of one Upstart and reports its transitions.
#[derive(Debug, Default)]
pub struct Tracker {
    units: HashMap<String, TrackedUnit>,
    live: bool,
    /// The job hook has reported a `started` event: its job is run for `started` too, so a run
    /// that began and is not reported up is not up yet. Until then, whether a run the hook saw
    /// begin got up is not known.
    hook_reports_started: bool,
}

impl Tracker {
    /// An empty tracker, not live.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// How many units are followed.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// Whether `unit` is followed.
    #[cfg(test)]
    pub fn contains(&self, unit: &str) -> bool {
        self.units.contains_key(unit)
    }

    /// Says whether instance signals are flowing (connected, snapshot taken). While live, job
    /// events only add failures; otherwise they drive the lifecycle.
    pub fn set_live(&mut self, live: bool) {
        self.live = live;
    }

    /// Takes an instance as it is now, without reporting anything: what happened before
    /// crashwatch started is not counted. An instance found on its way down while its goal is
    /// still `start` is being respawned after a crash, so its next start counts as a restart.
    pub fn baseline(&mut self, snapshot: InstanceSnapshot) {
        let mut unit = TrackedUnit::new(snapshot.unit.clone());
        unit.phase = phase_of(&snapshot.state).unwrap_or(Phase::Down);
        unit.running = snapshot.state == "running";
        unit.stop_requested = snapshot.goal == "stop" && unit.phase != Phase::Down;
        if unit.phase == Phase::Stopping && snapshot.goal != "stop" {
            unit.crashed = true;
            unit.crash_pending = true;
        }
        unit.pid = if unit.running {
            snapshot.main_pid
        } else {
            None
        };
        unit.goal = snapshot.goal;
        unit.state = snapshot.state;
        self.units.insert(snapshot.unit, unit);
    }

    /// Compares a full snapshot with what the tracker believed, after a gap (a reconnect,
    /// `Restarted`, or a queue that overflowed), and reports what must have happened in between,
    /// marked `inferred`. Instances that are gone ended their run while nobody listened.
    ///
    /// `ends` are the main process ends the kernel log holds for the gap, in order, each dated on
    /// the realtime clock (empty when the log is not read). A unit with ends gets one crash per
    /// end, with the reason the log gives, and a restart for every run that followed one, instead
    /// of the one crash a changed pid proves. An end by `SIGTERM` is passed over: that is how
    /// Upstart stops a job (`initctl stop`, `initctl restart`), and the log does not say who asked.
    pub fn reconcile(
        &mut self,
        snapshots: Vec<InstanceSnapshot>,
        ends: &[MainProcessEnd],
        now: Micros,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let ends_of = |name: &str| -> Vec<&MainProcessEnd> {
            ends.iter()
                .filter(|e| e.unit == name && e.ending != Ending::Killed(Some(SIGTERM)))
                .collect()
        };
        for snapshot in snapshots {
            seen.insert(snapshot.unit.clone());
            let Some(unit) = self.units.get_mut(&snapshot.unit) else {
                self.baseline(snapshot);
                continue;
            };
            settle_failure_after_gap(unit, &snapshot.goal, &snapshot.state, &mut out);
            let mut found = Vec::new();
            // A pid is compared only between two readings of a running main process: while
            // starting, `expect fork` and `expect daemon` jobs change pid on their own.
            let missed_run = snapshot.state == "running"
                && unit.starts_since_snapshot == 0
                && matches!((unit.pid, snapshot.main_pid), (Some(a), Some(b)) if a != b);
            runs_ended_unheard(unit, &ends_of(&snapshot.unit), &mut found);
            if unit.goal != snapshot.goal {
                goal_changed(unit, &snapshot.goal);
            }
            if missed_run {
                run_not_heard(unit, &snapshot.state, now, &mut found);
            } else {
                state_changed(unit, &snapshot.state, now, &mut found);
            }
            unit.pid = if unit.state == "running" {
                snapshot.main_pid
            } else {
                None
            };
            unit.starts_since_snapshot = 0;
            for mut t in found {
                t.inferred = true;
                out.push(t);
            }
        }
        let gone: Vec<String> = self
            .units
            .keys()
            .filter(|name| !seen.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            let mut found = Vec::new();
            if let Some(unit) = self.units.get_mut(&name) {
                settle_failure_after_gap(unit, "stop", "waiting", &mut out);
                runs_ended_unheard(unit, &ends_of(&name), &mut found);
                // Upstart frees only instances whose goal is stop; how it came to stop is lost.
                if unit.phase != Phase::Down {
                    goal_changed(unit, "stop");
                }
                state_changed(unit, "waiting", now, &mut found);
                unit.pid = None;
                unit.starts_since_snapshot = 0;
            }
            self.forget_unless_crashed(&name);
            for mut t in found {
                t.inferred = true;
                out.push(t);
            }
        }
        out
    }

    /// The main pid of a running instance, read right after it reached `running`: a reading of
    /// this one instance, as a snapshot would take it, so the next snapshot compares against the
    /// run that was heard last rather than the one the previous snapshot saw.
    pub fn main_pid(&mut self, unit: &str, pid: u32) {
        if let Some(tracked) = self.units.get_mut(unit) {
            if tracked.state == "running" {
                tracked.pid = Some(pid);
                tracked.starts_since_snapshot = 0;
            }
        }
    }

    /// `InstanceAdded`: a new instance exists (it starts out waiting).
    pub fn instance_added(&mut self, unit: &str) {
        self.unit(unit);
    }

    /// `InstanceRemoved`: the instance is gone. A run still open ends here. The unit is
    /// forgotten unless its last run crashed: an instance started again after a crash must still
    /// count that start as a restart.
    pub fn instance_removed(&mut self, unit: &str, now: Micros) -> Vec<Transition> {
        let mut out = Vec::new();
        if let Some(tracked) = self.units.get_mut(unit) {
            state_changed(tracked, "waiting", now, &mut out);
            settle_failure(tracked, &mut out);
        }
        self.forget_unless_crashed(unit);
        out
    }

    /// `GoalChanged(goal)`.
    pub fn goal_changed(&mut self, unit: &str, goal: &str) {
        goal_changed(self.unit(unit), goal);
    }

    /// `StateChanged(state)`, received at `now`.
    pub fn state_changed(&mut self, unit: &str, state: &str, now: Micros) -> Vec<Transition> {
        let mut out = Vec::new();
        state_changed(self.unit(unit), state, now, &mut out);
        out
    }

    /// `Failed(status)`, received at `now`: the run failed, unless it was being stopped anyway.
    /// Upstart sends it before the goal and state change it causes (`GoalChanged("stop")`, then
    /// `stopping` down to `waiting`), at most once per run. A run that is still up is followed
    /// down first: its crash, dated `now`, is reported when the instance comes to rest, from the
    /// state it failed in to the one it ended in.
    pub fn failed(&mut self, unit: &str, status: i32, now: Micros) -> Vec<Transition> {
        let mut out = Vec::new();
        let tracked = self.unit(unit);
        if tracked.crashed || tracked.stop_requested || tracked.failure.is_some() {
            return out;
        }
        let failure = Failure::from_status(status);
        let from = tracked.unit_state();
        if tracked.phase == Phase::Up {
            tracked.failure = Some(PendingFailure {
                failure,
                at: now,
                from,
            });
        } else {
            crash(tracked, from, now, failure, &mut out);
        }
        out
    }

    /// A job event (`EventEmitted` or the hook), received at `now`.
    pub fn event(&mut self, event: &JobEvent, now: Micros) -> Vec<Transition> {
        let mut out = Vec::new();
        let name = event.unit();
        if self.live {
            // Instance signals carry the lifecycle. An event adds only a failure the signals did
            // not report, for a run that already ended: `EventEmitted` can arrive after the next
            // run began, and must not be pinned on it.
            let failure = event.failure();
            if let (Some(failure), Some(unit)) = (failure, self.units.get_mut(&name)) {
                if unit.phase != Phase::Up
                    && !unit.crashed
                    && !unit.stop_requested
                    && unit.failure.is_none()
                {
                    let from = unit.unit_state();
                    crash(unit, from, now, failure, &mut out);
                }
            }
            return out;
        }
        if event.kind == JobEventKind::Started {
            self.hook_reports_started = true;
        }
        let up_heard = self.hook_reports_started;
        let unit = self.unit(&name);
        // A failure heard over D-Bus before the connection went: the events take over from here.
        settle_failure(unit, &mut out);
        match event.kind {
            JobEventKind::Starting => {
                if unit.phase != Phase::Up {
                    let from = unit.unit_state();
                    set_state(unit, "start", "starting");
                    begin_run(unit, from, now, &mut out);
                    if !up_heard {
                        for t in out
                            .iter_mut()
                            .filter(|t| t.kind == TransitionKind::Starting)
                        {
                            t.up_unknown = true;
                        }
                    }
                }
            }
            JobEventKind::Started => {
                if unit.phase != Phase::Up {
                    let from = unit.unit_state();
                    set_state(unit, "start", "starting");
                    begin_run(unit, from, now, &mut out);
                }
                if !unit.running {
                    let from = unit.unit_state();
                    set_state(unit, "start", "running");
                    unit.running = true;
                    out.push(transition(unit, TransitionKind::Started, from, now));
                }
            }
            JobEventKind::Stopping => {
                if unit.phase != Phase::Stopping {
                    event_stopping(unit, event, now, &mut out);
                }
            }
            JobEventKind::Stopped => {
                if unit.phase == Phase::Up {
                    event_stopping(unit, event, now, &mut out);
                }
                if unit.phase == Phase::Stopping {
                    let from = unit.unit_state();
                    set_state(unit, "stop", "waiting");
                    // All the way down: whoever starts it next, it is not Upstart's respawn.
                    if unit.crash_pending {
                        unit.stopped_since_crash = true;
                    }
                    if !unit.crashed {
                        match event.failure() {
                            Some(failure) => crash(unit, from, now, failure, &mut out),
                            None => {
                                let mut t = transition(unit, TransitionKind::Stopped, from, now);
                                t.result = event.result.clone();
                                out.push(t);
                            }
                        }
                    }
                    unit.phase = Phase::Down;
                    unit.undecided_stop = false;
                }
            }
        }
        out
    }

    fn unit(&mut self, name: &str) -> &mut TrackedUnit {
        self.units
            .entry(name.to_owned())
            .or_insert_with(|| TrackedUnit::new(name.to_owned()))
    }

    fn forget_unless_crashed(&mut self, name: &str) {
        if self.units.get(name).is_some_and(|u| !u.crash_pending) {
            self.units.remove(name);
        }
    }
}

fn set_state(unit: &mut TrackedUnit, goal: &str, state: &str) {
    goal.clone_into(&mut unit.goal);
    state.clone_into(&mut unit.state);
}

fn goal_changed(unit: &mut TrackedUnit, goal: &str) {
    goal.clone_into(&mut unit.goal);
    if goal == "stop" {
        if unit.crash_pending || unit.failure.is_some() {
            unit.stopped_since_crash = true;
        }
        // After a failure Upstart stops the job itself; that is not somebody asking.
        if !unit.crashed && unit.failure.is_none() {
            unit.stop_requested = true;
        }
    }
}

fn state_changed(unit: &mut TrackedUnit, state: &str, now: Micros, out: &mut Vec<Transition>) {
    if unit.state == state {
        return;
    }
    let from = unit.unit_state();
    state.clone_into(&mut unit.state);
    let Some(phase) = phase_of(state) else {
        return;
    };
    match (unit.phase, phase) {
        (Phase::Up, Phase::Up) => {
            if state == "running" && !unit.running {
                unit.running = true;
                out.push(transition(unit, TransitionKind::Started, from, now));
            }
        }
        // A pre-stop script may cancel the stop (`start` from within it): the run goes on.
        (Phase::Stopping, Phase::Up)
            if state == "running" && matches!(from.sub.as_str(), "pre-stop" | "pre-stopping") =>
        {
            unit.phase = Phase::Up;
            unit.stop_requested = false;
            unit.running = true;
            out.push(transition(unit, TransitionKind::Started, from, now));
        }
        (Phase::Down | Phase::Stopping, Phase::Up) => {
            begin_run(unit, from.clone(), now, out);
            if state == "running" {
                unit.running = true;
                out.push(transition(unit, TransitionKind::Started, from, now));
            }
        }
        (Phase::Up, Phase::Stopping) => end_run(unit, from, now, out),
        (Phase::Up, Phase::Down) => {
            end_run(unit, from.clone(), now, out);
            finish_stop(unit, from, now, out);
        }
        (Phase::Stopping, Phase::Down) => finish_stop(unit, from, now, out),
        // Never seen up: there is nothing to say about how it went down.
        (Phase::Down, Phase::Stopping) => unit.phase = Phase::Stopping,
        (Phase::Stopping, Phase::Stopping) | (Phase::Down, Phase::Down) => {}
    }
}

/// A run begins: the end of the previous one if it was left open, the restart it may be, then
/// Starting.
fn begin_run(unit: &mut TrackedUnit, from: UnitState, now: Micros, out: &mut Vec<Transition>) {
    settle_failure(unit, out);
    if unit.phase == Phase::Stopping && !unit.crashed {
        if unit.undecided_stop {
            // Job events only: stopping with RESULT=ok, then starting without stopped. That is
            // Upstart respawning the job, dated when it went down.
            let at = unit.stopping_at;
            crash(unit, from.clone(), at, Failure::unknown(), out);
        } else {
            // `initctl restart`: the old run stopped on request, the new one starts.
            out.push(transition(unit, TransitionKind::Stopped, from.clone(), now));
        }
    }
    if unit.crash_pending {
        let mut t = transition(unit, TransitionKind::Restart, from.clone(), now);
        t.restart_cause = Some(if unit.stopped_since_crash {
            RestartCause::External
        } else {
            RestartCause::Automatic
        });
        out.push(t);
    }
    out.push(transition(unit, TransitionKind::Starting, from, now));
    unit.phase = Phase::Up;
    unit.running = false;
    unit.stop_requested = false;
    unit.crashed = false;
    unit.crash_pending = false;
    unit.stopped_since_crash = false;
    unit.undecided_stop = false;
    unit.starts_since_snapshot = unit.starts_since_snapshot.saturating_add(1);
}

/// A run starts going down: a stop if someone asked, a crash if not and none was reported yet.
fn end_run(unit: &mut TrackedUnit, from: UnitState, now: Micros, out: &mut Vec<Transition>) {
    unit.phase = Phase::Stopping;
    unit.running = false;
    // A crash already reported, or a failure reported when the instance comes to rest.
    if unit.crashed || unit.failure.is_some() {
        return;
    }
    if unit.stop_requested || unit.goal == "stop" {
        unit.stop_requested = true;
        out.push(transition(unit, TransitionKind::Stopping, from, now));
        return;
    }
    // The goal is still start: the main process ended on its own and Upstart is respawning it.
    crash(unit, from, now, Failure::unknown(), out);
}

/// A run is over: the failure that ended it, if one waits to be reported; nothing more after a
/// crash already said; otherwise it stopped.
fn finish_stop(unit: &mut TrackedUnit, from: UnitState, now: Micros, out: &mut Vec<Transition>) {
    unit.phase = Phase::Down;
    unit.running = false;
    unit.undecided_stop = false;
    settle_failure(unit, out);
    if !unit.crashed {
        out.push(transition(unit, TransitionKind::Stopped, from, now));
    }
}

/// A job event says the run is going down.
fn event_stopping(
    unit: &mut TrackedUnit,
    event: &JobEvent,
    now: Micros,
    out: &mut Vec<Transition>,
) {
    let from = unit.unit_state();
    "stopping".clone_into(&mut unit.state);
    unit.phase = Phase::Stopping;
    unit.running = false;
    if unit.crashed {
        return;
    }
    match event.failure() {
        Some(failure) => {
            // The hook sees no states. After a failure Upstart takes the job down to
            // stop/waiting and respawns nothing, so that is where the crash ends; whoever
            // starts it next is not Upstart's respawn.
            set_state(unit, "stop", "waiting");
            unit.stopped_since_crash = true;
            crash(unit, from, now, failure, out);
        }
        None => {
            let mut t = transition(unit, TransitionKind::Stopping, from, now);
            t.result = event.result.clone();
            out.push(t);
            unit.undecided_stop = true;
            unit.stopping_at = now;
        }
    }
}

/// Reports the failure heard while the run was up, now that the instance came to rest: from the
/// state it failed in to the one it is in, dated when it failed.
fn settle_failure(unit: &mut TrackedUnit, out: &mut Vec<Transition>) {
    if let Some(pending) = unit.failure.take() {
        crash(unit, pending.from, pending.at, pending.failure, out);
    }
}

/// Reports a failure heard before a gap, as the snapshot after it finds the instance (`goal`,
/// `state`; stop/waiting when it is gone). The failure was heard, so it is no inference; the
/// instance is where it came to rest, unless it is up again, which is a new run: the failed one
/// is then said to end where it was last seen.
fn settle_failure_after_gap(
    unit: &mut TrackedUnit,
    goal: &str,
    state: &str,
    out: &mut Vec<Transition>,
) {
    if unit.failure.is_none() {
        return;
    }
    let phase = phase_of(state);
    if phase != Some(Phase::Up) {
        set_state(unit, goal, state);
    }
    settle_failure(unit, out);
    unit.phase = if phase == Some(Phase::Down) {
        Phase::Down
    } else {
        Phase::Stopping
    };
    unit.running = false;
}

fn crash(
    unit: &mut TrackedUnit,
    from: UnitState,
    at: Micros,
    failure: Failure,
    out: &mut Vec<Transition>,
) {
    let mut t = transition(unit, TransitionKind::Failed, from, at);
    t.crash = Some(failure.reason.to_owned());
    t.exit = failure.exit;
    t.result = failure.result.map(str::to_owned);
    t.gave_up = failure.gave_up;
    unit.crashed = true;
    unit.crash_pending = true;
    unit.undecided_stop = false;
    out.push(t);
}

/// The runs the kernel log says ended during a gap, in order: each is a crash dated when it was
/// logged, and a run that began after the last one heard of (Upstart respawned it) is a restart,
/// `Starting` and `Started` at the moment the run before it ended. What the snapshot shows after
/// the last end is left to the caller: the unit is left on its way down, its crash reported.
fn runs_ended_unheard(unit: &mut TrackedUnit, ends: &[&MainProcessEnd], out: &mut Vec<Transition>) {
    for end in ends {
        if unit.phase != Phase::Up {
            let from = unit.unit_state();
            set_state(unit, "start", "running");
            begin_run(unit, from.clone(), end.at, out);
            unit.running = true;
            out.push(transition(unit, TransitionKind::Started, from, end.at));
        }
        let from = unit.unit_state();
        set_state(unit, "start", "post-stop");
        unit.phase = Phase::Stopping;
        unit.running = false;
        crash(unit, from, end.at, Failure::from_ending(end.ending), out);
    }
}

/// A snapshot found another main process running and no start was heard: one crash-respawn
/// cycle (at least) happened while nobody listened.
fn run_not_heard(unit: &mut TrackedUnit, state: &str, now: Micros, out: &mut Vec<Transition>) {
    let from = unit.unit_state();
    if !unit.crash_pending {
        crash(unit, from.clone(), now, Failure::unknown(), out);
    }
    state.clone_into(&mut unit.state);
    unit.phase = Phase::Stopping;
    unit.crashed = true;
    begin_run(unit, from.clone(), now, out);
    unit.running = true;
    out.push(transition(unit, TransitionKind::Started, from, now));
}

fn transition(unit: &TrackedUnit, kind: TransitionKind, from: UnitState, at: Micros) -> Transition {
    Transition::new(
        unit.name.clone(),
        SourceKind::Upstart,
        at,
        kind,
        from,
        unit.unit_state(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WWW: &str = "www";

    /// Every state a 1.13 instance passes through on the way up after `starting`.
    const UP: [&str; 9] = [
        "security-spawning",
        "security",
        "pre-starting",
        "pre-start",
        "spawning",
        "spawned",
        "post-starting",
        "post-start",
        "running",
    ];

    fn kinds(ts: &[Transition]) -> Vec<&'static str> {
        ts.iter()
            .map(|t| match (&t.crash, t.kind) {
                (Some(_), TransitionKind::Failed) if t.gave_up => "crash-gave-up",
                (Some(_), TransitionKind::Failed) => "crash",
                (_, kind) => kind.as_str(),
            })
            .collect()
    }

    fn count(ts: &[Transition], kind: TransitionKind) -> usize {
        ts.iter().filter(|t| t.kind == kind).count()
    }

    fn crashes(ts: &[Transition]) -> usize {
        ts.iter().filter(|t| t.crash.is_some()).count()
    }

    fn event(kind: JobEventKind, env: &[&str]) -> JobEvent {
        let mut full = vec!["JOB=www", "INSTANCE="];
        full.extend_from_slice(env);
        JobEvent::from_env(kind.as_str(), &full).expect("a job event")
    }

    /// A live tracker that knows `www` running as pid 100.
    fn running() -> Tracker {
        let mut tracker = Tracker::new();
        tracker.baseline(InstanceSnapshot {
            unit: WWW.into(),
            goal: "start".into(),
            state: "running".into(),
            main_pid: Some(100),
        });
        tracker.set_live(true);
        tracker
    }

    fn states(tracker: &mut Tracker, unit: &str, states: &[&str], t: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        for (i, s) in states.iter().enumerate() {
            out.extend(tracker.state_changed(unit, s, t + i as u64));
        }
        out
    }

    /// Sequence A: the main process exits 1, Upstart respawns it (1.13, with EventEmitted).
    fn sequence_a(tracker: &mut Tracker, t: u64) -> Vec<Transition> {
        let mut out = states(
            tracker,
            WWW,
            &[
                "stopping",
                "killed",
                "post-stopping",
                "post-stop",
                "starting",
            ],
            t,
        );
        out.extend(tracker.event(&event(JobEventKind::Stopping, &["RESULT=ok"]), t + 5));
        out.extend(states(tracker, WWW, &UP[..6], t + 6));
        out.extend(tracker.event(&event(JobEventKind::Starting, &[]), t + 12));
        out.extend(states(tracker, WWW, &UP[6..], t + 13));
        out.extend(tracker.event(&event(JobEventKind::Started, &[]), t + 16));
        out
    }

    #[test]
    fn a_crash_respawn_is_one_crash_and_one_automatic_restart() {
        let mut tracker = running();
        let out = sequence_a(&mut tracker, 1_000);
        assert_eq!(kinds(&out), ["crash", "restart", "starting", "started"]);
        assert_eq!(out[0].crash.as_deref(), Some("unknown"));
        assert_eq!(out[0].timestamp, 1_000, "dated by StateChanged(stopping)");
        assert_eq!(out[1].restart_cause, Some(RestartCause::Automatic));
        assert_eq!(out[1].timestamp, 1_004, "dated by StateChanged(starting)");
        assert!(out
            .iter()
            .all(|t| t.source == SourceKind::Upstart && t.unit == WWW));
        assert_eq!(out[3].to, UnitState::new("start", "running"));
    }

    #[test]
    fn many_respawns_count_one_crash_and_one_restart_each() {
        let mut tracker = running();
        let mut all = Vec::new();
        for i in 0..12 {
            all.extend(sequence_a(&mut tracker, i * 100));
        }
        assert_eq!(crashes(&all), 12);
        assert_eq!(count(&all, TransitionKind::Restart), 12);
        assert_eq!(count(&all, TransitionKind::Starting), 12);
        assert_eq!(
            count(&all, TransitionKind::Stopped),
            0,
            "a respawn is no stop"
        );
    }

    #[test]
    fn upstart_1_5_without_event_emitted_counts_the_same() {
        let mut tracker = running();
        let mut out = states(
            &mut tracker,
            WWW,
            // 1.12 and older: no *-ing states, no EventEmitted.
            &["stopping", "killed", "post-stop", "starting", "pre-start"],
            10,
        );
        out.extend(states(
            &mut tracker,
            WWW,
            &["spawned", "post-start", "running"],
            20,
        ));
        assert_eq!(kinds(&out), ["crash", "restart", "starting", "started"]);
    }

    #[test]
    fn b_the_respawn_limit_is_a_final_crash_and_gives_up() {
        let mut tracker = running();
        let mut out = sequence_a(&mut tracker, 0);
        out.extend(tracker.failed(WWW, 0, 500));
        tracker.goal_changed(WWW, "stop");
        out.extend(states(
            &mut tracker,
            WWW,
            &[
                "stopping",
                "killed",
                "post-stopping",
                "post-stop",
                "waiting",
            ],
            501,
        ));
        out.extend(tracker.instance_removed(WWW, 510));
        let failed = ["RESULT=failed", "PROCESS=respawn"];
        out.extend(tracker.event(&event(JobEventKind::Stopping, &failed), 511));
        out.extend(tracker.event(&event(JobEventKind::Stopped, &failed), 512));
        assert_eq!(
            kinds(&out),
            ["crash", "restart", "starting", "started", "crash-gave-up"]
        );
        let last = &out[4];
        assert_eq!(last.crash.as_deref(), Some("unknown"));
        assert_eq!(last.result.as_deref(), Some("failed"));
        // Followed down: from the state it failed in to the one Upstart left it in, dated by
        // Failed(0).
        assert_eq!(last.from, UnitState::new("start", "running"));
        assert_eq!(last.to, UnitState::new("stop", "waiting"));
        assert_eq!(last.timestamp, 500);
        assert!(tracker.contains(WWW), "a crashed instance is remembered");
    }

    #[test]
    fn c_a_segfault_without_respawn_is_one_crash_with_its_signal() {
        let mut tracker = running();
        let mut out = tracker.failed(WWW, 2816, 50);
        tracker.goal_changed(WWW, "stop");
        out.extend(states(
            &mut tracker,
            WWW,
            &["stopping", "killed", "post-stop", "waiting"],
            51,
        ));
        out.extend(tracker.instance_removed(WWW, 60));
        let env = ["RESULT=failed", "PROCESS=main", "EXIT_SIGNAL=SEGV"];
        out.extend(tracker.event(&event(JobEventKind::Stopping, &env), 61));
        out.extend(tracker.event(&event(JobEventKind::Stopped, &env), 62));
        assert_eq!(kinds(&out), ["crash"]);
        assert_eq!(out[0].crash.as_deref(), Some("signal"));
        assert_eq!(
            out[0].exit,
            Some(ExitCause {
                code: ExitCode::Killed,
                status: 11
            })
        );
        assert_eq!(out[0].timestamp, 50);
        // Started again by hand later: a restart, by someone else.
        tracker.instance_added(WWW);
        tracker.goal_changed(WWW, "start");
        let out = states(&mut tracker, WWW, &["starting"], 100);
        assert_eq!(kinds(&out), ["restart", "starting"]);
        assert_eq!(out[0].restart_cause, Some(RestartCause::External));
    }

    #[test]
    fn d_initctl_restart_is_a_stop_and_a_start_not_a_crash() {
        let mut tracker = running();
        tracker.goal_changed(WWW, "stop");
        let mut out = states(
            &mut tracker,
            WWW,
            &["pre-stopping", "pre-stop", "stopping"],
            10,
        );
        tracker.goal_changed(WWW, "start");
        out.extend(states(
            &mut tracker,
            WWW,
            &["killed", "post-stopping", "post-stop", "starting"],
            13,
        ));
        out.extend(tracker.event(&event(JobEventKind::Stopping, &["RESULT=ok"]), 17));
        out.extend(states(&mut tracker, WWW, &UP, 18));
        out.extend(tracker.event(&event(JobEventKind::Starting, &[]), 30));
        out.extend(tracker.event(&event(JobEventKind::Started, &[]), 31));
        assert_eq!(kinds(&out), ["stopping", "stopped", "starting", "started"]);
    }

    #[test]
    fn e_initctl_stop_is_a_stop() {
        let mut tracker = running();
        tracker.goal_changed(WWW, "stop");
        let mut out = states(
            &mut tracker,
            WWW,
            &[
                "pre-stopping",
                "pre-stop",
                "stopping",
                "killed",
                "post-stopping",
                "post-stop",
                "waiting",
            ],
            10,
        );
        out.extend(tracker.instance_removed(WWW, 20));
        out.extend(tracker.event(&event(JobEventKind::Stopping, &["RESULT=ok"]), 21));
        out.extend(tracker.event(&event(JobEventKind::Stopped, &["RESULT=ok"]), 22));
        assert_eq!(kinds(&out), ["stopping", "stopped"]);
        assert!(
            !tracker.contains(WWW),
            "a cleanly stopped instance is forgotten"
        );
        // Started again: a plain start.
        tracker.instance_added(WWW);
        tracker.goal_changed(WWW, "start");
        let out = states(&mut tracker, WWW, &["starting"], 30);
        assert_eq!(kinds(&out), ["starting"]);
    }

    #[test]
    fn a_clean_exit_without_respawn_is_no_crash() {
        let mut tracker = running();
        // Upstart changes the goal itself when a non-respawning main process exits 0.
        tracker.goal_changed(WWW, "stop");
        let out = states(&mut tracker, WWW, &["stopping", "post-stop", "waiting"], 5);
        assert_eq!(kinds(&out), ["stopping", "stopped"]);
    }

    #[test]
    fn a_respawn_during_post_start_uses_the_respawn_goal() {
        let mut tracker = running();
        tracker.goal_changed(WWW, "respawn");
        let mut out = states(&mut tracker, WWW, &["stopping", "post-stop"], 5);
        tracker.goal_changed(WWW, "start");
        out.extend(states(&mut tracker, WWW, &["starting", "running"], 8));
        assert_eq!(kinds(&out), ["crash", "restart", "starting", "started"]);
        assert_eq!(out[1].restart_cause, Some(RestartCause::Automatic));
    }

    #[test]
    fn a_cancelled_stop_goes_on_running() {
        let mut tracker = running();
        tracker.goal_changed(WWW, "stop");
        let mut out = states(&mut tracker, WWW, &["pre-stopping", "pre-stop"], 5);
        tracker.goal_changed(WWW, "start");
        out.extend(states(&mut tracker, WWW, &["running"], 7));
        assert_eq!(kinds(&out), ["stopping", "started"]);
        // And a later crash is a crash again.
        let out = states(&mut tracker, WWW, &["stopping"], 9);
        assert_eq!(kinds(&out), ["crash"]);
    }

    #[test]
    fn a_failing_post_stop_after_a_requested_stop_is_no_crash() {
        let mut tracker = running();
        tracker.goal_changed(WWW, "stop");
        let mut out = states(&mut tracker, WWW, &["stopping", "post-stop"], 5);
        out.extend(tracker.failed(WWW, 1, 7));
        out.extend(states(&mut tracker, WWW, &["waiting"], 8));
        assert_eq!(kinds(&out), ["stopping", "stopped"]);
    }

    #[test]
    fn a_failed_pre_start_is_a_crash_with_its_exit_code() {
        let mut tracker = Tracker::new();
        tracker.set_live(true);
        tracker.instance_added(WWW);
        tracker.goal_changed(WWW, "start");
        let mut out = states(&mut tracker, WWW, &["starting", "pre-start"], 1);
        out.extend(tracker.failed(WWW, 3, 3));
        tracker.goal_changed(WWW, "stop");
        out.extend(states(&mut tracker, WWW, &["stopping", "waiting"], 4));
        assert_eq!(kinds(&out), ["starting", "crash"]);
        assert_eq!(out[1].crash.as_deref(), Some("exit-code"));
        assert_eq!(out[1].exit.map(|e| e.status), Some(3));
        let spawn = Tracker::new().failed(WWW, -1, 1);
        assert_eq!(spawn[0].crash.as_deref(), Some("failed"));
    }

    #[test]
    fn instances_are_tracked_each_on_their_own() {
        let mut tracker = Tracker::new();
        tracker.set_live(true);
        let eth0 = "network-interface (eth0)";
        let eth1 = "network-interface (eth1)";
        for unit in [eth0, eth1] {
            tracker.instance_added(unit);
            tracker.goal_changed(unit, "start");
            states(&mut tracker, unit, &["starting", "running"], 1);
        }
        let mut out = states(&mut tracker, eth0, &["stopping", "post-stop"], 10);
        out.extend(states(&mut tracker, eth0, &["starting", "running"], 12));
        assert_eq!(kinds(&out), ["crash", "restart", "starting", "started"]);
        assert!(out.iter().all(|t| t.unit == eth0));
        let mut event = JobEvent::from_env(
            "stopping",
            &["JOB=network-interface", "INSTANCE=eth1", "RESULT=ok"],
        )
        .expect("a job event");
        assert_eq!(event.unit(), eth1);
        event.kind = JobEventKind::Stopped;
        assert!(
            tracker.event(&event, 20).is_empty(),
            "live: events add nothing"
        );
    }

    #[test]
    fn live_events_add_a_failure_no_signal_reported_once() {
        let mut tracker = running();
        tracker.goal_changed(WWW, "stop");
        let out = states(&mut tracker, WWW, &["stopping"], 5);
        assert_eq!(kinds(&out), ["stopping"]);
        // An asked-for stop whose post-stop failed is no crash.
        let env = ["RESULT=failed", "PROCESS=post-stop", "EXIT_STATUS=1"];
        assert!(tracker
            .event(&event(JobEventKind::Stopping, &env), 6)
            .is_empty());

        // An instance whose Failed signal never came: the events say it, once.
        let mut tracker = Tracker::new();
        tracker.set_live(true);
        tracker.instance_added(WWW);
        let env = ["RESULT=failed", "PROCESS=main", "EXIT_STATUS=2"];
        let mut out = tracker.event(&event(JobEventKind::Stopping, &env), 7);
        out.extend(tracker.event(&event(JobEventKind::Stopped, &env), 8));
        assert_eq!(kinds(&out), ["crash"]);
        assert_eq!(out[0].crash.as_deref(), Some("exit-code"));
    }

    #[test]
    fn a_late_stopping_event_is_not_pinned_on_the_next_run() {
        let mut tracker = running();
        let mut out = states(&mut tracker, WWW, &["stopping", "post-stop", "starting"], 1);
        // EventEmitted(stopping RESULT=failed) of the old run, after the new run began.
        let env = ["RESULT=failed", "PROCESS=main", "EXIT_STATUS=1"];
        out.extend(tracker.event(&event(JobEventKind::Stopping, &env), 9));
        assert_eq!(kinds(&out), ["crash", "restart", "starting"]);
    }

    #[test]
    fn hook_events_alone_follow_sequences_a_to_e() {
        let mut tracker = Tracker::new();
        let ev = |kind, env: &[&str]| event(kind, env);
        let feed = |tracker: &mut Tracker, events: &[JobEvent], t: u64| {
            let mut out = Vec::new();
            for (i, e) in events.iter().enumerate() {
                out.extend(tracker.event(e, t + i as u64));
            }
            out
        };
        let start = [
            ev(JobEventKind::Starting, &[]),
            ev(JobEventKind::Started, &[]),
        ];
        assert_eq!(
            kinds(&feed(&mut tracker, &start, 0)),
            ["starting", "started"]
        );

        // A: stopping RESULT=ok, starting: a crash dated by the stopping, then the restart.
        let a = [
            ev(JobEventKind::Stopping, &["RESULT=ok"]),
            ev(JobEventKind::Starting, &[]),
            ev(JobEventKind::Started, &[]),
        ];
        let out = feed(&mut tracker, &a, 10);
        assert_eq!(
            kinds(&out),
            ["stopping", "crash", "restart", "starting", "started"]
        );
        assert_eq!(out[1].timestamp, 10);
        assert_eq!(out[2].restart_cause, Some(RestartCause::Automatic));

        // C: RESULT=failed on stopping and stopped counts once, with its cause.
        let failed = ["RESULT=failed", "PROCESS=main", "EXIT_STATUS=1"];
        let c = [
            ev(JobEventKind::Stopping, &failed),
            ev(JobEventKind::Stopped, &failed),
        ];
        let out = feed(&mut tracker, &c, 20);
        assert_eq!(kinds(&out), ["crash"]);
        assert_eq!(out[0].crash.as_deref(), Some("exit-code"));
        assert_eq!(out[0].exit.map(|e| e.status), Some(1));

        // Started again by hand, then B: the respawn limit.
        let out = feed(&mut tracker, &start, 30);
        assert_eq!(kinds(&out), ["restart", "starting", "started"]);
        assert_eq!(out[0].restart_cause, Some(RestartCause::External));
        let limit = ["RESULT=failed", "PROCESS=respawn"];
        let b = [
            ev(JobEventKind::Stopping, &limit),
            ev(JobEventKind::Stopped, &limit),
        ];
        assert_eq!(kinds(&feed(&mut tracker, &b, 40)), ["crash-gave-up"]);

        // E: stop on request, with stopped: no crash, and the next start is a plain start.
        feed(&mut tracker, &start, 50);
        let e = [
            ev(JobEventKind::Stopping, &["RESULT=ok"]),
            ev(JobEventKind::Stopped, &["RESULT=ok"]),
        ];
        assert_eq!(kinds(&feed(&mut tracker, &e, 60)), ["stopping", "stopped"]);
        assert_eq!(
            kinds(&feed(&mut tracker, &start, 70)),
            ["starting", "started"]
        );

        // Duplicates (a hook and EventEmitted both heard) add nothing.
        assert!(feed(&mut tracker, &start, 80).is_empty());
    }

    #[test]
    fn the_hook_alone_leaves_up_unknown_until_it_reports_started() {
        let mut tracker = Tracker::new();
        let starting = tracker.event(&event(JobEventKind::Starting, &[]), 1);
        assert_eq!(kinds(&starting), ["starting"]);
        assert!(starting[0].up_unknown, "no started heard from the hook yet");
        let mut out = tracker.event(&event(JobEventKind::Stopping, &["RESULT=ok"]), 2);
        out.extend(tracker.event(&event(JobEventKind::Starting, &[]), 3));
        assert_eq!(kinds(&out), ["stopping", "crash", "restart", "starting"]);
        assert!(out
            .iter()
            .all(|t| t.up_unknown == (t.kind == TransitionKind::Starting)));
        // A hook run for `started` too says when a run is up; from then on, starting is no
        // longer a guess.
        tracker.event(&event(JobEventKind::Started, &[]), 4);
        tracker.event(&event(JobEventKind::Stopping, &["RESULT=ok"]), 5);
        let out = tracker.event(&event(JobEventKind::Starting, &[]), 6);
        assert!(out.iter().all(|t| !t.up_unknown), "{out:?}");
        // Live, the Instance signals say it.
        let mut tracker = running();
        assert!(sequence_a(&mut tracker, 10).iter().all(|t| !t.up_unknown));
    }

    #[test]
    fn a_failure_heard_before_a_gap_is_reported_where_it_was_last_seen() {
        let mut tracker = running();
        assert!(
            tracker.failed(WWW, 256 + 1, 5).is_empty(),
            "followed down first"
        );
        // The connection goes before the instance comes to rest; the snapshot says the rest.
        let out = tracker.reconcile(Vec::new(), &[], 9);
        assert_eq!(kinds(&out), ["crash"]);
        assert!(!out[0].inferred, "the failure was heard");
        assert_eq!(out[0].timestamp, 5);
        assert_eq!(out[0].crash.as_deref(), Some("signal"));
        assert_eq!(
            out[0].to,
            UnitState::new("stop", "waiting"),
            "gone: at rest"
        );
        // Found up again after the gap: a new run, which the failed one does not hide.
        let mut tracker = running();
        tracker.failed(WWW, 1, 5);
        let snapshot = InstanceSnapshot {
            unit: WWW.into(),
            goal: "start".into(),
            state: "running".into(),
            main_pid: Some(101),
        };
        let out = tracker.reconcile(vec![snapshot], &[], 9);
        assert_eq!(kinds(&out), ["crash", "restart", "starting", "started"]);
        assert!(!out[0].inferred && out[1..].iter().all(|t| t.inferred));
        // And a failure that a new start overtakes is reported before it.
        let mut tracker = running();
        tracker.failed(WWW, 2, 5);
        tracker.goal_changed(WWW, "stop");
        let mut out = states(&mut tracker, WWW, &["stopping", "post-stop"], 6);
        tracker.goal_changed(WWW, "start");
        out.extend(states(&mut tracker, WWW, &["starting"], 8));
        assert_eq!(kinds(&out), ["crash", "restart", "starting"]);
        assert_eq!(out[0].to, UnitState::new("start", "starting"));
        assert_eq!(out[1].restart_cause, Some(RestartCause::External));
    }

    #[test]
    fn a_changed_pid_between_snapshots_is_a_restart_not_heard() {
        let mut tracker = running();
        let snapshot = |pid| InstanceSnapshot {
            unit: WWW.into(),
            goal: "start".into(),
            state: "running".into(),
            main_pid: Some(pid),
        };
        assert!(tracker.reconcile(vec![snapshot(100)], &[], 5).is_empty());
        let out = tracker.reconcile(vec![snapshot(200)], &[], 10);
        assert_eq!(kinds(&out), ["crash", "restart", "starting", "started"]);
        assert!(out.iter().all(|t| t.inferred));
        assert_eq!(out[1].restart_cause, Some(RestartCause::Automatic));
        // A cycle that was heard is not counted again.
        let mut heard = sequence_a(&mut tracker, 20);
        heard.extend(tracker.reconcile(vec![snapshot(300)], &[], 40));
        assert_eq!(crashes(&heard), 1);
        // Heard, its pid read when it reached running; then one missed: counted.
        let mut heard = sequence_a(&mut tracker, 50);
        tracker.main_pid(WWW, 400);
        heard.extend(tracker.reconcile(vec![snapshot(500)], &[], 70));
        assert_eq!(crashes(&heard), 2);
        assert!(heard.last().is_some_and(|t| t.inferred));
    }

    fn gap_end(at: u64, pid: u32, ending: Ending) -> MainProcessEnd {
        MainProcessEnd {
            at,
            unit: WWW.into(),
            pid,
            ending,
        }
    }

    #[test]
    fn the_kernel_log_counts_every_run_that_ended_in_a_gap() {
        let mut tracker = running();
        let snapshot = |state: &str, pid| InstanceSnapshot {
            unit: WWW.into(),
            goal: "start".into(),
            state: state.into(),
            main_pid: pid,
        };
        assert!(tracker
            .reconcile(vec![snapshot("running", Some(100))], &[], 5)
            .is_empty());
        let ends = [
            gap_end(6, 100, Ending::Exited(1)),
            gap_end(7, 101, Ending::Killed(Some(11))),
            gap_end(8, 102, Ending::Exited(2)),
            MainProcessEnd {
                unit: "other".into(),
                ..gap_end(8, 7, Ending::Exited(1))
            },
        ];
        let out = tracker.reconcile(vec![snapshot("running", Some(103))], &ends, 10);
        assert_eq!(crashes(&out), 3, "{:?}", kinds(&out));
        assert_eq!(count(&out, TransitionKind::Restart), 3);
        assert!(out.iter().all(|t| t.inferred));
        let reasons: Vec<_> = out.iter().filter_map(|t| t.crash.as_deref()).collect();
        assert_eq!(reasons, ["exit-code", "signal", "exit-code"]);
        let crash_times: Vec<_> = out
            .iter()
            .filter(|t| t.kind == TransitionKind::Failed)
            .map(|t| t.timestamp)
            .collect();
        assert_eq!(crash_times, [6, 7, 8]);
        assert!(out
            .iter()
            .filter(|t| t.kind == TransitionKind::Restart)
            .all(|t| t.restart_cause == Some(RestartCause::Automatic)));
        assert_eq!(out.last().map(|t| t.kind), Some(TransitionKind::Started));

        // Found respawning, its pid gone: every end a crash, the restart still to come.
        let mut tracker = running();
        tracker.reconcile(vec![snapshot("running", Some(100))], &[], 5);
        let ends = [
            gap_end(6, 100, Ending::Exited(1)),
            gap_end(7, 101, Ending::Exited(1)),
        ];
        let out = tracker.reconcile(vec![snapshot("post-stop", None)], &ends, 10);
        assert_eq!(
            (crashes(&out), count(&out, TransitionKind::Restart)),
            (2, 1)
        );
        let out = states(&mut tracker, WWW, &["starting", "running"], 11);
        assert_eq!(kinds(&out), ["restart", "starting", "started"]);

        // A stop by SIGTERM is Upstart's own; with nothing else logged, the pid still tells one.
        let mut tracker = running();
        tracker.reconcile(vec![snapshot("running", Some(100))], &[], 5);
        let ends = [gap_end(6, 100, Ending::Killed(Some(15)))];
        let out = tracker.reconcile(vec![snapshot("running", Some(101))], &ends, 10);
        assert_eq!(kinds(&out), ["crash", "restart", "starting", "started"]);
        assert_eq!(out[0].crash.as_deref(), Some("unknown"));

        // Gone after failing again and again: every end a crash, no stop.
        let mut tracker = running();
        let ends = [
            gap_end(6, 100, Ending::Exited(1)),
            gap_end(7, 101, Ending::Exited(1)),
        ];
        let out = tracker.reconcile(Vec::new(), &ends, 10);
        assert_eq!(crashes(&out), 2, "{:?}", kinds(&out));
        assert_eq!(count(&out, TransitionKind::Restart), 1);
        assert_eq!(count(&out, TransitionKind::Stopped), 0);
    }

    #[test]
    fn a_gap_that_ended_a_run_is_reconciled() {
        let mut tracker = running();
        // Gone while away: Upstart frees only instances it was asked to stop, or that failed;
        // which of the two is lost, and a stop is the claim that inflates nothing.
        let out = tracker.reconcile(Vec::new(), &[], 10);
        assert_eq!(kinds(&out), ["stopping", "stopped"]);
        assert!(out.iter().all(|t| t.inferred));
        assert!(!tracker.contains(WWW));
        let mut tracker = running();
        let out = tracker.reconcile(
            vec![InstanceSnapshot {
                unit: WWW.into(),
                goal: "stop".into(),
                state: "stopping".into(),
                main_pid: None,
            }],
            &[],
            10,
        );
        assert_eq!(kinds(&out), ["stopping"]);
        // A job that started while away.
        let out = tracker.reconcile(
            vec![
                InstanceSnapshot {
                    unit: WWW.into(),
                    goal: "start".into(),
                    state: "running".into(),
                    main_pid: Some(7),
                },
                InstanceSnapshot {
                    unit: "new".into(),
                    goal: "start".into(),
                    state: "running".into(),
                    main_pid: Some(8),
                },
            ],
            &[],
            20,
        );
        assert_eq!(kinds(&out), ["stopped", "starting", "started"]);
        assert!(tracker.contains("new"), "a new instance is taken as it is");
    }

    #[test]
    fn an_instance_found_respawning_counts_its_next_start_as_a_restart() {
        let mut tracker = Tracker::new();
        tracker.baseline(InstanceSnapshot {
            unit: WWW.into(),
            goal: "start".into(),
            state: "post-stop".into(),
            main_pid: None,
        });
        tracker.set_live(true);
        let out = states(&mut tracker, WWW, &["starting", "running"], 1);
        assert_eq!(kinds(&out), ["restart", "starting", "started"]);
        assert_eq!(
            crashes(&out),
            0,
            "the crash happened before crashwatch started"
        );
    }

    /// The signals a real Upstart 1.13.2 sent a peer-to-peer client, with its own count of what
    /// happened in the header (see tests/data/).
    const RECORDED: &str = include_str!("../../../tests/data/upstart-1.13.2-session.txt");

    /// The quoted strings of a recorded line's `args=(…)`, or its one integer.
    fn recorded_args(line: &str) -> (Vec<&str>, Option<i32>) {
        let args = line.split_once(" args=(").map_or("", |(_, a)| a);
        let args = args.strip_suffix(')').unwrap_or(args);
        let quoted = args.split('"').skip(1).step_by(2).collect();
        (quoted, args.parse().ok())
    }

    /// Feeds every recorded signal to a live tracker, as the source would.
    fn replay_recorded(tracker: &mut Tracker) -> Vec<Transition> {
        let mut out = Vec::new();
        for line in RECORDED.lines().filter(|l| l.contains(" signal ")) {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name))
                    .unwrap_or_default()
            };
            let at = line
                .split_once(' ')
                .and_then(|(t, _)| t.replace('.', "").parse::<Micros>().ok())
                .expect("a timestamp");
            let (strings, number) = recorded_args(line);
            let instance = super::super::names::unit_from_instance_path(field("path="));
            match (field("member="), instance, strings.as_slice(), number) {
                ("InstanceAdded", _, [path], _) => {
                    let unit = super::super::names::unit_from_instance_path(path).expect("unit");
                    tracker.instance_added(&unit);
                }
                ("InstanceRemoved", _, [path], _) => {
                    let unit = super::super::names::unit_from_instance_path(path).expect("unit");
                    out.extend(tracker.instance_removed(&unit, at));
                }
                ("GoalChanged", Some(unit), [goal], _) => tracker.goal_changed(&unit, goal),
                ("StateChanged", Some(unit), [state], _) => {
                    out.extend(tracker.state_changed(&unit, state, at));
                }
                ("Failed", Some(unit), [], Some(status)) => {
                    out.extend(tracker.failed(&unit, status, at));
                }
                ("EventEmitted", _, [name, env @ ..], _) => {
                    if let Some(event) = JobEvent::from_env(name, env) {
                        out.extend(tracker.event(&event, at));
                    }
                }
                other => panic!("unread line {other:?}: {line}"),
            }
        }
        out
    }

    #[test]
    fn the_recorded_session_of_a_real_upstart_counts_what_upstart_says() {
        let mut tracker = Tracker::new();
        tracker.set_live(true);
        let out = replay_recorded(&mut tracker);
        let of = |unit: &str| -> Vec<Transition> {
            out.iter().filter(|t| t.unit == unit).cloned().collect()
        };
        // The header's truth: (unit, runs, crashes, restarts), each restart automatic.
        for (unit, runs, crashed, restarted) in [
            ("www", 6, 6, 5),
            ("steady", 4, 0, 0),
            ("worker", 9, 8, 8),
            ("net (eth0)", 7, 6, 6),
            ("crashonce", 1, 1, 0),
            ("badexec", 1, 1, 0),
        ] {
            let ts = of(unit);
            assert_eq!(
                count(&ts, TransitionKind::Starting),
                runs,
                "{unit}: {ts:#?}"
            );
            assert_eq!(crashes(&ts), crashed, "{unit}: {:?}", kinds(&ts));
            assert_eq!(count(&ts, TransitionKind::Restart), restarted, "{unit}");
            assert!(ts
                .iter()
                .filter(|t| t.kind == TransitionKind::Restart)
                .all(|t| t.restart_cause == Some(RestartCause::Automatic)));
            // Every instance ends where Upstart left it: stopped, but for the steady one.
            let last = ts.last().expect("transitions");
            let end = if unit == "steady" {
                UnitState::new("start", "running")
            } else {
                UnitState::new("stop", "waiting")
            };
            assert_eq!(last.to, end, "{unit}: {last:?}");
            assert_eq!(
                ts.iter().filter(|t| t.gave_up).count(),
                usize::from(unit == "www")
            );
        }
        assert_eq!(count(&of("steady"), TransitionKind::Stopped), 3);
        // The respawn limit: the last run's crash, from where it failed to where it ended.
        let www = of("www");
        let gave_up = www.last().expect("the last crash");
        assert!(gave_up.gave_up && gave_up.crash.as_deref() == Some("unknown"));
        assert_eq!(gave_up.from, UnitState::new("start", "running"));
        assert_eq!(
            gave_up.timestamp, 1_796_329_232_220_342,
            "dated by Failed(0)"
        );
        let segv = of("crashonce").pop().expect("a crash");
        assert_eq!(
            (segv.crash.as_deref(), segv.exit.map(|e| e.status)),
            (Some("signal"), Some(11))
        );
        let spawn = of("badexec").pop().expect("a crash");
        assert_eq!(spawn.crash.as_deref(), Some("failed"));
        assert_eq!(spawn.from, UnitState::new("start", "spawned"));
        assert_eq!(spawn.exit, None);
    }

    #[test]
    fn the_recorded_session_counts_the_same_from_the_job_events_alone() {
        // Without Instance signals (a gap, or the hook) the events drive the lifecycle: an
        // `initctl restart` then reads as a crash-respawn, but every crash and restart counts.
        let mut tracker = Tracker::new();
        let mut out = Vec::new();
        for line in RECORDED
            .lines()
            .filter(|l| l.contains("member=EventEmitted"))
        {
            let (strings, _) = recorded_args(line);
            let event = JobEvent::from_env(strings[0], &strings[1..]).expect("a job event");
            out.extend(tracker.event(&event, 0));
        }
        for (unit, crashed, restarted) in [
            ("www", 6, 5),
            ("steady", 3, 3),
            ("worker", 8, 8),
            ("net (eth0)", 6, 6),
            ("crashonce", 1, 0),
            ("badexec", 1, 0),
        ] {
            let ts: Vec<Transition> = out.iter().filter(|t| t.unit == unit).cloned().collect();
            assert_eq!(crashes(&ts), crashed, "{unit}: {:?}", kinds(&ts));
            assert_eq!(count(&ts, TransitionKind::Restart), restarted, "{unit}");
            let last = ts.last().expect("transitions");
            let down = last.to == UnitState::new("stop", "waiting");
            assert_eq!(down, unit != "steady", "{unit}: {last:?}");
        }
    }

    #[test]
    fn event_environments_are_read_like_upstart_writes_them() {
        let e = JobEvent::from_env(
            "stopped",
            &[
                "JOB=www",
                "INSTANCE=",
                "RESULT=failed",
                "PROCESS=main",
                "EXIT_SIGNAL=SEGV",
                "JOB=exported",
                "A=b=c",
            ],
        )
        .expect("a job event");
        assert_eq!(e.kind, JobEventKind::Stopped);
        assert_eq!(e.unit(), "www");
        assert_eq!(e.exit_signal.as_deref(), Some("SEGV"));
        let failure = e.failure().expect("failed");
        assert_eq!(failure.reason, "signal");
        assert_eq!(failure.exit.map(|x| x.status), Some(11));
        assert_eq!(JobEvent::from_env::<&str>("startup", &[]), None);
        assert_eq!(JobEvent::from_env("starting", &["INSTANCE=x"]), None);
        assert_eq!(signal_number("SIGKILL"), Some(9));
        assert_eq!(signal_number("40"), Some(40));
        assert_eq!(signal_number("NOPE"), None);
        let status = Failure::from_status(1);
        assert_eq!((status.reason, status.gave_up), ("exit-code", false));
    }
}
