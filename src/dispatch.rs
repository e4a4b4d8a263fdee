//! The detector task: owns every unit's window and hands each event to every sink.
//!
//! One task holds all detector state, so nothing needs a lock. It wakes for a transition or for
//! the detector's next deadline (a restart leaving its window, a loop ending), and for nothing
//! else: an idle node costs no wake-ups. Units beyond the configured cap are still written to the
//! event record but get no series and no window of their own, so a flood of unit names cannot
//! grow memory or the scrape without bound.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::detect::{Detector, LoopChange, Observation, Update};
use crate::event::{Event, LoopEvent, SourceKind, Transition, TransitionKind};
use crate::internal_events::UnitOverflow;
use crate::sink::actions::ActionsSink;
use crate::sink::{prometheus, ThreadedSink};
use crate::source::bus::now_micros;

/// The sinks that run on threads of their own.
#[derive(Default)]
pub struct Sinks {
    /// StatsD, when configured.
    pub statsd: Option<ThreadedSink>,
    /// The event record, when configured.
    pub events: Option<ThreadedSink>,
    /// The actions, when any is configured; only loop events reach its thread.
    pub actions: Option<ActionsSink>,
}

impl Sinks {
    fn send(&self, event: &Event) {
        prometheus::record(event);
        if let Some(statsd) = &self.statsd {
            statsd.send(event);
        }
        if let Some(events) = &self.events {
            events.send(event);
        }
        if let Some(actions) = &self.actions {
            actions.send(event);
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

/// What the task keeps per unit besides its window.
struct UnitBook {
    source: SourceKind,
    restarts: u64,
}

/// Turns transitions into events until the channel closes or `shutdown` is cancelled; then
/// drains what is queued and flushes the sinks.
pub async fn run(
    mut transitions: mpsc::Receiver<Transition>,
    mut detector: Detector,
    sinks: Sinks,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let mut dispatcher = Dispatcher {
        detector: &mut detector,
        sinks: &sinks,
        units: HashMap::new(),
        max_units: limits.max_units,
        fold_instances: limits.fold_instances,
    };
    loop {
        let sleep = dispatcher.detector.next_deadline().map(|deadline| {
            let now = now_micros();
            Duration::from_micros(deadline.saturating_sub(now))
        });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            received = transitions.recv() => match received {
                Some(t) => dispatcher.transition(t),
                None => break,
            },
            _ = tokio::time::sleep(sleep.unwrap_or(Duration::ZERO)), if sleep.is_some() => {
                dispatcher.advance(now_micros());
            }
        }
    }
    transitions.close();
    while let Ok(t) = transitions.try_recv() {
        dispatcher.transition(t);
    }
    drop(dispatcher);
    sinks.finish();
}

struct Dispatcher<'a> {
    detector: &'a mut Detector,
    sinks: &'a Sinks,
    units: HashMap<String, UnitBook>,
    max_units: usize,
    fold_instances: bool,
}

impl Dispatcher<'_> {
    fn transition(&mut self, mut t: Transition) {
        if self.fold_instances {
            if let Some(folded) = fold_instance(&t.unit) {
                t.unit = folded;
            }
        }
        if !self.units.contains_key(&t.unit) {
            if self.units.len() >= self.max_units {
                UnitOverflow {
                    unit: &t.unit,
                    max_units: self.max_units,
                }
                .emit();
                if let Some(events) = &self.sinks.events {
                    events.send(&Event::Transition {
                        transition: t,
                        restarts: 0,
                    });
                }
                return;
            }
            prometheus::register_unit(&t.unit, t.source);
            // Journal history may have given the unit a window before its series existed.
            show_window(self.detector, &t.unit, t.source);
            self.units.insert(
                t.unit.clone(),
                UnitBook {
                    source: t.source,
                    restarts: 0,
                },
            );
        }
        let book = self.units.get_mut(&t.unit);
        let restarts = match book {
            Some(book) => {
                if t.kind == TransitionKind::Restart {
                    book.restarts += 1;
                }
                book.restarts
            }
            None => 0,
        };
        let observation = observation(&t);
        let (unit, source, at) = (t.unit.clone(), t.source, t.timestamp);
        self.sinks.send(&Event::Transition {
            transition: t,
            restarts,
        });
        if let Some(observation) = observation {
            if let Some(update) = self.detector.observe(&unit, observation, at) {
                self.update(update, source);
            }
        }
    }

    fn advance(&mut self, now: u64) {
        for update in self.detector.advance(now) {
            let source = self
                .units
                .get(&update.unit)
                .map(|b| b.source)
                .unwrap_or(SourceKind::Systemd);
            self.update(update, source);
        }
    }

    fn update(&mut self, update: Update, source: SourceKind) {
        if let Some(change) = update.loop_change {
            let ended = match change {
                LoopChange::Started => None,
                LoopChange::Ended(outcome) => Some(outcome),
            };
            self.sinks.send(&Event::Loop(LoopEvent {
                unit: update.unit.clone(),
                source,
                timestamp: update.at,
                ended,
                restarts_in_window: update.restarts_in_window,
                threshold: update.policy.threshold,
                window_seconds: update.policy.window.as_secs_f64(),
            }));
        }
        self.sinks.send(&Event::Window {
            unit: update.unit,
            source,
            restarts_in_window: update.restarts_in_window,
        });
    }
}

/// Sets a unit's `crashlooping` and `restarts_in_window` gauges from what the detector holds,
/// for a unit whose window was rebuilt from journal history rather than heard: registering its
/// series sets them to zero. Nothing is counted. A unit the detector holds nothing about is left
/// alone.
pub(crate) fn show_window(detector: &Detector, unit: &str, source: SourceKind) {
    let restarts_in_window = detector.restarts_in_window(unit);
    if restarts_in_window > 0 {
        prometheus::record(&Event::Window {
            unit: unit.to_owned(),
            source,
            restarts_in_window,
        });
    }
    if detector.is_looping(unit) {
        // Not a loop event: that would also count the loop in crashloops_total.
        prometheus::show_loop_in_progress(unit, source);
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
