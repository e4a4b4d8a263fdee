//! The configuration file: what is watched, how loops are judged, and where results go.
//!
//! The file is TOML with every key optional; a missing file section means the defaults. Unknown
//! keys are errors, not warnings: a misspelt `windw` silently ignored is a detector that never
//! fires. Every error is one line naming the file, the line and the problem, so it reads well
//! after `crashwatch: `.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::detect::{Policy, MAX_RESTARTS_HELD};
use crate::engine::units::UnitSeries;
use crate::glob::{Glob, UnitFilter};
use crate::sink::actions::{Action, ActionSection};
use crate::sink::events::{
    parse_size, EventsTarget, Rotation, DEFAULT_MAX_FILES, DEFAULT_MAX_SIZE, MAX_FILES_LIMIT,
};
use crate::source::context::DEFAULT_LINES as DEFAULT_CONTEXT_LINES;
use crate::source::mask::Masks;
use crate::source::upstart::hook::DEFAULT_SOCKET;
use crate::source::upstart::UpstartAddress;
use crate::source::SourceChoice;
use crate::time::parse_duration;

/// The address `/metrics` is served on unless told otherwise: loopback only, port 9863.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9863";
/// Where the kernel log is read from after a gap in the Upstart connection.
const DEFAULT_KERNEL_LOG: &str = "/dev/kmsg";
/// The StatsD prefix unless told otherwise.
pub const DEFAULT_STATSD_PREFIX: &str = "crashwatch";
/// The most units with series of their own unless told otherwise.
pub const DEFAULT_MAX_UNITS: usize = 10_000;
/// How long the series of a unit the init system unloaded are kept, by default.
pub const DEFAULT_UNLOADED_RETENTION: Duration = Duration::from_secs(15 * 60);

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What and where, on one line.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("{origin}: {message}")]
    Invalid {
        /// The file, or `command line`.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// The file as written. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[source]`.
    #[serde(default)]
    pub source: SourceSection,
    /// `[detect]`.
    #[serde(default)]
    pub detect: DetectSection,
    /// `[sink]`.
    #[serde(default)]
    pub sink: SinkSection,
    /// `[limits]`.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[history]`.
    #[serde(default)]
    pub history: HistorySection,
    /// `[[action]]`, each one action.
    #[serde(default, rename = "action")]
    pub actions: Vec<ActionSection>,
    /// `[log]`.
    #[serde(default)]
    pub log: LogSection,
    /// `[crash_context]`.
    #[serde(default)]
    pub crash_context: CrashContextSection,
    /// `[web]`.
    #[serde(default)]
    pub web: WebSection,
}

/// `[crash_context]`: the last lines of each crashed run, as shown in the status API, status,
/// the event record and the actions that ask for them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashContextSection {
    /// Lines kept per crash, 1 to 100. Default 10.
    pub lines: Option<usize>,
    /// Regular expressions masked in every line before it leaves the journal reader, on top of
    /// the defaults. A pattern with a group named `secret` masks only that group.
    #[serde(default)]
    pub mask: Vec<String>,
    /// Whether the default patterns (passwords, tokens, keys, credentials in URLs) are masked
    /// too. Default true.
    pub mask_defaults: Option<bool>,
}

/// `[web]`: how the HTTP server listens, and what it asks of its clients.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSection {
    /// Addresses to serve on, each `IP:PORT` (`[::1]:9863` for IPv6) or `:PORT` for every
    /// address. Default `["127.0.0.1:9863"]`; `[sink.prometheus] listen` is the older,
    /// single-address form of the same setting (set one or the other).
    pub listen_addresses: Option<Vec<String>>,
    /// The web configuration file, in the Prometheus exporter-toolkit format (TLS, client
    /// certificates, basic authentication, headers), as node_exporter's `--web.config.file`.
    /// Read again when it or a certificate it names changes. Default: none (plain HTTP, no
    /// authentication).
    pub config_file: Option<String>,
    /// Serve on the sockets systemd passes (socket activation, a `.socket` unit) instead of
    /// `listen_addresses`. Default false.
    pub systemd_socket: Option<bool>,
    /// Serve `/metrics` and `/` only; `/api/*` answers 404. Default false.
    pub disable_api: Option<bool>,
}

/// `[log]`: crashwatch's own log lines.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// The least severe level logged: error, warn, info, debug or trace. Default info;
    /// `--log-level` (or `$CRASHWATCH_LOG`) wins over it. Changed by a reload.
    pub level: Option<String>,
}

/// `[history]`: what crashwatch reads about the time before it started.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySection {
    /// Rebuild each unit's crash-loop window from the journal at start-up, so a loop in progress
    /// stays flagged across a restart of crashwatch. Nothing from history is counted in the
    /// `*_total` counters. Skipped when journald is not running. Default true.
    pub journal: Option<bool>,
    /// The journal directory to read (as `journalctl --directory`), e.g. a container's
    /// `/run/log/journal`. Default: the system journal.
    pub journal_directory: Option<String>,
}

/// `[source]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// Which init system to watch: `systemd`, `upstart` or `auto` (systemd if
    /// `org.freedesktop.systemd1` has an owner on the system bus, else Upstart). Default `systemd`.
    pub kind: Option<String>,
    /// `[source.systemd]`.
    #[serde(default)]
    pub systemd: SystemdSection,
    /// `[source.upstart]`.
    #[serde(default)]
    pub upstart: UpstartSection,
}

/// `[source.upstart]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstartSection {
    /// Where to reach Upstart: `system` (`com.ubuntu.Upstart` on the system bus), `session`
    /// (peer-to-peer at `$UPSTART_SESSION`), a D-Bus address for a peer-to-peer connection such
    /// as `unix:abstract=/com/ubuntu/upstart`, or `none` (the job hook only). Default `system`.
    pub address: Option<String>,
    /// The job hook's socket; `""` turns the hook off. Default `/run/crashwatch/hook.sock`.
    pub hook_socket: Option<String>,
    /// The kernel log read after a gap in the connection to count the main process ends in it
    /// (needs root or `CAP_SYSLOG`); `""` or `"none"` turns it off, and a gap is then inferred
    /// from the snapshot alone. Default `/dev/kmsg`.
    pub kernel_log: Option<String>,
    /// Where Upstart writes its jobs' logs (`console log`), read for each crash's last lines;
    /// `""` or `"none"` turns that off. Default `/var/log/upstart`.
    pub job_log_directory: Option<String>,
    /// Globs of units (`job` or `job (instance)`) to watch; none except these. Default `["*"]`.
    pub unit_include: Option<Vec<String>>,
    /// Globs of units never to watch; all except these. Default: the hook job,
    /// `["crashwatch-hook", "crashwatch-hook (*)"]`.
    pub unit_exclude: Option<Vec<String>>,
}

/// `[source.systemd]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdSection {
    /// Globs of units to watch; none except these. Default: `["*.service"]`.
    pub unit_include: Option<Vec<String>>,
    /// Globs of units never to watch; all except these. Default: none.
    pub unit_exclude: Option<Vec<String>>,
}

/// `[detect]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectSection {
    /// Restarts within the window that make a crash loop. Default 3.
    pub threshold: Option<u32>,
    /// The sliding window, e.g. `"5m"`. Default 5 minutes.
    pub window: Option<String>,
    /// Per-unit policies, the first matching glob wins.
    #[serde(default, rename = "override")]
    pub overrides: Vec<OverrideSection>,
}

/// One `[[detect.override]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideSection {
    /// The glob of units this applies to.
    pub units: String,
    /// Replaces the threshold for these units.
    pub threshold: Option<u32>,
    /// Replaces the window for these units.
    pub window: Option<String>,
}

/// `[sink]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    /// `[sink.prometheus]`.
    #[serde(default)]
    pub prometheus: PrometheusSection,
    /// `[sink.statsd]`.
    #[serde(default)]
    pub statsd: StatsdSection,
    /// `[sink.events]`.
    #[serde(default)]
    pub events: EventsSection,
}

/// `[sink.prometheus]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSection {
    /// Address to serve `/metrics` on. Default `127.0.0.1:9863`. `[web] listen_addresses` takes
    /// several.
    pub listen: Option<String>,
}

/// `[sink.statsd]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsdSection {
    /// `host:port` of the StatsD server; unset means no StatsD.
    pub address: Option<String>,
    /// Prepended to every metric name. Default `crashwatch`.
    pub prefix: Option<String>,
    /// Send the unit and its source as DogStatsD tags (`|#unit:NAME,source:KIND`) and leave the
    /// unit out of the metric name, so every unit name reaches the server whole. Default false.
    pub tags: Option<bool>,
}

/// `[sink.events]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    /// File to append JSON lines to, or `-` for standard output; unset means no record.
    pub path: Option<String>,
    /// Rotate the file before a record would take it past this size: `"16MiB"`, `"10MB"`,
    /// `"512KiB"` or a number of bytes; 0 turns rotation off (to leave it to logrotate). Never
    /// for standard output or a target that is not a regular file. Default `"16MiB"`: with
    /// `max_files` at 4 the record takes at most 5 files of 16 MiB, 80 MiB, under 100 MiB on a
    /// node where units crash-loop all day.
    pub max_size: Option<SizeSetting>,
    /// Rotated files to keep, `events.jsonl.1` (the newest) to `events.jsonl.N`; older ones are
    /// deleted. Between 1 and 1000. Default 4.
    pub max_files: Option<u32>,
    /// Also write what each crashed run wrote last, as a `crash_context` record when the
    /// lookup answers (its lines are the service's own output, which may hold what the record
    /// should not). Default false.
    pub crash_context: Option<bool>,
}

/// A size as written in the file: a string with a unit, or a number of bytes.
#[derive(Debug, Deserialize)]
// `expecting` is the whole message when neither variant fits, as in `max_size = -1`.
#[serde(
    untagged,
    expecting = "sink.events.max_size must be a size such as \"16MiB\" or a number of bytes"
)]
pub enum SizeSetting {
    /// A number of bytes.
    Bytes(u64),
    /// A size with its unit, e.g. `"16MiB"`.
    Text(String),
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Units that get series of their own; beyond it they are counted in
    /// `crashwatch_units_overflow_total`. Default 10000.
    pub max_units: Option<usize>,
    /// Count template instances as their template (`getty@tty1.service` as `getty@.service`,
    /// Upstart `job (instance)` as `job`), so a unit per instance cannot flood the series.
    /// Default false.
    pub fold_instances: Option<bool>,
    /// How long a unit the init system unloaded (a transient unit that ended, a stopped unit
    /// systemd garbage-collected) keeps its series, so scrapes see its last counts; then they
    /// are dropped. A unit still in a crash-loop window is kept until it leaves it. At the unit
    /// cap, unloaded units make room first. Default "15m".
    pub unloaded_retention: Option<String>,
    /// Which series each unit has on `/metrics`: "changed" gives a healthy unit two
    /// (`crashwatch_unit_crashlooping` and `crashwatch_unit_restarts_total`) and a unit every
    /// series from its first crash or restart until an hour after it is healthy again; "all"
    /// gives every unit every series. Default "changed".
    pub unit_series: Option<String>,
}

/// Values given on the command line; each replaces its file counterpart.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--web.listen-address` (or `--listen`), each given; replaces the file's addresses.
    pub listen: Vec<String>,
    /// `--web.config.file`.
    pub web_config_file: Option<PathBuf>,
    /// `--web.systemd-socket` (only turns it on).
    pub web_systemd_socket: bool,
    /// `--web.disable-api` (only turns the API off).
    pub web_disable_api: bool,
    /// `--statsd`.
    pub statsd: Option<String>,
    /// `--statsd-prefix`.
    pub statsd_prefix: Option<String>,
    /// `--statsd-tags` (only turns tags on).
    pub statsd_tags: bool,
    /// `--events`.
    pub events: Option<String>,
    /// `--events-max-size`.
    pub events_max_size: Option<String>,
    /// `--events-max-files`.
    pub events_max_files: Option<u32>,
    /// `--events-crash-context` (only turns it on).
    pub events_crash_context: bool,
    /// `--threshold`.
    pub threshold: Option<u32>,
    /// `--window`.
    pub window: Option<String>,
    /// `--include` (replaces the file's list when given).
    pub include: Vec<String>,
    /// `--exclude` (added to the file's list).
    pub exclude: Vec<String>,
    /// `--max-units`.
    pub max_units: Option<usize>,
    /// `--fold-instances` (only turns folding on).
    pub fold_instances: bool,
    /// `--unloaded-retention`.
    pub unloaded_retention: Option<String>,
    /// `--unit-series`.
    pub unit_series: Option<String>,
    /// `--source`.
    pub source: Option<String>,
    /// `--upstart-address`.
    pub upstart_address: Option<String>,
    /// `--upstart-hook-socket`.
    pub upstart_hook_socket: Option<String>,
    /// `--upstart-kernel-log`.
    pub upstart_kernel_log: Option<String>,
    /// `--no-journal-history` (only turns history off).
    pub no_journal_history: bool,
}

/// How crashwatch reads history at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Whether crash-loop windows are rebuilt from the journal.
    pub journal: bool,
    /// The journal directory to read; `None` for the system journal.
    pub journal_directory: Option<PathBuf>,
}

/// What a crash's context holds.
#[derive(Clone, Debug)]
pub struct CrashContextConfig {
    /// Lines kept per crash.
    pub lines: usize,
    /// What is masked in each line.
    pub masks: Masks,
}

/// The most lines `[crash_context] lines` may ask for: an excerpt is also capped in bytes.
const MAX_CONTEXT_LINES: usize = 100;

/// How the Upstart source listens, and to which units.
#[derive(Clone, Debug)]
pub struct UpstartConfig {
    /// Where to reach Upstart over D-Bus.
    pub address: UpstartAddress,
    /// The job hook's socket, `None` when the hook is off.
    pub hook_socket: Option<PathBuf>,
    /// The kernel log a gap's main process ends are counted from, `None` when off.
    pub kernel_log: Option<PathBuf>,
    /// Where the jobs' logs are read for crash contexts, `None` when off.
    pub job_log_directory: Option<PathBuf>,
    /// Which units are watched.
    pub filter: UnitFilter,
}

/// Where StatsD output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsdTarget {
    /// `host:port`.
    pub address: String,
    /// The metric prefix, already sanitized.
    pub prefix: String,
    /// Whether units travel as DogStatsD tags rather than in the metric name.
    pub tags: bool,
}

/// How the HTTP server listens and what it asks of its clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSettings {
    /// Where to serve, in order; unused with `systemd_socket`.
    pub listen_addresses: Vec<SocketAddr>,
    /// The exporter-toolkit web configuration file, if any (checked when resolved).
    pub config_file: Option<PathBuf>,
    /// Whether the web configuration file sets up TLS, as it read when resolved.
    pub tls: bool,
    /// Whether to serve on the sockets systemd passes instead.
    pub systemd_socket: bool,
    /// Whether `/api/*` is served.
    pub api: bool,
}

/// A checked configuration, ready to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Which units are watched.
    pub filter: UnitFilter,
    /// The include globs as written, for messages.
    pub include: Vec<String>,
    /// The default detection policy.
    pub policy: Policy,
    /// Per-unit policies, first match wins.
    pub overrides: Vec<(Glob, Policy)>,
    /// The first address `/metrics` is served on (where `crashwatch status` asks).
    pub listen: SocketAddr,
    /// All the HTTP server's settings.
    pub web: WebSettings,
    /// StatsD output, if any.
    pub statsd: Option<StatsdTarget>,
    /// The event record, if any.
    pub events: Option<EventsTarget>,
    /// How the event record's file is rotated; `None` when rotation is off.
    pub events_rotation: Option<Rotation>,
    /// Whether the event record gets each crash's context.
    pub events_crash_context: bool,
    /// The cap on units with series of their own.
    pub max_units: usize,
    /// Whether template instances are counted as their template.
    pub fold_instances: bool,
    /// How long an unloaded unit keeps its series.
    pub unloaded_retention: Duration,
    /// Which series each unit has.
    pub unit_series: UnitSeries,
    /// Which init system to watch.
    pub source: SourceChoice,
    /// The Upstart source's settings (used when it is the one watched).
    pub upstart: UpstartConfig,
    /// Start-up history.
    pub history: HistoryConfig,
    /// Crash contexts.
    pub crash_context: CrashContextConfig,
    /// What to do when a crash loop starts and ends.
    pub actions: Vec<Action>,
    /// The log level the file asks for, if any.
    pub log_level: Option<tracing::Level>,
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        parse_file(&text, path)
    }

    /// Checks a parsed file plus command-line values. `origin` names the file for messages.
    pub fn resolve(file: FileConfig, cli: Overrides, origin: &str) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let upstart = resolve_upstart(&file.source.upstart, &cli, &invalid)?;
        let web = resolve_web(
            &file.web,
            file.sink.prometheus.listen.as_deref(),
            &cli,
            &invalid,
        )?;
        let source = match cli.source.as_deref().or(file.source.kind.as_deref()) {
            Some(text) => {
                SourceChoice::parse(text).map_err(|e| invalid(format!("source.kind: {e}")))?
            }
            None => SourceChoice::default(),
        };
        let include = if cli.include.is_empty() {
            file.source
                .systemd
                .unit_include
                .unwrap_or_else(|| vec!["*.service".to_owned()])
        } else {
            cli.include
        };
        let mut exclude = file.source.systemd.unit_exclude.unwrap_or_default();
        exclude.extend(cli.exclude);
        let globs = |patterns: &[String]| -> Result<Vec<Glob>, ConfigError> {
            patterns
                .iter()
                .map(|p| Glob::new(p).map_err(|e| invalid(format!("bad unit pattern: {e}"))))
                .collect()
        };
        let filter = UnitFilter::new(globs(&include)?, globs(&exclude)?);

        let threshold = cli.threshold.or(file.detect.threshold).unwrap_or(3);
        let window = match cli.window.as_deref().or(file.detect.window.as_deref()) {
            Some(text) => {
                parse_duration(text).map_err(|e| invalid(format!("detect.window: {e}")))?
            }
            None => Duration::from_secs(300),
        };
        let policy =
            check_policy(threshold, window).map_err(|e| invalid(format!("detect: {e}")))?;
        let mut overrides = Vec::new();
        for (i, o) in file.detect.overrides.into_iter().enumerate() {
            let at = format!("detect.override[{}] ({})", i + 1, o.units);
            let glob = Glob::new(&o.units).map_err(|e| invalid(format!("{at}: {e}")))?;
            let window = match o.window.as_deref() {
                Some(text) => {
                    parse_duration(text).map_err(|e| invalid(format!("{at}: window: {e}")))?
                }
                None => policy.window,
            };
            let threshold = o.threshold.unwrap_or(policy.threshold);
            let p = check_policy(threshold, window).map_err(|e| invalid(format!("{at}: {e}")))?;
            overrides.push((glob, p));
        }

        let listen = web.listen_addresses[0];

        let statsd = match cli.statsd.or(file.sink.statsd.address) {
            Some(address) => {
                if !address.contains(':') {
                    return Err(invalid(format!(
                        "statsd address {address:?} is not HOST:PORT"
                    )));
                }
                let prefix = cli
                    .statsd_prefix
                    .or(file.sink.statsd.prefix)
                    .unwrap_or_else(|| DEFAULT_STATSD_PREFIX.to_owned());
                Some(StatsdTarget {
                    address,
                    prefix: crate::sink::statsd::sanitize_prefix(&prefix),
                    tags: cli.statsd_tags || file.sink.statsd.tags.unwrap_or(false),
                })
            }
            None => None,
        };
        let events = cli
            .events
            .or(file.sink.events.path)
            .map(|p| EventsTarget::parse(&p));
        let events_rotation = resolve_events_rotation(
            (cli.events_max_size.as_deref(), cli.events_max_files),
            (file.sink.events.max_size, file.sink.events.max_files),
            &invalid,
        )?;
        let max_units = cli
            .max_units
            .or(file.limits.max_units)
            .unwrap_or(DEFAULT_MAX_UNITS);
        if max_units == 0 {
            return Err(invalid("limits.max_units must be at least 1".to_owned()));
        }
        let unloaded_retention = match cli
            .unloaded_retention
            .as_deref()
            .or(file.limits.unloaded_retention.as_deref())
        {
            Some(text) => parse_duration(text)
                .map_err(|e| invalid(format!("limits.unloaded_retention: {e}")))?,
            None => DEFAULT_UNLOADED_RETENTION,
        };
        let unit_series = match cli
            .unit_series
            .as_deref()
            .or(file.limits.unit_series.as_deref())
        {
            Some(text) => {
                UnitSeries::parse(text).map_err(|e| invalid(format!("limits.unit_series: {e}")))?
            }
            None => UnitSeries::default(),
        };
        let journal_directory = match file.history.journal_directory {
            Some(dir) if dir.is_empty() => return Err(invalid(
                "history.journal_directory must not be empty (leave it out for the system journal)"
                    .to_owned(),
            )),
            dir => dir.map(PathBuf::from),
        };
        let log_level = match file.log.level.as_deref() {
            Some(text) => Some(text.parse::<tracing::Level>().map_err(|_| {
                invalid(format!(
                    "log.level: {text:?} is not one of error, warn, info, debug, trace"
                ))
            })?),
            None => None,
        };
        let history = HistoryConfig {
            journal: !cli.no_journal_history && file.history.journal.unwrap_or(true),
            journal_directory,
        };
        let crash_context = {
            let section = &file.crash_context;
            let lines = section.lines.unwrap_or(DEFAULT_CONTEXT_LINES);
            if !(1..=MAX_CONTEXT_LINES).contains(&lines) {
                return Err(invalid(format!(
                    "crash_context.lines: {lines} is not between 1 and {MAX_CONTEXT_LINES}"
                )));
            }
            let own = Masks::new(&section.mask)
                .map_err(|e| invalid(format!("crash_context.mask: {e}")))?;
            let masks = if section.mask_defaults.unwrap_or(true) {
                Masks::defaults().and(own)
            } else {
                own
            };
            CrashContextConfig { lines, masks }
        };
        let actions = file
            .actions
            .iter()
            .enumerate()
            .map(|(i, section)| {
                section
                    .resolve()
                    .map_err(|e| invalid(format!("action[{}]: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            filter,
            include,
            policy,
            overrides,
            listen,
            web,
            statsd,
            events,
            events_rotation,
            events_crash_context: cli.events_crash_context
                || file.sink.events.crash_context.unwrap_or(false),
            max_units,
            fold_instances: cli.fold_instances || file.limits.fold_instances.unwrap_or(false),
            unloaded_retention,
            unit_series,
            source,
            upstart,
            history,
            crash_context,
            actions,
            log_level,
        })
    }
}

/// Checks `[web]` (and the older `[sink.prometheus] listen`) plus the command line. The web
/// configuration file is read and checked here, certificates and keys included, so that a bad
/// one stops the start-up (and `check-config`) with its problem.
fn resolve_web(
    section: &WebSection,
    prometheus_listen: Option<&str>,
    cli: &Overrides,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<WebSettings, ConfigError> {
    let (texts, key) = if !cli.listen.is_empty() {
        (cli.listen.clone(), "--web.listen-address")
    } else {
        match (&section.listen_addresses, prometheus_listen) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "set web.listen_addresses or sink.prometheus.listen, not both".to_owned(),
                ))
            }
            (Some(list), None) => (list.clone(), "web.listen_addresses"),
            (None, Some(one)) => (vec![one.to_owned()], "sink.prometheus.listen"),
            (None, None) => (vec![DEFAULT_LISTEN.to_owned()], "web.listen_addresses"),
        }
    };
    if texts.is_empty() {
        return Err(invalid(format!("{key} must not be empty")));
    }
    let mut listen_addresses = Vec::with_capacity(texts.len());
    for text in &texts {
        let address = parse_listen(text).ok_or_else(|| {
            invalid(format!(
                "listen address {text:?} ({key}) is not IP:PORT or :PORT (e.g. {DEFAULT_LISTEN})"
            ))
        })?;
        if listen_addresses.contains(&address) {
            return Err(invalid(format!("{key}: {address} is given twice")));
        }
        listen_addresses.push(address);
    }
    let (config_file, file_key) = match (&cli.web_config_file, &section.config_file) {
        (Some(path), _) => (Some(path.clone()), "--web.config.file"),
        (None, Some(path)) => (Some(PathBuf::from(path)), "web.config_file"),
        (None, None) => (None, "web.config_file"),
    };
    // An empty name means no file, as exporter-toolkit's empty flag does.
    let config_file = config_file.filter(|path| !path.as_os_str().is_empty());
    let tls = match &config_file {
        Some(path) => crate::http::check_web_config(path)
            .map_err(|e| invalid(format!("{file_key}: {e}")))?
            .tls
            .is_some(),
        None => false,
    };
    Ok(WebSettings {
        listen_addresses,
        config_file,
        tls,
        systemd_socket: cli.web_systemd_socket || section.systemd_socket.unwrap_or(false),
        api: !(cli.web_disable_api || section.disable_api.unwrap_or(false)),
    })
}

/// A listen address: `IP:PORT`, or `:PORT` for every address (IPv6 and IPv4 alike, as Go's
/// listeners take it).
fn parse_listen(text: &str) -> Option<SocketAddr> {
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port.parse().ok()?;
        return Some(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
    }
    text.parse().ok()
}

/// Checks the event record's rotation: the command line's maximum size and files over
/// `[sink.events]`'s. Errors name the flag or key the bad value came from.
fn resolve_events_rotation(
    (cli_max_size, cli_max_files): (Option<&str>, Option<u32>),
    (max_size, max_files): (Option<SizeSetting>, Option<u32>),
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<Option<Rotation>, ConfigError> {
    let max_size = match (cli_max_size, max_size) {
        (Some(text), _) => {
            parse_size(text).map_err(|e| invalid(format!("--events-max-size: {e}")))?
        }
        (None, Some(SizeSetting::Text(text))) => {
            parse_size(&text).map_err(|e| invalid(format!("sink.events.max_size: {e}")))?
        }
        (None, Some(SizeSetting::Bytes(bytes))) => bytes,
        (None, None) => DEFAULT_MAX_SIZE,
    };
    let (max_files, key) = match (cli_max_files, max_files) {
        (Some(n), _) => (n, "--events-max-files"),
        (None, Some(n)) => (n, "sink.events.max_files"),
        (None, None) => (DEFAULT_MAX_FILES, "sink.events.max_files"),
    };
    if !(1..=MAX_FILES_LIMIT).contains(&max_files) {
        return Err(invalid(format!(
            "{key} must be between 1 and {MAX_FILES_LIMIT}, not {max_files}"
        )));
    }
    Ok((max_size > 0).then_some(Rotation {
        max_size,
        max_files,
    }))
}

/// Checks `[source.upstart]` plus the command line. `--include` replaces the include list and
/// `--exclude` adds to the exclude list, as for systemd.
fn resolve_upstart(
    section: &UpstartSection,
    cli: &Overrides,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<UpstartConfig, ConfigError> {
    let address_text = cli
        .upstart_address
        .as_deref()
        .or(section.address.as_deref())
        .unwrap_or("system");
    let address = UpstartAddress::parse(address_text)
        .map_err(|e| invalid(format!("source.upstart.address: {e}")))?;
    let hook_socket = match cli
        .upstart_hook_socket
        .as_deref()
        .or(section.hook_socket.as_deref())
        .unwrap_or(DEFAULT_SOCKET)
    {
        "" => None,
        path => Some(PathBuf::from(path)),
    };
    let kernel_log = match cli
        .upstart_kernel_log
        .as_deref()
        .or(section.kernel_log.as_deref())
        .unwrap_or(DEFAULT_KERNEL_LOG)
    {
        "" | "none" => None,
        path => Some(PathBuf::from(path)),
    };
    let job_log_directory = match section
        .job_log_directory
        .as_deref()
        .unwrap_or(crate::source::upstart::joblog::DEFAULT_DIRECTORY)
    {
        "" | "none" => None,
        path => Some(PathBuf::from(path)),
    };
    if address == UpstartAddress::None && hook_socket.is_none() {
        return Err(invalid(
            "source.upstart: with address \"none\" the job hook is the only way in; \
             hook_socket must not be empty"
                .to_owned(),
        ));
    }
    let include = if cli.include.is_empty() {
        section
            .unit_include
            .clone()
            .unwrap_or_else(|| vec!["*".to_owned()])
    } else {
        cli.include.clone()
    };
    let mut exclude = section.unit_exclude.clone().unwrap_or_else(|| {
        vec![
            "crashwatch-hook".to_owned(),
            "crashwatch-hook (*)".to_owned(),
        ]
    });
    exclude.extend(cli.exclude.iter().cloned());
    let globs = |patterns: &[String]| -> Result<Vec<Glob>, ConfigError> {
        patterns
            .iter()
            .map(|p| {
                Glob::new(p).map_err(|e| invalid(format!("source.upstart: bad unit pattern: {e}")))
            })
            .collect()
    };
    Ok(UpstartConfig {
        address,
        hook_socket,
        kernel_log,
        job_log_directory,
        filter: UnitFilter::new(globs(&include)?, globs(&exclude)?),
    })
}

fn check_policy(threshold: u32, window: Duration) -> Result<Policy, String> {
    if threshold == 0 || threshold as usize > MAX_RESTARTS_HELD {
        return Err(format!(
            "threshold must be between 1 and {MAX_RESTARTS_HELD}, not {threshold}"
        ));
    }
    if window.is_zero() {
        return Err("window must be longer than zero".to_owned());
    }
    Ok(Policy { threshold, window })
}

/// Parses TOML text, turning the parser's multi-line report into one line with the line number.
pub fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let message = e.message().trim().replace('\n', " ");
        ConfigError::Parse {
            path: path.to_owned(),
            message: match line {
                Some(line) => format!("{message} at line {line}"),
                None => message,
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::actions::http::Retry;
    use crate::sink::actions::ActionKind;

    fn resolve(text: &str) -> Result<Config, ConfigError> {
        let path = Path::new("crashwatch.toml");
        Config::resolve(
            parse_file(text, path)?,
            Overrides::default(),
            "crashwatch.toml",
        )
    }

    #[test]
    fn crash_context_lines_and_masks_are_checked() {
        let config = resolve("").expect("valid");
        assert_eq!(config.crash_context.lines, DEFAULT_CONTEXT_LINES);
        assert_eq!(
            config.crash_context.masks.apply("password=x".into()),
            "password=[masked]",
            "the defaults are on"
        );
        let config =
            resolve("[crash_context]\nlines = 3\nmask = ['order [0-9]+']\nmask_defaults = false\n")
                .expect("valid");
        assert_eq!(config.crash_context.lines, 3);
        let masks = &config.crash_context.masks;
        assert_eq!(
            masks.apply("order 42 password=x".into()),
            "[masked] password=x"
        );
        for (text, named) in [
            ("[crash_context]\nlines = 0\n", "crash_context.lines"),
            ("[crash_context]\nlines = 101\n", "crash_context.lines"),
            ("[crash_context]\nmask = ['(']\n", "crash_context.mask"),
        ] {
            let error = resolve(text).expect_err(text).to_string();
            assert!(error.contains(named), "{text}: {error}");
        }
    }

    #[test]
    fn crash_context_reaches_the_event_record_only_when_asked() {
        assert!(!resolve("").expect("valid").events_crash_context);
        let on = resolve("[sink.events]\ncrash_context = true\n").expect("valid");
        assert!(on.events_crash_context);
        let flag = Config::resolve(
            FileConfig::default(),
            Overrides {
                events_crash_context: true,
                ..Overrides::default()
            },
            "command line",
        )
        .expect("valid");
        assert!(flag.events_crash_context);
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = resolve("").expect("defaults");
        assert_eq!(config.policy, Policy::default());
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().expect("address"));
        assert!(config.filter.allows("nginx.service"));
        assert!(!config.filter.allows("dbus.socket"));
        assert!(config.statsd.is_none() && config.events.is_none());
    }

    #[test]
    fn a_full_file_is_read() {
        let config = resolve(
            r#"
            [source.systemd]
            unit_include = ["*.service", "*.socket"]
            unit_exclude = ["noisy*"]
            [detect]
            threshold = 4
            window = "10m"
            [[detect.override]]
            units = "slow*.service"
            threshold = 2
            [sink.prometheus]
            listen = "0.0.0.0:9999"
            [sink.statsd]
            address = "127.0.0.1:8125"
            prefix = "node.cw"
            [sink.events]
            path = "-"
            [limits]
            max_units = 50
            fold_instances = true
            "#,
        )
        .expect("valid");
        assert_eq!(config.policy.threshold, 4);
        assert_eq!(config.policy.window, Duration::from_secs(600));
        assert_eq!(
            config.overrides[0].1,
            Policy {
                threshold: 2,
                window: Duration::from_secs(600)
            }
        );
        assert!(config.filter.allows("dbus.socket"));
        assert!(!config.filter.allows("noisy.service"));
        assert_eq!(config.statsd.expect("statsd").prefix, "node.cw");
        assert_eq!(config.events, Some(EventsTarget::Stdout));
        assert_eq!(config.max_units, 50);
        assert!(config.fold_instances);
    }

    #[test]
    fn unit_series_come_from_the_flag_then_the_file_and_default_to_changed() {
        let series = |text: &str, flag: Option<&str>| {
            let file = parse_file(text, Path::new("crashwatch.toml")).expect("valid");
            let cli = Overrides {
                unit_series: flag.map(str::to_owned),
                ..Overrides::default()
            };
            Config::resolve(file, cli, "crashwatch.toml").map(|config| config.unit_series)
        };
        let all = "[limits]\nunit_series = \"all\"\n";
        assert_eq!(series("", None).expect("valid"), UnitSeries::Changed);
        assert_eq!(series(all, None).expect("valid"), UnitSeries::All);
        assert_eq!(series("", Some("all")).expect("valid"), UnitSeries::All);
        assert_eq!(
            series(all, Some("changed")).expect("valid"),
            UnitSeries::Changed
        );
        let error = series("[limits]\nunit_series = \"some\"\n", None)
            .expect_err("not a setting")
            .to_string();
        assert_eq!(
            error,
            "crashwatch.toml: limits.unit_series: \"some\" is not one of changed, all"
        );
    }

    #[test]
    fn statsd_tags_come_from_the_file_or_the_flag() {
        let section = "[sink.statsd]\naddress = \"127.0.0.1:8125\"\n";
        let tags = |text: &str, flag: bool| {
            let file = parse_file(text, Path::new("crashwatch.toml")).expect("valid");
            let cli = Overrides {
                statsd_tags: flag,
                ..Overrides::default()
            };
            let config = Config::resolve(file, cli, "crashwatch.toml").expect("valid");
            config.statsd.expect("statsd").tags
        };
        assert!(!tags(section, false), "plain StatsD by default");
        assert!(tags(&format!("{section}tags = true\n"), false));
        assert!(tags(section, true));
        assert!(tags(&format!("{section}tags = false\n"), true));
    }

    #[test]
    fn every_bad_file_is_one_line_naming_it() {
        let cases = [
            ("[detect]\nwindw = \"5m\"\n", "unknown field"),
            ("[detect]\nwindow = \"5 parsecs\"\n", "not a duration"),
            ("[detect]\nthreshold = 0\n", "threshold"),
            ("[detect]\nthreshold = -1\n", "line 2"),
            ("[detect\n", "line 1"),
            ("[sink.prometheus]\nlisten = \"localhost\"\n", "IP:PORT"),
            (
                "[source.systemd]\nunit_include = [\"a[b\"]\n",
                "bad unit pattern",
            ),
            (
                "[[detect.override]]\nunits = \"x*\"\nwindow = \"0s\"\n",
                "longer than zero",
            ),
            ("[sink.statsd]\naddress = \"nohost\"\n", "HOST:PORT"),
        ];
        for (text, expected) in cases {
            let message = resolve(text).expect_err(text).to_string();
            assert!(message.starts_with("crashwatch.toml"), "{message}");
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn the_source_and_upstart_sections_are_read() {
        let config = resolve("").expect("defaults");
        assert_eq!(config.source, SourceChoice::Systemd);
        assert_eq!(config.upstart.address, UpstartAddress::System);
        assert_eq!(
            config.upstart.hook_socket.as_deref(),
            Some(Path::new(DEFAULT_SOCKET))
        );
        assert_eq!(
            config.upstart.kernel_log.as_deref(),
            Some(Path::new("/dev/kmsg"))
        );
        assert!(config.upstart.filter.allows("network-interface (eth0)"));
        assert!(!config
            .upstart
            .filter
            .allows("crashwatch-hook (starting/www/)"));
        let config = resolve(
            r#"
            [source]
            kind = "auto"
            [source.upstart]
            address = "unix:abstract=/com/ubuntu/upstart"
            hook_socket = ""
            kernel_log = "none"
            unit_include = ["www*"]
            "#,
        )
        .expect("valid");
        assert_eq!(config.source, SourceChoice::Auto);
        assert_eq!(
            config.upstart.address,
            UpstartAddress::Peer("unix:abstract=/com/ubuntu/upstart".to_owned())
        );
        assert_eq!(config.upstart.hook_socket, None);
        assert_eq!(config.upstart.kernel_log, None);
        assert!(config.upstart.filter.allows("www (a)"));
        assert!(!config.upstart.filter.allows("tty (tty1)"));
        for (text, expected) in [
            ("[source]\nkind = \"openrc\"\n", "source.kind"),
            (
                "[source.upstart]\naddress = \"bogus\"\n",
                "source.upstart.address",
            ),
            (
                "[source.upstart]\naddress = \"none\"\nhook_socket = \"\"\n",
                "hook_socket",
            ),
            ("[source.upstart]\nadress = \"none\"\n", "unknown field"),
        ] {
            let message = resolve(text).expect_err(text).to_string();
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn the_web_section_is_read() {
        let config = resolve("").expect("defaults");
        let default: SocketAddr = DEFAULT_LISTEN.parse().unwrap();
        assert_eq!(
            config.web,
            WebSettings {
                listen_addresses: vec![default],
                config_file: None,
                tls: false,
                systemd_socket: false,
                api: true,
            }
        );
        assert_eq!(config.listen, default);
        let config = resolve(
            "[web]\nlisten_addresses = [\"127.0.0.1:9100\", \":9101\", \"[::1]:9102\"]\n\
             systemd_socket = true\ndisable_api = true\nconfig_file = \"\"\n",
        )
        .expect("valid");
        assert_eq!(
            config.web.listen_addresses,
            [
                "127.0.0.1:9100".parse::<SocketAddr>().unwrap(),
                "[::]:9101".parse().unwrap(),
                "[::1]:9102".parse().unwrap(),
            ]
        );
        assert_eq!(config.listen, config.web.listen_addresses[0]);
        assert!(config.web.systemd_socket && !config.web.api);
        assert_eq!(config.web.config_file, None, "an empty name is no file");
        let old = resolve("[sink.prometheus]\nlisten = \"127.0.0.1:9200\"\n").expect("valid");
        assert_eq!(
            old.web.listen_addresses,
            ["127.0.0.1:9200".parse::<SocketAddr>().unwrap()]
        );
        let flags = Config::resolve(
            parse_file(
                "[web]\nlisten_addresses = [\"127.0.0.1:9100\"]\n",
                Path::new("crashwatch.toml"),
            )
            .expect("valid"),
            Overrides {
                listen: vec!["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()],
                web_systemd_socket: true,
                web_disable_api: true,
                ..Overrides::default()
            },
            "crashwatch.toml",
        )
        .expect("valid");
        assert_eq!(
            flags.web.listen_addresses.len(),
            2,
            "flags replace the file's"
        );
        assert!(flags.web.systemd_socket && !flags.web.api);
        for (text, expected) in [
            (
                "[web]\nlisten_addresses = [\"127.0.0.1:1\"]\n[sink.prometheus]\nlisten = \"127.0.0.1:2\"\n",
                "set web.listen_addresses or sink.prometheus.listen, not both",
            ),
            ("[web]\nlisten_addresses = []\n", "web.listen_addresses must not be empty"),
            (
                "[web]\nlisten_addresses = [\"localhost:1\"]\n",
                "listen address \"localhost:1\" (web.listen_addresses) is not IP:PORT",
            ),
            (
                "[web]\nlisten_addresses = [\":1\", \"[::]:1\"]\n",
                "web.listen_addresses: [::]:1 is given twice",
            ),
            (
                "[web]\nconfig_file = \"/nonexistent/web.yml\"\n",
                "web.config_file: /nonexistent/web.yml: cannot read it",
            ),
            ("[web]\nlisten = \"127.0.0.1:1\"\n", "unknown field `listen`"),
        ] {
            let message = resolve(text).expect_err(text).to_string();
            assert!(message.starts_with("crashwatch.toml"), "{message}");
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
        let flag = Config::resolve(
            FileConfig::default(),
            Overrides {
                web_config_file: Some(PathBuf::from("/nonexistent/web.yml")),
                ..Overrides::default()
            },
            "command line",
        )
        .expect_err("a missing file");
        assert!(
            flag.to_string()
                .starts_with("command line: --web.config.file: /nonexistent/web.yml"),
            "{flag}"
        );
    }

    #[test]
    fn the_log_level_comes_from_the_file() {
        let config = resolve("[log]\nlevel = \"debug\"\n").expect("valid");
        assert_eq!(config.log_level, Some(tracing::Level::DEBUG));
        assert_eq!(resolve("").expect("valid").log_level, None);
        let error = resolve("[log]\nlevel = \"loud\"\n").expect_err("refused");
        assert!(error.to_string().contains("log.level"), "{error}");
    }

    #[test]
    fn the_history_section_is_read() {
        let config = resolve("").expect("defaults");
        assert_eq!(
            config.history,
            HistoryConfig {
                journal: true,
                journal_directory: None
            }
        );
        let config =
            resolve("[history]\njournal = false\njournal_directory = \"/run/log/journal\"\n")
                .expect("valid");
        assert!(!config.history.journal);
        assert_eq!(
            config.history.journal_directory.as_deref(),
            Some(Path::new("/run/log/journal"))
        );
        let off = Config::resolve(
            FileConfig::default(),
            Overrides {
                no_journal_history: true,
                ..Overrides::default()
            },
            "command line",
        )
        .expect("valid");
        assert!(!off.history.journal);
        for (text, expected) in [
            ("[history]\njournal_directory = \"\"\n", "must not be empty"),
            ("[history]\njournal = \"yes\"\n", "line 2"),
            ("[history]\njournl = true\n", "unknown field"),
        ] {
            let message = resolve(text).expect_err(text).to_string();
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn actions_are_read() {
        let config = resolve(
            r#"
            [[action]]
            units = ["*.service"]
            command = ["/bin/sh", "-c", "exit 0"]
            timeout = "5s"
            [[action]]
            units = ["nginx.service"]
            webhook = "http://127.0.0.1:8080/hook"
            headers = { Authorization = "Bearer x" }
            retries = 5
            backoff = "200ms"
            max_backoff = "2s"
            [[action]]
            alertmanager = "http://127.0.0.1:9093"
            severity = "page"
            labels = { team = "web" }
            resend_interval = "30s"
            "#,
        )
        .expect("valid");
        assert_eq!(config.actions.len(), 3);
        let [command, webhook, alerts] = &config.actions[..] else {
            panic!("three actions")
        };
        assert!(command.applies_to("a.service") && !command.applies_to("a.socket"));
        assert!(
            alerts.applies_to("anything.socket"),
            "units default to every unit"
        );
        match &command.kind {
            ActionKind::Command(c) => {
                assert_eq!(c.argv, ["/bin/sh", "-c", "exit 0"]);
                assert_eq!(c.timeout, Duration::from_secs(5));
            }
            other => panic!("{other:?}"),
        }
        match &webhook.kind {
            ActionKind::Webhook(w) => {
                assert_eq!(w.endpoint.url.to_string(), "http://127.0.0.1:8080/hook");
                let [(name, value)] = &w.endpoint.headers[..] else {
                    panic!("one header")
                };
                assert_eq!(name, "Authorization");
                assert_eq!(value.read().expect("inline").expose(), "Bearer x");
                assert_eq!(
                    w.retry,
                    Retry {
                        timeout: Duration::from_secs(10),
                        retries: 5,
                        backoff: Duration::from_millis(200),
                        max_backoff: Duration::from_secs(2),
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        match &alerts.kind {
            ActionKind::Alertmanager(a) => {
                assert_eq!(
                    a.endpoint.url.to_string(),
                    "http://127.0.0.1:9093/api/v2/alerts"
                );
                assert_eq!(a.alertname, "CrashwatchUnitCrashLooping");
                assert_eq!(a.severity, "page");
                assert_eq!(a.labels.get("team").map(String::as_str), Some("web"));
                assert_eq!(a.resend_interval, Duration::from_secs(30));
                assert_eq!(a.retry.retries, 3);
            }
            other => panic!("{other:?}"),
        }
        assert!(resolve("").expect("defaults").actions.is_empty());
    }

    #[test]
    fn every_bad_action_is_one_line_naming_its_key() {
        let cases = [
            (
                "[[action]]\nunits = [\"*\"]\n",
                "action[1]: needs one of command, webhook or alertmanager",
            ),
            (
                "[[action]]\ncommand = [\"/bin/true\"]\nwebhook = \"http://a/\"\n",
                "has command and webhook",
            ),
            (
                "[[action]]\nwebhook = \"http://a/\"\ntls_config = { insecure_skip_verify = true }\n",
                "action[1]: tls_config applies to an https:// webhook URL",
            ),
            (
                "[[action]]\nwebhook = \"example.org\"\n",
                "webhook: \"example.org\" is not an http:// or https:// URL",
            ),
            (
                "[[action]]\nalertmanager = \"http://am:99999\"\n",
                "alertmanager: ",
            ),
            ("[[action]]\ncommand = []\n", "command: must name a program"),
            (
                "[[action]]\ncommand = [\"/nonexistent/page\"]\n",
                "command: \"/nonexistent/page\" is not an executable file",
            ),
            (
                "[[action]]\ncommand = [\"no-such-program-anywhere\"]\n",
                "is not found in PATH",
            ),
            (
                "[[action]]\ncommand = [\"/bin/true\"]\nheaders = { A = \"b\" }\n",
                "headers applies to webhook and alertmanager actions, not command",
            ),
            (
                "[[action]]\nwebhook = \"http://a/\"\nseverity = \"x\"\n",
                "severity applies to alertmanager actions, not webhook",
            ),
            (
                "[[action]]\ncommand = [\"/bin/true\"]\ntimeout = \"0s\"\n",
                "timeout must be longer than zero",
            ),
            (
                "[[action]]\ncommand = [\"/bin/true\"]\ntimeout = \"soon\"\n",
                "timeout: \"soon\" is not a duration",
            ),
            (
                "[[action]]\nwebhook = \"http://a/\"\nheaders = { X = \"a\\r\\nHost: b\" }\n",
                "headers: the value of X contains a line break",
            ),
            (
                "[[action]]\nwebhook = \"http://a/\"\nretries = 1000\n",
                "retries must be at most 100",
            ),
            (
                "[[action]]\nwebhook = \"http://a/\"\nbackoff = \"10s\"\nmax_backoff = \"1s\"\n",
                "max_backoff must not be shorter than backoff",
            ),
            (
                "[[action]]\nalertmanager = \"http://a/\"\nlabels = { unit = \"x\" }\n",
                "labels.unit is set by crashwatch",
            ),
            (
                "[[action]]\nalertmanager = \"http://a/\"\nlabels = { \"a-b\" = \"x\" }\n",
                "is not a label name",
            ),
            (
                "[[action]]\nalertmanager = \"http://a/\"\nalertname = \"\"\n",
                "alertname must not be empty",
            ),
            (
                "[[action]]\nalertmanager = \"http://a/\"\nresend_interval = \"0s\"\n",
                "resend_interval must be longer than zero",
            ),
            (
                "[[action]]\ncommand = [\"/bin/true\"]\nunits = []\n",
                "units must not be empty",
            ),
            (
                "[[action]]\ncommand = [\"/bin/true\"]\nunits = [\"a[\"]\n",
                "units: unclosed",
            ),
            (
                "[[action]]\ncommand = [\"/bin/true\"]\ncomand = 1\n",
                "unknown field `comand`",
            ),
            ("[[action]]\ncommand = \"/bin/true\"\n", "line 2"),
            (
                "[[action]]\ncommand = [\"/bin/true\"]\n[[action]]\nwebhook = \"ftp://x\"\n",
                "action[2]: webhook",
            ),
        ];
        for (text, expected) in cases {
            let message = resolve(text).expect_err(text).to_string();
            assert!(message.starts_with("crashwatch.toml"), "{message}");
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn the_event_record_rotates_by_default_and_as_told() {
        let config = resolve("").expect("defaults");
        assert_eq!(
            config.events_rotation,
            Some(Rotation {
                max_size: 16 << 20,
                max_files: 4
            })
        );
        let config =
            resolve("[sink.events]\nmax_size = \"512KiB\"\nmax_files = 2\n").expect("valid");
        assert_eq!(
            config.events_rotation,
            Some(Rotation {
                max_size: 512 << 10,
                max_files: 2
            })
        );
        let config = resolve("[sink.events]\nmax_size = 4096\n").expect("valid");
        assert_eq!(config.events_rotation.map(|r| r.max_size), Some(4096));
        let config = resolve("[sink.events]\nmax_size = \"0\"\n").expect("valid");
        assert_eq!(config.events_rotation, None, "0 turns rotation off");
        let flags = Config::resolve(
            parse_file(
                "[sink.events]\nmax_size = \"1GiB\"\nmax_files = 9\n",
                Path::new("crashwatch.toml"),
            )
            .expect("valid"),
            Overrides {
                events_max_size: Some("10MB".to_owned()),
                events_max_files: Some(3),
                ..Overrides::default()
            },
            "crashwatch.toml",
        )
        .expect("valid");
        assert_eq!(
            flags.events_rotation,
            Some(Rotation {
                max_size: 10_000_000,
                max_files: 3
            }),
            "flags replace the file's values"
        );
    }

    #[test]
    fn every_bad_rotation_setting_is_one_line_naming_its_key() {
        for (text, expected) in [
            (
                "[sink.events]\nmax_size = \"12XB\"\n",
                "sink.events.max_size: \"12XB\" is not a size",
            ),
            (
                "[sink.events]\nmax_size = -1\n",
                "sink.events.max_size must be a size such as",
            ),
            ("[sink.events]\nmax_size = true\n", "line 2"),
            (
                "[sink.events]\nmax_files = 0\n",
                "sink.events.max_files must be between 1 and 1000, not 0",
            ),
            ("[sink.events]\nmax_files = \"3\"\n", "line 2"),
            ("[sink.events]\nmax_file = 3\n", "unknown field"),
        ] {
            let message = resolve(text).expect_err(text).to_string();
            assert!(message.starts_with("crashwatch.toml"), "{message}");
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
        for (overrides, expected) in [
            (
                Overrides {
                    events_max_size: Some("lots".to_owned()),
                    ..Overrides::default()
                },
                "command line: --events-max-size: \"lots\" is not a size",
            ),
            (
                Overrides {
                    events_max_files: Some(5000),
                    ..Overrides::default()
                },
                "command line: --events-max-files must be between 1 and 1000, not 5000",
            ),
        ] {
            let message = Config::resolve(FileConfig::default(), overrides, "command line")
                .expect_err(expected)
                .to_string();
            assert!(message.starts_with(expected), "{message}");
        }
    }
}
