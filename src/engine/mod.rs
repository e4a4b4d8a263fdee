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

use std::collections::VecDeque;
use std::time::Duration;

use metrics::gauge;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::detect::{Detector, LoopChange, Observation, Update};
use crate::engine::units::{SharedUnits, UnitTable};
use crate::event::{
    Event, LoopEvent, Micros, SourceEvent, SourceKind, Transition, TransitionKind, UnitState,
};
use crate::internal_events::UnitOverflow;
use crate::sink::actions::{ActionsSink, LastExit};
use crate::sink::ThreadedSink;
use crate::time::now_micros;

/// The sinks that run on threads of their own.
#[derive(Default)]
pub struct Sinks {
    /// StatsD, when configured.
    pub statsd: Option<ThreadedSink>,
    /// The event record, when configured.
    pub events: Option<ThreadedSink>,
    /// The actions, when any is configured; only loop events reach them.
    pub actions: Option<ActionsSink>,
}

impl Sinks {
    fn send(&self, event: &Event) {
        if let Some(statsd) = &self.statsd {
            statsd.send(event);
        }
        if let Some(events) = &self.events {
            events.send(event);
        }
    }

    /// Waits for every threaded sink to write out what it holds.
    pub fn finish(self) {
        for sink in [self.statsd, self.events].into_iter().flatten() {
            sink.finish();
        }
        if let Some(actions) = self.actions {
            actions.finish();
        }
    }
}

/// Bounds on what the task exports.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Units with series of their own; the rest are counted, not exported.
    pub max_units: usize,
    /// Count template instances as their template.
    pub fold_instances: bool,
    /// How long a unit the init system unloaded keeps its series.
    pub unloaded_retention: Duration,
}

impl Limits {
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

/// Turns what the sources send into events until the channel closes or `shutdown` is
/// cancelled; then drains what is queued and flushes the sinks. Every event is recorded in
/// `units` before the threaded sinks get it.
pub async fn run(
    mut received: mpsc::Receiver<SourceEvent>,
    mut detector: Detector,
    units: SharedUnits,
    sinks: Sinks,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let mut dispatcher = Dispatcher {
        detector: &mut detector,
        sinks: &sinks,
        units,
        limits,
        unloaded: VecDeque::new(),
    };
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
            _ = tokio::time::sleep(sleep.unwrap_or(Duration::ZERO)), if sleep.is_some() => {
                dispatcher.advance(now_micros());
            }
        }
    }
    received.close();
    while let Ok(event) = received.try_recv() {
        dispatcher.source_event(event);
    }
    drop(dispatcher);
    sinks.finish();
}

struct Dispatcher<'a> {
    detector: &'a mut Detector,
    sinks: &'a Sinks,
    units: SharedUnits,
    limits: Limits,
    /// Units the init system unloaded, oldest first: when each was unloaded and when its series
    /// may go. An entry whose unit was loaded again since is stale and skipped.
    unloaded: Unloaded,
}

impl Dispatcher<'_> {
    fn source_event(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Transition(t) => self.transition(t),
            SourceEvent::Present {
                unit,
                source,
                state,
            } => self.unit_present(unit, source, &state),
            SourceEvent::Unloaded { unit, at } => self.unit_unloaded(unit, at),
        }
    }

    fn next_deadline(&self) -> Option<Micros> {
        let expiry = self.unloaded.front().map(|(_, expiry, _)| *expiry);
        match (self.detector.next_deadline(), expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn transition(&mut self, mut t: Transition) {
        if self.limits.fold_instances {
            if let Some(folded) = fold_instance(&t.unit) {
                t.unit = folded;
            }
        }
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
        let observation = observation(&t);
        let (unit, source, at) = (t.unit.clone(), t.source, t.timestamp);
        let event = Event::Transition {
            transition: t,
            restarts,
        };
        table.record(&event);
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
        if table.len() >= self.limits.max_units
            && !make_room(&mut self.unloaded, self.detector, table)
        {
            UnitOverflow {
                unit,
                max_units: self.limits.max_units,
            }
            .emit();
            return false;
        }
        table.register(unit, source, self.detector.policy_for(unit));
        // Journal history may have given the unit a window before its series existed.
        show_window(self.detector, table, unit);
        gauge!("crashwatch_units").set(table.len() as f64);
        true
    }

    /// Gives a unit a snapshot found its series, if it has none yet and there is room.
    fn unit_present(&mut self, mut unit: String, source: SourceKind, state: &UnitState) {
        if self.limits.fold_instances {
            if let Some(folded) = fold_instance(&unit) {
                unit = folded;
            }
        }
        let units = self.units.clone();
        let mut table = units.lock();
        if self.admit(&mut table, &unit, source) {
            table.present(&unit, state);
        }
    }

    /// Notes that the init system unloaded `unit`; its series go once the retention has passed.
    /// Not for folded instances: the template they count under lives on.
    fn unit_unloaded(&mut self, unit: String, now: Micros) {
        if self.limits.fold_instances && fold_instance(&unit).is_some() {
            return;
        }
        let mut table = self.units.lock();
        if !table.contains(&unit) {
            return;
        }
        table.unloaded(&unit, now);
        drop(table);
        let expiry = now.saturating_add(self.limits.retention_micros());
        self.unloaded.push_back((now, expiry, unit));
    }

    fn advance(&mut self, now: Micros) {
        for update in self.detector.advance(now) {
            let source = self
                .units
                .lock()
                .get(&update.unit)
                .map(|record| record.source)
                .unwrap_or(SourceKind::Systemd);
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
            if idle(self.detector, &unit) {
                table.remove(&unit);
            } else {
                let expiry = now.saturating_add(self.limits.retention_micros());
                self.unloaded.push_back((since, expiry, unit));
            }
        }
        if table.len() != before {
            gauge!("crashwatch_units").set(table.len() as f64);
        }
    }

    fn update(&mut self, update: Update, source: SourceKind) {
        let mut events = Vec::with_capacity(2);
        if let Some(change) = update.loop_change {
            let ended = match change {
                LoopChange::Started => None,
                LoopChange::Ended(outcome) => Some(outcome),
            };
            events.push(Event::Loop(LoopEvent {
                unit: update.unit.clone(),
                source,
                timestamp: update.at,
                ended,
                restarts_in_window: update.restarts_in_window,
                threshold: update.policy.threshold,
                window_seconds: update.policy.window.as_secs_f64(),
            }));
        }
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
pub(crate) fn show_window(detector: &Detector, table: &mut UnitTable, unit: &str) {
    let restarts_in_window = detector.restarts_in_window(unit);
    let looping = detector.is_looping(unit);
    if restarts_in_window > 0 || looping {
        table.show_window(unit, restarts_in_window, looping);
    }
}

/// What a transition tells the detector.
pub(crate) fn observation(t: &Transition) -> Option<Observation> {
    if t.gave_up {
        return Some(Observation::GaveUp);
    }
    if t.crash.is_some() {
        return Some(Observation::Crashed);
    }
    match t.kind {
        TransitionKind::Restart => Some(Observation::Restart),
        TransitionKind::Started => Some(Observation::Up),
        // A failure that is no crash is a stop someone asked for that ended badly (a stop job
        // attached when the process failed): to the detector, as much a stop as a clean one.
        TransitionKind::Stopped | TransitionKind::Failed if !t.inferred => {
            Some(Observation::Stopped)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_that_ends_in_failure_ends_the_loop() {
        use crate::event::UnitState;
        let failed = Transition::new(
            "u.service",
            SourceKind::Systemd,
            1,
            TransitionKind::Failed,
            UnitState::new("deactivating", "stop-sigterm"),
            UnitState::new("failed", "failed"),
        );
        assert_eq!(observation(&failed), Some(Observation::Stopped));
        let mut crashed = failed.clone();
        crashed.crash = Some("exit-code".to_owned());
        assert_eq!(observation(&crashed), Some(Observation::Crashed));
        let mut gave_up = failed;
        gave_up.gave_up = true;
        assert_eq!(observation(&gave_up), Some(Observation::GaveUp));
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
}
