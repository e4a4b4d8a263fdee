//! The Prometheus exposition: unit series from the [unit table](crate::engine::units), crashwatch's own
//! metrics through the `metrics` facade.
//!
//! Names follow node_exporter's conventions: base units, `_total` on counters, one `unit` label
//! holding the full unit name, plus `source`. A unit's counters appear at zero the first time the
//! unit is seen, so `increase()` sees the first crash instead of a series that starts at 1.
//!
//! Per-unit series are rendered by the unit table itself: the `metrics` exporter spends about
//! 14,000 instructions per series (tens of milliseconds at 1,000 units) and cannot delete the
//! series of a unit that is gone. What is left to the facade is a few dozen series about
//! crashwatch itself (source up, errors, drops). Between two scrapes a quiet node changes
//! nothing, so each part is rendered again only when it changed: the table has a generation,
//! and the daemon installs [`ChangeTracking`] around the recorder for the rest.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use metrics::{
    describe_counter, describe_gauge, gauge, Counter, CounterFn, Gauge, GaugeFn, Histogram,
    HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::engine::units::SharedUnits;

/// Describes every metric once, so `/metrics` carries HELP and TYPE lines.
pub fn describe() {
    describe_gauge!(
        "crashwatch_source_up",
        "Whether the source is connected and subscribed (1) or not (0)."
    );
    describe_counter!(
        "crashwatch_events_total",
        "Signals received from the source."
    );
    describe_gauge!(
        "crashwatch_build_info",
        "A constant 1, labelled with crashwatch's version."
    );
    describe_counter!(
        "crashwatch_errors_total",
        "Runtime failures, by component and type."
    );
    describe_gauge!(
        "crashwatch_config_last_reload_successful",
        "Whether the last configuration reload succeeded (1) or not (0)."
    );
    describe_gauge!(
        "crashwatch_config_last_reload_success_timestamp_seconds",
        "When the configuration was last loaded successfully, in seconds since the Unix epoch."
    );
    describe_counter!(
        "crashwatch_signals_dropped_total",
        "Signals dropped because the source fell behind; each drop triggers a resync."
    );
    describe_counter!(
        "crashwatch_sink_events_dropped_total",
        "Events a sink dropped because it could not keep up."
    );
    describe_counter!(
        "crashwatch_actions_total",
        "Actions run for crash-loop starts and ends, by kind, event and result (ok, failed, dropped)."
    );
    describe_counter!(
        "crashwatch_crash_context_lookups_total",
        "Lookups of what a crashed run wrote last, by result (ok, empty, failed, dropped)."
    );
    describe_counter!(
        "crashwatch_units_overflow_total",
        "Events of units beyond the unit cap, counted but not exported per unit."
    );
    describe_gauge!(
        "crashwatch_units",
        "Units with series of their own (at most the unit cap)."
    );
    gauge!("crashwatch_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Moves on every metric update made through [`ChangeTracking`].
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Whether a [`ChangeTracking`] exists; without one nothing moves [`GENERATION`], so every scrape
/// renders afresh.
static TRACKING: AtomicBool = AtomicBool::new(false);

fn changed() {
    // Release after the update: a renderer that reads the new generation sees the new value.
    GENERATION.fetch_add(1, Ordering::Release);
}

/// A recorder layer that notes every metric update, so `/metrics` is rendered again only when
/// something changed. Wrap the recorder whose handle is served, and install the wrapper
/// globally; an embedder that does not gets a fresh rendering on every scrape, as before.
pub struct ChangeTracking<R>(R);

impl<R> ChangeTracking<R> {
    /// Wraps `recorder` and turns on the reuse of renderings.
    pub fn new(recorder: R) -> ChangeTracking<R> {
        TRACKING.store(true, Ordering::Release);
        ChangeTracking(recorder)
    }
}

/// A metric handle that reports its updates. Every handle the recorder gives out is wrapped, so
/// one that a caller keeps and updates later is noticed too.
struct Tracked<H>(H);

impl CounterFn for Tracked<Counter> {
    fn increment(&self, value: u64) {
        self.0.increment(value);
        changed();
    }

    fn absolute(&self, value: u64) {
        self.0.absolute(value);
        changed();
    }
}

impl GaugeFn for Tracked<Gauge> {
    fn increment(&self, value: f64) {
        self.0.increment(value);
        changed();
    }

    fn decrement(&self, value: f64) {
        self.0.decrement(value);
        changed();
    }

    fn set(&self, value: f64) {
        self.0.set(value);
        changed();
    }
}

impl HistogramFn for Tracked<Histogram> {
    fn record(&self, value: f64) {
        self.0.record(value);
        changed();
    }
}

impl<R: Recorder> Recorder for ChangeTracking<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description);
        changed();
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description);
        changed();
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description);
        changed();
    }

    // Registering creates the series (at zero) in the exporter: that is a change too.
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let counter = self.0.register_counter(key, metadata);
        changed();
        Counter::from_arc(Arc::new(Tracked(counter)))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let gauge = self.0.register_gauge(key, metadata);
        changed();
        Gauge::from_arc(Arc::new(Tracked(gauge)))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let histogram = self.0.register_histogram(key, metadata);
        changed();
        Histogram::from_arc(Arc::new(Tracked(histogram)))
    }
}

/// A rendering and the generation it was made at.
type Rendering = (u64, Bytes);

/// The exposition text. Each of its two parts is rendered again only when it changed since its
/// last rendering, and shared rather than copied for each scrape: at 10,000 units the unit part
/// is 6 MB.
#[derive(Clone)]
pub struct Exposition {
    handle: PrometheusHandle,
    units: SharedUnits,
    own: Arc<Mutex<Option<Rendering>>>,
    unit_series: Arc<Mutex<Option<Rendering>>>,
}

impl Exposition {
    /// The exposition of the recorder behind `handle` and of the unit table.
    pub fn new(handle: PrometheusHandle, units: SharedUnits) -> Exposition {
        Exposition {
            handle,
            units,
            own: Arc::new(Mutex::new(None)),
            unit_series: Arc::new(Mutex::new(None)),
        }
    }

    /// crashwatch's own metrics, then every unit's series.
    pub fn render(&self) -> [Bytes; 2] {
        [self.render_own(), self.render_units()]
    }

    fn render_own(&self) -> Bytes {
        if !TRACKING.load(Ordering::Acquire) {
            return Bytes::from(self.handle.render());
        }
        // Read before rendering: an update racing with the rendering moves the generation past
        // this one, so the next scrape renders again.
        let generation = GENERATION.load(Ordering::Acquire);
        let mut last = self.own.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((rendered, text)) = last.as_ref() {
            if *rendered == generation {
                return text.clone();
            }
        }
        let text = Bytes::from(self.handle.render());
        *last = Some((generation, text.clone()));
        text
    }

    fn render_units(&self) -> Bytes {
        let mut last = self
            .unit_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        let generation = {
            let table = self.units.lock();
            let generation = table.generation();
            if let Some((rendered, text)) = last.as_ref() {
                if *rendered == generation {
                    return text.clone();
                }
            }
            table.render_prometheus(&mut out);
            generation
        };
        let text = Bytes::from(out);
        *last = Some((generation, text.clone()));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::counter;

    #[test]
    fn a_rendering_is_reused_until_a_metric_changes() {
        let recorder = ChangeTracking::new(
            metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder(),
        );
        let units = SharedUnits::new();
        let exposition = Exposition::new(recorder.0.handle(), units.clone());
        let own = || String::from_utf8_lossy(&exposition.render()[0]).into_owned();
        metrics::with_local_recorder(&recorder, || counter!("t_total").increment(1));
        assert!(own().contains("t_total 1"));
        // Bypassing the tracking shows the reuse: the rendering is not redone.
        metrics::with_local_recorder(&recorder.0, || counter!("t_total").increment(1));
        assert!(own().contains("t_total 1"));
        metrics::with_local_recorder(&recorder, || counter!("t_total").increment(1));
        assert!(own().contains("t_total 3"));
    }

    #[test]
    fn unit_series_are_rendered_again_only_when_the_table_changed() {
        let exposition = Exposition::new(
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle(),
            SharedUnits::new(),
        );
        let register = |unit: &str| {
            exposition.units.lock().register(
                unit,
                crate::event::SourceKind::Systemd,
                crate::detect::Policy::default(),
            )
        };
        register("a.service");
        let first = exposition.render()[1].clone();
        assert!(!first.is_empty());
        assert_eq!(first.as_ptr(), exposition.render()[1].as_ptr());
        register("b.service");
        let second = exposition.render()[1].clone();
        assert_ne!(first.as_ptr(), second.as_ptr());
        let second = String::from_utf8_lossy(&second);
        assert!(second.contains("unit=\"b.service\""), "{second}");
    }
}
