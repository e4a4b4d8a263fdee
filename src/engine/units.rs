//! What crashwatch knows of each watched unit now: counters, the state it is in, its window, its
//! last crash and its recent transitions.
//!
//! The detector task is the only writer: it records every event here before handing it to the
//! threaded sinks. `/metrics` and the status API read it. Keeping per-unit series in a table of
//! our own, rather than in the `metrics` recorder, is what makes a scrape cheap: each unit's
//! label set is escaped once, when the unit is first seen, and a rendering is a walk over plain
//! counters (about 1 µs per unit, against about 100 µs per unit through the exporter's registry).
//! It also lets a unit that systemd unloaded disappear from `/metrics`, which a `metrics`
//! recorder cannot do, so memory follows the units that exist rather than every unit ever seen.
//!
//! Most units of a node never crash, and their series would be most of `/metrics` (six at least
//! per unit, more than node_exporter's whole systemd collector at 1,000 units). So by default
//! ([`UnitSeries::Changed`]) a healthy unit shows two series: `crashwatch_unit_crashlooping`,
//! which the rules count nodes running a unit by, and `crashwatch_unit_restarts_total`, which
//! the rules take `increase()` of: it must be there at 0 before a unit's first restart, since a
//! crash and its automatic restart can both fall between two scrapes and a series that appears
//! at 1 hides that restart from `increase()`. A unit's first crash or restart brings every other
//! series, kept while it is not healthy (restarts in its window, a loop, down since a crash) and
//! for [`FULL_SET_RETENTION`] after. The table's generation moves when a retention runs out, so
//! the cached rendering goes with it although nothing was recorded.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;

use crate::detect::Policy;
use crate::event::{
    ContextStatus, CrashContext, Event, ExitCause, LoopEvent, Micros, RestartCause, SourceKind,
    Transition, TransitionKind, UnitState,
};
use crate::time::now_micros;

/// Recent transitions kept per unit for `/api/units/{unit}/events`.
pub const RECENT_TRANSITIONS: usize = 32;

/// How long a unit keeps its full set of series after it is healthy again, under
/// [`UnitSeries::Changed`]. An hour is the longest range the shipped rules read
/// (`CrashwatchUnitHighRestartRate`'s `increase(...[1h])`, the fleet's nodes over 1h): a unit that
/// crashes again within it keeps one continuous set of series instead of a new one each time, and
/// Prometheus keeps every series it saw in its head block for two hours or more anyway, so a
/// set dropped much sooner saves it nothing. The dashboards show the crash's series meanwhile.
pub const FULL_SET_RETENTION: Duration = Duration::from_secs(3600);

/// Which series of each unit `/metrics` shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnitSeries {
    /// A healthy unit shows `crashwatch_unit_crashlooping` and `crashwatch_unit_restarts_total`
    /// only; from its first crash or restart it shows every series, until
    /// [`FULL_SET_RETENTION`] after it is healthy again.
    #[default]
    Changed,
    /// Every unit shows every series, always.
    All,
}

impl UnitSeries {
    /// Reads `changed` or `all`.
    pub fn parse(text: &str) -> Result<UnitSeries, String> {
        match text {
            "changed" => Ok(UnitSeries::Changed),
            "all" => Ok(UnitSeries::All),
            _ => Err(format!("{text:?} is not one of changed, all")),
        }
    }
}

/// Whether a unit shows its full set of series under [`UnitSeries::Changed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FullSet {
    /// No: nothing has happened to the unit, or its retention ran out at this time.
    No,
    /// Yes, while the unit is not healthy.
    Held,
    /// Yes, until this time: the unit has been healthy since [`FULL_SET_RETENTION`] before it.
    Until(Micros),
}

impl FullSet {
    fn shown_at(self, now: Micros) -> bool {
        match self {
            FullSet::No => false,
            FullSet::Held => true,
            FullSet::Until(until) => now < until,
        }
    }
}

/// systemd's documented `Result` values: the `reason` label takes one of these, else `other`, so
/// an unknown value from outside cannot create series.
pub const CRASH_REASONS: [&str; 15] = [
    "success",
    "exit-code",
    "signal",
    "core-dump",
    "timeout",
    "watchdog",
    "start-limit-hit",
    "resources",
    "oom-kill",
    "protocol",
    "exec-condition",
    "cgroup",
    "unknown",
    "failed",
    "other",
];

/// The `reason` label for a crash reason: itself when documented, `other` when not.
pub fn crash_reason_label(reason: &str) -> &'static str {
    CRASH_REASONS[crash_reason_index(reason)]
}

fn crash_reason_index(reason: &str) -> usize {
    CRASH_REASONS
        .iter()
        .position(|known| *known == reason)
        .unwrap_or(CRASH_REASONS.len() - 1)
}

/// The last crash of a unit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LastCrash {
    /// When, in microseconds since the Unix epoch.
    pub timestamp_us: Micros,
    /// The reason (systemd's Result), as labelled.
    pub reason: &'static str,
    /// How the main process ended, when known.
    #[serde(flatten)]
    pub exit: Option<ExitSummary>,
    /// How long the crashed run lasted, from its main process's start to the crash, when the
    /// init system gave the start.
    pub run_seconds: Option<f64>,
    /// The crashed run (systemd InvocationID, hex): a context is attached only to its crash.
    #[serde(skip)]
    pub invocation_id: Option<String>,
    /// What the run wrote last; `None` until a lookup was asked for or ruled out.
    #[serde(skip)]
    pub context: Option<CrashContext>,
}

impl LastCrash {
    /// The crash `t` reports, if it is one; with no context yet.
    fn of(t: &Transition) -> Option<LastCrash> {
        let reason = t.crash.as_deref()?;
        let run_seconds = t
            .run_started
            .filter(|&start| start <= t.timestamp)
            .map(|start| (t.timestamp - start) as f64 / 1e6);
        Some(LastCrash {
            timestamp_us: t.timestamp,
            reason: CRASH_REASONS[crash_reason_index(reason)],
            exit: t.exit.map(ExitSummary::from),
            run_seconds,
            invocation_id: t.invocation_id.clone(),
            context: None,
        })
    }

    /// The exit as a shell gives it: the status for an exit, 128 + the signal for a signal.
    pub fn shell_status(&self) -> Option<i64> {
        self.exit.map(|exit| match exit.exit_code {
            crate::event::ExitCode::Exited => i64::from(exit.exit_status),
            _ => 128 + i64::from(exit.exit_status),
        })
    }
}

/// [`ExitCause`] with the names the event record uses.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ExitSummary {
    /// `exited`, `killed` or `dumped`.
    pub exit_code: crate::event::ExitCode,
    /// The exit status, or the signal number.
    pub exit_status: i32,
}

impl From<ExitCause> for ExitSummary {
    fn from(cause: ExitCause) -> ExitSummary {
        ExitSummary {
            exit_code: cause.code,
            exit_status: cause.status,
        }
    }
}

/// One transition as the status API shows it; the unit and source are the unit's own.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecentTransition {
    /// When, by the source's clock, in microseconds since the Unix epoch.
    pub timestamp_us: Micros,
    /// What happened.
    pub transition: TransitionKind,
    /// The state after (systemd's ActiveState).
    pub to_state: Box<str>,
    /// The sub-state after (systemd's SubState).
    pub to_substate: Box<str>,
    /// The crash reason, when this was a crash.
    pub crash_reason: Option<&'static str>,
    /// How the main process ended, when known.
    #[serde(flatten)]
    pub exit: Option<ExitSummary>,
    /// For a restart: who started the unit again.
    pub restart_cause: Option<RestartCause>,
    /// Reconstructed from counters rather than heard.
    pub inferred: bool,
}

impl RecentTransition {
    fn of(t: &Transition) -> RecentTransition {
        RecentTransition {
            timestamp_us: t.timestamp,
            transition: t.kind,
            to_state: t.to.active.as_str().into(),
            to_substate: t.to.sub.as_str().into(),
            crash_reason: t.crash.as_deref().map(crash_reason_label),
            exit: t.exit.map(ExitSummary::from),
            restart_cause: t.restart_cause,
            inferred: t.inferred,
        }
    }
}

/// Everything kept about one unit.
#[derive(Clone, Debug)]
pub struct UnitRecord {
    /// The source that reports the unit.
    pub source: SourceKind,
    /// The threshold and window the unit is judged by.
    pub policy: Policy,
    /// `unit="…",source="…"`, escaped once for every series of the unit.
    labels: Box<str>,
    /// The unit's state as of its last transition.
    pub state: Option<(Box<str>, Box<str>)>,
    /// Up (1) or down (0) as of the last transition that says; `None` before one does.
    pub active: Option<bool>,
    /// Starts (new runs) seen.
    pub starts: u64,
    /// Restarts (starts after a crash) seen.
    pub restarts: u64,
    /// Crash loops that began.
    pub crashloops: u64,
    /// Transitions seen, by kind, in [`TransitionKind::ALL`] order.
    transitions: [u64; 6],
    /// Crashes seen, by reason, in [`CRASH_REASONS`] order.
    crashes: [u64; CRASH_REASONS.len()],
    /// Whether the unit is crash-looping now.
    pub crashlooping: bool,
    /// Restarts within the unit's window now.
    pub restarts_in_window: u32,
    /// The last crash.
    pub last_crash: Option<LastCrash>,
    /// The newest answered context of a crash before the last one, with that crash's time: in a
    /// loop faster than a lookup, the last crash's lines are always still being read, and these
    /// are the newest known.
    pub earlier_context: Option<(Micros, CrashContext)>,
    /// The last transition: when, and what.
    pub last_transition: Option<(Micros, TransitionKind)>,
    /// When the init system unloaded the unit, if it has and has not loaded it since.
    pub unloaded_at: Option<Micros>,
    /// When the init system gave up restarting the unit (start limit, respawn limit), if it has
    /// not been started since: the unit is down and stays down.
    pub gave_up_at: Option<Micros>,
    /// Whether the unit has not been up since its last crash.
    down_since_crash: bool,
    /// Whether it shows every series under [`UnitSeries::Changed`].
    full_set: FullSet,
    recent: VecDeque<RecentTransition>,
}

impl UnitRecord {
    fn new(unit: &str, source: SourceKind, policy: Policy) -> UnitRecord {
        let mut labels = String::with_capacity(unit.len() + 24);
        labels.push_str("unit=\"");
        escape_label_value(unit, &mut labels);
        labels.push_str("\",source=\"");
        labels.push_str(source.as_str());
        labels.push('"');
        UnitRecord {
            source,
            policy,
            labels: labels.into(),
            state: None,
            active: None,
            starts: 0,
            restarts: 0,
            crashloops: 0,
            transitions: [0; 6],
            crashes: [0; CRASH_REASONS.len()],
            crashlooping: false,
            restarts_in_window: 0,
            last_crash: None,
            earlier_context: None,
            last_transition: None,
            unloaded_at: None,
            gave_up_at: None,
            down_since_crash: false,
            full_set: FullSet::No,
            recent: VecDeque::new(),
        }
    }

    /// Healthy: no restart in its window, no loop, and not down since a crash (the rules'
    /// `CrashwatchUnitCrashedAndDown` reads the series of a unit that stays down).
    fn healthy(&self) -> bool {
        self.restarts_in_window == 0
            && !self.crashlooping
            && !self.down_since_crash
            && self.gave_up_at.is_none()
    }

    /// A unit seen up is no longer down since its last crash.
    fn clear_down_since_crash_if_up(&mut self) {
        if self.active == Some(true) {
            self.down_since_crash = false;
        }
    }

    /// Brings the full set while the unit is not healthy; once it is healthy again, keeps it
    /// until [`FULL_SET_RETENTION`] after `now`. Returns when it goes, when that was just set.
    fn settle(&mut self, now: Micros) -> Option<Micros> {
        if !self.healthy() {
            self.full_set = FullSet::Held;
            return None;
        }
        if self.full_set != FullSet::Held {
            return None;
        }
        let retention = u64::try_from(FULL_SET_RETENTION.as_micros()).unwrap_or(u64::MAX);
        let until = now.saturating_add(retention);
        self.full_set = FullSet::Until(until);
        Some(until)
    }

    /// Whether `/metrics` shows every series of the unit at `now`.
    fn shows_full_set(&self, series: UnitSeries, now: Micros) -> bool {
        series == UnitSeries::All || self.full_set.shown_at(now)
    }

    /// The unit's recent transitions, oldest first.
    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &RecentTransition> + ExactSizeIterator {
        self.recent.iter()
    }

    /// Crashes by reason label, for reasons seen at least once.
    pub fn crashes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        CRASH_REASONS
            .iter()
            .zip(self.crashes)
            .filter(|(_, n)| *n > 0)
            .map(|(reason, n)| (*reason, n))
    }

    fn transition(&mut self, t: &Transition) {
        let kind_index = TransitionKind::ALL
            .iter()
            .position(|k| *k == t.kind)
            .unwrap_or(0);
        self.transitions[kind_index] += 1;
        match t.kind {
            TransitionKind::Starting => {
                self.starts += 1;
                self.gave_up_at = None;
            }
            TransitionKind::Restart => self.restarts += 1,
            _ => {}
        }
        if t.gave_up {
            self.gave_up_at = Some(t.timestamp);
        }
        match t.kind {
            TransitionKind::Started => self.active = Some(true),
            TransitionKind::Stopping | TransitionKind::Stopped | TransitionKind::Failed => {
                self.active = Some(false)
            }
            _ if t.up_unknown => self.active = None,
            _ => {}
        }
        self.clear_down_since_crash_if_up();
        if let Some(crash) = LastCrash::of(t) {
            self.crashes[crash_reason_index(crash.reason)] += 1;
            self.last_crash = Some(crash);
            self.down_since_crash = true;
        }
        // A crash or a restart brings the full set, even one that leaves the unit healthy (a
        // restart the detector does not count); `settle` starts its retention then.
        if t.crash.is_some() || t.kind == TransitionKind::Restart {
            self.full_set = FullSet::Held;
        }
        if self
            .state
            .as_ref()
            .is_none_or(|(active, sub)| **active != *t.to.active || **sub != *t.to.sub)
        {
            self.state = Some((t.to.active.as_str().into(), t.to.sub.as_str().into()));
        }
        self.last_transition = Some((t.timestamp, t.kind));
        self.unloaded_at = None;
        if self.recent.len() == RECENT_TRANSITIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(RecentTransition::of(t));
    }
}

/// Every unit with series of its own, by name.
#[derive(Debug, Default)]
pub struct UnitTable {
    units: BTreeMap<Box<str>, UnitRecord>,
    /// Which series of each unit are rendered.
    series: UnitSeries,
    /// Moves on every change, so a rendering can be reused until something changes. A cell:
    /// [`UnitTable::generation`] moves it when a retention runs out, which no writer notices.
    generation: Cell<u64>,
    /// The earliest end of a full set's retention still to come, if any (an earlier one than
    /// the truth, when a unit crashed again since, costs one rendering more).
    next_expiry: Cell<Option<Micros>>,
}

impl UnitTable {
    /// An empty table showing the default series ([`UnitSeries::Changed`]).
    pub fn new() -> UnitTable {
        UnitTable::default()
    }

    /// An empty table showing `series`.
    pub fn with_series(series: UnitSeries) -> UnitTable {
        UnitTable {
            series,
            ..UnitTable::default()
        }
    }

    /// Units in the table.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// Whether the table holds no unit.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Moves whenever what the table renders changes: at every change, and when a unit's full
    /// set of series has had its retention.
    pub fn generation(&self) -> u64 {
        self.generation_at(now_micros())
    }

    fn generation_at(&self, now: Micros) -> u64 {
        if self.next_expiry.get().is_some_and(|at| at <= now) {
            self.bump();
            let next = self
                .units
                .values()
                .filter_map(|u| match u.full_set {
                    FullSet::Until(until) if until > now => Some(until),
                    _ => None,
                })
                .min();
            self.next_expiry.set(next);
        }
        self.generation.get()
    }

    fn bump(&self) {
        self.generation.set(self.generation.get() + 1);
    }

    /// Settles `unit`'s full set after a change at `now` (see [`UnitRecord::settle`]) and notes
    /// when its retention runs out.
    fn settle(&mut self, unit: &str, now: Micros) {
        if self.series == UnitSeries::All {
            return;
        }
        let Some(until) = self.units.get_mut(unit).and_then(|u| u.settle(now)) else {
            return;
        };
        let next = self.next_expiry.get().map_or(until, |next| next.min(until));
        self.next_expiry.set(Some(next));
    }

    /// The record of `unit`, if it has one.
    pub fn get(&self, unit: &str) -> Option<&UnitRecord> {
        self.units.get(unit)
    }

    /// Every unit and its record, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &UnitRecord)> {
        self.units.iter().map(|(name, record)| (&**name, record))
    }

    /// Whether `unit` has a record.
    pub fn contains(&self, unit: &str) -> bool {
        self.units.contains_key(unit)
    }

    /// Gives `unit` a record with every counter at zero, so the first increase is visible to
    /// `increase()` and `rate()`. A unit that has one keeps it.
    pub fn register(&mut self, unit: &str, source: SourceKind, policy: Policy) {
        if !self.units.contains_key(unit) {
            self.units
                .insert(unit.into(), UnitRecord::new(unit, source, policy));
            self.bump();
        }
    }

    /// Drops `unit` and its series.
    pub fn remove(&mut self, unit: &str) -> bool {
        let removed = self.units.remove(unit).is_some();
        if removed {
            self.bump();
        }
        removed
    }

    /// Notes that a snapshot found `unit` loaded, in `state`. Nothing is counted; the state is
    /// taken only by a unit that has none yet (a transition heard since knows better). A unit
    /// it changes nothing for leaves the generation, and so the last rendering, as they are.
    pub fn present(&mut self, unit: &str, state: &UnitState) {
        let Some(record) = self.units.get_mut(unit) else {
            return;
        };
        let was_unloaded = record.unloaded_at.take().is_some();
        if !was_unloaded && record.state.is_some() {
            return;
        }
        if record.state.is_none() {
            record.state = Some((state.active.as_str().into(), state.sub.as_str().into()));
            record.active = match state.active.as_str() {
                "active" | "reloading" => Some(true),
                "inactive" | "failed" | "deactivating" => Some(false),
                // Upstart: goal/state.
                _ if state.sub == "running" => Some(true),
                _ if state.sub == "waiting" => Some(false),
                _ => None,
            };
            record.clear_down_since_crash_if_up();
        }
        self.settle(unit, now_micros());
        self.bump();
    }

    /// Judges `unit` by `policy` from now on (a reloaded configuration).
    pub fn set_policy(&mut self, unit: &str, policy: Policy) {
        if let Some(record) = self.units.get_mut(unit) {
            record.policy = policy;
        }
    }

    /// Notes that the init system unloaded `unit` at `at`.
    pub fn unloaded(&mut self, unit: &str, at: Micros) {
        if let Some(record) = self.units.get_mut(unit) {
            record.unloaded_at = Some(at);
            self.bump();
        }
    }

    /// Shows a window rebuilt from history (nothing counted): the restarts in it, and whether a
    /// loop is in progress.
    pub fn show_window(&mut self, unit: &str, restarts_in_window: u32, looping: bool) {
        if let Some(record) = self.units.get_mut(unit) {
            record.restarts_in_window = restarts_in_window;
            record.crashlooping = looping;
            self.settle(unit, now_micros());
            self.bump();
        }
    }

    /// Shows crash `t`, read from history, as `unit`'s last crash, counting nothing: the
    /// `*_total` series count only what is heard live. A crash already known is newer and stays.
    /// It brings the unit's full set, as a crash heard live does: down since it, until a
    /// snapshot or a transition says the unit is up.
    pub fn remember_crash(&mut self, unit: &str, t: &Transition) {
        let Some(record) = self.units.get_mut(unit) else {
            return;
        };
        if record.last_crash.is_some() {
            return;
        }
        if let Some(crash) = LastCrash::of(t) {
            record.last_crash = Some(crash);
            record.down_since_crash = record.active != Some(true);
            record.full_set = FullSet::Held;
            self.settle(unit, now_micros());
            self.bump();
        }
    }

    /// Gives `unit`'s last crash its context, when that crash is of run `invocation` that ended
    /// at `ended`: a late answer about an older run never replaces what is known of a newer one
    /// (under Upstart, which names no runs, the time tells them apart). Returns whether it was
    /// attached.
    pub fn attach_context(
        &mut self,
        unit: &str,
        invocation: Option<&str>,
        ended: Micros,
        context: CrashContext,
    ) -> bool {
        let Some(record) = self.units.get_mut(unit) else {
            return false;
        };
        let Some(crash) = record.last_crash.as_mut() else {
            return false;
        };
        if crash.invocation_id.as_deref() != invocation || crash.timestamp_us != ended {
            let newer = record
                .earlier_context
                .as_ref()
                .is_none_or(|(at, _)| *at < ended);
            if newer && ended < crash.timestamp_us && context.status != ContextStatus::Pending {
                record.earlier_context = Some((ended, context));
            }
            return false;
        }
        crash.context = Some(context);
        self.bump();
        true
    }

    /// Applies one event to the unit it is about. Events of units without a record are ignored:
    /// the detector task registers the units it exports.
    pub fn record(&mut self, event: &Event) {
        self.record_at(event, now_micros());
    }

    fn record_at(&mut self, event: &Event, now: Micros) {
        let unit = match event {
            Event::Transition { transition, .. } => &transition.unit,
            Event::Loop(event) => &event.unit,
            Event::Window { unit, .. } => unit,
            // Attached through `attach_context`, which checks the run.
            Event::CrashContext { .. } => return,
        };
        let Some(record) = self.units.get_mut(unit.as_str()) else {
            return;
        };
        match event {
            Event::Transition { transition, .. } => record.transition(transition),
            Event::Loop(LoopEvent {
                ended,
                restarts_in_window,
                ..
            }) => {
                if ended.is_none() {
                    record.crashloops += 1;
                }
                record.crashlooping = ended.is_none();
                record.restarts_in_window = *restarts_in_window;
            }
            Event::Window {
                restarts_in_window, ..
            } => record.restarts_in_window = *restarts_in_window,
            Event::CrashContext { .. } => return,
        }
        self.settle(unit, now);
        self.bump();
    }

    /// Writes every unit's series in the Prometheus text format (0.0.4), a family at a time:
    /// under [`UnitSeries::Changed`], only the two of [`ONE_SERIES_PER_UNIT`] marked for every
    /// unit for a unit that shows no full set.
    pub fn render_prometheus(&self, out: &mut String) {
        self.render_prometheus_at(now_micros(), out);
    }

    fn render_prometheus_at(&self, now: Micros, out: &mut String) {
        let full = |u: &UnitRecord| u.shows_full_set(self.series, now);
        let full_units = self.units.values().filter(|u| full(u)).count();
        out.reserve(full_units * 700 + (self.units.len() - full_units) * 200);
        for (name, kind, help, every_unit, value) in ONE_SERIES_PER_UNIT {
            family(out, name, kind, help);
            for u in self.units.values() {
                if !every_unit && !full(u) {
                    continue;
                }
                if let Some(value) = value(u) {
                    let _ = writeln!(out, "{name}{{{}}} {value}", u.labels);
                }
            }
        }
        let name = "crashwatch_unit_crashes_total";
        family(out, name, COUNTER, CRASHES_HELP);
        for u in self.units.values().filter(|u| full(u)) {
            for (reason, n) in u.crashes() {
                let _ = writeln!(out, "{name}{{{},reason=\"{reason}\"}} {n}", u.labels);
            }
        }
        let name = "crashwatch_unit_transitions_total";
        family(out, name, COUNTER, TRANSITIONS_HELP);
        for u in self.units.values().filter(|u| full(u)) {
            for (kind, n) in TransitionKind::ALL.iter().zip(u.transitions) {
                if n > 0 {
                    let kind = kind.as_str();
                    let _ = writeln!(out, "{name}{{{},transition=\"{kind}\"}} {n}", u.labels);
                }
            }
        }
        let name = "crashwatch_unit_last_crash_timestamp_seconds";
        family(out, name, GAUGE, LAST_CRASH_HELP);
        for u in self.units.values().filter(|u| full(u)) {
            if let Some(crash) = &u.last_crash {
                let (seconds, micros) = (
                    crash.timestamp_us / 1_000_000,
                    crash.timestamp_us % 1_000_000,
                );
                let _ = writeln!(out, "{name}{{{}}} {seconds}.{micros:06}", u.labels);
            }
        }
        let name = "crashwatch_unit_last_exit_code";
        family(out, name, GAUGE, LAST_EXIT_HELP);
        for u in self.units.values().filter(|u| full(u)) {
            if let Some(status) = u.last_crash.as_ref().and_then(LastCrash::shell_status) {
                let _ = writeln!(out, "{name}{{{}}} {status}", u.labels);
            }
        }
        let name = "crashwatch_unit_last_crash_run_seconds";
        family(out, name, GAUGE, LAST_RUN_HELP);
        for u in self.units.values().filter(|u| full(u)) {
            if let Some(seconds) = u.last_crash.as_ref().and_then(|c| c.run_seconds) {
                let _ = writeln!(out, "{name}{{{}}} {seconds}", u.labels);
            }
        }
    }
}

/// The families with at most one series per unit: name, type, help, whether every unit shows
/// it (else only a unit showing its full set) and the unit's value (none: no series yet).
type OneSeries = (
    &'static str,
    &'static str,
    &'static str,
    bool,
    fn(&UnitRecord) -> Option<u64>,
);

/// The two series of every unit are `crashwatch_unit_restarts_total`, at 0 before the first
/// restart so that `increase()` sees it, and `crashwatch_unit_crashlooping`, which the alerts
/// and the fleet's node counts read.
const ONE_SERIES_PER_UNIT: [OneSeries; 6] = [
    (
        "crashwatch_unit_starts_total",
        COUNTER,
        STARTS_HELP,
        false,
        |u| Some(u.starts),
    ),
    (
        "crashwatch_unit_restarts_total",
        COUNTER,
        RESTARTS_HELP,
        true,
        |u| Some(u.restarts),
    ),
    (
        "crashwatch_unit_crashloops_total",
        COUNTER,
        CRASHLOOPS_HELP,
        false,
        |u| Some(u.crashloops),
    ),
    (
        "crashwatch_unit_crashlooping",
        GAUGE,
        CRASHLOOPING_HELP,
        true,
        |u| Some(u64::from(u.crashlooping)),
    ),
    (
        "crashwatch_unit_restarts_in_window",
        GAUGE,
        IN_WINDOW_HELP,
        false,
        |u| Some(u64::from(u.restarts_in_window)),
    ),
    ("crashwatch_unit_active", GAUGE, ACTIVE_HELP, false, |u| {
        u.active.map(u64::from)
    }),
];

const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";
const STARTS_HELP: &str = "Starts of the unit (new runs) seen by crashwatch.";
const RESTARTS_HELP: &str = "Starts of the unit that followed a crash, whoever started it.";
const CRASHLOOPS_HELP: &str = "Crash loops of the unit that began.";
const CRASHES_HELP: &str =
    "Stops of the unit that nobody asked for, by reason (the init system's Result).";
const TRANSITIONS_HELP: &str = "Lifecycle transitions of the unit, by kind.";
const CRASHLOOPING_HELP: &str = "Whether the unit is crash-looping now (1) or not (0).";
const IN_WINDOW_HELP: &str = "Restarts of the unit within its detection window.";
const ACTIVE_HELP: &str = "Whether the unit is up (1) or not (0), as of its last transition.";
const LAST_CRASH_HELP: &str = "When the unit last crashed, in seconds since the Unix epoch.";
const LAST_EXIT_HELP: &str = "How the main process of the unit's last crashed run ended, as a \
shell gives it: its exit status, or 128 plus the signal number for a signal.";
const LAST_RUN_HELP: &str =
    "How long the unit's last crashed run lasted, from its main process's start to the crash.";

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// Escapes a label value as the text format wants: backslash, double quote and line feed.
pub fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The table shared between the detector task, its only writer, and the HTTP readers.
#[derive(Clone, Debug, Default)]
pub struct SharedUnits(Arc<Mutex<UnitTable>>);

impl SharedUnits {
    /// An empty shared table showing the default series.
    pub fn new() -> SharedUnits {
        SharedUnits::default()
    }

    /// An empty shared table showing `series`.
    pub fn with_series(series: UnitSeries) -> SharedUnits {
        SharedUnits(Arc::new(Mutex::new(UnitTable::with_series(series))))
    }

    /// Locks the table. Hold it briefly: the detector task waits for it.
    pub fn lock(&self) -> MutexGuard<'_, UnitTable> {
        // A panic while holding the lock leaves counters, not broken invariants: keep serving.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(unit: &str, kind: TransitionKind, at: Micros) -> Transition {
        Transition::new(
            unit,
            SourceKind::Systemd,
            at,
            kind,
            UnitState::new("activating", "start"),
            UnitState::new("active", "running"),
        )
    }

    fn rendered(table: &UnitTable) -> String {
        let mut out = String::new();
        table.render_prometheus(&mut out);
        out
    }

    /// The series lines of `unit`, without their values.
    fn series_of(text: &str, unit: &str) -> Vec<String> {
        let labels = format!("unit=\"{unit}\",source=\"systemd\"");
        text.lines()
            .filter(|line| !line.starts_with('#') && line.contains(&labels))
            .map(|line| line.rsplit_once(' ').map_or(line, |(series, _)| series))
            .map(str::to_owned)
            .collect()
    }

    fn rendered_at(table: &UnitTable, now: Micros) -> String {
        let mut out = String::new();
        table.render_prometheus_at(now, &mut out);
        out
    }

    fn record(table: &mut UnitTable, t: Transition, now: Micros) {
        table.record_at(
            &Event::Transition {
                transition: t,
                restarts: 0,
            },
            now,
        );
    }

    fn window(table: &mut UnitTable, unit: &str, restarts_in_window: u32, now: Micros) {
        table.record_at(
            &Event::Window {
                unit: unit.into(),
                source: SourceKind::Systemd,
                restarts_in_window,
            },
            now,
        );
    }

    fn crash(unit: &str, at: Micros) -> Transition {
        let mut t = transition(unit, TransitionKind::Failed, at);
        t.crash = Some("exit-code".into());
        t
    }

    const T0: Micros = 1_795_243_852_000_000;
    const SECOND: Micros = 1_000_000;
    const RETENTION: Micros = FULL_SET_RETENTION.as_secs() * SECOND;

    #[test]
    fn a_registered_unit_shows_its_counters_at_zero() {
        let all = [
            "crashwatch_unit_starts_total",
            "crashwatch_unit_restarts_total",
            "crashwatch_unit_crashloops_total",
            "crashwatch_unit_crashlooping",
            "crashwatch_unit_restarts_in_window",
        ];
        let changed = [
            "crashwatch_unit_restarts_total",
            "crashwatch_unit_crashlooping",
        ];
        for (series, shown) in [
            (UnitSeries::All, &all[..]),
            (UnitSeries::Changed, &changed[..]),
        ] {
            let mut table = UnitTable::with_series(series);
            table.register("a.service", SourceKind::Systemd, Policy::default());
            let text = rendered(&table);
            let lines: Vec<String> = shown
                .iter()
                .map(|name| format!("{name}{{unit=\"a.service\",source=\"systemd\"}}"))
                .collect();
            assert_eq!(series_of(&text, "a.service"), lines, "{series:?}:\n{text}");
            for line in lines {
                assert!(text.contains(&format!("{line} 0\n")), "{line} not at 0");
            }
        }
    }

    #[test]
    fn a_healthy_unit_shows_two_series_by_default_and_every_series_with_all() {
        let unit = "healthy.service";
        let mut changed = UnitTable::new();
        let mut all = UnitTable::with_series(UnitSeries::All);
        for table in [&mut changed, &mut all] {
            table.register(unit, SourceKind::Systemd, Policy::default());
            table.present(unit, &UnitState::new("active", "running"));
            // A manual restart is no crash: the unit stays healthy.
            for (n, kind) in [
                TransitionKind::Stopping,
                TransitionKind::Stopped,
                TransitionKind::Starting,
                TransitionKind::Started,
            ]
            .into_iter()
            .enumerate()
            {
                record(table, transition(unit, kind, T0 + n as Micros), T0);
            }
        }
        let labels = "{unit=\"healthy.service\",source=\"systemd\"}";
        let text = rendered_at(&changed, T0);
        assert_eq!(
            series_of(&text, unit),
            [
                format!("crashwatch_unit_restarts_total{labels}"),
                format!("crashwatch_unit_crashlooping{labels}"),
            ],
            "{text}"
        );
        let text = rendered_at(&all, T0);
        assert_eq!(series_of(&text, unit).len(), 6 + 4, "{text}");
        assert!(text.contains(&format!("crashwatch_unit_active{labels} 1\n")));
        assert!(text.contains(&format!("crashwatch_unit_starts_total{labels} 1\n")));
    }

    #[test]
    fn a_crash_and_restart_between_two_scrapes_show_a_restart_counted_from_zero() {
        let unit = "crashy.service";
        let mut table = UnitTable::new();
        table.register(unit, SourceKind::Systemd, Policy::default());
        table.present(unit, &UnitState::new("active", "running"));
        let bare = "unit=\"crashy.service\",source=\"systemd\"";
        let labels = format!("{{{bare}}}");
        let restarts = format!("crashwatch_unit_restarts_total{labels}");
        let before = rendered_at(&table, T0);
        assert!(before.contains(&format!("{restarts} 0\n")), "{before}");
        assert_eq!(series_of(&before, unit).len(), 2, "{before}");

        // Crash, automatic restart 100 ms later, up again: all before the next scrape.
        let at = T0 + SECOND;
        record(&mut table, crash(unit, at), at);
        record(
            &mut table,
            transition(unit, TransitionKind::Restart, at + 100_000),
            at,
        );
        window(&mut table, unit, 1, at);
        record(
            &mut table,
            transition(unit, TransitionKind::Starting, at + 100_000),
            at,
        );
        record(
            &mut table,
            transition(unit, TransitionKind::Started, at + 200_000),
            at,
        );
        let after = rendered_at(&table, at + SECOND);
        for line in [
            format!("{restarts} 1"),
            format!("crashwatch_unit_starts_total{labels} 1"),
            format!("crashwatch_unit_crashes_total{{{bare},reason=\"exit-code\"}} 1"),
            format!("crashwatch_unit_restarts_in_window{labels} 1"),
            format!("crashwatch_unit_crashloops_total{labels} 0"),
            format!("crashwatch_unit_active{labels} 1"),
            format!("crashwatch_unit_last_crash_timestamp_seconds{labels} 1795243853.000000"),
        ] {
            assert!(
                after.contains(&format!("{line}\n")),
                "{line:?} missing from\n{after}"
            );
        }
    }

    #[test]
    fn the_full_set_goes_a_retention_after_the_unit_is_healthy_and_the_generation_moves() {
        let unit = "once.service";
        let mut table = UnitTable::new();
        table.register(unit, SourceKind::Systemd, Policy::default());
        let at = T0;
        record(&mut table, crash(unit, at), at);
        record(
            &mut table,
            transition(unit, TransitionKind::Restart, at),
            at,
        );
        window(&mut table, unit, 1, at);
        record(
            &mut table,
            transition(unit, TransitionKind::Started, at),
            at,
        );
        // Held while the restart is in the window, however long that is.
        let later = at + 2 * RETENTION;
        assert!(series_of(&rendered_at(&table, later), unit).len() > 2);

        // The restart leaves the window: healthy from here, the full set for one retention.
        window(&mut table, unit, 0, later);
        let generation = table.generation_at(later);
        let last = later + RETENTION - 1;
        assert!(series_of(&rendered_at(&table, last), unit).len() > 2);
        assert_eq!(table.generation_at(last), generation);
        let gone = later + RETENTION;
        let text = rendered_at(&table, gone);
        assert_eq!(series_of(&text, unit).len(), 2, "{text}");
        assert!(
            text.contains(
                "crashwatch_unit_restarts_total{unit=\"once.service\",source=\"systemd\"} 1\n"
            ),
            "the counter goes on: {text}"
        );
        assert!(
            table.generation_at(gone) > generation,
            "nothing would render it"
        );
        let generation = table.generation_at(gone);
        assert_eq!(table.generation_at(gone + RETENTION), generation);

        // The next crash brings the full set back.
        record(&mut table, crash(unit, gone), gone);
        assert!(series_of(&rendered_at(&table, gone), unit).len() > 2);
    }

    #[test]
    fn a_unit_down_since_its_crash_keeps_its_full_set_until_it_is_up() {
        let unit = "down.service";
        let mut table = UnitTable::new();
        table.register(unit, SourceKind::Systemd, Policy::default());
        record(&mut table, crash(unit, T0), T0);
        window(&mut table, unit, 0, T0);
        let text = rendered_at(&table, T0 + 6 * RETENTION);
        for name in [
            "crashwatch_unit_active",
            "crashwatch_unit_last_crash_timestamp_seconds",
        ] {
            assert!(
                text.contains(&format!("{name}{{unit=\"down.service\"")),
                "{text}"
            );
        }
        let up = T0 + 7 * RETENTION;
        record(
            &mut table,
            transition(unit, TransitionKind::Started, up),
            up,
        );
        assert!(series_of(&rendered_at(&table, up + RETENTION - 1), unit).len() > 2);
        assert_eq!(
            series_of(&rendered_at(&table, up + RETENTION), unit).len(),
            2
        );
    }

    #[test]
    fn every_unit_keeps_every_series_with_all() {
        let unit = "all.service";
        let mut table = UnitTable::with_series(UnitSeries::All);
        table.register(unit, SourceKind::Systemd, Policy::default());
        record(&mut table, crash(unit, T0), T0);
        record(
            &mut table,
            transition(unit, TransitionKind::Started, T0),
            T0,
        );
        let shown = series_of(&rendered_at(&table, T0), unit);
        let generation = table.generation_at(T0);
        let later = T0 + 10 * RETENTION;
        assert_eq!(series_of(&rendered_at(&table, later), unit), shown);
        assert_eq!(table.generation_at(later), generation);
    }

    #[test]
    fn a_crash_from_history_shows_the_full_set_of_a_unit_still_down() {
        let mut table = UnitTable::new();
        for unit in ["down.service", "up.service"] {
            table.register(unit, SourceKind::Systemd, Policy::default());
            table.remember_crash(unit, &crash(unit, T0));
        }
        table.present("down.service", &UnitState::new("failed", "failed"));
        table.present("up.service", &UnitState::new("active", "running"));
        let now = now_micros();
        let text = rendered_at(&table, now + 2 * RETENTION);
        assert!(series_of(&text, "down.service").len() > 2, "{text}");
        assert_eq!(series_of(&text, "up.service").len(), 2, "{text}");
        assert!(series_of(&rendered_at(&table, now), "up.service").len() > 2);
    }

    #[test]
    fn events_move_the_counters_and_gauges() {
        let mut table = UnitTable::new();
        let unit = "b.service";
        table.register(unit, SourceKind::Systemd, Policy::default());
        let mut crash = transition(unit, TransitionKind::Failed, 2_500_000);
        crash.crash = Some("exit-code".into());
        crash.exit = Some(ExitCause {
            code: crate::event::ExitCode::Exited,
            status: 3,
        });
        let mut odd = transition(unit, TransitionKind::Stopped, 2_600_000);
        odd.crash = Some("not-a-result\"".into());
        for t in [
            transition(unit, TransitionKind::Starting, 1_000_000),
            transition(unit, TransitionKind::Started, 1_100_000),
            crash,
            odd,
            transition(unit, TransitionKind::Restart, 3_000_000),
        ] {
            table.record(&Event::Transition {
                transition: t,
                restarts: 0,
            });
        }
        table.record(&Event::Loop(LoopEvent {
            unit: unit.into(),
            source: SourceKind::Systemd,
            timestamp: 3_000_000,
            ended: None,
            restarts_in_window: 3,
            threshold: 3,
            window_seconds: 300.0,
        }));
        let text = rendered(&table);
        let labels = "unit=\"b.service\",source=\"systemd\"";
        for line in [
            format!("crashwatch_unit_starts_total{{{labels}}} 1"),
            format!("crashwatch_unit_restarts_total{{{labels}}} 1"),
            format!("crashwatch_unit_crashloops_total{{{labels}}} 1"),
            format!("crashwatch_unit_crashes_total{{{labels},reason=\"exit-code\"}} 1"),
            format!("crashwatch_unit_crashes_total{{{labels},reason=\"other\"}} 1"),
            format!("crashwatch_unit_transitions_total{{{labels},transition=\"failed\"}} 1"),
            format!("crashwatch_unit_crashlooping{{{labels}}} 1"),
            format!("crashwatch_unit_restarts_in_window{{{labels}}} 3"),
            format!("crashwatch_unit_active{{{labels}}} 0"),
            format!("crashwatch_unit_last_crash_timestamp_seconds{{{labels}}} 2.600000"),
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line:?} missing from\n{text}"
            );
        }
        let record = table.get(unit).unwrap();
        assert_eq!(record.recent().len(), 5);
        assert_eq!(record.last_crash.as_ref().unwrap().reason, "other");
        assert_eq!(
            record.last_transition,
            Some((3_000_000, TransitionKind::Restart))
        );
    }

    #[test]
    fn recent_transitions_are_bounded() {
        let mut table = UnitTable::new();
        table.register("c.service", SourceKind::Systemd, Policy::default());
        for n in 0..(RECENT_TRANSITIONS as u64 + 10) {
            table.record(&Event::Transition {
                transition: transition("c.service", TransitionKind::Started, n),
                restarts: 0,
            });
        }
        let record = table.get("c.service").unwrap();
        assert_eq!(record.recent().len(), RECENT_TRANSITIONS);
        assert_eq!(record.recent().next().unwrap().timestamp_us, 10);
    }

    #[test]
    fn label_values_are_escaped_once_and_exactly() {
        let mut table = UnitTable::new();
        for name in [r"a\x3ab.service", "q\"uote.service", "new\nline", r"tail\"] {
            table.register(name, SourceKind::Upstart, Policy::default());
        }
        let text = rendered(&table);
        assert!(
            text.contains(r#"unit="a\\x3ab.service",source="upstart""#),
            "{text}"
        );
        assert!(text.contains(r#"unit="q\"uote.service""#), "{text}");
        assert!(text.contains(r#"unit="new\nline""#), "{text}");
        assert!(text.contains(r#"unit="tail\\""#), "{text}");
    }

    #[test]
    fn a_removed_unit_leaves_no_series_and_moves_the_generation() {
        let mut table = UnitTable::new();
        table.register("d.service", SourceKind::Systemd, Policy::default());
        let before = table.generation();
        assert!(table.remove("d.service"));
        assert!(table.generation() > before);
        assert!(!rendered(&table).contains("d.service"));
        assert!(!table.remove("d.service"));
    }

    #[test]
    fn the_last_crash_gives_its_exit_as_a_shell_would_and_how_long_the_run_lasted() {
        let mut table = UnitTable::new();
        let unit = "e.service";
        table.register(unit, SourceKind::Systemd, Policy::default());
        let text = rendered(&table);
        assert!(!text.contains("crashwatch_unit_last_exit_code{"), "{text}");
        assert!(
            !text.contains("crashwatch_unit_last_crash_run_seconds{"),
            "{text}"
        );
        let crash = |at, code, status| {
            let mut t = transition(unit, TransitionKind::Failed, at);
            t.crash = Some("signal".into());
            t.exit = Some(ExitCause { code, status });
            t.run_started = Some(at - 1_500_000);
            t.invocation_id = Some(format!("{at:032x}"));
            Event::Transition {
                transition: t,
                restarts: 0,
            }
        };
        table.record(&crash(10_000_000, crate::event::ExitCode::Killed, 9));
        let text = rendered(&table);
        let labels = "unit=\"e.service\",source=\"systemd\"";
        assert!(
            text.contains(&format!("crashwatch_unit_last_exit_code{{{labels}}} 137\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "crashwatch_unit_last_crash_run_seconds{{{labels}}} 1.5\n"
            )),
            "{text}"
        );
        table.record(&crash(20_000_000, crate::event::ExitCode::Exited, 3));
        assert!(
            rendered(&table).contains(&format!("crashwatch_unit_last_exit_code{{{labels}}} 3\n"))
        );

        // An answer about the older run is not attached to the newer crash.
        let older = format!("{:032x}", 10_000_000);
        let newer = format!("{:032x}", 20_000_000);
        let lines = CrashContext::found(vec!["old".into()]);
        assert!(!table.attach_context(unit, Some(&older), 10_000_000, lines.clone()));
        // Nor, where runs have no name, one about an earlier crash of the same unit.
        assert!(!table.attach_context(unit, Some(&newer), 10_000_000, lines));
        // It is kept as the newest known lines, for an action in a loop faster than the lookups.
        assert_eq!(
            table.get(unit).unwrap().earlier_context,
            Some((10_000_000, CrashContext::found(vec!["old".into()])))
        );
        let pending = CrashContext::pending();
        assert!(!table.attach_context(unit, Some(&older), 15_000_000, pending));
        assert_eq!(
            table
                .get(unit)
                .unwrap()
                .earlier_context
                .as_ref()
                .map(|(at, _)| *at),
            Some(10_000_000),
            "a pending answer is no lines"
        );
        assert!(table
            .get(unit)
            .unwrap()
            .last_crash
            .as_ref()
            .unwrap()
            .context
            .is_none());
        let lines = CrashContext::found(vec!["new".into()]);
        assert!(table.attach_context(unit, Some(&newer), 20_000_000, lines.clone()));
        let crash = table.get(unit).unwrap().last_crash.clone().unwrap();
        assert_eq!(crash.context, Some(lines));
    }

    #[test]
    fn crash_reasons_are_a_fixed_set() {
        assert_eq!(crash_reason_label("exit-code"), "exit-code");
        assert_eq!(crash_reason_label("oom-kill"), "oom-kill");
        assert_eq!(crash_reason_label("anything\"else"), "other");
    }
}
