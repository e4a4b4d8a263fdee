//! The detector task: owns every unit's window and hands each event to every sink.
//!
//! One task holds all detector state, so nothing needs a lock. It wakes for a transition or for
//! the detector's next deadline (a restart leaving its window, a loop ending), and for nothing
//! else: an idle node costs no wake-ups. Units beyond the configured cap are still written to the
//! event record but get no series and no window of their own, so a flood of unit names cannot
//! grow memory or the scrape without bound. Units the init system unloads keep their series for
//! a retention period (so a scrape still sees how a short-lived unit ended), then leave the unit
//! table; at the cap they make room first.

pub mod units;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use metrics::gauge;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::detect::{Detector, Observation, Policy, Update};
use crate::engine::units::{SharedUnits, UnitTable};
use crate::event::{
    ContextRequest, CrashContext, Event, History, LastExit, LoopEvent, Micros, SourceEvent,
    SourceKind, Transition, TransitionKind, UnitState,
};
use crate::glob::{Glob, UnitFilter};
use crate::internal_events::UnitOverflow;
use crate::time::now_micros;

/// A sink the engine hands every event to. Implemented by the sinks (sink/) and wired in by
/// `lib.rs`, so the engine knows no sink: `send` must never block (a slow sink drops and counts),
/// and `finish` waits until what the sink holds is written out.
pub trait EventSink: Send {
    /// Hands an event over without waiting.
    fn send(&self, event: &Event);
    /// Waits for the sink to write out what it holds.
    fn finish(self: Box<Self>);
}

/// A sink that is handed only a loop's start or end, with the unit's last exit: the actions.
pub trait LoopSink: Send {
    /// Hands a loop event over without waiting.
    fn send(&self, event: &LoopEvent, last_exit: Option<LastExit>);
    /// Waits for what is in flight, briefly.
    fn finish(self: Box<Self>);
}

/// Looks up what a crashed run wrote last, off the event path: `request` must never block. The
/// answer comes back later down the source channel as
/// [`SourceEvent::CrashContext`]; what `request` returns is the context to show until then
/// (`pending`, or `unavailable` when the request could not be taken).
pub trait ContextLookup: Send {
    /// Asks for the context of one crash without waiting.
    fn request(&self, request: ContextRequest) -> CrashContext;
}

/// Where the engine's events go. Prometheus is not among them: it reads the unit table the
/// engine keeps ([`units`]) when it is scraped.
#[derive(Default)]
pub struct Sinks {
    /// StatsD, when configured.
    pub statsd: Option<Box<dyn EventSink>>,
    /// The event record, when configured; it alone also gets the transitions of units beyond
    /// the cap.
    pub events: Option<Box<dyn EventSink>>,
    /// The actions, when any is configured; only loop events reach them.
    pub actions: Option<Box<dyn LoopSink>>,
    /// Where crash contexts are asked for; with none, every crash's context is unavailable.
    pub context: Option<Box<dyn ContextLookup>>,
}

impl Sinks {
    fn send(&self, event: &Event) {
        for sink in [&self.statsd, &self.events].into_iter().flatten() {
            sink.send(event);
        }
    }

    /// Waits for every sink to write out what it holds.
    pub fn finish(self) {
        for sink in [self.statsd, self.events].into_iter().flatten() {
            sink.finish();
        }
        if let Some(actions) = self.actions {
            actions.finish();
        }
    }
}

/// How the engine names, caps and keeps units.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Units with series of their own; the rest are counted, not exported.
    pub max_units: usize,
    /// Count template instances as their template.
    pub fold_instances: bool,
    /// How long a unit the init system unloaded keeps its series.
    pub unloaded_retention: Duration,
    /// Whether the event record gets each crash's context when it arrives.
    pub crash_context_record: bool,
}

impl Settings {
    fn retention_micros(&self) -> Micros {
        u64::try_from(self.unloaded_retention.as_micros()).unwrap_or(u64::MAX)
    }
}

/// The name a unit is counted under when instances are folded: `getty@tty1.service` becomes
/// `getty@.service` and Upstart's `tty (tty1)` becomes `tty`. Other names are kept.
pub fn fold_instance(unit: &str) -> Option<String> {
    if let Some((template, rest)) = unit.split_once('@') {
        let dot = rest.rfind('.').unwrap_or(rest.len());
        let (instance, suffix) = rest.split_at(dot);
        if !instance.is_empty() {
            return Some(format!("{template}@{suffix}"));
        }
    }
    if let Some((job, _instance)) = unit.strip_suffix(')').and_then(|u| u.split_once(" (")) {
        return Some(job.to_owned());
    }
    None
}

/// A new configuration for the running engine, from a reload. Windows, loops and counters of
/// units still watched are kept.
pub struct Reconfigure {
    /// The default policy.
    pub policy: Policy,
    /// Per-unit policies, first match wins.
    pub overrides: Vec<(Glob, Policy)>,
    /// The units watched: those no longer watched leave the table and the detector.
    pub filter: UnitFilter,
    /// The StatsD sink, when its target changed (`Some(None)`: turned off).
    pub statsd: Option<Option<Box<dyn EventSink>>>,
    /// The actions, when they changed (`Some(None)`: none left).
    pub actions: Option<Option<Box<dyn LoopSink>>>,
}

/// Turns what the sources send into events until the channel closes or `shutdown` is
/// cancelled; then drains what is queued and flushes the sinks. Every event is recorded in
/// `units` before the threaded sinks get it. A [`Reconfigure`] from `reconfigure` is applied
/// between two events.
pub async fn run(
    mut received: mpsc::Receiver<SourceEvent>,
    mut reconfigure: mpsc::Receiver<Reconfigure>,
    detector: Detector,
    units: SharedUnits,
    sinks: Sinks,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let mut dispatcher = Dispatcher {
        detector,
        sinks,
        units,
        settings,
        unloaded: VecDeque::new(),
        watched: None,
        history_crashes: HashMap::new(),
    };
    let mut reloadable = true;
    loop {
        let sleep = dispatcher.next_deadline().map(|deadline| {
            let now = now_micros();
            Duration::from_micros(deadline.saturating_sub(now))
        });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            event = received.recv() => match event {
                Some(event) => dispatcher.source_event(event),
                None => break,
            },
            change = reconfigure.recv(), if reloadable => match change {
                Some(change) => dispatcher.reconfigure(change, now_micros()),
                None => reloadable = false,
            },
            _ = tokio::time::sleep(sleep.unwrap_or(Duration::ZERO)), if sleep.is_some() => {
                dispatcher.advance(now_micros());
            }
        }
    }
    received.close();
    while let Ok(event) = received.try_recv() {
        dispatcher.source_event(event);
    }
    dispatcher.sinks.finish();
}

struct Dispatcher {
    detector: Detector,
    sinks: Sinks,
    units: SharedUnits,
    settings: Settings,
    /// Units the init system unloaded, oldest first: when each was unloaded and when its series
    /// may go. An entry whose unit was loaded again since is stale and skipped.
    unloaded: Unloaded,
    /// The units watched after a reload. Until then the sources' own filter is all there is;
    /// after one, events a source sent under the old filter are dropped here.
    watched: Option<UnitFilter>,
    /// The last crash journal history holds of each unit not yet in the table, by counted name.
    history_crashes: HashMap<String, Transition>,
}

impl Dispatcher {
    fn source_event(&mut self, event: SourceEvent) {
        let unit = match &event {
            SourceEvent::Transition(t) => Some(&t.unit),
            SourceEvent::Present { unit, .. }
            | SourceEvent::Unloaded { unit, .. }
            | SourceEvent::CrashContext { unit, .. } => Some(unit),
            SourceEvent::History(_) => None,
        };
        if let (Some(unit), Some(watched)) = (unit, &self.watched) {
            if !watched.allows(unit) {
                return;
            }
        }
        match event {
            SourceEvent::Transition(t) => self.transition(t),
            SourceEvent::Present {
                unit,
                source,
                state,
            } => self.unit_present(unit, source, &state),
            SourceEvent::Unloaded { unit, at } => self.unit_unloaded(unit, at),
            SourceEvent::History(history) => self.history(history),
            SourceEvent::CrashContext {
                unit,
                invocation,
                ended,
                context,
            } => {
                let unit = self.counted_name(unit);
                let mut table = self.units.lock();
                let source = table.get(&unit).map(|record| record.source);
                let attached =
                    table.attach_context(&unit, invocation.as_deref(), ended, context.clone());
                drop(table);
                if let (true, Some(source), Some(events)) = (
                    attached && self.settings.crash_context_record,
                    source,
                    &self.sinks.events,
                ) {
                    events.send(&Event::CrashContext {
                        unit,
                        source,
                        timestamp: now_micros(),
                        invocation,
                        context,
                    });
                }
            }
        }
    }

    /// The context to show for crash `t` of the unit counted as `unit` (the source's name is
    /// still `t.unit`), asked for when the run is known.
    fn crash_context(&self, source_unit: &str, t: &Transition) -> CrashContext {
        match &self.sinks.context {
            Some(lookup) => lookup.request(ContextRequest {
                unit: source_unit.to_owned(),
                invocation: t.invocation_id.clone(),
                run_started: t.run_started,
                ended: t.timestamp,
                verdict: t.crash.clone(),
            }),
            None => CrashContext::unavailable("no log is read for this source"),
        }
    }

    fn next_deadline(&self) -> Option<Micros> {
        let expiry = self.unloaded.front().map(|(_, expiry, _)| *expiry);
        match (self.detector.next_deadline(), expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The name `unit` is counted under: its template's when instances are folded.
    fn counted_name(&self, unit: String) -> String {
        if self.settings.fold_instances {
            if let Some(folded) = fold_instance(&unit) {
                return folded;
            }
        }
        unit
    }

    fn transition(&mut self, mut t: Transition) {
        let source_unit = t.crash.is_some().then(|| t.unit.clone());
        t.unit = self.counted_name(std::mem::take(&mut t.unit));
        // A handle of its own, so the lock does not hold `self`.
        let units = self.units.clone();
        let mut table = units.lock();
        if !self.admit(&mut table, &t.unit, t.source) {
            drop(table);
            if let Some(events) = &self.sinks.events {
                events.send(&Event::Transition {
                    transition: t,
                    restarts: 0,
                });
            }
            return;
        }
        let restarts = table.get(&t.unit).map_or(0, |record| record.restarts)
            + u64::from(t.kind == TransitionKind::Restart);
        let observation = Observation::of(&t);
        let (unit, source, at) = (t.unit.clone(), t.source, t.timestamp);
        let context = source_unit.map(|name| self.crash_context(&name, &t));
        let invocation = t.invocation_id.clone();
        let event = Event::Transition {
            transition: t,
            restarts,
        };
        table.record(&event);
        if let Some(context) = context {
            table.attach_context(&unit, invocation.as_deref(), at, context);
        }
        drop(table);
        self.sinks.send(&event);
        if let Some(observation) = observation {
            if let Some(update) = self.detector.observe(&unit, observation, at) {
                self.update(update, source);
            }
        }
    }

    /// Makes sure `unit` has a record in `table`, registering it if there is room (at the cap,
    /// an unloaded unit may make room). A unit left out is counted as overflow. Returns whether
    /// the unit has a record.
    fn admit(&mut self, table: &mut UnitTable, unit: &str, source: SourceKind) -> bool {
        if table.contains(unit) {
            return true;
        }
        if table.len() >= self.settings.max_units
            && !make_room(&mut self.unloaded, &self.detector, table)
        {
            UnitOverflow {
                unit,
                max_units: self.settings.max_units,
            }
            .emit();
            return false;
        }
        table.register(unit, source, self.detector.policy_for(unit));
        // Journal history may have given the unit a window before its series existed, and a
        // crash: shown with what that run wrote, as a crash heard live is.
        show_window(&self.detector, table, unit);
        if let Some(crash) = self.history_crashes.remove(unit) {
            table.remember_crash(unit, &crash);
            let context = self.crash_context(&crash.unit, &crash);
            table.attach_context(
                unit,
                crash.invocation_id.as_deref(),
                crash.timestamp,
                context,
            );
        }
        gauge!("crashwatch_units").set(table.len() as f64);
        true
    }

    /// Gives a unit a snapshot found its series, if it has none yet and there is room.
    fn unit_present(&mut self, unit: String, source: SourceKind, state: &UnitState) {
        let unit = self.counted_name(unit);
        let units = self.units.clone();
        let mut table = units.lock();
        if self.admit(&mut table, &unit, source) {
            table.present(&unit, state);
        }
    }

    /// Notes that the init system unloaded `unit`; its series go once the retention has passed.
    /// Not for folded instances: the template they count under lives on.
    fn unit_unloaded(&mut self, unit: String, now: Micros) {
        if self.settings.fold_instances && fold_instance(&unit).is_some() {
            return;
        }
        let mut table = self.units.lock();
        if !table.contains(&unit) {
            return;
        }
        table.unloaded(&unit, now);
        drop(table);
        let expiry = now.saturating_add(self.settings.retention_micros());
        self.unloaded.push_back((now, expiry, unit));
    }

    /// Rebuilds the windows from history, before anything live: the detector's clock moves
    /// through it with every change dropped, so nothing is counted or sent (the `*_total`
    /// counters count only what is heard live, and a loop's start was announced by whoever saw
    /// it begin). Units that still hold restarts or a loop at its end are admitted as any unit
    /// is, and show their window; history of more units than the cap is left out.
    fn history(&mut self, history: History) {
        let mut units: HashMap<String, SourceKind> = HashMap::new();
        // When each unit's current run began, as the journal tells it: its lines are looked for
        // from there when journald could not tag them with the run.
        let mut run_began: HashMap<String, Micros> = HashMap::new();
        for t in history.transitions {
            let unit = self.counted_name(t.unit.clone());
            if !units.contains_key(&unit) {
                if units.len() >= self.settings.max_units {
                    continue;
                }
                units.insert(unit.clone(), t.source);
            }
            match t.kind {
                TransitionKind::Starting | TransitionKind::Restart => {
                    run_began.insert(unit.clone(), t.timestamp);
                }
                TransitionKind::Started => {
                    run_began.entry(unit.clone()).or_insert(t.timestamp);
                }
                _ => {}
            }
            if t.crash.is_some() {
                let mut crash = t.clone();
                let began = run_began.remove(&unit);
                crash.run_started = crash.run_started.or(began);
                self.history_crashes.insert(unit.clone(), crash);
            }
            self.detector.advance_stepwise(t.timestamp, drop);
            if let Some(observation) = Observation::of(&t) {
                self.detector.observe(&unit, observation, t.timestamp);
            }
        }
        self.detector.advance_stepwise(history.until, drop);
        let mut seeded: Vec<(String, SourceKind)> = units
            .into_iter()
            .filter(|(unit, _)| !idle(&self.detector, unit))
            .collect();
        seeded.sort_by(|a, b| a.0.cmp(&b.0));
        let table = self.units.clone();
        let mut table = table.lock();
        for (unit, source) in seeded {
            if !self.admit(&mut table, &unit, source) {
                continue;
            }
            if self.detector.is_looping(&unit) {
                tracing::info!(
                    unit = unit.as_str(),
                    restarts_in_window = self.detector.restarts_in_window(&unit),
                    "Crash loop in progress, from the journal."
                );
            }
        }
    }

    /// Applies a reloaded configuration: new policies from now on, units no longer watched
    /// dropped with their series, and the sinks that changed replaced (the old ones finish what
    /// they hold off the event path).
    fn reconfigure(&mut self, change: Reconfigure, now: Micros) {
        let unwatched: Vec<String> = {
            let table = self.units.lock();
            table
                .iter()
                .map(|(unit, _)| unit)
                // A folded template stands for instances the filter judged one by one.
                .filter(|unit| !(self.settings.fold_instances && unit.contains("@.")))
                .filter(|unit| !change.filter.allows(unit))
                .map(str::to_owned)
                .collect()
        };
        let mut table = self.units.lock();
        for unit in &unwatched {
            self.detector.forget(unit);
            table.remove(unit);
        }
        gauge!("crashwatch_units").set(table.len() as f64);
        drop(table);
        for update in self
            .detector
            .set_policies(change.policy, change.overrides, now)
        {
            let source = self.source_of(&update.unit);
            self.update(update, source);
        }
        let mut table = self.units.lock();
        let names: Vec<String> = table.iter().map(|(unit, _)| unit.to_owned()).collect();
        for unit in names {
            table.set_policy(&unit, self.detector.policy_for(&unit));
        }
        drop(table);
        if let Some(statsd) = change.statsd {
            if let Some(old) = std::mem::replace(&mut self.sinks.statsd, statsd) {
                tokio::task::spawn_blocking(move || old.finish());
            }
        }
        if let Some(actions) = change.actions {
            if let Some(old) = std::mem::replace(&mut self.sinks.actions, actions) {
                tokio::task::spawn_blocking(move || old.finish());
            }
        }
        self.watched = Some(change.filter);
        tracing::info!(unwatched = unwatched.len(), "Reloaded the configuration.");
    }

    /// The source of a unit in the table; systemd for one that has none.
    fn source_of(&self, unit: &str) -> SourceKind {
        self.units
            .lock()
            .get(unit)
            .map(|record| record.source)
            .unwrap_or(SourceKind::Systemd)
    }

    fn advance(&mut self, now: Micros) {
        for update in self.detector.advance(now) {
            let source = self.source_of(&update.unit);
            self.update(update, source);
        }
        self.drop_expired(now);
    }

    /// Drops the series of units unloaded longer ago than the retention. One still in a window
    /// is looked at again after another retention period.
    fn drop_expired(&mut self, now: Micros) {
        let mut table = self.units.lock();
        let before = table.len();
        while let Some((since, expiry, _)) = self.unloaded.front() {
            if *expiry > now {
                break;
            }
            let since = *since;
            let Some((_, _, unit)) = self.unloaded.pop_front() else {
                break;
            };
            if !still_unloaded(&table, &unit, since) {
                continue;
            }
            if idle(&self.detector, &unit) {
                table.remove(&unit);
            } else {
                let expiry = now.saturating_add(self.settings.retention_micros());
                self.unloaded.push_back((since, expiry, unit));
            }
        }
        if table.len() != before {
            gauge!("crashwatch_units").set(table.len() as f64);
        }
    }

    fn update(&mut self, update: Update, source: SourceKind) {
        let mut events = Vec::with_capacity(2);
        events.extend(update.loop_event(source).map(Event::Loop));
        events.push(Event::Window {
            unit: update.unit.clone(),
            source,
            restarts_in_window: update.restarts_in_window,
        });
        let mut table = self.units.lock();
        for event in &events {
            table.record(event);
        }
        // Only a loop's start or end reaches the actions, with the unit's last crash.
        let action = match (&self.sinks.actions, events.first()) {
            (Some(actions), Some(Event::Loop(event))) => {
                let last_exit = table
                    .get(&update.unit)
                    .and_then(|record| record.last_crash.as_ref())
                    .map(|crash| LastExit {
                        crashed_at: crash.timestamp_us,
                        reason: crash.reason.to_owned(),
                        status: crash.exit.map(|exit| exit.exit_status),
                    });
                Some((actions, event, last_exit))
            }
            _ => None,
        };
        drop(table);
        for event in &events {
            self.sinks.send(event);
        }
        if let Some((actions, event, last_exit)) = action {
            actions.send(event, last_exit);
        }
    }
}

/// Units the init system unloaded: when, when their series may go, and the name.
type Unloaded = VecDeque<(Micros, Micros, String)>;

/// Whether the detector holds nothing about `unit`: no restart in its window, no loop.
fn idle(detector: &Detector, unit: &str) -> bool {
    detector.restarts_in_window(unit) == 0 && !detector.is_looping(unit)
}

/// Whether `unit` is still unloaded since `since` (not loaded again, not dropped).
fn still_unloaded(table: &UnitTable, unit: &str, since: Micros) -> bool {
    table
        .get(unit)
        .is_some_and(|record| record.unloaded_at == Some(since))
}

/// At the unit cap: drops the unit unloaded longest ago that the detector holds nothing about,
/// so a new unit gets series. Returns whether one was dropped.
fn make_room(unloaded: &mut Unloaded, detector: &Detector, table: &mut UnitTable) -> bool {
    let found = unloaded
        .iter()
        .position(|(since, _, unit)| still_unloaded(table, unit, *since) && idle(detector, unit));
    let Some(index) = found else { return false };
    if let Some((_, _, unit)) = unloaded.remove(index) {
        table.remove(&unit);
    }
    true
}

/// Shows in `table` what the detector holds about `unit` (its restarts in the window, a loop in
/// progress), for a unit whose window was rebuilt from journal history rather than heard.
/// Nothing is counted: the loop's start was counted by whoever saw it begin, not by this run.
fn show_window(detector: &Detector, table: &mut UnitTable, unit: &str) {
    let restarts_in_window = detector.restarts_in_window(unit);
    let looping = detector.is_looping(unit);
    if restarts_in_window > 0 || looping {
        table.show_window(unit, restarts_in_window, looping);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Policy;
    use crate::event::UnitState;

    const SECOND: Micros = 1_000_000;
    const T0: Micros = 1_795_243_852_000_000;

    /// One run of `unit` from `start`: a restart when `after_crash`, started, then a crash
    /// 2 ms later.
    fn failing_run(unit: &str, start: Micros, after_crash: bool) -> Vec<Transition> {
        let step = |at, kind, from: (&str, &str), to: (&str, &str)| {
            let from = UnitState::new(from.0, from.1);
            Transition::new(
                unit,
                SourceKind::Systemd,
                at,
                kind,
                from,
                UnitState::new(to.0, to.1),
            )
        };
        let mut run = Vec::new();
        if after_crash {
            let restart = (TransitionKind::Restart, ("activating", "auto-restart"));
            run.push(step(start, restart.0, restart.1, ("activating", "start")));
        }
        run.push(step(
            start,
            TransitionKind::Started,
            ("activating", "start"),
            ("active", "running"),
        ));
        let mut crash = step(
            start + 2_000,
            TransitionKind::Failed,
            ("active", "running"),
            ("activating", "auto-restart"),
        );
        crash.crash = Some("exit-code".to_owned());
        run.push(crash);
        run
    }

    /// An engine with no sinks, the default policy and room for 100 units.
    fn dispatcher(units: SharedUnits) -> Dispatcher {
        Dispatcher {
            detector: Detector::new(Policy::default(), Vec::new()),
            sinks: Sinks::default(),
            units,
            settings: Settings {
                max_units: 100,
                fold_instances: false,
                unloaded_retention: std::time::Duration::from_secs(60),
                crash_context_record: false,
            },
            unloaded: VecDeque::new(),
            watched: None,
            history_crashes: HashMap::new(),
        }
    }

    #[test]
    fn seeding_rebuilds_the_window_and_counts_nothing() {
        // Five runs that crashed, the way the journal parser reports them: each run after the
        // first restarted after a crash.
        let mut transitions = Vec::new();
        for run in 0..5u64 {
            transitions.extend(failing_run("crashy.service", T0 + run * SECOND, run > 0));
        }
        // A unit that crashed once long ago.
        transitions.splice(0..0, failing_run("old.service", T0 - 3_600 * SECOND, false));
        let history = History {
            transitions,
            until: T0 + 6 * SECOND,
        };
        let units = SharedUnits::new();
        let mut engine = dispatcher(units.clone());
        engine.source_event(SourceEvent::History(history));
        let mut detector = engine.detector;
        let table = units.lock();
        assert_eq!(table.len(), 1, "only crashy.service holds anything now");
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

    /// Records the requests it is handed, and answers `pending`.
    struct Requests(std::sync::Arc<std::sync::Mutex<Vec<ContextRequest>>>);

    impl ContextLookup for Requests {
        fn request(&self, request: ContextRequest) -> CrashContext {
            self.0.lock().unwrap().push(request);
            CrashContext::pending()
        }
    }

    #[test]
    fn each_crash_asks_for_its_context_and_only_its_own_answer_attaches() {
        let units = SharedUnits::new();
        let mut engine = dispatcher(units.clone());
        engine.settings.fold_instances = true;
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        engine.sinks.context = Some(Box::new(Requests(asked.clone())));
        let run = |n: u64| {
            let mut run = failing_run("web@1.service", T0 + n * SECOND, n > 0);
            for t in &mut run {
                t.invocation_id = Some(format!("{n:032x}"));
                t.run_started = Some(T0 + n * SECOND);
            }
            run
        };
        for t in run(0).into_iter().chain(run(1)) {
            engine.source_event(SourceEvent::Transition(t));
        }
        let requests = asked.lock().unwrap().clone();
        assert_eq!(requests.len(), 2, "one lookup per crash");
        assert_eq!(
            requests[1].unit, "web@1.service",
            "the unit as systemd names it"
        );
        assert_eq!(requests[1].invocation, Some(format!("{:032x}", 1)));
        assert_eq!(requests[1].ended, T0 + SECOND + 2_000);
        let context = |units: &SharedUnits| {
            let table = units.lock();
            let crash = table.get("web@.service").unwrap().last_crash.clone();
            crash.and_then(|c| c.context).map(|c| c.status)
        };
        assert_eq!(context(&units), Some(crate::event::ContextStatus::Pending));
        let answer = |n: u64, line: &str| SourceEvent::CrashContext {
            unit: "web@1.service".into(),
            invocation: Some(format!("{n:032x}")),
            ended: requests[usize::try_from(n).unwrap()].ended,
            context: CrashContext::found(vec![line.into()]),
        };
        engine.source_event(answer(0, "older run"));
        assert_eq!(context(&units), Some(crate::event::ContextStatus::Pending));
        engine.source_event(answer(1, "this run"));
        assert_eq!(context(&units), Some(crate::event::ContextStatus::Ok));

        // Without a lookup, a crash says why it has no context.
        let units = SharedUnits::new();
        let mut engine = dispatcher(units.clone());
        for t in failing_run("plain.service", T0, false) {
            engine.source_event(SourceEvent::Transition(t));
        }
        let table = units.lock();
        let crash = table
            .get("plain.service")
            .unwrap()
            .last_crash
            .clone()
            .unwrap();
        let context = crash.context.expect("a context");
        assert_eq!(context.status, crate::event::ContextStatus::Unavailable);
        assert!(context.reason.is_some());
    }

    #[test]
    fn a_crash_from_history_shows_with_its_context_when_its_unit_is_admitted() {
        let units = SharedUnits::new();
        let mut engine = dispatcher(units.clone());
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        engine.sinks.context = Some(Box::new(Requests(asked.clone())));
        let mut transitions = Vec::new();
        for n in 0..2u64 {
            let mut run = failing_run("old.service", T0 - 3_600 * SECOND + n * SECOND, n > 0);
            for t in &mut run {
                t.invocation_id = Some(format!("{n:032x}"));
            }
            transitions.extend(run);
        }
        engine.source_event(SourceEvent::History(History {
            transitions,
            until: T0,
        }));
        assert!(
            !units.lock().contains("old.service"),
            "an idle unit waits for the live source"
        );
        assert!(
            asked.lock().unwrap().is_empty(),
            "nothing asked before it is shown"
        );

        engine.source_event(SourceEvent::Present {
            unit: "old.service".into(),
            source: SourceKind::Systemd,
            state: UnitState::new("active", "running"),
        });
        let requests = asked.lock().unwrap().clone();
        assert_eq!(requests.len(), 1, "one lookup, for the last crash only");
        assert_eq!(requests[0].invocation, Some(format!("{:032x}", 1)));
        assert_eq!(
            requests[0].run_started,
            Some(T0 - 3_600 * SECOND + SECOND),
            "the run began at its restart, so untagged lines are looked for from there"
        );
        let table = units.lock();
        let record = table.get("old.service").expect("registered");
        let crash = record.last_crash.clone().expect("the crash from history");
        assert_eq!(crash.timestamp_us, requests[0].ended);
        assert_eq!(
            crash.context.map(|c| c.status),
            Some(crate::event::ContextStatus::Pending)
        );
        // Shown, not counted: the counters count only what is heard live.
        assert_eq!(record.crashes().map(|(_, n)| n).sum::<u64>(), 0);
    }

    #[test]
    fn instances_fold_into_their_template() {
        assert_eq!(
            fold_instance("getty@tty1.service").as_deref(),
            Some("getty@.service")
        );
        assert_eq!(
            fold_instance("a@b.c.service").as_deref(),
            Some("a@.service")
        );
        assert_eq!(fold_instance("tty (tty1)").as_deref(), Some("tty"));
        assert_eq!(fold_instance("getty@.service"), None);
        assert_eq!(fold_instance("nginx.service"), None);
    }

    #[tokio::test]
    async fn a_reload_keeps_counts_drops_unwatched_units_and_applies_new_policies() {
        let units = SharedUnits::new();
        let mut engine = dispatcher(units.clone());
        for run in 0..3u64 {
            for t in failing_run("kept.service", T0 + run * SECOND, run > 0) {
                engine.source_event(SourceEvent::Transition(t));
            }
            for t in failing_run("dropped.service", T0 + run * SECOND, run > 0) {
                engine.source_event(SourceEvent::Transition(t));
            }
        }
        let counts = |units: &SharedUnits| {
            let table = units.lock();
            let kept = table.get("kept.service").expect("watched");
            (kept.restarts, kept.crashes().map(|(_, n)| n).sum::<u64>())
        };
        let before = counts(&units);
        assert_eq!(before, (2, 3));
        let window = Duration::from_secs(60);
        let policy = Policy {
            threshold: 2,
            window,
        };
        let filter = UnitFilter::new(
            vec![Glob::new("*").expect("a glob")],
            vec![Glob::new("dropped.*").expect("a glob")],
        );
        engine.reconfigure(
            Reconfigure {
                policy,
                overrides: Vec::new(),
                filter,
                statsd: None,
                actions: None,
            },
            T0 + 3 * SECOND,
        );
        {
            let table = units.lock();
            assert!(!table.contains("dropped.service"), "unwatched units leave");
            let kept = table.get("kept.service").expect("still watched");
            assert_eq!(kept.policy, policy);
        }
        assert_eq!(counts(&units), before, "counters are kept");
        assert_eq!(engine.detector.restarts_in_window("kept.service"), 2);
        assert_eq!(engine.detector.restarts_in_window("dropped.service"), 0);
        // What a source sent under the old filter is dropped.
        for t in failing_run("dropped.service", T0 + 4 * SECOND, true) {
            engine.source_event(SourceEvent::Transition(t));
        }
        assert!(!units.lock().contains("dropped.service"));
        // The new threshold of 2 flags the next restart.
        for t in failing_run("kept.service", T0 + 5 * SECOND, true) {
            engine.source_event(SourceEvent::Transition(t));
        }
        assert!(engine.detector.is_looping("kept.service"));
        assert!(units
            .lock()
            .get("kept.service")
            .is_some_and(|r| r.crashlooping));
    }
}
