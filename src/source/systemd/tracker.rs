//! Turns systemd's property changes into transitions, counting each start, crash and restart once.
//!
//! systemd does not send a transcript of states: it merges queued changes into one signal, may
//! skip intermediate states, and every start passes through a brief `inactive/dead` that is not a
//! stop. So the tracker rests its counts on the two values that only move once per event:
//!
//! - `InvocationID` changes on every start, however the unit was started: a new one is one start.
//! - `NRestarts` grows by one for every automatic (`Restart=`) restart systemd schedules. It resets
//!   on a manual start, so only its increases count. When it grew by more than the restarts we
//!   heard, the cycles we did not hear are added as inferred crashes and restarts.
//!
//! A *crash* is a stop nobody asked for: the unit failed, or went into `auto-restart`, or went
//! down with a Result other than success, while no stop job was attached to it. A *restart* is a
//! start that follows a crash, whoever started it: that is how a loop driven by a cron job, with
//! `Restart=no` and `NRestarts` stuck at zero, is still caught.
//!
//! At start-up most units are simply up, or simply down, and reading each one's `InvocationID`
//! and `NRestarts` costs two calls per unit. A unit listed `active`, or `inactive/dead`, with no
//! job is taken from the listing alone ([`Tracker::listed`]); its first reading (the first signal
//! pair, or a resync) completes its baseline. The first signal after the listing normally says
//! what changed first, so its `InvocationID` and `NRestarts` are the listed run's: what a read at
//! start-up would have found. Only when systemd merged a whole cycle into that signal (its bus was
//! congested), or crashwatch was away before it, is the run in it a later one, and then the
//! reading's [`RunStamps`] show it: a unit listed `active` has entered `active` again since the
//! listing (leaving and coming back is the only way to move `ActiveEnterTimestamp`; a reload does
//! not), a unit listed `inactive` has left `inactive` (only a start does that). Such a reading
//! counts the least it proves: a start, and one crash and restart when `NRestarts` is above 0 (an
//! automatic restart began that run). A later run of a unit listed `active` that has not reached
//! `active` at its first reading is taken for the listed one: that cycle is missed.
//! `ExecMainStartTimestamp` is no help there, since it also moves when a running service names a
//! new main process (`MAINPID=`).
//!
//! The tracker is pure: values in, transitions out, time passed in, so it is tested without a bus.

use std::collections::{HashMap, VecDeque};

use super::verdict::{self, Ending, Sequel, Verdict};
use crate::event::{
    ExitCause, ExitCode, Micros, SourceKind, Transition, TransitionKind, UnitState,
};

/// The `org.freedesktop.systemd1.Service` properties the tracker reads. `None`: not in the signal.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceProps {
    /// Automatic restarts scheduled since the last manual start.
    pub n_restarts: Option<u32>,
    /// The verdict on the last run: success, exit-code, signal, core-dump, timeout, ...
    pub result: Option<String>,
    /// `CLD_*` code of the main process's end.
    pub exec_main_code: Option<i32>,
    /// Exit status or signal number of the main process.
    pub exec_main_status: Option<i32>,
    /// When the main process started (µs, realtime).
    pub exec_main_start_timestamp: Option<u64>,
    /// When the main process ended (µs, realtime).
    pub exec_main_exit_timestamp: Option<u64>,
}

impl ServiceProps {
    /// Overlays the values present in `newer`, so two signals merged read as one.
    pub fn merge(&mut self, newer: ServiceProps) {
        macro_rules! take {
            ($($field:ident),*) => { $( if newer.$field.is_some() { self.$field = newer.$field; } )* };
        }
        take!(
            n_restarts,
            result,
            exec_main_code,
            exec_main_status,
            exec_main_start_timestamp,
            exec_main_exit_timestamp
        );
    }
}

/// The `org.freedesktop.systemd1.Unit` properties the tracker reads. `None`: not in the signal.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UnitProps {
    /// active, inactive, failed, activating, deactivating, reloading, maintenance, refreshing.
    pub active_state: Option<String>,
    /// running, dead, auto-restart, exited, ... (unknown values are accepted).
    pub sub_state: Option<String>,
    /// 16 bytes, or empty when the unit never ran.
    pub invocation_id: Option<Vec<u8>>,
    /// The id of the job attached to the unit; 0 when none.
    pub job_id: Option<u32>,
    /// When ActiveState or SubState last changed (µs, realtime).
    pub state_change_timestamp: Option<u64>,
    /// When the unit last left the inactive state, i.e. began to start (µs, realtime).
    pub inactive_exit_timestamp: Option<u64>,
}

/// A full reading of one unit, as a snapshot returns it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The unit's name, e.g. `crashy.service`.
    pub name: String,
    /// ActiveState.
    pub active_state: String,
    /// SubState.
    pub sub_state: String,
    /// InvocationID, empty when the unit never ran.
    pub invocation_id: Vec<u8>,
    /// NRestarts, for services.
    pub n_restarts: Option<u32>,
}

/// A unit `ListUnits` showed `active` or `inactive/dead` with no job, taken without reading its
/// run and NRestarts: its first reading completes it (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listing {
    /// The unit's name.
    pub name: String,
    /// ActiveState, `active` or `inactive`.
    pub active_state: String,
    /// SubState.
    pub sub_state: String,
    /// When the listing was received, on `CLOCK_MONOTONIC` (µs): systemd's monotonic timestamps
    /// are on the same clock.
    pub listed_at: u64,
}

/// When, on `CLOCK_MONOTONIC` (µs), a reading says the unit last entered `active` and last left
/// `inactive`: what tells a listed unit's first reading from a later run's. `None`: not in the
/// reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStamps {
    /// ActiveEnterTimestampMonotonic.
    pub active_enter: Option<u64>,
    /// InactiveExitTimestampMonotonic.
    pub inactive_exit: Option<u64>,
}

/// What the tracker remembers of one unit between signals.
#[derive(Clone, Debug)]
struct TrackedUnit {
    name: String,
    state: UnitState,
    invocation: Vec<u8>,
    /// Runs seen before the current one. After `daemon-reexec` systemd may report the previous
    /// InvocationID for a moment; seeing it again is not a new run.
    earlier_invocations: VecDeque<Vec<u8>>,
    n_restarts: Option<u32>,
    service: ServiceProps,
    job_id: u32,
    /// A job seen through JobNew and not yet removed; catches stops whose Job property we missed.
    job_pending: bool,
    /// The run whose crash was counted, so `failed` then `auto-restart` is one crash.
    crash_counted_for: Option<Vec<u8>>,
    /// The last run ended in a crash and nothing has started since: the next start is a restart.
    crash_pending: bool,
    /// NRestarts increments not yet matched by a start we heard.
    unstarted_auto_restarts: u32,
    /// Someone asked the current run to stop (a stop or restart job was attached when it went down).
    stop_requested: bool,
    /// A new run began (new InvocationID) but the unit has not left `inactive` yet; its Starting
    /// waits for the state change so it carries systemd's own timestamp.
    start_pending: bool,
    /// The state the unit was in when the pending start began, for the Starting record.
    start_from: UnitState,
    /// The newest InactiveExitTimestamp seen, to tell a fresh one from the previous run's.
    inactive_exit_seen: Micros,
    /// A run's end whose meaning the next signal decides (see [`UndecidedEnd`]).
    undecided_end: Option<UndecidedEnd>,
    /// When the tracker last heard of the unit, by its own clock.
    heard_at: Micros,
    /// The run that was current when the last job was queued: a start job that fails while it
    /// still is, began no run.
    job_queued_in: Option<Vec<u8>>,
    /// Giving up was reported for the current run: a refused start and the `failed` state it
    /// leads to are one give-up.
    gave_up_reported: bool,
    /// For a unit taken from the listing, not read: when it was listed (`CLOCK_MONOTONIC`, µs),
    /// until a reading with its InvocationID completes it. The listed state is `state`.
    listed_at: Option<u64>,
    /// NRestarts was not read: the next value is the baseline, not restarts.
    n_restarts_unread: bool,
}

/// How long an end waits for the signal that says what it meant. systemd sends that signal in
/// the same burst as the end itself; the wait only matters when none comes (a unit that simply
/// exited and stays down), and only delays that record, which keeps systemd's own timestamp.
pub const UNDECIDED_END_WAIT: Micros = 1_000_000;

/// A run that went down to `inactive/dead` with no job attached, before systemd said what that
/// meant. systemd 252 sends such an end ahead of its meaning (both sequences are in
/// docs/systemd-sequences.md), so judging it at once gets two common loops wrong.
#[derive(Clone, Debug)]
struct UndecidedEnd {
    kind: UndecidedKind,
    /// The record to send if the next signal does not change its meaning: a plain stop.
    stop: Transition,
    /// When to send `stop` if no signal for the unit came by then (the tracker's clock).
    deadline: Micros,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UndecidedKind {
    /// The main process exited cleanly. Next `auto-restart`: systemd restarts it by itself
    /// (`Restart=always`), so nobody asked for that exit: a crash. Anything else: a plain stop.
    CleanExit,
    /// The unit left `auto-restart` for `inactive`: the restart job was refused (next `failed`:
    /// systemd gave up, the start limit was hit) or someone stopped the unit (anything else).
    LeftAutoRestart,
}

impl TrackedUnit {
    fn new(name: String) -> TrackedUnit {
        TrackedUnit {
            name,
            state: UnitState::new("inactive", "dead"),
            invocation: Vec::new(),
            earlier_invocations: VecDeque::new(),
            n_restarts: None,
            service: ServiceProps::default(),
            job_id: 0,
            job_pending: false,
            crash_counted_for: None,
            crash_pending: false,
            unstarted_auto_restarts: 0,
            stop_requested: false,
            start_pending: false,
            start_from: UnitState::default(),
            inactive_exit_seen: 0,
            undecided_end: None,
            heard_at: 0,
            job_queued_in: None,
            gave_up_reported: false,
            listed_at: None,
            n_restarts_unread: false,
        }
    }
}

/// How many earlier InvocationIDs a unit remembers.
const EARLIER_INVOCATIONS: usize = 4;

/// SubStates under which systemd waits to restart a unit by itself (252 has `auto-restart`; 254+
/// adds `dead-before-auto-restart`, `failed-before-auto-restart` and `auto-restart-queued`).
fn is_auto_restart(sub: &str) -> bool {
    sub.contains("auto-restart")
}

/// ActiveStates in which the unit is up or coming down from up.
fn is_running_state(active: &str) -> bool {
    matches!(active, "active" | "reloading" | "refreshing")
}

/// Formats an InvocationID the way systemd prints it: 32 lowercase hex digits.
pub fn invocation_hex(id: &[u8]) -> String {
    use std::fmt::Write;
    id.iter()
        .fold(String::with_capacity(id.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Follows every watched unit of one systemd and reports its transitions.
#[derive(Debug, Default)]
pub struct Tracker {
    units: HashMap<String, TrackedUnit>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// How many units are followed.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// Whether no unit is followed.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Whether `unit` is followed.
    pub fn contains(&self, unit: &str) -> bool {
        self.units.contains_key(unit)
    }

    /// Takes a unit's state as it is now, without reporting anything: what happened before
    /// crashwatch started is not counted. A unit found failed or waiting to restart has crashed,
    /// so its next start counts as a restart.
    pub fn baseline(&mut self, snapshot: Snapshot) {
        let mut unit = TrackedUnit::new(snapshot.name.clone());
        let crashed = snapshot.active_state == "failed" || is_auto_restart(&snapshot.sub_state);
        unit.state = UnitState::new(snapshot.active_state, snapshot.sub_state);
        unit.n_restarts = snapshot.n_restarts;
        unit.crash_pending = crashed;
        if crashed {
            unit.crash_counted_for = Some(snapshot.invocation_id.clone());
        }
        unit.invocation = snapshot.invocation_id;
        self.units.insert(snapshot.name, unit);
    }

    /// Takes a unit listed `active` or `inactive/dead` with no job, without its run and
    /// NRestarts: its first reading completes it, and nothing is reported until then.
    pub fn listed(&mut self, listing: Listing) {
        let mut unit = TrackedUnit::new(listing.name.clone());
        unit.state = UnitState::new(listing.active_state, listing.sub_state);
        unit.listed_at = Some(listing.listed_at);
        unit.n_restarts_unread = true;
        self.units.insert(listing.name, unit);
    }

    /// Whether `unit` was taken from the listing and awaits the reading that completes it; only
    /// then are its [`RunStamps`] needed.
    pub fn awaits_reading(&self, unit: &str) -> bool {
        self.units.get(unit).is_some_and(|u| u.listed_at.is_some())
    }

    /// Compares a fresh reading with what the tracker believed, after a gap (a reconnect, or a
    /// queue that overflowed), and reports what must have happened in between.
    pub fn reconcile(&mut self, snapshot: Snapshot, now: Micros) -> Vec<Transition> {
        self.reconcile_stamped(snapshot, RunStamps::default(), now)
    }

    /// [`Tracker::reconcile`], with the reading's [`RunStamps`] for a unit not read before.
    pub fn reconcile_stamped(
        &mut self,
        snapshot: Snapshot,
        stamps: RunStamps,
        now: Micros,
    ) -> Vec<Transition> {
        if !self.units.contains_key(&snapshot.name) {
            self.baseline(snapshot);
            return Vec::new();
        }
        let service = ServiceProps {
            n_restarts: snapshot.n_restarts,
            ..ServiceProps::default()
        };
        let unit = UnitProps {
            active_state: Some(snapshot.active_state),
            sub_state: Some(snapshot.sub_state),
            invocation_id: Some(snapshot.invocation_id),
            ..UnitProps::default()
        };
        self.apply_stamped(&snapshot.name, Some(service), Some(unit), stamps, now)
    }

    /// Forgets every unit `keep` refuses (no longer watched), without reporting anything.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.units.retain(|unit, _| keep(unit));
    }

    /// Records that a job was queued (`JobNew`) for a unit.
    pub fn job_new(&mut self, unit: &str) {
        if let Some(tracked) = self.units.get_mut(unit) {
            tracked.job_pending = true;
            tracked.job_queued_in = Some(tracked.invocation.clone());
        }
    }

    /// Records that a job of a unit finished (`JobRemoved`) with `result` (done, failed,
    /// canceled, ...). A start job that failed with no run of it, after the unit crashed, is
    /// systemd refusing the start (its start limit): whatever keeps starting the unit, Restart=,
    /// a socket or a timer, systemd gave up on it.
    pub fn job_removed(&mut self, unit: &str, result: &str, now: Micros) -> Vec<Transition> {
        let mut out = Vec::new();
        let Some(tracked) = self.units.get_mut(unit) else {
            return out;
        };
        tracked.job_pending = false;
        let queued_in = tracked.job_queued_in.take();
        let refused = result == "failed"
            && queued_in.as_ref() == Some(&tracked.invocation)
            && tracked.crash_pending
            && !tracked.start_pending
            && tracked.undecided_end.is_none()
            && !is_running_state(&tracked.state.active);
        if refused && !tracked.gave_up_reported && verdict::gave_up(true, None) {
            let from = tracked.state.clone();
            let mut t = transition(tracked, TransitionKind::Failed, &from, now);
            t.gave_up = true;
            tracked.gave_up_reported = true;
            tracked.unstarted_auto_restarts = 0;
            out.push(t);
        }
        out
    }

    /// Forgets a unit systemd unloaded, unless its last run crashed: a unit garbage-collected
    /// between the runs of a loop driven from outside must still count its next start as a restart.
    /// Returns `None` when the unit was not followed, else what its undecided end turned out to
    /// be: nothing follows an unloaded unit, so a plain stop.
    pub fn remove(&mut self, unit: &str) -> Option<Vec<Transition>> {
        let tracked = self.units.get_mut(unit)?;
        let mut out = Vec::new();
        settle_as_stop(tracked, &mut out);
        if !tracked.crash_pending {
            self.units.remove(unit);
        }
        Some(out)
    }

    /// The earliest time an undecided end is due to be settled.
    pub fn next_deadline(&self) -> Option<Micros> {
        self.units
            .values()
            .filter_map(|u| u.undecided_end.as_ref().map(|end| end.deadline))
            .min()
    }

    /// Settles every undecided end due at `now`: no signal came to change its meaning.
    pub fn settle_due(&mut self, now: Micros) -> Vec<Transition> {
        let mut out = Vec::new();
        for unit in self.units.values_mut() {
            if unit
                .undecided_end
                .as_ref()
                .is_some_and(|e| e.deadline <= now)
            {
                settle_as_stop(unit, &mut out);
            }
        }
        out
    }

    /// Applies one change of a unit: the Service properties and the Unit properties systemd sent
    /// for it (as a pair, Service first), received at `now`. Returns the transitions, in order.
    pub fn apply(
        &mut self,
        name: &str,
        service: Option<ServiceProps>,
        unit_props: Option<UnitProps>,
        now: Micros,
    ) -> Vec<Transition> {
        self.apply_stamped(name, service, unit_props, RunStamps::default(), now)
    }

    /// [`Tracker::apply`], with the change's [`RunStamps`] for a unit that
    /// [awaits its reading](Tracker::awaits_reading). Without them, the reading is taken to be of
    /// the listed run.
    pub fn apply_stamped(
        &mut self,
        name: &str,
        service: Option<ServiceProps>,
        unit_props: Option<UnitProps>,
        stamps: RunStamps,
        now: Micros,
    ) -> Vec<Transition> {
        let unit = self
            .units
            .entry(name.to_owned())
            .or_insert_with(|| TrackedUnit::new(name.to_owned()));
        let mut out = Vec::new();
        unit.heard_at = now;

        if let Some(listed_at) = unit.listed_at {
            complete_listing(
                unit,
                listed_at,
                service.as_ref(),
                unit_props.as_ref(),
                stamps,
            );
        }
        if let Some(service) = service {
            if let Some(n) = service.n_restarts {
                if !unit.n_restarts_unread {
                    unit.unstarted_auto_restarts = unit
                        .unstarted_auto_restarts
                        .saturating_add(restarts_scheduled(unit.n_restarts.unwrap_or(0), n));
                } else if unit.listed_at.is_none() {
                    unit.n_restarts_unread = false;
                }
                unit.n_restarts = Some(n);
            }
            unit.service.merge(service);
        }

        let Some(props) = unit_props else {
            return out;
        };
        if let Some(job) = props.job_id {
            unit.job_id = job;
        }
        let new_state = UnitState::new(
            props
                .active_state
                .clone()
                .unwrap_or_else(|| unit.state.active.clone()),
            props
                .sub_state
                .clone()
                .unwrap_or_else(|| unit.state.sub.clone()),
        );
        let state_time = props
            .state_change_timestamp
            .filter(|&t| t > 0)
            .unwrap_or(now);

        let new_run = props.invocation_id.as_ref().is_some_and(|id| {
            !id.is_empty() && *id != unit.invocation && !unit.earlier_invocations.contains(id)
        });
        if unit.undecided_end.is_some() {
            decide_end(unit, &new_state, new_run, &mut out);
        }
        if new_run {
            if unit.earlier_invocations.len() == EARLIER_INVOCATIONS {
                unit.earlier_invocations.pop_front();
            }
            let previous = std::mem::take(&mut unit.invocation);
            unit.earlier_invocations.push_back(previous);
            if unit.start_pending {
                // A run began and ended before it ever left `inactive` for us to see.
                emit_start(unit, &mut out, now);
            }
            unit.invocation = props.invocation_id.clone().unwrap_or_default();
            unit.start_pending = true;
            unit.start_from = unit.state.clone();
            unit.stop_requested = false;
            unit.crash_counted_for = None;
            unit.gave_up_reported = false;
        }

        let old_state = std::mem::replace(&mut unit.state, new_state.clone());
        // A timestamp equal to the one seen before belongs to the previous run.
        let fresh_inactive_exit = props
            .inactive_exit_timestamp
            .filter(|&t| t > 0 && t > unit.inactive_exit_seen);
        if let Some(t) = props.inactive_exit_timestamp {
            unit.inactive_exit_seen = unit.inactive_exit_seen.max(t);
        }
        if unit.start_pending {
            // Before a start shows, systemd sends the new InvocationID alone (the state still
            // reads as before, e.g. failed/failed), then the brief inactive/dead: neither is news.
            // A running unit with a new InvocationID is a whole cycle merged away, though.
            let prelude = new_state == old_state && !is_running_state(&new_state.active);
            if prelude || new_state.active == "inactive" {
                return out;
            }
            emit_start(unit, &mut out, fresh_inactive_exit.unwrap_or(state_time));
            if new_state.active == "active" {
                let from = unit.start_from.clone();
                push(&mut out, unit, TransitionKind::Started, &from, state_time);
            } else if new_state.active != "activating" || is_auto_restart(&new_state.sub) {
                // The run's end was merged into the same signal as its start.
                let from = UnitState::new("activating", "start");
                step(unit, &mut out, &from, &new_state, state_time);
            }
            return out;
        }

        if old_state != new_state {
            step(unit, &mut out, &old_state, &new_state, state_time);
        }
        out
    }
}

/// Completes a unit taken from the listing with its first reading that carries an InvocationID.
/// A reading of the listed run (not `active` again since listed `active`, not out of `inactive`
/// since listed `inactive`) gives the run and NRestarts a read at start-up would have given. A
/// reading of a later run leaves the listed run unknown, so the reading's run counts as new,
/// with NRestarts one below the reading's when it is above 0: an automatic restart began that
/// run, after a crash.
fn complete_listing(
    unit: &mut TrackedUnit,
    listed_at: u64,
    service: Option<&ServiceProps>,
    props: Option<&UnitProps>,
    stamps: RunStamps,
) {
    let Some(invocation) = props.and_then(|p| p.invocation_id.as_ref()) else {
        return;
    };
    unit.listed_at = None;
    let n_restarts = service.and_then(|s| s.n_restarts).or(unit.n_restarts);
    let moved = match unit.state.active.as_str() {
        "active" => stamps.active_enter,
        _ => stamps.inactive_exit,
    };
    if moved.is_some_and(|t| t > listed_at) {
        if let Some(n) = n_restarts {
            unit.n_restarts = Some(n.saturating_sub(1));
            unit.n_restarts_unread = false;
        }
    } else {
        unit.invocation = invocation.clone();
    }
}

/// How many automatic restarts systemd scheduled for NRestarts to go from `previous` to `now`.
/// It grows by one per scheduled restart and goes back to 0 on a start systemd did not schedule
/// and on ResetFailed; such a reset is not always heard on its own (a `reset-failed` while the
/// unit waits to restart changes no state), so a smaller value above 0 is a reset followed by
/// that many restarts.
fn restarts_scheduled(previous: u32, now: u32) -> u32 {
    if now >= previous {
        now - previous
    } else {
        now
    }
}

/// Decides what an undecided end meant, now that the unit's next state is known. When that
/// state is the end's own sequel (`auto-restart` after a clean exit, `failed` after the restart
/// was refused), the record says so and takes the state, so it is not judged again as a step.
fn decide_end(unit: &mut TrackedUnit, new: &UnitState, new_run: bool, out: &mut Vec<Transition>) {
    let Some(end) = unit.undecided_end.take() else {
        return;
    };
    let mut t = end.stop;
    let sequel = if !new_run && is_auto_restart(&new.sub) {
        Sequel::RestartScheduled
    } else {
        Sequel::Other
    };
    match end.kind {
        UndecidedKind::CleanExit => {
            let Some(reason) = crash_reason(verdict::decide(sequel)) else {
                out.push(t);
                return;
            };
            t.timestamp = crash_time(unit, t.timestamp, true);
            t.to = new.clone();
            record_crash(unit, &mut t, reason);
        }
        UndecidedKind::LeftAutoRestart
            if !new_run
                && new.active == "failed"
                && verdict::gave_up(true, unit.service.result.as_deref()) =>
        {
            t.kind = TransitionKind::Failed;
            t.to = new.clone();
            t.result = unit.service.result.clone();
            t.gave_up = true;
            // The refused restart was counted in NRestarts but never started.
            unit.unstarted_auto_restarts = 0;
            unit.gave_up_reported = true;
        }
        _ => {
            out.push(t);
            return;
        }
    }
    unit.state = new.clone();
    out.push(t);
}

/// Sends an undecided end as a plain stop: nothing came to say otherwise.
fn settle_as_stop(unit: &mut TrackedUnit, out: &mut Vec<Transition>) {
    if let Some(end) = unit.undecided_end.take() {
        out.push(end.stop);
    }
}

/// Reports the start of the current run: first the crashes and restarts it implies, then Starting.
fn emit_start(unit: &mut TrackedUnit, out: &mut Vec<Transition>, at: Micros) {
    unit.start_pending = false;
    let from = &unit.start_from.clone();
    let pending = u32::from(unit.crash_pending);
    let automatic = unit.unstarted_auto_restarts;
    let restarts = automatic.max(pending);
    // Each automatic restart follows a crash: those beyond the one we heard were merged away.
    let missed = restarts.saturating_sub(pending);
    let cause = verdict::restart_cause(automatic > 0);
    for i in 0..restarts {
        // Only the last restart leads to the run we see now; earlier ones were merged away.
        let last = i + 1 == restarts;
        if i < missed {
            let mut crash = transition(unit, TransitionKind::Failed, from, at);
            crash.crash = Some("unknown".to_owned());
            crash.inferred = true;
            out.push(crash);
        }
        let mut restart = transition(unit, TransitionKind::Restart, from, at);
        restart.restart_cause = Some(cause);
        restart.inferred = !last;
        out.push(restart);
        if !last {
            let mut start = transition(unit, TransitionKind::Starting, from, at);
            start.inferred = true;
            out.push(start);
        }
    }
    unit.crash_pending = false;
    unit.unstarted_auto_restarts = 0;
    push(out, unit, TransitionKind::Starting, from, at);
}

/// Judges a state change within one run.
fn step(
    unit: &mut TrackedUnit,
    out: &mut Vec<Transition>,
    old: &UnitState,
    new: &UnitState,
    at: Micros,
) {
    let job_attached = unit.job_id != 0 || unit.job_pending;
    let result = unit.service.result.clone();
    let result = result.as_deref();
    let result_ok = result.is_none_or(|r| r == "success");
    match new.active.as_str() {
        "deactivating" if old.active != "deactivating" => {
            // A stop or restart job on a running unit whose process has not failed: asked for.
            if job_attached && result_ok && old.active != "activating" {
                unit.stop_requested = true;
            }
            push(out, unit, TransitionKind::Stopping, old, at);
        }
        "failed" => {
            let gave_up =
                !unit.gave_up_reported && verdict::gave_up(is_auto_restart(&old.sub), result);
            if gave_up {
                // The refused restart was counted in NRestarts but never started.
                unit.unstarted_auto_restarts = 0;
                unit.gave_up_reported = true;
            }
            let crash = match gave_up || already_counted(unit) {
                true => None,
                false => crash_reason(verdict::judge(
                    Ending::Failed,
                    result,
                    stop_asked(unit, old, job_attached),
                )),
            };
            let mut t = transition(
                unit,
                TransitionKind::Failed,
                old,
                crash_time(unit, at, crash.is_some()),
            );
            t.gave_up = gave_up;
            if let Some(reason) = crash {
                record_crash(unit, &mut t, reason);
            }
            out.push(t);
        }
        // Straight from running to waiting for a restart: the failed state was merged away, or
        // the process exited cleanly under Restart=always.
        "activating"
            if is_auto_restart(&new.sub)
                && !is_auto_restart(&old.sub)
                && old.active != "failed"
                && !already_counted(unit) =>
        {
            let Some(reason) =
                crash_reason(verdict::judge(Ending::RestartScheduled, result, false))
            else {
                return;
            };
            let kind = if result_ok {
                TransitionKind::Stopped
            } else {
                TransitionKind::Failed
            };
            let mut t = transition(unit, kind, old, crash_time(unit, at, true));
            record_crash(unit, &mut t, reason);
            out.push(t);
        }
        "inactive" => {
            if !matches!(
                old.active.as_str(),
                "active" | "activating" | "deactivating" | "reloading" | "refreshing"
            ) {
                // failed -> inactive is ResetFailed, not a stop.
                return;
            }
            // Leaving auto-restart for inactive: the crash was counted; what this is (a refused
            // restart, a stop) the next state says.
            let undecided_kind = if is_auto_restart(&old.sub) {
                Some(UndecidedKind::LeftAutoRestart)
            } else {
                None
            };
            // 254+ names the state before a restart `dead-before-auto-restart`: the restart is
            // already known.
            let ending = if is_auto_restart(&new.sub) {
                Ending::RestartScheduled
            } else {
                Ending::Exited { result_ok }
            };
            let verdict = match undecided_kind.is_some() || already_counted(unit) {
                true => Verdict::Stop,
                false => verdict::judge(ending, result, stop_asked(unit, old, job_attached)),
            };
            let undecided_kind = match verdict {
                // A start job still attached when a run ends cleanly is a oneshot finishing it:
                // a plain stop, nothing to wait for.
                Verdict::AwaitSequel if !job_attached => Some(UndecidedKind::CleanExit),
                _ => undecided_kind,
            };
            let crash = crash_reason(verdict);
            let mut t = transition(
                unit,
                TransitionKind::Stopped,
                old,
                crash_time(
                    unit,
                    at,
                    crash.is_some() || undecided_kind == Some(UndecidedKind::CleanExit),
                ),
            );
            if let Some(reason) = crash {
                record_crash(unit, &mut t, reason);
            }
            match undecided_kind {
                Some(kind) => {
                    unit.undecided_end = Some(UndecidedEnd {
                        kind,
                        stop: t,
                        deadline: unit.heard_at.saturating_add(UNDECIDED_END_WAIT),
                    })
                }
                None => out.push(t),
            }
        }
        "active" if !is_running_state(&old.active) => {
            // Up again within the same run: an NRestarts increment with no new run behind it
            // was a restart systemd scheduled twice (daemon-reexec), not one more to count.
            unit.unstarted_auto_restarts = 0;
            push(out, unit, TransitionKind::Started, old, at);
        }
        _ => {}
    }
}

/// Whether the run that just went down was asked to stop: a stop job was seen (`deactivating`
/// with a job), or a job is attached while a running unit goes straight down (a stop or restart
/// job whose `deactivating` step was merged away; during a start it is the start job failing).
fn stop_asked(unit: &TrackedUnit, old: &UnitState, job_attached: bool) -> bool {
    unit.stop_requested || (job_attached && is_running_state(&old.active))
}

/// The reason of a crash verdict; `None` for any other.
fn crash_reason(verdict: Verdict) -> Option<String> {
    match verdict {
        Verdict::Crash(reason) => Some(reason),
        Verdict::Stop | Verdict::AwaitSequel => None,
    }
}

fn already_counted(unit: &TrackedUnit) -> bool {
    unit.crash_counted_for.as_deref() == Some(unit.invocation.as_slice())
}

/// A crash is stamped with the main process's exit time when systemd gives it.
fn crash_time(unit: &TrackedUnit, state_time: Micros, crash: bool) -> Micros {
    if crash {
        if let Some(t) = unit.service.exec_main_exit_timestamp.filter(|&t| t > 0) {
            return t;
        }
    }
    state_time
}

fn record_crash(unit: &mut TrackedUnit, t: &mut Transition, reason: String) {
    t.crash = Some(reason);
    t.run_started = unit.service.exec_main_start_timestamp.filter(|&t| t > 0);
    unit.crash_counted_for = Some(unit.invocation.clone());
    unit.crash_pending = true;
}

fn push(
    out: &mut Vec<Transition>,
    unit: &TrackedUnit,
    kind: TransitionKind,
    from: &UnitState,
    at: Micros,
) {
    out.push(transition(unit, kind, from, at));
}

fn transition(
    unit: &TrackedUnit,
    kind: TransitionKind,
    from: &UnitState,
    at: Micros,
) -> Transition {
    let mut t = Transition::new(
        unit.name.clone(),
        SourceKind::Systemd,
        at,
        kind,
        from.clone(),
        unit.state.clone(),
    );
    t.result = unit.service.result.clone();
    t.exit = unit
        .service
        .exec_main_code
        .and_then(ExitCode::from_cld)
        .map(|code| ExitCause {
            code,
            status: unit.service.exec_main_status.unwrap_or(0),
        });
    if !unit.invocation.is_empty() {
        t.invocation_id = Some(invocation_hex(&unit.invocation));
    }
    t.n_restarts = unit.n_restarts;
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RestartCause;

    const UNIT: &str = "crashy.service";

    fn inv(n: u8) -> Vec<u8> {
        vec![n; 16]
    }

    fn unit(active: &str, sub: &str, invocation: u8, job: u32, at: u64) -> UnitProps {
        UnitProps {
            active_state: Some(active.into()),
            sub_state: Some(sub.into()),
            invocation_id: Some(inv(invocation)),
            job_id: Some(job),
            state_change_timestamp: Some(at),
            inactive_exit_timestamp: None,
        }
    }

    fn service(n_restarts: u32, result: &str) -> ServiceProps {
        ServiceProps {
            n_restarts: Some(n_restarts),
            result: Some(result.into()),
            ..ServiceProps::default()
        }
    }

    fn kinds(ts: &[Transition]) -> Vec<&'static str> {
        ts.iter()
            .map(|t| match (&t.crash, t.kind) {
                (Some(_), TransitionKind::Failed) => "crash-failed",
                (Some(_), TransitionKind::Stopped) => "crash-stopped",
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

    /// A tracker that knows the unit running as invocation 1.
    fn running() -> Tracker {
        let mut tracker = Tracker::new();
        tracker.baseline(Snapshot {
            name: UNIT.into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            invocation_id: inv(1),
            n_restarts: Some(0),
        });
        tracker
    }

    /// One Restart=always cycle as systemd 252 sends it: crash, restart job, new run.
    fn cycle(tracker: &mut Tracker, from_inv: u8, n_restarts: u32, t: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        let to_inv = from_inv + 1;
        out.extend(tracker.apply(
            UNIT,
            Some(service(n_restarts - 1, "exit-code")),
            Some(unit("failed", "failed", from_inv, 0, t)),
            t,
        ));
        out.extend(tracker.apply(
            UNIT,
            None,
            Some(unit("activating", "auto-restart", from_inv, 0, t)),
            t,
        ));
        out.extend(tracker.apply(
            UNIT,
            Some(service(n_restarts, "exit-code")),
            Some(unit("activating", "auto-restart", from_inv, 7, t)),
            t + 1,
        ));
        out.extend(tracker.apply(
            UNIT,
            Some(service(n_restarts, "success")),
            Some(unit("inactive", "dead", to_inv, 7, t + 2)),
            t + 2,
        ));
        out.extend(tracker.apply(
            UNIT,
            None,
            Some(unit("active", "running", to_inv, 7, t + 2)),
            t + 2,
        ));
        out.extend(tracker.apply(
            UNIT,
            None,
            Some(unit("active", "running", to_inv, 0, t + 2)),
            t + 2,
        ));
        out
    }

    #[test]
    fn a_restart_always_cycle_is_one_crash_and_one_restart() {
        let mut tracker = running();
        let out = cycle(&mut tracker, 1, 1, 100);
        assert_eq!(
            kinds(&out),
            ["crash-failed", "restart", "starting", "started"]
        );
        assert_eq!(out[0].crash.as_deref(), Some("exit-code"));
        assert_eq!(out[1].restart_cause, Some(RestartCause::Automatic));
        assert_eq!(out[1].n_restarts, Some(1));
    }

    #[test]
    fn many_cycles_count_exactly_nrestarts() {
        let mut tracker = running();
        let mut all = Vec::new();
        for i in 1..=20u8 {
            all.extend(cycle(&mut tracker, i, u32::from(i), u64::from(i) * 10));
        }
        assert_eq!(count(&all, TransitionKind::Restart), 20);
        assert_eq!(crashes(&all), 20);
        assert_eq!(count(&all, TransitionKind::Starting), 20);
    }

    #[test]
    fn duplicate_signals_count_once() {
        let mut tracker = running();
        let mut out = Vec::new();
        for _ in 0..3 {
            out.extend(tracker.apply(
                UNIT,
                Some(service(0, "exit-code")),
                Some(unit("failed", "failed", 1, 0, 5)),
                5,
            ));
        }
        assert_eq!(crashes(&out), 1);
    }

    #[test]
    fn merged_cycles_are_recovered_from_nrestarts() {
        let mut tracker = running();
        // Three crash-restart cycles merged away: only the end state and the counter are seen.
        let out = tracker.apply(
            UNIT,
            Some(service(3, "success")),
            Some(unit("active", "running", 4, 0, 50)),
            50,
        );
        assert_eq!(count(&out, TransitionKind::Restart), 3);
        assert_eq!(crashes(&out), 3);
        assert!(out.iter().filter(|t| t.crash.is_some()).all(|t| t.inferred));
        assert_eq!(count(&out, TransitionKind::Starting), 3);
        assert_eq!(out.last().map(|t| t.kind), Some(TransitionKind::Started));
    }

    #[test]
    fn an_outside_driven_loop_counts_restarts_with_nrestarts_at_zero() {
        let mut tracker = running();
        let mut all = Vec::new();
        for i in 1..=5u8 {
            let t = u64::from(i) * 100;
            all.extend(tracker.apply(
                UNIT,
                Some(service(0, "exit-code")),
                Some(unit("failed", "failed", i, 0, t)),
                t,
            ));
            // As observed on 252: the new InvocationID arrives first with the state unchanged.
            all.extend(tracker.apply(
                UNIT,
                None,
                Some(unit("failed", "failed", i + 1, 9, t)),
                t + 1,
            ));
            all.extend(tracker.apply(
                UNIT,
                Some(service(0, "success")),
                Some(unit("inactive", "dead", i + 1, 9, t + 2)),
                t + 2,
            ));
            all.extend(tracker.apply(
                UNIT,
                None,
                Some(unit("active", "running", i + 1, 9, t + 3)),
                t + 3,
            ));
        }
        assert_eq!(count(&all, TransitionKind::Restart), 5);
        assert!(all
            .iter()
            .filter(|t| t.kind == TransitionKind::Restart)
            .all(|t| t.restart_cause == Some(RestartCause::External)));
        assert_eq!(crashes(&all), 5);
        assert_eq!(
            count(&all, TransitionKind::Stopped),
            0,
            "the start prelude is not a stop"
        );
    }

    #[test]
    fn an_earlier_invocation_seen_again_after_reexec_is_no_new_run() {
        let mut tracker = running();
        let mut out = cycle(&mut tracker, 1, 1, 100);
        // daemon-reexec: systemd reports the previous run and schedules the restart again, then
        // comes back to the current run.
        out.extend(tracker.apply(
            UNIT,
            Some(service(2, "success")),
            Some(unit("activating", "auto-restart", 1, 7, 200)),
            200,
        ));
        out.extend(tracker.apply(UNIT, None, Some(unit("active", "running", 2, 0, 201)), 201));
        out.extend(cycle(&mut tracker, 2, 3, 300));
        assert_eq!(count(&out, TransitionKind::Restart), 2);
        assert_eq!(count(&out, TransitionKind::Starting), 2);
    }

    #[test]
    fn a_requested_restart_is_no_crash() {
        let mut tracker = running();
        let mut out = Vec::new();
        out.extend(tracker.apply(
            UNIT,
            Some(service(0, "success")),
            Some(unit("deactivating", "stop-sigterm", 1, 4, 10)),
            10,
        ));
        // The process died of SIGTERM's exit code: still a stop that was asked for.
        out.extend(tracker.apply(
            UNIT,
            Some(service(0, "exit-code")),
            Some(unit("inactive", "dead", 1, 4, 11)),
            11,
        ));
        out.extend(tracker.apply(
            UNIT,
            Some(service(0, "success")),
            Some(unit("inactive", "dead", 2, 4, 12)),
            12,
        ));
        out.extend(tracker.apply(UNIT, None, Some(unit("active", "running", 2, 0, 12)), 12));
        assert_eq!(kinds(&out), ["stopping", "stopped", "starting", "started"]);
        assert_eq!(crashes(&out), 0);
    }

    #[test]
    fn a_stop_whose_deactivating_was_merged_away_is_no_crash() {
        let mut tracker = running();
        tracker.job_new(UNIT);
        let out = tracker.apply(
            UNIT,
            Some(service(0, "exit-code")),
            Some(unit("failed", "failed", 1, 4, 11)),
            11,
        );
        assert_eq!(crashes(&out), 0);
    }

    #[test]
    fn a_successful_oneshot_is_neither_crash_nor_restart() {
        let mut tracker = Tracker::new();
        let mut out = Vec::new();
        for i in 1..=5u8 {
            let t = u64::from(i) * 1000;
            out.extend(tracker.apply(
                UNIT,
                Some(service(0, "success")),
                Some(unit("inactive", "dead", i, 3, t)),
                t,
            ));
            out.extend(tracker.apply(
                UNIT,
                None,
                Some(unit("activating", "start", i, 3, t + 1)),
                t + 1,
            ));
            out.extend(tracker.apply(
                UNIT,
                None,
                Some(unit("inactive", "dead", i, 0, t + 2)),
                t + 2,
            ));
        }
        out.extend(tracker.settle_due(u64::MAX));
        assert_eq!(count(&out, TransitionKind::Starting), 5);
        assert_eq!(count(&out, TransitionKind::Stopped), 5);
        assert_eq!(crashes(&out) + count(&out, TransitionKind::Restart), 0);
    }

    #[test]
    fn a_clean_exit_under_restart_always_is_a_crash() {
        let mut tracker = running();
        // systemd 254+ names it dead-before-auto-restart; 252 goes straight to auto-restart.
        let out = tracker.apply(
            UNIT,
            Some(service(0, "success")),
            Some(unit("inactive", "dead-before-auto-restart", 1, 0, 9)),
            9,
        );
        assert_eq!(kinds(&out), ["crash-stopped"]);
        let mut tracker = running();
        let out = tracker.apply(
            UNIT,
            Some(service(0, "success")),
            Some(unit("activating", "auto-restart", 1, 0, 9)),
            9,
        );
        assert_eq!(kinds(&out), ["crash-stopped"]);
        assert_eq!(out[0].crash.as_deref(), Some("success"));
    }

    #[test]
    fn hitting_the_start_limit_gives_up() {
        let mut tracker = running();
        let mut out = Vec::new();
        out.extend(tracker.apply(
            UNIT,
            Some(service(0, "exit-code")),
            Some(unit("activating", "auto-restart", 1, 0, 5)),
            5,
        ));
        out.extend(tracker.apply(
            UNIT,
            Some(service(1, "exit-code")),
            Some(unit("failed", "failed", 1, 0, 6)),
            6,
        ));
        assert_eq!(crashes(&out), 1);
        assert!(out.last().is_some_and(|t| t.gave_up && t.crash.is_none()));
    }

    #[test]
    fn a_unit_found_failed_at_start_counts_its_next_start_as_a_restart_but_not_its_crash() {
        let mut tracker = Tracker::new();
        tracker.baseline(Snapshot {
            name: UNIT.into(),
            active_state: "failed".into(),
            sub_state: "failed".into(),
            invocation_id: inv(1),
            n_restarts: Some(4),
        });
        let mut out = tracker.apply(
            UNIT,
            Some(service(0, "exit-code")),
            Some(unit("failed", "failed", 1, 0, 3)),
            3,
        );
        out.extend(tracker.apply(
            UNIT,
            Some(service(0, "success")),
            Some(unit("inactive", "dead", 2, 8, 4)),
            4,
        ));
        out.extend(tracker.apply(UNIT, None, Some(unit("active", "running", 2, 8, 5)), 5));
        assert_eq!(crashes(&out), 0);
        assert_eq!(kinds(&out), ["restart", "starting", "started"]);
    }

    /// A tracker that took the unit from the listing at 1,000 µs (monotonic), running, not read.
    fn listed() -> Tracker {
        let mut tracker = Tracker::new();
        tracker.listed(Listing {
            name: UNIT.into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            listed_at: 1_000,
        });
        tracker
    }

    #[test]
    fn a_listed_unit_takes_its_first_signal_as_its_baseline() {
        let mut tracker = listed();
        assert!(tracker.awaits_reading(UNIT));
        // Five restarts before the listing: only the cycles after it count.
        let mut out = cycle(&mut tracker, 1, 6, 100);
        assert!(!tracker.awaits_reading(UNIT));
        assert_eq!(
            kinds(&out),
            ["crash-failed", "restart", "starting", "started"]
        );
        assert_eq!(out[1].n_restarts, Some(6));
        out = cycle(&mut tracker, 2, 7, 200);
        assert_eq!(count(&out, TransitionKind::Restart), 1);
        assert_eq!(crashes(&out), 1);
    }

    #[test]
    fn a_listed_unit_whose_first_signal_comes_from_a_later_run_counts_one_cycle() {
        let mut tracker = listed();
        // Crash and restart merged into one signal: active again since the listing.
        let out = tracker.apply_stamped(
            UNIT,
            Some(service(6, "success")),
            Some(unit("active", "running", 2, 0, 100)),
            RunStamps {
                active_enter: Some(2_000),
                inactive_exit: Some(1_900),
            },
            100,
        );
        assert_eq!(
            kinds(&out),
            ["crash-failed", "restart", "starting", "started"]
        );
        assert!(out[0].inferred, "{:?}", out[0]);
        assert!(!out[1].inferred);
        let out = cycle(&mut tracker, 2, 7, 200);
        assert_eq!(count(&out, TransitionKind::Restart), 1);
        assert_eq!(crashes(&out), 1);
    }

    #[test]
    fn a_listed_unit_started_again_by_hand_behind_a_merged_signal_is_a_start() {
        let mut tracker = listed();
        // NRestarts 0: the new run was started by hand, so no crash is proven.
        let out = tracker.apply_stamped(
            UNIT,
            Some(service(0, "success")),
            Some(unit("active", "running", 2, 0, 100)),
            RunStamps {
                active_enter: Some(2_000),
                inactive_exit: Some(1_900),
            },
            100,
        );
        assert_eq!(kinds(&out), ["starting", "started"]);
    }

    #[test]
    fn a_listed_unit_up_since_before_the_listing_changes_nothing_on_a_resync() {
        let mut tracker = listed();
        let reading = Snapshot {
            name: UNIT.into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            invocation_id: inv(1),
            n_restarts: Some(5),
        };
        assert!(tracker
            .reconcile_stamped(
                reading.clone(),
                RunStamps {
                    active_enter: Some(500),
                    inactive_exit: Some(400),
                },
                50,
            )
            .is_empty());
        assert!(tracker.reconcile(reading, 60).is_empty());
        let out = cycle(&mut tracker, 1, 6, 100);
        assert_eq!(count(&out, TransitionKind::Restart), 1);
    }

    #[test]
    fn a_listed_unit_found_in_a_later_run_on_a_resync_counts_one_cycle() {
        let mut tracker = listed();
        let out = tracker.reconcile_stamped(
            Snapshot {
                name: UNIT.into(),
                active_state: "active".into(),
                sub_state: "running".into(),
                invocation_id: inv(3),
                n_restarts: Some(9),
            },
            RunStamps {
                active_enter: Some(5_000),
                inactive_exit: Some(400),
            },
            50,
        );
        assert_eq!(count(&out, TransitionKind::Restart), 1);
        assert_eq!(crashes(&out), 1);
    }

    #[test]
    fn a_listed_unit_that_crashes_counts_its_next_start_as_a_restart() {
        let mut tracker = listed();
        // A unit without Restart=: it fails, and is started again from outside.
        let out = tracker.apply(
            UNIT,
            Some(service(0, "exit-code")),
            Some(unit("failed", "failed", 1, 0, 100)),
            100,
        );
        assert_eq!(kinds(&out), ["crash-failed"]);
        let out = tracker.apply(
            UNIT,
            Some(service(0, "success")),
            Some(unit("active", "running", 2, 0, 200)),
            200,
        );
        assert_eq!(kinds(&out), ["restart", "starting", "started"]);
    }

    /// A tracker that took the unit from the listing at 1,000 µs, down, not read.
    fn listed_down() -> Tracker {
        let mut tracker = Tracker::new();
        tracker.listed(Listing {
            name: UNIT.into(),
            active_state: "inactive".into(),
            sub_state: "dead".into(),
            listed_at: 1_000,
        });
        tracker
    }

    #[test]
    fn a_unit_listed_down_counts_its_start_once() {
        let mut tracker = listed_down();
        let old = RunStamps {
            active_enter: Some(300),
            inactive_exit: Some(200),
        };
        // The start job shows first, with the previous run's InvocationID.
        let mut out = tracker.apply_stamped(
            UNIT,
            Some(service(2, "success")),
            Some(unit("inactive", "dead", 1, 5, 100)),
            old,
            100,
        );
        out.extend(tracker.apply(
            UNIT,
            Some(service(0, "success")),
            Some(unit("inactive", "dead", 2, 5, 110)),
            110,
        ));
        out.extend(tracker.apply(UNIT, None, Some(unit("active", "running", 2, 0, 120)), 120));
        assert_eq!(kinds(&out), ["starting", "started"]);
    }

    #[test]
    fn a_unit_listed_down_whose_first_signal_comes_from_a_later_run_counts_its_start() {
        let mut tracker = listed_down();
        let out = tracker.apply_stamped(
            UNIT,
            Some(service(0, "success")),
            Some(unit("active", "running", 2, 0, 100)),
            RunStamps {
                active_enter: Some(2_100),
                inactive_exit: Some(2_000),
            },
            100,
        );
        assert_eq!(kinds(&out), ["starting", "started"]);
    }

    #[test]
    fn a_gap_is_reconciled_from_a_snapshot() {
        let mut tracker = running();
        let out = tracker.reconcile(
            Snapshot {
                name: UNIT.into(),
                active_state: "activating".into(),
                sub_state: "auto-restart".into(),
                invocation_id: inv(9),
                n_restarts: Some(4),
            },
            77,
        );
        assert_eq!(count(&out, TransitionKind::Restart), 4);
        assert_eq!(
            crashes(&out),
            5,
            "four inferred before the restarts, and the current one"
        );
    }

    #[test]
    fn a_unit_removed_after_a_crash_is_remembered() {
        let mut tracker = running();
        tracker.apply(
            UNIT,
            Some(service(0, "exit-code")),
            Some(unit("failed", "failed", 1, 0, 3)),
            3,
        );
        assert_eq!(tracker.remove(UNIT), Some(Vec::new()));
        assert!(tracker.contains(UNIT));
        let mut clean = running();
        assert_eq!(clean.remove(UNIT), Some(Vec::new()));
        assert!(!clean.contains(UNIT));
    }

    #[test]
    fn systemd_timestamps_are_used_and_stale_ones_are_not() {
        let mut tracker = running();
        let mut crash = service(0, "exit-code");
        crash.exec_main_exit_timestamp = Some(1_000);
        let out = tracker.apply(
            UNIT,
            Some(crash),
            Some(unit("failed", "failed", 1, 0, 1_001)),
            9_999,
        );
        assert_eq!(
            out[0].timestamp, 1_000,
            "a crash carries the main process's exit time"
        );
        let mut start = unit("active", "running", 2, 0, 2_005);
        start.inactive_exit_timestamp = Some(2_000);
        let out = tracker.apply(UNIT, None, Some(start), 9_999);
        assert_eq!(
            out[0].timestamp, 2_000,
            "a start carries InactiveExitTimestamp"
        );
        // The same InactiveExitTimestamp again belongs to the previous run.
        tracker.apply(
            UNIT,
            Some(service(0, "exit-code")),
            Some(unit("failed", "failed", 2, 0, 3_000)),
            3_000,
        );
        let mut stale = unit("active", "running", 3, 0, 4_000);
        stale.inactive_exit_timestamp = Some(2_000);
        let out = tracker.apply(UNIT, None, Some(stale), 9_999);
        assert_eq!(out[0].timestamp, 4_000);
    }

    /// A clean exit under `Restart=always` as systemd 252 sends it: the unit goes to
    /// `inactive/dead` with no job before `auto-restart` says systemd restarts it.
    fn clean_exit_cycle_252(
        tracker: &mut Tracker,
        from_inv: u8,
        n_restarts: u32,
        t: u64,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let to_inv = from_inv + 1;
        out.extend(tracker.apply(
            UNIT,
            Some(service(n_restarts - 1, "success")),
            Some(unit("inactive", "dead", from_inv, 0, t)),
            t,
        ));
        out.extend(tracker.apply(
            UNIT,
            None,
            Some(unit("activating", "auto-restart", from_inv, 0, t)),
            t,
        ));
        out.extend(tracker.apply(
            UNIT,
            Some(service(n_restarts, "success")),
            Some(unit("activating", "auto-restart", from_inv, 7, t + 1)),
            t + 1,
        ));
        out.extend(tracker.apply(
            UNIT,
            None,
            Some(unit("inactive", "dead", to_inv, 7, t + 2)),
            t + 2,
        ));
        out.extend(tracker.apply(
            UNIT,
            None,
            Some(unit("active", "running", to_inv, 0, t + 2)),
            t + 2,
        ));
        out
    }

    #[test]
    fn a_clean_exit_before_auto_restart_on_252_is_one_crash_and_no_stop() {
        let mut tracker = running();
        let mut out = Vec::new();
        for i in 1..=5u8 {
            out.extend(clean_exit_cycle_252(
                &mut tracker,
                i,
                u32::from(i),
                u64::from(i) * 1_000_000,
            ));
        }
        out.extend(tracker.settle_due(u64::MAX));
        assert_eq!(crashes(&out), 5, "{:#?}", kinds(&out));
        assert_eq!(count(&out, TransitionKind::Restart), 5);
        assert_eq!(
            count(&out, TransitionKind::Stopped),
            5,
            "each exit is one record, a crash"
        );
        assert!(out
            .iter()
            .filter(|t| t.kind == TransitionKind::Stopped)
            .all(|t| t.crash.as_deref() == Some("success")));
    }

    #[test]
    fn a_clean_exit_nothing_follows_is_a_stop_once_its_wait_is_over() {
        let mut tracker = running();
        let out = tracker.apply(
            UNIT,
            Some(service(0, "success")),
            Some(unit("inactive", "dead", 1, 0, 10)),
            10,
        );
        assert!(out.is_empty(), "judged before its meaning is known");
        assert_eq!(tracker.next_deadline(), Some(10 + UNDECIDED_END_WAIT));
        assert!(tracker.settle_due(10 + UNDECIDED_END_WAIT - 1).is_empty());
        let out = tracker.settle_due(10 + UNDECIDED_END_WAIT);
        assert_eq!(kinds(&out), ["stopped"]);
        assert_eq!(tracker.next_deadline(), None);
    }

    #[test]
    fn an_unloaded_unit_settles_its_clean_exit_as_a_stop() {
        let mut tracker = running();
        tracker.apply(
            UNIT,
            Some(service(0, "success")),
            Some(unit("inactive", "dead", 1, 0, 10)),
            10,
        );
        let out = tracker.remove(UNIT).unwrap_or_default();
        assert_eq!(kinds(&out), ["stopped"]);
        assert!(!tracker.contains(UNIT));
    }

    #[test]
    fn the_default_start_limit_on_252_gives_up_after_the_refused_restart() {
        let mut tracker = running();
        let mut out = Vec::new();
        for i in 1..=4u8 {
            out.extend(cycle(
                &mut tracker,
                i,
                u32::from(i),
                u64::from(i) * 1_000_000,
            ));
        }
        // The fifth run fails; systemd schedules the restart (NRestarts 5), then refuses it.
        let t = 9_000_000;
        out.extend(tracker.apply(
            UNIT,
            Some(service(4, "exit-code")),
            Some(unit("failed", "failed", 5, 0, t)),
            t,
        ));
        out.extend(tracker.apply(
            UNIT,
            None,
            Some(unit("activating", "auto-restart", 5, 0, t)),
            t,
        ));
        out.extend(tracker.apply(
            UNIT,
            Some(service(5, "exit-code")),
            Some(unit("activating", "auto-restart", 5, 9, t + 1)),
            t + 1,
        ));
        out.extend(tracker.apply(
            UNIT,
            Some(service(5, "exit-code")),
            Some(unit("inactive", "dead", 5, 9, t + 2)),
            t + 2,
        ));
        out.extend(tracker.apply(
            UNIT,
            None,
            Some(unit("failed", "failed", 5, 9, t + 2)),
            t + 2,
        ));
        out.extend(tracker.job_removed(UNIT, "failed", t + 3));
        out.extend(tracker.apply(
            UNIT,
            None,
            Some(unit("failed", "failed", 5, 0, t + 2)),
            t + 2,
        ));
        out.extend(tracker.settle_due(u64::MAX));
        assert_eq!(
            count(&out, TransitionKind::Restart),
            4,
            "NRestarts counts the refused fifth"
        );
        assert_eq!(crashes(&out), 5);
        assert_eq!(
            count(&out, TransitionKind::Stopped),
            0,
            "{:#?}",
            kinds(&out)
        );
        let last = out.last().expect("records");
        assert!(last.gave_up && last.crash.is_none(), "{last:#?}");
        assert_eq!(last.kind, TransitionKind::Failed);
        assert_eq!(out.iter().filter(|t| t.gave_up).count(), 1);

        // A start by hand afterwards follows a crash: an outside restart, not systemd's.
        let mut next = tracker.apply(
            UNIT,
            Some(service(0, "success")),
            Some(unit("inactive", "dead", 6, 11, t + 10)),
            t + 10,
        );
        next.extend(tracker.apply(
            UNIT,
            None,
            Some(unit("active", "running", 6, 11, t + 11)),
            t + 11,
        ));
        assert_eq!(kinds(&next), ["restart", "starting", "started"]);
        assert_eq!(next[0].restart_cause, Some(RestartCause::External));
    }

    #[test]
    fn a_stop_while_waiting_to_restart_is_a_stop() {
        let mut tracker = running();
        let mut out = tracker.apply(
            UNIT,
            Some(service(0, "exit-code")),
            Some(unit("failed", "failed", 1, 0, 10)),
            10,
        );
        out.extend(tracker.apply(
            UNIT,
            None,
            Some(unit("activating", "auto-restart", 1, 0, 10)),
            10,
        ));
        out.extend(tracker.apply(UNIT, None, Some(unit("inactive", "dead", 1, 12, 20)), 20));
        out.extend(tracker.job_removed(UNIT, "done", 0));
        out.extend(tracker.apply(UNIT, None, Some(unit("inactive", "dead", 1, 0, 20)), 21));
        assert_eq!(kinds(&out), ["crash-failed", "stopped"]);
        assert!(!out[1].gave_up);
    }

    #[test]
    fn a_start_refused_after_a_crash_is_systemd_giving_up_whoever_asked() {
        // A socket or a timer starts the unit again and again; the start limit refuses the sixth
        // start: no run, the start job fails, the unit stays failed.
        let mut tracker = running();
        let mut out = tracker.apply(
            UNIT,
            Some(service(0, "exit-code")),
            Some(unit("failed", "failed", 1, 0, 10)),
            10,
        );
        tracker.job_new(UNIT);
        out.extend(tracker.apply(UNIT, None, Some(unit("failed", "failed", 1, 12, 11)), 11));
        out.extend(tracker.job_removed(UNIT, "failed", 12));
        out.extend(tracker.apply(UNIT, None, Some(unit("failed", "failed", 1, 0, 12)), 12));
        assert_eq!(kinds(&out), ["crash-failed", "failed"]);
        assert!(out[1].gave_up);
        // Refused again: still the same give-up.
        tracker.job_new(UNIT);
        assert!(tracker.job_removed(UNIT, "failed", 13).is_empty());
        // A start job that fails with a run of its own is that run's failure, not a refusal.
        let mut tracker = running();
        tracker.apply(
            UNIT,
            Some(service(0, "exit-code")),
            Some(unit("failed", "failed", 1, 0, 10)),
            10,
        );
        tracker.apply(
            UNIT,
            Some(service(0, "success")),
            Some(unit("inactive", "dead", 2, 12, 20)),
            20,
        );
        tracker.apply(
            UNIT,
            None,
            Some(unit("activating", "start-pre", 2, 12, 20)),
            20,
        );
        let out = tracker.apply(
            UNIT,
            Some(service(0, "exit-code")),
            Some(unit("failed", "failed", 2, 12, 21)),
            21,
        );
        assert_eq!(crashes(&out), 1);
        assert!(tracker.job_removed(UNIT, "failed", 22).is_empty());
    }

    #[test]
    fn a_reset_failed_while_waiting_to_restart_keeps_the_restart_automatic() {
        let mut tracker = running();
        let mut out = cycle(&mut tracker, 1, 1, 100);
        out.extend(cycle(&mut tracker, 2, 2, 200));
        // reset-failed during auto-restart sets NRestarts to 0 without a signal of its own; the
        // next one reads 1.
        out.extend(cycle(&mut tracker, 3, 1, 300));
        let causes: Vec<_> = out
            .iter()
            .filter(|t| t.kind == TransitionKind::Restart)
            .map(|t| t.restart_cause)
            .collect();
        assert_eq!(causes, [Some(RestartCause::Automatic); 3]);
        assert_eq!(restarts_scheduled(4, 0), 0, "a manual start resets it");
        assert_eq!(restarts_scheduled(4, 6), 2);
    }
}
