//! The Prometheus sink: unit metrics through the `metrics` facade, and `/metrics` over HTTP.
//!
//! Names follow node_exporter's conventions: base units, `_total` on counters, one `unit` label
//! holding the full unit name, plus `source`. A unit's counters are created at zero the first time
//! the unit is seen, so `increase()` sees the first crash instead of a series that starts at 1.
//!
//! The HTTP server is a small one of our own rather than the exporter's listener: it serves only
//! GET requests, bounds how long a client may take to send its request or to read the answer, and
//! caps connections, so a scraper that connects and never reads costs a counted error, not a
//! stuck task.
//!
//! Rendering is the whole cost of a scrape (no D-Bus traffic), and the exporter spends about
//! 14,000 instructions per series on it: tens of milliseconds at 1,000 units. Between two scrapes
//! a quiet node changes nothing, so the daemon installs [`ChangeTracking`] around the recorder and
//! a scrape that finds no metric changed since the last rendering serves that rendering again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, gauge, Counter, CounterFn, Gauge, GaugeFn,
    Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::event::{Event, LoopEvent, SourceKind, Transition, TransitionKind};
use crate::internal_events::HttpRequestError;

/// Describes every metric once, so `/metrics` carries HELP and TYPE lines.
pub fn describe() {
    describe_counter!(
        "crashwatch_unit_starts_total",
        "Starts of the unit (new runs) seen by crashwatch."
    );
    describe_counter!(
        "crashwatch_unit_crashes_total",
        "Stops of the unit that nobody asked for, by reason (the init system's Result)."
    );
    describe_counter!(
        "crashwatch_unit_restarts_total",
        "Starts of the unit that followed a crash, whoever started it."
    );
    describe_counter!(
        "crashwatch_unit_transitions_total",
        "Lifecycle transitions of the unit, by kind."
    );
    describe_gauge!(
        "crashwatch_unit_crashlooping",
        "Whether the unit is crash-looping now (1) or not (0)."
    );
    describe_gauge!(
        "crashwatch_unit_restarts_in_window",
        "Restarts of the unit within its detection window."
    );
    describe_counter!(
        "crashwatch_unit_crashloops_total",
        "Crash loops of the unit that began."
    );
    describe_gauge!(
        "crashwatch_unit_last_crash_timestamp_seconds",
        Unit::Seconds,
        "When the unit last crashed, in seconds since the Unix epoch."
    );
    describe_gauge!(
        "crashwatch_unit_active",
        "Whether the unit is up (1) or not (0), as of its last transition."
    );
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
        "crashwatch_units_overflow_total",
        "Events of units beyond the unit cap, counted but not exported per unit."
    );
    gauge!("crashwatch_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// The exporter treats `\\` in a label value as an escape already made and `\"` as an escaped
/// quote, so a raw backslash would be merged with what follows. Doubling every backslash first
/// makes the rendered value read back exactly as the unit's name.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\")
}

/// Creates a unit's series at zero, so the first increase is visible to `increase()` and `rate()`.
pub fn register_unit(unit: &str, source: SourceKind) {
    let unit = label(unit);
    let source = source.as_str();
    counter!("crashwatch_unit_starts_total", "unit" => unit.clone(), "source" => source)
        .absolute(0);
    counter!("crashwatch_unit_restarts_total", "unit" => unit.clone(), "source" => source)
        .absolute(0);
    counter!("crashwatch_unit_crashloops_total", "unit" => unit.clone(), "source" => source)
        .absolute(0);
    gauge!("crashwatch_unit_crashlooping", "unit" => unit.clone(), "source" => source).set(0.0);
    gauge!("crashwatch_unit_restarts_in_window", "unit" => unit, "source" => source).set(0.0);
}

/// Shows a loop that started before crashwatch did (seeded from history): the gauge only, since
/// the loop's start was counted by whoever saw it begin, not by this run.
pub fn show_loop_in_progress(unit: &str, source: SourceKind) {
    gauge!("crashwatch_unit_crashlooping", "unit" => label(unit), "source" => source.as_str())
        .set(1.0);
}

/// Records one event.
pub fn record(event: &Event) {
    match event {
        Event::Transition { transition, .. } => record_transition(transition),
        Event::Loop(event) => record_loop(event),
        Event::Window {
            unit,
            source,
            restarts_in_window,
        } => {
            gauge!("crashwatch_unit_restarts_in_window", "unit" => label(unit), "source" => source.as_str())
                .set(f64::from(*restarts_in_window));
        }
    }
}

fn record_transition(t: &Transition) {
    let unit = label(&t.unit);
    let source = t.source.as_str();
    counter!("crashwatch_unit_transitions_total", "unit" => unit.clone(), "source" => source, "transition" => t.kind.as_str())
        .increment(1);
    match t.kind {
        TransitionKind::Starting => {
            counter!("crashwatch_unit_starts_total", "unit" => unit.clone(), "source" => source)
                .increment(1)
        }
        TransitionKind::Restart => {
            counter!("crashwatch_unit_restarts_total", "unit" => unit.clone(), "source" => source)
                .increment(1)
        }
        _ => {}
    }
    let up = match t.kind {
        TransitionKind::Started => Some(1.0),
        TransitionKind::Stopping | TransitionKind::Stopped | TransitionKind::Failed => Some(0.0),
        _ => None,
    };
    if let Some(up) = up {
        gauge!("crashwatch_unit_active", "unit" => unit.clone(), "source" => source).set(up);
    }
    if let Some(reason) = &t.crash {
        counter!("crashwatch_unit_crashes_total", "unit" => unit.clone(), "source" => source, "reason" => crash_reason_label(reason))
            .increment(1);
        gauge!("crashwatch_unit_last_crash_timestamp_seconds", "unit" => unit, "source" => source)
            .set(t.timestamp as f64 / 1e6);
    }
}

fn record_loop(event: &LoopEvent) {
    let unit = label(&event.unit);
    let source = event.source.as_str();
    let looping = if event.ended.is_none() {
        counter!("crashwatch_unit_crashloops_total", "unit" => unit.clone(), "source" => source)
            .increment(1);
        1.0
    } else {
        0.0
    };
    gauge!("crashwatch_unit_crashlooping", "unit" => unit.clone(), "source" => source).set(looping);
    gauge!("crashwatch_unit_restarts_in_window", "unit" => unit, "source" => source)
        .set(f64::from(event.restarts_in_window));
}

/// Keeps the `reason` label to a small fixed set: systemd's documented Results, else `other`.
pub fn crash_reason_label(reason: &str) -> &'static str {
    const KNOWN: [&str; 14] = [
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
    ];
    KNOWN
        .iter()
        .copied()
        .find(|k| *k == reason)
        .unwrap_or("other")
}

/// How long a client may take to send its request, and to take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more wait for a free slot.
const MAX_CONNECTIONS: usize = 64;

/// Binds the metrics listener. Separate from [`serve`] so a busy port fails at start-up.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves `/metrics` (and a small index at `/`) until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let handle = Exposition::new(handle);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else {
            // Out of file descriptors and the like: wait a little rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            if let Err(reason) = answer(stream, &handle).await {
                HttpRequestError { reason: &reason }.emit();
            }
            drop(permit);
        });
    }
}

async fn answer(mut stream: TcpStream, handle: &Exposition) -> Result<(), String> {
    let head = tokio::time::timeout(CLIENT_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| "request not received in time".to_owned())??;
    let request_line = head.lines().next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let response = match (method, path) {
        ("GET" | "HEAD", "/metrics") => response(
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
            method == "HEAD",
        ),
        ("GET" | "HEAD", "/") => response(
            "200 OK",
            "text/html; charset=utf-8",
            "<html><head><title>crashwatch</title></head><body><h1>crashwatch</h1>\
             <p><a href=\"/metrics\">Metrics</a></p></body></html>\n",
            method == "HEAD",
        ),
        ("GET" | "HEAD", _) => response("404 Not Found", "text/plain", "not found\n", false),
        _ => response(
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n",
            false,
        ),
    };
    tokio::time::timeout(CLIENT_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| "response not taken in time".to_owned())?
    .map_err(|e| format!("writing the response: {e}"))
}

async fn read_head(stream: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("connection closed before the request ended".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_REQUEST {
            return Err("request head too large".to_owned());
        }
    }
}

fn response(status: &str, content_type: &str, body: impl AsRef<str>, head_only: bool) -> Vec<u8> {
    let body = body.as_ref();
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
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

/// A rendering of the exposition and the [`GENERATION`] it was made at.
type Rendering = (u64, Arc<str>);

/// The exposition text, rendered again only when a metric changed since the last rendering.
#[derive(Clone)]
struct Exposition {
    handle: PrometheusHandle,
    last: Arc<Mutex<Option<Rendering>>>,
}

impl Exposition {
    fn new(handle: PrometheusHandle) -> Exposition {
        Exposition {
            handle,
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// Shared rather than copied for each scrape: at 10,000 units the text is 6 MB.
    fn render(&self) -> Arc<str> {
        if !TRACKING.load(Ordering::Acquire) {
            return Arc::from(self.handle.render());
        }
        // Read before rendering: an update racing with the rendering moves the generation past
        // this one, so the next scrape renders again.
        let generation = GENERATION.load(Ordering::Acquire);
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((rendered, text)) = last.as_ref() {
            if *rendered == generation {
                return text.clone();
            }
        }
        let text: Arc<str> = Arc::from(self.handle.render());
        *last = Some((generation, Arc::clone(&text)));
        release_free_memory();
        text
    }
}

/// Hands the heap pages a rendering freed back to the kernel. The exporter builds a copy of
/// every series to render them (about 6 MB at 1,000 units, for 650 kB of text), and glibc keeps
/// freed memory below the heap's top: without this, resident memory grows by the peak of one
/// rendering and stays there. It costs well under a millisecond, once per changed scrape.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    extern "C" {
        // glibc's, linked into every gnu target already; declared here rather than adding libc.
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim takes no pointers and only releases free pages; any thread may call it.
    unsafe {
        malloc_trim(0);
    }
}

/// Other C libraries return freed memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_keep_backslashes_exact() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for name in [
                r"a\x3ab.service",
                r#"q"uote\"d.service"#,
                "new\nline",
                r"tail\",
            ] {
                counter!("t_total", "unit" => label(name)).increment(1);
            }
        });
        let text = handle.render();
        assert!(text.contains(r#"unit="a\\x3ab.service""#), "{text}");
        assert!(text.contains(r#"unit="q\"uote\\\"d.service""#), "{text}");
        assert!(text.contains(r#"unit="new\nline""#), "{text}");
        assert!(text.contains(r#"unit="tail\\""#), "{text}");
    }

    #[test]
    fn a_rendering_is_reused_until_a_metric_changes() {
        let recorder = ChangeTracking::new(
            metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder(),
        );
        let exposition = Exposition::new(recorder.0.handle());
        metrics::with_local_recorder(&recorder, || counter!("t_total").increment(1));
        assert!(exposition.render().contains("t_total 1"));
        // Bypassing the tracking shows the reuse: the rendering is not redone.
        metrics::with_local_recorder(&recorder.0, || counter!("t_total").increment(1));
        assert!(exposition.render().contains("t_total 1"));
        metrics::with_local_recorder(&recorder, || counter!("t_total").increment(1));
        assert!(exposition.render().contains("t_total 3"));
    }

    #[test]
    fn crash_reasons_are_a_fixed_set() {
        assert_eq!(crash_reason_label("exit-code"), "exit-code");
        assert_eq!(crash_reason_label("oom-kill"), "oom-kill");
        assert_eq!(crash_reason_label("anything\"else"), "other");
    }
}
