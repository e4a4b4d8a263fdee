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
pub mod webhook;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use metrics::counter;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Semaphore;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::event::{Event, LoopEvent};
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

/// How a unit's last crash ended its main process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastExit {
    /// The init system's verdict, e.g. `exit-code`, `signal`, `core-dump`.
    pub reason: String,
    /// The exit status, or the signal number for a signal.
    pub status: Option<i32>,
}

/// A loop's start or end, with what the actions are told about it.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionRequest {
    /// The start or end.
    pub event: LoopEvent,
    /// The unit's last crash before it, when crashwatch saw one.
    pub last_exit: Option<LastExit>,
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

/// The detector task's side of the actions: filters events and queues loop events.
pub struct ActionsSink {
    actions: Arc<[Action]>,
    /// Per watched unit that crashed: the last crash. Only units with series of their own reach
    /// a sink, so this is bounded by `--max-units`.
    last_exits: Mutex<HashMap<String, LastExit>>,
    queue: Option<mpsc::Sender<ActionRequest>>,
    thread: Option<JoinHandle<()>>,
}

impl ActionsSink {
    /// Starts the actions thread.
    pub fn spawn(actions: Vec<Action>) -> std::io::Result<ActionsSink> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let actions: Arc<[Action]> = actions.into();
        register(&actions);
        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        let runner = Runner::new(Arc::clone(&actions), hostname().into());
        let thread = std::thread::Builder::new()
            .name("crashwatch-actions".to_owned())
            .spawn(move || {
                runtime.block_on(runner.run(requests));
                // A name lookup still blocking in the pool is not worth waiting for.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(ActionsSink {
            actions,
            last_exits: Mutex::new(HashMap::new()),
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    fn watches(&self, unit: &str) -> bool {
        self.actions.iter().any(|a| a.applies_to(unit))
    }

    /// Keeps what loop requests need from a transition, and queues a loop event without waiting;
    /// a full queue drops it and counts the drop.
    pub fn send(&self, event: &Event) {
        match event {
            Event::Transition { transition: t, .. } => {
                let Some(reason) = &t.crash else { return };
                if !self.watches(&t.unit) {
                    return;
                }
                let last = LastExit {
                    reason: reason.clone(),
                    status: t.exit.map(|e| e.status),
                };
                let mut last_exits = self
                    .last_exits
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match last_exits.get_mut(&t.unit) {
                    Some(kept) => *kept = last,
                    None => {
                        last_exits.insert(t.unit.clone(), last);
                    }
                }
            }
            Event::Loop(event) if self.watches(&event.unit) => {
                let Some(queue) = &self.queue else { return };
                let last_exit = self
                    .last_exits
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&event.unit)
                    .cloned();
                let request = ActionRequest {
                    event: event.clone(),
                    last_exit,
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
            _ => {}
        }
    }

    /// Closes the queue and waits for the deliveries, at most [`SHUTDOWN_GRACE`].
    pub fn finish(mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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

/// The name actions report this host under.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
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
    fn new(actions: Arc<[Action]>, hostname: Arc<str>) -> Runner {
        let pushers = actions.iter().map(|_| None).collect();
        Runner {
            actions,
            hostname,
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
                    Some(request) => self.take(request),
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
                    let body = webhook::body(&request, &hostname).to_string();
                    let delivered = http::post_with_retries(
                        &action.url,
                        &action.headers,
                        body.as_bytes(),
                        action.retry,
                    )
                    .await;
                    report_webhook(action, &request, &delivered);
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
            ActionFailed {
                kind,
                event,
                error_type: "command_spawn_failed",
                unit,
                detail: &format!("{program}: {e}"),
            }
            .emit();
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    tracing::info!(
        unit,
        event,
        program,
        stdout = %stdout.escape_debug(),
        stderr = %stderr.escape_debug(),
        truncated = output.truncated,
        "An action's command finished."
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

fn report_webhook(action: &WebhookAction, request: &ActionRequest, delivered: &Delivered) {
    let event = request.event_name();
    let unit = request.event.unit.as_str();
    match failure_of(delivered) {
        None => {
            tracing::info!(unit, event, url = %action.url, "Delivered a webhook.");
            count("webhook", event, "ok");
        }
        Some((error_type, detail)) => ActionFailed {
            kind: "webhook",
            event,
            error_type,
            unit,
            detail: &format!("{}: {detail}", action.url),
        }
        .emit(),
    }
}
