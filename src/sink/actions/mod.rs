//! Actions: run a command, POST a webhook or push an Alertmanager alert when a crash loop starts
//! and when it ends, never per restart.
//!
//! The detector task hands each loop event of a unit some action applies to over a bounded
//! queue with `try_send`, to a thread of its own that runs a small tokio runtime: a command that
//! hangs, a receiver that is down, or a backoff between retries never touches the event path, and
//! a full queue is a counted drop. Transitions never cross the queue. The front end, in the
//! detector task, keeps only the cause of each watched unit's last crash, so a request carries
//! what the command or the receiver is told about it without anyone reading state back.
//!
//! Commands and webhooks deliver messages, so their order matters: deliveries of one action for
//! one unit run one after the other (a loop's end never overtakes its start, however long the
//! start's retries take), while different units and actions run side by side, at most
//! [`COMMANDS_AT_ONCE`] commands and [`REQUESTS_AT_ONCE`] requests at a time. Alertmanager alerts
//! are state rather than messages; see [`alertmanager`].
//!
//! When crashwatch stops, deliveries under way and waiting get [`SHUTDOWN_GRACE`]; what is left
//! then is counted as dropped and commands still running are killed with their process group.

pub mod alertmanager;
pub mod command;
pub mod http;
pub mod proxy;
pub mod secret;
pub mod section;
pub mod tls;
pub mod webhook;

pub use section::ActionSection;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use metrics::counter;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Semaphore;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::engine::units::SharedUnits;
use crate::engine::LoopSink;
use crate::event::{ContextStatus, CrashContext, LastExit, LoopEvent, Micros};
use crate::glob::Glob;
use crate::internal_events::{ActionDropped, ActionFailed, SinkDropped};
use alertmanager::{AlertmanagerAction, Pusher};
use command::{CommandAction, Ran};
use http::Delivered;
use webhook::WebhookAction;

/// The `event` label and `CRASHWATCH_EVENT` of a loop's start.
pub const EVENT_STARTED: &str = "loop_started";
/// The `event` label and `CRASHWATCH_EVENT` of a loop's end.
pub const EVENT_ENDED: &str = "loop_ended";
/// The `event` label of an Alertmanager resend of the open alerts.
pub const EVENT_REFRESH: &str = "refresh";

/// Loop events waiting for the actions thread before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 1024;
/// How long after a crash an action waits for its last lines: the lookup waits a second for the
/// journal, then takes at most two.
pub const CONTEXT_WAIT: Duration = Duration::from_secs(4);

/// The lines of `unit`'s crash at `crashed_at`, or of a later one: a fast loop may have crashed
/// again by the time the action runs, and its newest lines say as much about why. The last
/// crash's when they have been read, else the newest read of an earlier one; `Pending` while
/// neither is known yet.
fn crash_context(units: &SharedUnits, unit: &str, crashed_at: Micros) -> Option<CrashContext> {
    let table = units.lock();
    let record = table.get(unit)?;
    let crash = record.last_crash.as_ref()?;
    if crash.timestamp_us < crashed_at {
        return None;
    }
    let last = crash.context.clone()?;
    if last.status != ContextStatus::Pending {
        return Some(last);
    }
    match &record.earlier_context {
        Some((at, earlier)) if *at >= crashed_at => Some(earlier.clone()),
        _ => Some(last),
    }
}

/// Deliveries waiting behind an earlier one of the same unit before new ones are dropped.
const MAX_WAITING: usize = 4096;
/// Commands running at once.
pub const COMMANDS_AT_ONCE: usize = 4;
/// Webhook requests under way at once.
pub const REQUESTS_AT_ONCE: usize = 16;
/// How long deliveries may still take once crashwatch is asked to stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// One `[[action]]`: which units, and what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    /// The action applies to a unit that matches any of these.
    pub units: Vec<Glob>,
    /// What it does.
    pub kind: ActionKind,
}

impl Action {
    /// Whether the action applies to `unit`.
    pub fn applies_to(&self, unit: &str) -> bool {
        self.units.iter().any(|glob| glob.matches(unit))
    }

    /// Whether the action is given the crashed run's last lines: a command always (they stay
    /// on the node), the others when they say so.
    pub fn wants_logs(&self) -> bool {
        match &self.kind {
            ActionKind::Command(_) => true,
            ActionKind::Webhook(webhook) => webhook.include_logs,
            ActionKind::Alertmanager(alertmanager) => alertmanager.include_logs,
        }
    }
}

/// What an action does.
#[derive(Clone, Debug, PartialEq)]
pub enum ActionKind {
    /// Runs a program.
    Command(CommandAction),
    /// POSTs a JSON object.
    Webhook(WebhookAction),
    /// Pushes an alert to Alertmanager.
    Alertmanager(AlertmanagerAction),
}

impl ActionKind {
    /// The `kind` label.
    pub fn name(&self) -> &'static str {
        match self {
            ActionKind::Command(_) => "command",
            ActionKind::Webhook(_) => "webhook",
            ActionKind::Alertmanager(_) => "alertmanager",
        }
    }
}

/// A loop's start or end, with what the actions are told about it.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionRequest {
    /// The start or end.
    pub event: LoopEvent,
    /// The unit's last crash before it, when crashwatch saw one.
    pub last_exit: Option<LastExit>,
    /// What that crashed run wrote last, for a loop's start when an action wants it.
    pub context: Option<CrashContext>,
}

impl ActionRequest {
    /// `loop_started` or `loop_ended`.
    pub fn event_name(&self) -> &'static str {
        match self.event.ended {
            None => EVENT_STARTED,
            Some(_) => EVENT_ENDED,
        }
    }
}

/// The detector task's side of the actions: filters loop events and queues them.
pub struct ActionsSink {
    actions: Arc<[Action]>,
    queue: Option<mpsc::Sender<ActionRequest>>,
    thread: Option<JoinHandle<()>>,
}

impl ActionsSink {
    /// Starts the actions thread; `units` is where the crashed runs' last lines are read.
    pub fn spawn(actions: Vec<Action>, units: SharedUnits) -> std::io::Result<ActionsSink> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let actions: Arc<[Action]> = actions.into();
        register(&actions);
        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        let runner = Runner::new(Arc::clone(&actions), hostname().into(), units);
        let thread = std::thread::Builder::new()
            .name("crashwatch-actions".to_owned())
            .spawn(move || {
                runtime.block_on(runner.run(requests));
                // A name lookup still blocking in the pool is not worth waiting for.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(ActionsSink {
            actions,
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    fn watches(&self, unit: &str) -> bool {
        self.actions.iter().any(|a| a.applies_to(unit))
    }

    /// Queues a loop's start or end, with the unit's last crash, without waiting; a full queue
    /// drops it and counts the drop. Loops of units no action applies to are ignored.
    pub fn send(&self, event: &LoopEvent, last_exit: Option<LastExit>) {
        if !self.watches(&event.unit) {
            return;
        }
        let Some(queue) = &self.queue else { return };
        let request = ActionRequest {
            event: event.clone(),
            last_exit,
            context: None,
        };
        let reason = match queue.try_send(request) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "queue full",
            Err(TrySendError::Closed(_)) => "sink stopped",
        };
        SinkDropped {
            sink: "actions",
            reason,
        }
        .emit();
    }

    /// Closes the queue and waits for the deliveries, at most [`SHUTDOWN_GRACE`].
    pub fn finish(mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl LoopSink for ActionsSink {
    fn send(&self, event: &LoopEvent, last_exit: Option<LastExit>) {
        ActionsSink::send(self, event, last_exit);
    }

    fn finish(self: Box<Self>) {
        ActionsSink::finish(*self);
    }
}

/// Creates the counters of every configured kind at zero, so the first failure is an increase.
fn register(actions: &[Action]) {
    for action in actions {
        let kind = action.kind.name();
        let mut events = vec![EVENT_STARTED, EVENT_ENDED];
        if matches!(action.kind, ActionKind::Alertmanager(_)) {
            events.push(EVENT_REFRESH);
        }
        for event in events {
            for result in ["ok", "failed"] {
                counter!("crashwatch_actions_total", "kind" => kind, "event" => event, "result" => result)
                    .absolute(0);
            }
        }
    }
}

/// Counts one action's result.
pub(crate) fn count(kind: &'static str, event: &'static str, result: &'static str) {
    counter!("crashwatch_actions_total", "kind" => kind, "event" => event, "result" => result)
        .increment(1);
}

/// The `error_type` and the detail of a delivery that did not get through, `None` if it did.
pub(crate) fn failure_of(delivered: &Delivered) -> Option<(&'static str, String)> {
    match delivered {
        Delivered::Accepted => None,
        Delivered::Rejected(r) => {
            Some(("http_rejected", format!("HTTP {}: {}", r.status, r.excerpt)))
        }
        Delivered::Failed(error) => Some(("http_failed", error.clone())),
    }
}

/// The name actions report this host under, from gethostname(2): the packaged unit's
/// `ProcSubset=pid` hides /proc/sys/kernel/hostname.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call; the kernel writes
    // at most `len` bytes.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_owned(),
        _ => "localhost".to_owned(),
    }
}

/// The deliveries of one action for one unit: the one running and those waiting behind it.
struct Lane {
    running: &'static str,
    waiting: VecDeque<Arc<ActionRequest>>,
}

/// The actions thread: takes requests, runs deliveries in their lanes, owns the pushers.
struct Runner {
    actions: Arc<[Action]>,
    hostname: Arc<str>,
    /// The unit table, for the last lines of a loop's last crash.
    units: SharedUnits,
    lanes: HashMap<(usize, String), Lane>,
    waiting: usize,
    deliveries: JoinSet<()>,
    /// The lane of each delivery task, also when the task panicked.
    running: HashMap<Id, (usize, String)>,
    commands: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    /// Per action index, its Alertmanager pusher, started on the first request.
    pushers: Vec<Option<Pusher>>,
    pusher_tasks: JoinSet<()>,
    stop_pushers: CancellationToken,
}

impl Runner {
    fn new(actions: Arc<[Action]>, hostname: Arc<str>, units: SharedUnits) -> Runner {
        let pushers = actions.iter().map(|_| None).collect();
        Runner {
            actions,
            hostname,
            units,
            lanes: HashMap::new(),
            waiting: 0,
            deliveries: JoinSet::new(),
            running: HashMap::new(),
            commands: Arc::new(Semaphore::new(COMMANDS_AT_ONCE)),
            requests: Arc::new(Semaphore::new(REQUESTS_AT_ONCE)),
            pushers,
            pusher_tasks: JoinSet::new(),
            stop_pushers: CancellationToken::new(),
        }
    }

    async fn run(mut self, mut requests: mpsc::Receiver<ActionRequest>) {
        loop {
            tokio::select! {
                received = requests.recv() => match received {
                    Some(mut request) => {
                        request.context = self.context_for(&request).await;
                        self.take(request);
                    }
                    None => break,
                },
                Some(done) = self.deliveries.join_next_with_id() => self.finished(done),
            }
        }
        self.stop_pushers.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(done) = self.deliveries.join_next_with_id().await {
                self.finished(done);
            }
            while self.pusher_tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.abandon();
        }
    }

    /// The last lines of the crash before a loop's start (or of a later one), for the actions that
    /// want them. The
    /// lookup is a second or so behind the crash (the journal is still reading the run's output),
    /// so this waits for it, at most until [`CONTEXT_WAIT`] after the crash: requests stay in
    /// order, and in a crash storm the waits overlap rather than add up.
    async fn context_for(&self, request: &ActionRequest) -> Option<CrashContext> {
        let event = &request.event;
        let last = request.last_exit.as_ref()?;
        let wanted = event.ended.is_none()
            && self
                .actions
                .iter()
                .any(|action| action.wants_logs() && action.applies_to(&event.unit));
        if !wanted {
            return None;
        }
        let wait = u64::try_from(CONTEXT_WAIT.as_micros()).unwrap_or(u64::MAX);
        let deadline = last.crashed_at.saturating_add(wait);
        loop {
            let context = crash_context(&self.units, &event.unit, last.crashed_at);
            let pending = context
                .as_ref()
                .is_some_and(|context| context.status == ContextStatus::Pending);
            let now = crate::time::now_micros();
            if !pending {
                return context;
            }
            if now >= deadline {
                return Some(CrashContext::unavailable(
                    "its lines were not read in time for the action",
                ));
            }
            let left = Duration::from_micros(deadline - now);
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        }
    }

    fn take(&mut self, request: ActionRequest) {
        let request = Arc::new(request);
        let actions = Arc::clone(&self.actions);
        for (index, action) in actions.iter().enumerate() {
            if !action.applies_to(&request.event.unit) {
                continue;
            }
            match &action.kind {
                ActionKind::Alertmanager(am) => {
                    let pusher = self.pushers[index].get_or_insert_with(|| {
                        Pusher::spawn(
                            am.clone(),
                            format!("action[{}]", index + 1),
                            self.stop_pushers.clone(),
                            &mut self.pusher_tasks,
                        )
                    });
                    pusher.record(am, &request, &self.hostname);
                }
                ActionKind::Command(_) | ActionKind::Webhook(_) => {
                    self.enqueue(index, Arc::clone(&request))
                }
            }
        }
    }

    fn enqueue(&mut self, index: usize, request: Arc<ActionRequest>) {
        let key = (index, request.event.unit.clone());
        match self.lanes.get_mut(&key) {
            Some(lane) => {
                if self.waiting >= MAX_WAITING {
                    ActionDropped {
                        kind: self.actions[index].kind.name(),
                        event: request.event_name(),
                        reason: "too many deliveries waiting",
                    }
                    .emit();
                    return;
                }
                lane.waiting.push_back(request);
                self.waiting += 1;
            }
            None => {
                self.lanes.insert(
                    key,
                    Lane {
                        running: request.event_name(),
                        waiting: VecDeque::new(),
                    },
                );
                self.start(index, request);
            }
        }
    }

    fn start(&mut self, index: usize, request: Arc<ActionRequest>) {
        let actions = Arc::clone(&self.actions);
        let hostname = Arc::clone(&self.hostname);
        let commands = Arc::clone(&self.commands);
        let requests = Arc::clone(&self.requests);
        let unit = request.event.unit.clone();
        let task = self.deliveries.spawn(async move {
            match &actions[index].kind {
                ActionKind::Command(action) => {
                    let Ok(_permit) = commands.acquire().await else {
                        return;
                    };
                    let ran = command::run(action, &request).await;
                    report_command(action, &request, ran);
                }
                ActionKind::Webhook(action) => {
                    let Ok(_permit) = requests.acquire().await else {
                        return;
                    };
                    let body = webhook::body(&request, &hostname, action.include_logs).to_string();
                    let delivered =
                        http::post_with_retries(&action.endpoint, body.as_bytes(), action.retry)
                            .await;
                    report_webhook(index, action, &request, &delivered);
                }
                ActionKind::Alertmanager(_) => {}
            }
        });
        self.running.insert(task.id(), (index, unit));
    }

    /// Starts the next delivery of the lane a finished one ran in, or closes the lane.
    fn finished(&mut self, done: Result<(Id, ()), JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(e) => {
                if e.is_panic() {
                    tracing::error!("An action's delivery panicked; its lane goes on.");
                }
                e.id()
            }
        };
        let Some(key) = self.running.remove(&id) else {
            return;
        };
        let next = match self.lanes.get_mut(&key) {
            Some(lane) => match lane.waiting.pop_front() {
                Some(next) => {
                    lane.running = next.event_name();
                    Some(next)
                }
                None => None,
            },
            None => None,
        };
        match next {
            Some(next) => {
                self.waiting -= 1;
                self.start(key.0, next);
            }
            None => {
                self.lanes.remove(&key);
            }
        }
    }

    /// Counts every delivery the grace did not leave time for; dropping the tasks kills the
    /// commands still running.
    fn abandon(&mut self) {
        for ((index, _), lane) in &self.lanes {
            let kind = self.actions[*index].kind.name();
            let events =
                std::iter::once(lane.running).chain(lane.waiting.iter().map(|r| r.event_name()));
            for event in events {
                ActionDropped {
                    kind,
                    event,
                    reason: "shutdown",
                }
                .emit();
            }
        }
        for pusher in self.pushers.iter().flatten() {
            pusher.abandon();
        }
        self.deliveries.abort_all();
        self.pusher_tasks.abort_all();
    }
}

fn report_command(action: &CommandAction, request: &ActionRequest, ran: Ran) {
    let kind = "command";
    let event = request.event_name();
    let unit = request.event.unit.as_str();
    let program = action.argv.first().map(String::as_str).unwrap_or_default();
    let (output, failure) = match ran {
        Ran::Exited { status, output } => {
            let failure = (!status.success()).then(|| ("command_failed", format!("{status}")));
            (output, failure)
        }
        Ran::TimedOut { output } => {
            let detail = format!("still running after {:?}; killed", action.timeout);
            (output, Some(("command_timeout", detail)))
        }
        Ran::SpawnFailed(e) => {
            let detail = format!("{e}");
            (
                command::Output::default(),
                Some(("command_spawn_failed", detail)),
            )
        }
    };
    // The output is what an operator needs to see why a command failed, so it is logged every
    // time, not rate-limited; it is bounded by command::MAX_OUTPUT.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    tracing::info!(
        unit,
        event,
        program,
        result = failure.as_ref().map_or("ok", |(error_type, _)| *error_type),
        stdout = ?stdout.trim_end(),
        stderr = ?stderr.trim_end(),
        truncated = output.truncated,
        "Ran an action's command."
    );
    match failure {
        None => count(kind, event, "ok"),
        Some((error_type, detail)) => ActionFailed {
            kind,
            event,
            error_type,
            unit,
            detail: &format!("{program}: {detail}"),
        }
        .emit(),
    }
}

/// Logs and counts a webhook's delivery; `index` counts from 0, the configuration from 1.
fn report_webhook(
    index: usize,
    action: &WebhookAction,
    request: &ActionRequest,
    delivered: &Delivered,
) {
    let event = request.event_name();
    let unit = request.event.unit.as_str();
    match failure_of(delivered) {
        None => {
            tracing::info!(unit, event, url = %action.endpoint.url, "Delivered a webhook.");
            count("webhook", event, "ok");
        }
        Some((error_type, detail)) => ActionFailed {
            kind: "webhook",
            event,
            error_type,
            unit,
            detail: &format!("action[{}] {}: {detail}", index + 1, action.endpoint.url),
        }
        .emit(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A runtime like the actions thread's, for tests of the parts it drives.
    pub(in crate::sink::actions) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }
    use crate::event::{LoopOutcome, SourceKind};
    use std::io::{Read, Write};

    #[test]
    fn the_host_name_is_the_kernels() {
        let expected = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
        assert_eq!(hostname(), expected.trim());
    }

    /// Accepts `n` requests on a loopback port, answers 200, returns their bodies as JSON.
    fn receiver(n: usize) -> (u16, std::thread::JoinHandle<Vec<serde_json::Value>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handle = std::thread::spawn(move || {
            (0..n)
                .map(|_| {
                    let (mut s, _) = listener.accept().expect("accept");
                    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    let mut raw = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let body = loop {
                        let got = s.read(&mut chunk).expect("read");
                        raw.extend_from_slice(&chunk[..got]);
                        let text = String::from_utf8_lossy(&raw).to_string();
                        if let Some((_, body)) = text.split_once("\r\n\r\n") {
                            if let Ok(value) = serde_json::from_str(body) {
                                break value;
                            }
                        }
                        assert!(got > 0, "the request ended early: {text}");
                    };
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .expect("write");
                    body
                })
                .collect()
        });
        (port, handle)
    }

    fn loop_event(unit: &str, ended: Option<LoopOutcome>) -> LoopEvent {
        LoopEvent {
            unit: unit.to_owned(),
            source: SourceKind::Systemd,
            timestamp: 1_700_000_000_000_000,
            ended,
            restarts_in_window: 3,
            threshold: 3,
            window_seconds: 60.0,
        }
    }

    #[test]
    fn loops_of_watched_units_reach_the_receiver_with_their_last_crash() {
        let (port, bodies) = receiver(2);
        let url = http::HttpUrl::parse(&format!("http://127.0.0.1:{port}/")).expect("url");
        let sink = ActionsSink::spawn(
            vec![Action {
                units: vec![Glob::new("web*.service").expect("glob")],
                kind: ActionKind::Webhook(WebhookAction {
                    endpoint: http::Endpoint::plain(url),
                    retry: http::Retry {
                        timeout: Duration::from_secs(5),
                        retries: 0,
                        backoff: Duration::from_millis(10),
                        max_backoff: Duration::from_millis(10),
                    },
                    include_logs: false,
                }),
            }],
            crate::engine::units::SharedUnits::new(),
        )
        .expect("spawning the actions");
        let last_exit = || {
            Some(LastExit {
                crashed_at: 0,
                reason: "signal".to_owned(),
                status: Some(11),
            })
        };
        sink.send(&loop_event("db.service", None), last_exit());
        sink.send(&loop_event("web1.service", None), last_exit());
        sink.send(
            &loop_event("web1.service", Some(LoopOutcome::Recovered)),
            last_exit(),
        );
        sink.finish();
        let bodies = bodies.join().expect("receiver");
        assert_eq!(bodies.len(), 2);
        assert!(
            bodies.iter().all(|b| b["unit"] == "web1.service"),
            "{bodies:?}"
        );
        assert_eq!(bodies[0]["event"], "loop_started");
        assert_eq!(bodies[0]["last_exit"], "signal");
        assert_eq!(bodies[0]["last_exit_status"], 11);
        assert_eq!(bodies[1]["event"], "loop_ended");
        assert_eq!(bodies[1]["outcome"], "recovered");
    }
}
