//! The Alertmanager action: a crash loop as an alert pushed to Alertmanager's v2 API.
//!
//! An alert in Alertmanager is state, not a message: it is firing until its `endsAt` passes, and
//! a sender that goes quiet lets it resolve. So, as Prometheus does, every open loop's alert is
//! sent again every `resend_interval` with `endsAt` four intervals ahead, and a loop's end sends
//! it once more with `endsAt` at the end. If crashwatch stops, its alerts resolve on their own
//! within four intervals instead of firing forever.
//!
//! One pusher task per action owns the alerts in a small book and always posts the book's
//! current state, one batch at a time. Messages sent one by one could arrive out of order under
//! retries (a start retried after its end would fire a resolved alert again); a state pushed in
//! sequence cannot. The pusher sleeps when no loop is open: the resend timer is the only periodic
//! work, and it exists only while some loop is.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::http::{post_with_retries, Endpoint, Retry};
use super::{count, failure_of, ActionRequest, EVENT_ENDED, EVENT_REFRESH, EVENT_STARTED};
use crate::event::{ContextStatus, CrashContext, Micros};
use crate::internal_events::{ActionDropped, ActionFailed};
use crate::time::format_timestamp;
use crate::time::now_micros;

/// The alert's name unless configured.
pub const DEFAULT_ALERTNAME: &str = "CrashwatchUnitCrashLooping";
/// The `severity` label unless configured, as in the shipped rule of the same name.
pub const DEFAULT_SEVERITY: &str = "critical";
/// How often open alerts are sent again unless configured.
pub const DEFAULT_RESEND_INTERVAL: Duration = Duration::from_secs(60);
/// How many resend intervals a sent alert stays valid: four, as Prometheus does.
const VALID_FOR_INTERVALS: u32 = 4;
/// Resolutions held for an Alertmanager that is down; beyond it the oldest is given up.
const MAX_RESOLVED_HELD: usize = 1024;
/// Labels crashwatch sets itself and a configuration cannot replace through `labels`.
pub const OWN_LABELS: [&str; 4] = ["alertname", "unit", "source", "severity"];

const KIND: &str = "alertmanager";

/// A configured Alertmanager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertmanagerAction {
    /// `{url}/api/v2/alerts`, with its headers, credentials and TLS settings.
    pub endpoint: Endpoint,
    /// The `alertname` label.
    pub alertname: String,
    /// The `severity` label.
    pub severity: String,
    /// More labels; `instance` here replaces the host name.
    pub labels: BTreeMap<String, String>,
    /// How often open alerts are sent again.
    pub resend_interval: Duration,
    /// Timeout and retries of each push.
    pub retry: Retry,
    /// Whether the alert carries the crashed run's last lines (annotation `last_lines`), and
    /// its core dump (`core_dump`) or the kernel's OOM lines (`oom_kill`) where there are any.
    pub include_logs: bool,
}

/// Whether `name` is a label name every Alertmanager version accepts.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One alert as Alertmanager takes it, without its times.
#[derive(Clone, Debug)]
struct Alert {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<&'static str, String>,
    starts_at: Micros,
}

impl Alert {
    fn new(action: &AlertmanagerAction, request: &ActionRequest, hostname: &str) -> Alert {
        let event = &request.event;
        let mut labels = BTreeMap::new();
        labels.insert("alertname".to_owned(), action.alertname.clone());
        labels.insert("unit".to_owned(), event.unit.clone());
        labels.insert("source".to_owned(), event.source.as_str().to_owned());
        labels.insert("instance".to_owned(), hostname.to_owned());
        labels.insert("severity".to_owned(), action.severity.clone());
        for (name, value) in &action.labels {
            labels.insert(name.clone(), value.clone());
        }
        let mut annotations = BTreeMap::new();
        annotations.insert(
            "summary",
            format!("{} is crash-looping on {hostname}", event.unit),
        );
        annotations.insert("description", description(request));
        if let (true, Some(context)) = (action.include_logs, &request.context) {
            annotations.insert("last_lines", last_lines(context));
            if let Some(dump) = &context.core_dump {
                let mut text = dump.summary();
                for frame in &dump.frames {
                    text.push('\n');
                    text.push_str(frame);
                }
                annotations.insert("core_dump", text);
            }
            if let Some(oom) = &context.oom_kill {
                annotations.insert("oom_kill", oom.kernel_lines.join("\n"));
            }
        }
        Alert {
            labels,
            annotations,
            starts_at: event.timestamp,
        }
    }

    fn to_json(&self, ends_at: Micros) -> Value {
        let labels: Map<String, Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        json!({
            "labels": labels,
            "annotations": self.annotations,
            // Alertmanager refuses an alert that ends before it starts.
            "startsAt": format_timestamp(self.starts_at.min(ends_at)),
            "endsAt": format_timestamp(ends_at),
        })
    }
}

/// The crashed run's last lines as one annotation: a line each, or why there are none, so the
/// page itself says why the unit crashed.
fn last_lines(context: &CrashContext) -> String {
    match context.status {
        ContextStatus::Ok => context.lines.join("\n"),
        ContextStatus::Empty => "(the run wrote nothing that was kept)".to_owned(),
        ContextStatus::Unavailable | ContextStatus::Pending => format!(
            "(no lines: {})",
            context.reason.as_deref().unwrap_or("not read")
        ),
    }
}

fn description(request: &ActionRequest) -> String {
    let event = &request.event;
    let mut text = match event.ended {
        None => format!(
            "{} restarts within {} s (threshold {}).",
            event.restarts_in_window, event.window_seconds, event.threshold
        ),
        Some(outcome) => format!("The crash loop ended: {}.", outcome.as_str()),
    };
    if let Some(last) = &request.last_exit {
        text.push_str(&format!(" Last crash: {}", last.reason));
        if let Some(status) = last.status {
            text.push_str(&format!(", status {status}"));
        }
        text.push('.');
    }
    text
}

/// An open loop's alert.
struct Open {
    alert: Alert,
    /// Its start has been delivered, or counted as failed.
    settled: bool,
}

/// A loop's end, until delivered or given up.
struct Resolved {
    id: u64,
    unit: String,
    alert: Alert,
    ends_at: Micros,
    /// The start of this loop was never settled; it is settled with the end.
    start_unsettled: bool,
}

/// The alerts of one action.
#[derive(Default)]
struct Book {
    open: BTreeMap<String, Open>,
    resolved: VecDeque<Resolved>,
    next_id: u64,
    /// Something is not yet delivered.
    changed: bool,
}

/// The side of a pusher the actions loop holds.
pub struct Pusher {
    book: Arc<Mutex<Book>>,
    wake: Arc<Notify>,
}

impl Pusher {
    /// Starts the pusher task for `action` on the current runtime.
    pub fn spawn(
        action: AlertmanagerAction,
        name: String,
        stop: CancellationToken,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Pusher {
        let book = Arc::new(Mutex::new(Book::default()));
        let wake = Arc::new(Notify::new());
        let task = PushTask {
            action,
            name,
            book: Arc::clone(&book),
            wake: Arc::clone(&wake),
        };
        tasks.spawn(task.run(stop));
        Pusher { book, wake }
    }

    /// Records a loop's start or end and wakes the pusher.
    pub fn record(&self, action: &AlertmanagerAction, request: &ActionRequest, hostname: &str) {
        let mut book = lock(&self.book);
        let unit = &request.event.unit;
        match request.event.ended {
            None => {
                let alert = Alert::new(action, request, hostname);
                book.open.insert(
                    unit.clone(),
                    Open {
                        alert,
                        settled: false,
                    },
                );
            }
            Some(_) => {
                let ends_at = request.event.timestamp;
                let (alert, start_unsettled) = match book.open.remove(unit) {
                    Some(open) => {
                        let mut alert = open.alert;
                        alert
                            .annotations
                            .insert("description", description(request));
                        (alert, !open.settled)
                    }
                    // A loop that began before this run (seeded from the journal): resolve any
                    // alert an earlier run left behind.
                    None => (Alert::new(action, request, hostname), false),
                };
                let id = book.next_id;
                book.next_id += 1;
                book.resolved.push_back(Resolved {
                    id,
                    unit: unit.clone(),
                    alert,
                    ends_at,
                    start_unsettled,
                });
                if book.resolved.len() > MAX_RESOLVED_HELD {
                    if let Some(given_up) = book.resolved.pop_front() {
                        ActionDropped {
                            kind: KIND,
                            event: EVENT_ENDED,
                            reason: "too many resolutions waiting",
                        }
                        .emit();
                        if given_up.start_unsettled {
                            ActionDropped {
                                kind: KIND,
                                event: EVENT_STARTED,
                                reason: "too many resolutions waiting",
                            }
                            .emit();
                        }
                    }
                }
            }
        }
        book.changed = true;
        drop(book);
        self.wake.notify_one();
    }

    /// Counts what was never delivered, when the pusher was stopped before it could be.
    pub fn abandon(&self) {
        let book = lock(&self.book);
        let starts = book.open.values().filter(|o| !o.settled).count()
            + book.resolved.iter().filter(|r| r.start_unsettled).count();
        for _ in 0..starts {
            ActionDropped {
                kind: KIND,
                event: EVENT_STARTED,
                reason: "shutdown",
            }
            .emit();
        }
        for _ in 0..book.resolved.len() {
            ActionDropped {
                kind: KIND,
                event: EVENT_ENDED,
                reason: "shutdown",
            }
            .emit();
        }
    }
}

fn lock(book: &Mutex<Book>) -> MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

struct PushTask {
    action: AlertmanagerAction,
    /// `action[N]`, as the configuration counts, for the log.
    name: String,
    book: Arc<Mutex<Book>>,
    wake: Arc<Notify>,
}

/// What one push carried, to settle once it is answered.
struct Batch {
    body: Value,
    starts: Vec<(String, Micros)>,
    resolved_up_to: Option<u64>,
    resolved: Vec<(String, bool)>,
}

impl PushTask {
    async fn run(self, stop: CancellationToken) {
        let mut last_push = Instant::now();
        loop {
            let refresh_at = {
                let book = lock(&self.book);
                (!book.open.is_empty()).then(|| last_push + self.action.resend_interval)
            };
            let refresh = tokio::select! {
                _ = stop.cancelled() => {
                    // Deliver what changed; the caller bounds how long that may take.
                    if lock(&self.book).changed {
                        self.push(false).await;
                    }
                    return;
                }
                _ = self.wake.notified() => false,
                _ = sleep_until(refresh_at), if refresh_at.is_some() => true,
            };
            self.push(refresh).await;
            last_push = Instant::now();
        }
    }

    /// Posts every open alert and every pending resolution, then settles what was carried.
    async fn push(&self, refresh: bool) {
        let Some(batch) = self.batch() else { return };
        let body = batch.body.to_string().into_bytes();
        let delivered = post_with_retries(&self.action.endpoint, &body, self.action.retry).await;
        let failure = failure_of(&delivered).map(|(error_type, detail)| {
            let detail = format!("{} {}: {detail}", self.name, self.action.endpoint.url);
            (error_type, detail)
        });
        let settle = |event: &'static str, unit: &str| match &failure {
            None => {
                if event != EVENT_REFRESH {
                    tracing::info!(unit, event, url = %self.action.endpoint.url, "Alertmanager took an alert.");
                }
                count(KIND, event, "ok")
            }
            Some((error_type, detail)) => ActionFailed {
                kind: KIND,
                event,
                error_type,
                unit,
                detail,
            }
            .emit(),
        };
        let started = self.settle_starts(&batch);
        for unit in &started {
            settle(EVENT_STARTED, unit);
        }
        for (unit, start_unsettled) in &batch.resolved {
            if *start_unsettled {
                settle(EVENT_STARTED, unit);
            }
            settle(EVENT_ENDED, unit);
        }
        if refresh {
            settle(EVENT_REFRESH, "");
        }
    }

    /// Marks the starts a push carried as settled, where their alerts are now: still open, or
    /// among the resolutions when the loop ended while the push was under way. Returns the units
    /// whose start this push settles, so each start is counted once. Also drops the resolutions
    /// the push carried.
    fn settle_starts(&self, batch: &Batch) -> Vec<String> {
        let mut book = lock(&self.book);
        let book = &mut *book;
        let up_to = batch.resolved_up_to;
        let mut started = Vec::with_capacity(batch.starts.len());
        for (unit, starts_at) in &batch.starts {
            if let Some(open) = book.open.get_mut(unit) {
                if open.alert.starts_at == *starts_at && !open.settled {
                    open.settled = true;
                    started.push(unit.clone());
                    continue;
                }
            }
            let ended_meanwhile = book.resolved.iter_mut().find(|r| {
                Some(r.id) > up_to
                    && &r.unit == unit
                    && r.alert.starts_at == *starts_at
                    && r.start_unsettled
            });
            if let Some(resolved) = ended_meanwhile {
                resolved.start_unsettled = false;
                started.push(unit.clone());
            }
        }
        if let Some(up_to) = up_to {
            book.resolved.retain(|r| r.id > up_to);
        }
        started
    }

    /// The current state as one body, or `None` when there is nothing to send.
    fn batch(&self) -> Option<Batch> {
        let mut book = lock(&self.book);
        book.changed = false;
        if book.open.is_empty() && book.resolved.is_empty() {
            return None;
        }
        let valid_for = self
            .action
            .resend_interval
            .saturating_mul(VALID_FOR_INTERVALS);
        let ends_at =
            now_micros().saturating_add(u64::try_from(valid_for.as_micros()).unwrap_or(u64::MAX));
        let mut alerts = Vec::with_capacity(book.open.len() + book.resolved.len());
        let mut batch = Batch {
            body: Value::Null,
            starts: Vec::new(),
            resolved_up_to: None,
            resolved: Vec::new(),
        };
        // Resolutions first: a unit whose loop ended and began again is resolved, then firing.
        for r in &book.resolved {
            alerts.push(r.alert.to_json(r.ends_at));
            batch.resolved.push((r.unit.clone(), r.start_unsettled));
            batch.resolved_up_to = Some(r.id);
        }
        for (unit, open) in &book.open {
            alerts.push(open.alert.to_json(ends_at.max(open.alert.starts_at)));
            if !open.settled {
                batch.starts.push((unit.clone(), open.alert.starts_at));
            }
        }
        batch.body = Value::Array(alerts);
        Some(batch)
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Checks the Alertmanager keys of an `[[action]]`.
pub(super) fn resolve(
    section: &super::ActionSection,
    endpoint: Endpoint,
    retry: Retry,
) -> Result<AlertmanagerAction, String> {
    let non_empty = |key: &str, value: &Option<String>, default: &str| match value.as_deref() {
        Some("") => Err(format!("{key} must not be empty")),
        Some(v) => Ok(v.to_owned()),
        None => Ok(default.to_owned()),
    };
    let labels = section.labels.clone().unwrap_or_default();
    for (name, value) in &labels {
        if OWN_LABELS.contains(&name.as_str()) {
            return Err(format!(
                "labels.{name} is set by crashwatch; use the alertname and severity keys for those"
            ));
        }
        if !valid_label_name(name) {
            return Err(format!(
                "labels: {name:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)"
            ));
        }
        if value.is_empty() {
            return Err(format!("labels.{name} must not be empty"));
        }
    }
    Ok(AlertmanagerAction {
        endpoint,
        alertname: non_empty("alertname", &section.alertname, DEFAULT_ALERTNAME)?,
        severity: non_empty("severity", &section.severity, DEFAULT_SEVERITY)?,
        labels,
        resend_interval: super::section::duration(
            "resend_interval",
            section.resend_interval.as_ref(),
            DEFAULT_RESEND_INTERVAL,
        )?,
        retry,
        include_logs: section.include_logs.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{LoopEvent, LoopOutcome, SourceKind};
    use crate::sink::actions::LastExit;

    fn action() -> AlertmanagerAction {
        let mut labels = BTreeMap::new();
        labels.insert("team".to_owned(), "web".to_owned());
        AlertmanagerAction {
            endpoint: Endpoint::plain(
                crate::sink::actions::http::HttpUrl::parse("http://127.0.0.1:9093")
                    .expect("url")
                    .join("/api/v2/alerts"),
            ),
            alertname: DEFAULT_ALERTNAME.to_owned(),
            severity: DEFAULT_SEVERITY.to_owned(),
            labels,
            resend_interval: Duration::from_secs(60),
            retry: Retry {
                timeout: Duration::from_secs(1),
                retries: 0,
                backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(1),
            },
            include_logs: false,
        }
    }

    fn request(ended: Option<LoopOutcome>, at: Micros) -> ActionRequest {
        ActionRequest {
            event: LoopEvent {
                unit: "nginx.service".to_owned(),
                source: SourceKind::Systemd,
                timestamp: at,
                ended,
                restarts_in_window: 3,
                threshold: 3,
                window_seconds: 300.0,
            },
            last_exit: Some(LastExit {
                crashed_at: 0,
                reason: "signal".to_owned(),
                status: Some(11),
            }),
            context: None,
        }
    }

    #[test]
    fn an_alert_carries_the_labels_a_router_needs() {
        let alert = Alert::new(&action(), &request(None, 1_700_000_000_000_000), "node1");
        let value = alert.to_json(1_700_000_240_000_000);
        assert_eq!(
            value,
            json!({
                "labels": {
                    "alertname": "CrashwatchUnitCrashLooping",
                    "unit": "nginx.service",
                    "source": "systemd",
                    "instance": "node1",
                    "severity": "critical",
                    "team": "web",
                },
                "annotations": {
                    "summary": "nginx.service is crash-looping on node1",
                    "description": "3 restarts within 300 s (threshold 3). Last crash: signal, status 11.",
                },
                "startsAt": "2023-11-14T22:13:20.000Z",
                "endsAt": "2023-11-14T22:17:20.000Z",
            })
        );
    }

    #[test]
    fn the_last_lines_are_an_annotation_only_where_the_action_asks() {
        let mut request = request(None, 1_700_000_000_000_000);
        request.context = Some(CrashContext::found(vec![
            "starting".into(),
            "config error: missing key X".into(),
        ]));
        let plain = Alert::new(&action(), &request, "node1");
        assert!(!plain.annotations.contains_key("last_lines"));
        let mut asking = action();
        asking.include_logs = true;
        let alert = Alert::new(&asking, &request, "node1");
        assert_eq!(
            alert.annotations.get("last_lines").map(String::as_str),
            Some("starting\nconfig error: missing key X")
        );
        let mut dumped = CrashContext::found(vec![]);
        dumped.core_dump = Some(crate::event::CoreDump {
            pid: Some(94),
            signal: Some("SIGSEGV".into()),
            executable: Some("/usr/bin/bash".into()),
            frames: vec!["#0 __kill (libc.so.6 + 0x3c267)".into()],
        });
        request.context = Some(dumped);
        let alert = Alert::new(&asking, &request, "node1");
        assert_eq!(
            alert.annotations.get("core_dump").map(String::as_str),
            Some("SIGSEGV in /usr/bin/bash (pid 94)\n#0 __kill (libc.so.6 + 0x3c267)")
        );
        assert!(!Alert::new(&action(), &request, "node1")
            .annotations
            .contains_key("core_dump"));
        request.context = Some(CrashContext::unavailable("journald is not running"));
        let alert = Alert::new(&asking, &request, "node1");
        assert_eq!(
            alert.annotations.get("last_lines").map(String::as_str),
            Some("(no lines: journald is not running)")
        );
    }

    #[test]
    fn an_alert_never_ends_before_it_starts() {
        let alert = Alert::new(&action(), &request(None, 2_000_000), "n");
        let value = alert.to_json(1_000_000);
        assert_eq!(value["startsAt"], value["endsAt"]);
    }

    /// A pusher and the task that would push for it, without the task running.
    fn pusher_and_task(action: &AlertmanagerAction) -> (Pusher, PushTask) {
        let pusher = Pusher {
            book: Arc::new(Mutex::new(Book::default())),
            wake: Arc::new(Notify::new()),
        };
        let task = PushTask {
            action: action.clone(),
            name: "action[1]".to_owned(),
            book: Arc::clone(&pusher.book),
            wake: Arc::clone(&pusher.wake),
        };
        (pusher, task)
    }

    #[test]
    fn the_book_sends_resolutions_then_open_alerts() {
        let action = action();
        let (pusher, task) = pusher_and_task(&action);
        assert!(task.batch().is_none(), "nothing to send when idle");
        pusher.record(&action, &request(None, 1_000_000), "node1");
        let batch = task.batch().expect("one open alert");
        assert_eq!(batch.starts, [("nginx.service".to_owned(), 1_000_000)]);
        let alerts = batch.body.as_array().expect("an array").clone();
        assert_eq!(alerts.len(), 1);
        assert!(alerts[0]["endsAt"].as_str() > alerts[0]["startsAt"].as_str());

        pusher.record(
            &action,
            &request(Some(LoopOutcome::Stopped), 5_000_000),
            "node1",
        );
        pusher.record(&action, &request(None, 6_000_000), "node1");
        let batch = task.batch().expect("a resolution and a new loop");
        let alerts = batch.body.as_array().expect("an array");
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0]["endsAt"], "1970-01-01T00:00:05.000Z");
        assert_eq!(alerts[0]["startsAt"], "1970-01-01T00:00:01.000Z");
        assert_eq!(
            alerts[0]["annotations"]["description"],
            "The crash loop ended: stopped. Last crash: signal, status 11."
        );
        assert_eq!(alerts[1]["startsAt"], "1970-01-01T00:00:06.000Z");
        assert_eq!(batch.resolved, [("nginx.service".to_owned(), true)]);
    }

    #[test]
    fn a_start_is_settled_once_when_its_loop_ends_during_the_push() {
        let action = action();
        let (pusher, task) = pusher_and_task(&action);
        pusher.record(&action, &request(None, 1_000_000), "node1");
        let in_flight = task.batch().expect("the start");
        // The loop ends while the start is being posted.
        pusher.record(
            &action,
            &request(Some(LoopOutcome::Recovered), 2_000_000),
            "node1",
        );
        assert_eq!(task.settle_starts(&in_flight), ["nginx.service"]);
        let next = task.batch().expect("the end");
        assert_eq!(next.resolved, [("nginx.service".to_owned(), false)]);
        assert!(next.starts.is_empty());
        assert!(task.settle_starts(&next).is_empty());
        assert!(
            task.batch().is_none(),
            "the resolution was not dropped once carried"
        );
    }

    #[test]
    fn label_names_are_checked() {
        assert!(valid_label_name("team"));
        assert!(valid_label_name("_x9"));
        assert!(!valid_label_name("9x"));
        assert!(!valid_label_name("a-b"));
        assert!(!valid_label_name(""));
    }
}
