//! crashwatch: event-driven crash-loop detection for services.
//!
//! Data flows one way: sources → one channel of [`SourceEvent`](event::SourceEvent)s → the
//! engine (detector and unit table) → sinks, with the HTTP server and the commands on top
//! (ARCHITECTURE.md has the map). [`run`] wires them together for a node agent to embed; it
//! installs nothing global, so the embedder chooses the `metrics` recorder and passes its handle
//! in. The embedding API is [`run`], [`RunError`], [`ReopenFlag`] and [`config`]; [`cli`],
//! [`commands`] and [`logging`] are the binary's. Everything else is private to the crate, so the
//! compiler
//! reports what is unused.

pub mod cli;
pub mod commands;
pub mod config;
pub(crate) mod detect;
pub(crate) mod engine;
pub(crate) mod event;
pub(crate) mod glob;
pub(crate) mod http;
pub(crate) mod internal_events;
pub mod logging;
pub(crate) mod notify;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod time;

/// The parts the benchmarks (benches/) and fuzz targets (fuzz/) drive directly. Not a stable
/// API: it exists so those can measure and fuzz the real code without it being public.
#[doc(hidden)]
pub mod internals {
    pub use crate::detect::{Detector, Observation, Policy};
    pub use crate::engine::units::{SharedUnits, UnitTable};
    pub use crate::engine::{run as run_engine, Settings, Sinks};
    pub use crate::event::{
        Event, LoopEvent, SourceEvent, SourceKind, Transition, TransitionKind, UnitState,
    };
    pub use crate::http::{basic_credentials, subject_alt_names, WebConfig};
    pub use crate::sink::actions::http::HttpUrl;
    pub use crate::sink::actions::proxy::bypasses;
    pub use crate::sink::prometheus::ChangeTracking;
    pub use crate::sink::{events, statsd, ThreadedSink};
    pub use crate::source::journal::Parser;
    pub use crate::source::systemd::props;
    pub use crate::source::systemd::tracker::{ServiceProps, Snapshot, Tracker, UnitProps};
    pub use crate::source::upstart::hook::HookMessage;
    pub use crate::source::upstart::kmsg;
}

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use config::Config;
use config::StatsdTarget;
use detect::Detector;
use engine::{ContextLookup, EventSink, LoopSink, Sinks};
use sink::ThreadedSink;

pub use sink::events::ReopenFlag;
use source::systemd::{SystemdError, SystemdSettings, SystemdSource};
use source::upstart::{UpstartError, UpstartSettings, UpstartSource};

/// Transitions queued between the sources and the detector task.
const TRANSITION_QUEUE: usize = 65_536;

/// Why crashwatch could not start. After start-up nothing is fatal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listen address could not be bound, or systemd passed no usable socket.
    #[error("cannot listen on {address}: {message}")]
    Listen {
        /// The address, or `the sockets systemd passed`.
        address: String,
        /// Why.
        message: String,
    },
    /// The web configuration file (or a file it names) does not check out.
    #[error("{0}")]
    WebConfig(String),
    /// The event record could not be opened.
    #[error("cannot open the event record {path}: {source}")]
    Events {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The StatsD address could not be resolved or no socket could be made.
    #[error("cannot set up StatsD for {address}: {message}")]
    Statsd {
        /// The address.
        address: String,
        /// Why.
        message: String,
    },
    /// The systemd source could not start.
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    /// The Upstart source could not start.
    #[error(transparent)]
    Upstart(#[from] UpstartError),
    /// A sink thread could not be started.
    #[error("cannot start a sink thread: {0}")]
    Thread(std::io::Error),
}

/// The unit crashwatch itself runs in, from its cgroup, so it never reports on itself.
pub fn own_unit() -> Option<String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroups
        .lines()
        .filter_map(|line| line.rsplit(':').next())
        .flat_map(|path| path.rsplit('/'))
        .find(|segment| segment.ends_with(".service"))
        .map(str::to_owned)
}

/// The Upstart job crashwatch itself runs as (`$UPSTART_JOB`, `$UPSTART_INSTANCE`, which Upstart
/// sets for every job process), as a unit name.
pub fn own_upstart_job() -> Option<String> {
    let job = std::env::var("UPSTART_JOB")
        .ok()
        .filter(|j| !j.is_empty())?;
    let instance = std::env::var("UPSTART_INSTANCE").unwrap_or_default();
    Some(source::upstart::names::unit_name(&job, &instance))
}

/// Runs crashwatch until `shutdown` is cancelled. `metrics` is the handle of the Prometheus
/// recorder the caller installed; with `None`, no `/metrics` is served. Raising `reopen` makes
/// the event record reopen its file at its path before the next record (the binary raises it on
/// SIGHUP, for logrotate). Each configuration received on `reloads` (already checked) replaces
/// the running one where it can without a restart: filters, thresholds, overrides, StatsD and
/// actions. Calls `ready` once the source is subscribed and its snapshot taken, with the number
/// of units watched.
pub async fn run(
    mut config: Config,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
    reopen: ReopenFlag,
    reloads: mpsc::Receiver<Config>,
    ready: impl FnOnce(usize),
) -> Result<(), RunError> {
    sink::prometheus::describe();
    exclude_self(&mut config);

    let (listeners, web_config) = match &metrics {
        Some(_) => web_listeners(&config.web).await?,
        None => (Vec::new(), None),
    };
    let units = engine::units::SharedUnits::with_series(config.unit_series);
    let mut sinks = Sinks::default();
    if let Some(target) = &config.events {
        let out = sink::events::open(target, config.events_rotation, reopen).map_err(|source| {
            RunError::Events {
                path: format!("{target:?}"),
                source,
            }
        })?;
        sinks.events = Some(Box::new(
            ThreadedSink::spawn("events", move |events| sink::events::run(out, events))
                .map_err(RunError::Thread)?,
        ));
    }
    sinks.statsd = statsd_sink(config.statsd.as_ref())?;
    sinks.actions = actions_sink(&config.actions, &units)?;

    let kind = match config.source {
        source::SourceChoice::Systemd => event::SourceKind::Systemd,
        source::SourceChoice::Upstart => event::SourceKind::Upstart,
        source::SourceChoice::Auto => source::detect().await,
    };
    let (tx, rx) = mpsc::channel(TRANSITION_QUEUE);
    let (filters, filter_updates) = watch::channel(watched(&config, kind).clone());
    let mut tasks = tokio::task::JoinSet::new();
    match kind {
        event::SourceKind::Systemd => {
            // Taken before the snapshot: journal entries from here on are the snapshot's.
            let snapshot_at = time::now_micros();
            let source = SystemdSource::connect(SystemdSettings {
                filter: config.filter.clone(),
                filter_updates: Some(filter_updates),
                max_backoff: std::time::Duration::from_secs(30),
            })
            .await?;
            let history = source::journal::history(&history_settings(&config), snapshot_at).await;
            // Sent before the live source starts, so the engine has the windows before the
            // first live transition.
            let _ = tx.send(event::SourceEvent::History(history)).await;
            sinks.context = Some(journal_context(&config, &tx, &shutdown, &mut tasks));
            ready(source.watched_units());
            tasks.spawn(source.run(tx, shutdown.child_token()));
        }
        event::SourceKind::Upstart => {
            let source = UpstartSource::connect(UpstartSettings {
                address: config.upstart.address.clone(),
                hook_socket: config.upstart.hook_socket.clone(),
                filter: config.upstart.filter.clone(),
                max_backoff: std::time::Duration::from_secs(30),
                kernel_log: config.upstart.kernel_log.clone(),
            })
            .await?;
            sinks.context = Some(job_log_context(&config, &tx, &shutdown, &mut tasks));
            ready(source.watched_units());
            tasks.spawn(source.run(tx, shutdown.child_token()));
        }
    }
    if let Some(handle) = metrics {
        let routes = http::Routes {
            exposition: sink::prometheus::Exposition::new(handle, units.clone()),
            units: units.clone(),
            api: config.web.api,
        };
        tasks.spawn(http::serve(
            listeners,
            routes,
            web_config,
            shutdown.child_token(),
        ));
    }
    let (reconfigure, reconfigured) = mpsc::channel(4);
    tasks.spawn(reload(
        config.clone(),
        kind,
        reloads,
        reconfigure,
        filters,
        units.clone(),
        shutdown.child_token(),
    ));
    let detector = Detector::new(config.policy, config.overrides.clone());
    let settings = engine::Settings {
        max_units: config.max_units,
        fold_instances: config.fold_instances,
        unloaded_retention: config.unloaded_retention,
        crash_context_record: config.events_crash_context,
    };
    engine::run(
        rx,
        reconfigured,
        detector,
        units,
        sinks,
        settings,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The server's listening sockets (bound here, so a busy port fails at start-up) and its web
/// configuration file, read and checked.
async fn web_listeners(
    web: &config::WebSettings,
) -> Result<(Vec<tokio::net::TcpListener>, Option<http::LiveConfig>), RunError> {
    let listeners = if web.systemd_socket {
        http::systemd_sockets().map_err(|message| RunError::Listen {
            address: "the sockets systemd passed".to_owned(),
            message,
        })?
    } else {
        http::bind(&web.listen_addresses)
            .await
            .map_err(|(address, message)| RunError::Listen { address, message })?
    };
    let live = match &web.config_file {
        Some(path) => {
            Some(http::LiveConfig::open(path).map_err(|e| RunError::WebConfig(e.to_string()))?)
        }
        None => None,
    };
    Ok((listeners, live))
}

/// Where the engine asks for crash contexts under systemd: the journal worker when journald
/// runs here (or a journal directory is set), else an answer that says why there is none.
fn journal_context(
    config: &Config,
    answers: &mpsc::Sender<event::SourceEvent>,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Box<dyn ContextLookup> {
    let directory = config.history.journal_directory.clone();
    if !source::journal::journal_present(directory.as_deref()) {
        return Box::new(NoContext("journald is not running"));
    }
    let lookup = source::journal::context::JournalLookup {
        directory,
        lines: config.crash_context.lines,
        masks: config.crash_context.masks.clone(),
        journalctl: "journalctl".into(),
    };
    context_worker(lookup, answers, shutdown, tasks)
}

/// Where the engine asks for crash contexts under Upstart: the job logs, unless turned off.
fn job_log_context(
    config: &Config,
    answers: &mpsc::Sender<event::SourceEvent>,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Box<dyn ContextLookup> {
    let Some(directory) = config.upstart.job_log_directory.clone() else {
        return Box::new(NoContext("reading job logs is turned off"));
    };
    let lookup = source::upstart::joblog::JobLogLookup {
        directory,
        lines: config.crash_context.lines,
        masks: config.crash_context.masks.clone(),
    };
    context_worker(lookup, answers, shutdown, tasks)
}

fn context_worker(
    lookup: impl source::context::Lookup,
    answers: &mpsc::Sender<event::SourceEvent>,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Box<dyn ContextLookup> {
    let (handle, worker) = source::context::worker(lookup, answers.clone(), shutdown.child_token());
    tasks.spawn(worker);
    Box::new(LogContext(handle))
}

/// A context worker, as the engine asks it.
struct LogContext(source::context::ContextHandle);

impl ContextLookup for LogContext {
    fn request(&self, request: event::ContextRequest) -> event::CrashContext {
        self.0.request(request)
    }
}

/// No crash context can be had, for the reason given.
struct NoContext(&'static str);

impl ContextLookup for NoContext {
    fn request(&self, _: event::ContextRequest) -> event::CrashContext {
        event::CrashContext::unavailable(self.0)
    }
}

/// Leaves crashwatch's own unit (or Upstart job) out of what it watches.
fn exclude_self(config: &mut Config) {
    if let Some(own) = own_unit() {
        config.filter = config.filter.clone().excluding(&own);
    }
    if let Some(own) = own_upstart_job() {
        config.upstart.filter = config.upstart.filter.clone().excluding(&own);
    }
}

/// The filter of the units watched from `kind`'s source.
fn watched(config: &Config, kind: event::SourceKind) -> &glob::UnitFilter {
    match kind {
        event::SourceKind::Systemd => &config.filter,
        event::SourceKind::Upstart => &config.upstart.filter,
    }
}

/// The StatsD sink for `target`, if any.
fn statsd_sink(target: Option<&StatsdTarget>) -> Result<Option<Box<dyn EventSink>>, RunError> {
    let Some(target) = target else {
        return Ok(None);
    };
    let naming = if target.tags {
        sink::statsd::Naming::Tags
    } else {
        sink::statsd::Naming::Plain
    };
    let client =
        sink::statsd::Client::connect(&target.address, &target.prefix, naming).map_err(|e| {
            RunError::Statsd {
                address: target.address.clone(),
                message: e.to_string(),
            }
        })?;
    let sink = ThreadedSink::spawn("statsd", move |events| sink::statsd::run(client, events))
        .map_err(RunError::Thread)?;
    Ok(Some(Box::new(sink)))
}

/// The actions sink, when any action is configured.
fn actions_sink(
    actions: &[sink::actions::Action],
    units: &engine::units::SharedUnits,
) -> Result<Option<Box<dyn LoopSink>>, RunError> {
    if actions.is_empty() {
        return Ok(None);
    }
    let sink = sink::actions::ActionsSink::spawn(actions.to_vec(), units.clone())
        .map_err(RunError::Thread)?;
    Ok(Some(Box::new(sink)))
}

/// Applies each configuration from `reloads` to the running parts: the engine gets the new
/// policies and filter and the sinks that changed, the source the new filter. What cannot change
/// without a restart (the web server settings, event record, source, unit cap, folding, history) is said.
async fn reload(
    mut current: Config,
    kind: event::SourceKind,
    mut reloads: mpsc::Receiver<Config>,
    engine: mpsc::Sender<engine::Reconfigure>,
    filters: watch::Sender<glob::UnitFilter>,
    units: engine::units::SharedUnits,
    shutdown: CancellationToken,
) {
    loop {
        let mut config = tokio::select! {
            _ = shutdown.cancelled() => return,
            config = reloads.recv() => match config {
                Some(config) => config,
                None => return,
            },
        };
        exclude_self(&mut config);
        let statsd = if config.statsd == current.statsd {
            None
        } else {
            match statsd_sink(config.statsd.as_ref()) {
                Ok(sink) => Some(sink),
                Err(error) => {
                    tracing::error!(%error, "Keeping the old StatsD target.");
                    config.statsd = current.statsd.clone();
                    None
                }
            }
        };
        let actions = if config.actions == current.actions {
            None
        } else {
            match actions_sink(&config.actions, &units) {
                Ok(sink) => Some(sink),
                Err(error) => {
                    tracing::error!(%error, "Keeping the old actions.");
                    config.actions = current.actions.clone();
                    None
                }
            }
        };
        for (what, changed) in [
            ("web", config.web != current.web),
            ("events", config.events != current.events),
            (
                "events_crash_context",
                config.events_crash_context != current.events_crash_context,
            ),
            ("source", config.source != current.source),
            ("max_units", config.max_units != current.max_units),
            (
                "fold_instances",
                config.fold_instances != current.fold_instances,
            ),
            (
                "unloaded_retention",
                config.unloaded_retention != current.unloaded_retention,
            ),
            ("unit_series", config.unit_series != current.unit_series),
            ("history", config.history != current.history),
        ] {
            if changed {
                tracing::warn!(setting = what, "This setting changes only at a restart.");
            }
        }
        let filter = watched(&config, kind).clone();
        let change = engine::Reconfigure {
            policy: config.policy,
            overrides: config.overrides.clone(),
            filter: filter.clone(),
            statsd,
            actions,
        };
        if engine.send(change).await.is_err() {
            return;
        }
        filters.send_replace(filter);
        current = config;
    }
}

/// What to read from the journal at start-up, from the configuration.
fn history_settings(config: &Config) -> source::journal::HistorySettings {
    let longest = config
        .overrides
        .iter()
        .map(|(_, policy)| policy.window)
        .chain([config.policy.window])
        .max()
        .unwrap_or_default();
    source::journal::HistorySettings {
        enabled: config.history.journal,
        directory: config.history.journal_directory.clone(),
        span: longest.saturating_mul(2),
        filter: config.filter.clone(),
    }
}
