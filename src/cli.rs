//! The command line. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Hears every service start and stop the moment it happens and says when one is crash-looping.
///
/// crashwatch subscribes to systemd over D-Bus (no polling), counts starts, crashes and restarts
/// per unit, flags a unit that restarts THRESHOLD times within WINDOW, and exports it all to
/// Prometheus (/metrics), StatsD and a JSON-lines event record.
#[derive(Debug, Parser)]
#[command(name = "crashwatch", version, about, long_about)]
pub struct Cli {
    /// Log level for messages on stderr: error, warn, info, debug or trace. Default: the
    /// configuration file's `[log] level`, else info.
    #[arg(long, global = true, env = "CRASHWATCH_LOG")]
    pub log_level: Option<String>,

    /// Format of the log lines on stderr: text (for people), logfmt or json (for log shippers).
    ///
    /// Colour only when stderr is a terminal and NO_COLOR is unset or empty. Under journald
    /// ($JOURNAL_STREAM names stderr) every line starts with its syslog priority (<3> error, <4>
    /// warning, <6> info, <7> debug) and carries no timestamp, in every format.
    #[arg(
        long,
        global = true,
        default_value = "text",
        value_name = "FORMAT",
        env = "CRASHWATCH_LOG_FORMAT"
    )]
    pub log_format: String,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
// Parsed once at start-up: boxing the larger variant would save nothing worth the indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch units and export what happens to them (the daemon).
    Run(RunArgs),
    /// Check a configuration file and exit: 0 if it is valid, 2 with the problem if not.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Hand one Upstart job event to the running daemon and exit (run from an Upstart job).
    ///
    /// Reads $JOB, $INSTANCE, $UPSTART_EVENTS, $RESULT, $PROCESS, $EXIT_STATUS and $EXIT_SIGNAL,
    /// sends them as one datagram to the daemon's hook socket and exits at once: 0 when sent, 1
    /// when the daemon did not take it, 2 when not run for a job event. See
    /// packaging/upstart/crashwatch-hook.conf.
    UpstartHook(UpstartHookArgs),
    /// Find the crash loops in a journal export, for post-mortems.
    ///
    /// Reads `journalctl -o json` output (one JSON object per line), turns systemd's lifecycle
    /// messages into starts, crashes and restarts as the daemon counts them, runs the crash-loop
    /// detector over them on the journal's clock, and prints each loop: unit, when it was flagged
    /// and when it ended (UTC), how it ended (`open` if still looping at the end of the input),
    /// restarts within the window when flagged, and the most within the window while it lasted.
    /// Exits 0 whether or not loops are found, 2 when the input cannot be read. For example:
    /// journalctl -o json --since=-1d | crashwatch replay
    Replay(ReplayArgs),
    /// Show the units the running daemon watches, crash-looping units first.
    ///
    /// Asks the daemon's status API (GET /api/units on its listen address) and prints one line
    /// per unit: state, whether it is crash-looping, restarts within the window against the
    /// threshold, and the last crash with its cause. With a UNIT, prints that unit's recent
    /// transitions instead. Exits 0 with an answer, 1 when no daemon answers.
    Status(StatusArgs),
    /// Write the manual pages, crashwatch.1 and one per command, into a directory and print
    /// their paths. Used when packaging; the pages come from this very help text.
    #[command(hide = true)]
    Man {
        /// The directory to write the pages into; created if missing.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// The pages' date, e.g. 2024-05-01; packaging passes the source's date, so that
        /// building twice gives the same package.
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: String,
    },
}

/// Options of `crashwatch status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show this unit's recent transitions instead of the list of units.
    #[arg(value_name = "UNIT")]
    pub unit: Option<String>,

    /// Print the API's JSON document instead of a table.
    #[arg(long)]
    pub json: bool,

    /// The daemon's address: IP:PORT, or a URL such as https://host:9863 [default: the
    /// configuration file's listen address, else 127.0.0.1:9863]. IP:PORT is spoken to over
    /// HTTPS when a --tls.* flag is given.
    #[arg(long, value_name = "ADDR|URL")]
    pub address: Option<String>,

    /// Trust the CA certificates in this PEM file, instead of the system's, for the daemon's
    /// certificate.
    #[arg(long = "tls.ca-file", value_name = "FILE")]
    pub tls_ca_file: Option<String>,

    /// Present this PEM client certificate to the daemon; needs --tls.key-file.
    #[arg(long = "tls.cert-file", value_name = "FILE")]
    pub tls_cert_file: Option<String>,

    /// The private key of --tls.cert-file, in a PEM file.
    #[arg(long = "tls.key-file", value_name = "FILE")]
    pub tls_key_file: Option<String>,

    /// The name the daemon's certificate must carry [default: the address's host].
    #[arg(long = "tls.server-name", value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Accept any certificate from the daemon.
    #[arg(long = "tls.insecure-skip-verify")]
    pub tls_insecure_skip_verify: bool,

    /// The user name for the daemon's basic authentication; needs --basic-auth.password-file.
    #[arg(long = "basic-auth.username", value_name = "NAME")]
    pub basic_auth_username: Option<String>,

    /// A file holding the password for --basic-auth.username (a relative path is looked up in
    /// $CREDENTIALS_DIRECTORY when systemd sets it).
    #[arg(long = "basic-auth.password-file", value_name = "FILE")]
    pub basic_auth_password_file: Option<String>,

    /// The daemon's configuration file, to find its listen address [default:
    /// /etc/crashwatch/crashwatch.toml when it exists].
    #[arg(long, short = 'c', value_name = "FILE", env = "CRASHWATCH_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Options of `crashwatch replay`. The unit filter, threshold, window and overrides are the
/// daemon's: from the configuration file, then these flags.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The export to read; "-" for standard input.
    #[arg(value_name = "FILE", default_value = "-")]
    pub file: String,

    /// TOML configuration file (see the README for every key).
    #[arg(long, short = 'c', value_name = "FILE", env = "CRASHWATCH_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub detection: DetectionArgs,

    /// Print each loop's start and end as a JSON line, as in the event record, instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What counts as a crash loop and which units are judged; shared by `run` and `replay`.
#[derive(Debug, Args)]
pub struct DetectionArgs {
    /// Restarts within the window that make a crash loop [default: 3].
    #[arg(long, value_name = "N")]
    pub threshold: Option<u32>,

    /// The sliding window, e.g. 30s, 5m, 1h [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub window: Option<String>,

    /// Watch only units matching this glob; repeatable; replaces the file's list [default: *.service].
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,

    /// Never watch units matching this glob; repeatable; added to the file's list.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
}

/// Options of `crashwatch upstart-hook`.
#[derive(Debug, Args)]
pub struct UpstartHookArgs {
    /// The daemon's hook socket ([source.upstart] hook_socket) [default: /run/crashwatch/hook.sock].
    #[arg(long, value_name = "PATH", env = "CRASHWATCH_HOOK_SOCKET")]
    pub socket: Option<PathBuf>,
}

/// Options of `crashwatch run`. Each replaces its counterpart in the configuration file.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML configuration file (see the README for every key).
    #[arg(long, short = 'c', value_name = "FILE", env = "CRASHWATCH_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to serve /metrics, the landing page and the status API on: IP:PORT, or :PORT
    /// for every address; repeatable, replaces the file's addresses ([web] listen_addresses).
    /// --listen is the same flag under its older name [default: 127.0.0.1:9863].
    #[arg(
        long = "web.listen-address",
        visible_alias = "listen",
        value_name = "IP:PORT"
    )]
    pub web_listen_address: Vec<String>,

    /// The web configuration file, as Prometheus exporters read it (exporter-toolkit's format):
    /// TLS with tls_server_config, client certificates, basic_auth_users with bcrypt hashes,
    /// http_server_config headers. Read again whenever it or a certificate it names changes;
    /// a version that does not check out leaves the last good one serving ([web] config_file).
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Serve on the listening sockets systemd passes (socket activation from a .socket unit)
    /// instead of --web.listen-address ([web] systemd_socket = true).
    #[arg(long = "web.systemd-socket")]
    pub web_systemd_socket: bool,

    /// Serve /metrics and the landing page only: /api/* answers 404, and `crashwatch status`
    /// cannot ask this daemon ([web] disable_api = true).
    #[arg(long = "web.disable-api")]
    pub web_disable_api: bool,

    /// Send StatsD metrics to this UDP address.
    #[arg(long, value_name = "HOST:PORT")]
    pub statsd: Option<String>,

    /// Prefix of every StatsD metric name [default: crashwatch].
    #[arg(long, value_name = "PREFIX")]
    pub statsd_prefix: Option<String>,

    /// Send DogStatsD tags: the unit's full name and source as `|#unit:NAME,source:KIND`, left out
    /// of the metric name ([sink.statsd] tags = true).
    #[arg(long)]
    pub statsd_tags: bool,

    /// Append every transition and crash loop as a JSON line to FILE, or to stdout with "-".
    #[arg(long, value_name = "FILE")]
    pub events: Option<String>,

    /// Rotate the event record before a record would take it past SIZE: FILE becomes FILE.1,
    /// FILE.1 becomes FILE.2, and so on. SIZE is a number of bytes or has a unit: 512KiB, 16MiB,
    /// 10MB, 1GiB. 0 turns rotation off, to leave it to logrotate. Never for stdout or a target
    /// that is not a regular file. The default keeps the record under 100 MiB in all (see
    /// --events-max-files) [default: 16MiB].
    #[arg(long, value_name = "SIZE")]
    pub events_max_size: Option<String>,

    /// Rotated files of the event record to keep, FILE.1 (the newest) to FILE.N; older ones are
    /// deleted. With the default size the record takes at most 5 files of 16 MiB, 80 MiB, under
    /// 100 MiB however busy the node, with room for logrotate's compressed archives [default: 4].
    #[arg(long, value_name = "N")]
    pub events_max_files: Option<u32>,

    /// Also write to the event record the last lines each crashed run wrote, as a
    /// "crash_context" record once the journal lookup answers. Off by default: the lines are the
    /// service's own output.
    #[arg(long)]
    pub events_crash_context: bool,

    #[command(flatten)]
    pub detection: DetectionArgs,

    /// Most units with series of their own; the rest are counted in crashwatch_units_overflow_total [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_units: Option<usize>,

    /// Count template instances as their template (getty@tty1.service as getty@.service).
    #[arg(long)]
    pub fold_instances: bool,

    /// How long a unit the init system unloaded keeps its series before they are dropped, e.g.
    /// "15m" [default: 15m].
    #[arg(long, value_name = "DURATION")]
    pub unloaded_retention: Option<String>,

    /// Which series each unit has on /metrics: changed or all ([limits] unit_series).
    ///
    /// changed gives a unit nothing has happened to two series, crashwatch_unit_crashlooping
    /// and crashwatch_unit_restarts_total (at 0, so that increase() sees the first restart);
    /// its first crash or restart brings every series, kept while it has restarts in its window,
    /// is crash-looping or is down since a crash, and for an hour after. all gives every unit
    /// every series from the start, six or more each [default: changed].
    #[arg(long, value_name = "SERIES")]
    pub unit_series: Option<String>,

    /// The init system to watch: systemd, upstart, or auto (systemd if it is on the system bus,
    /// else Upstart) [default: systemd].
    #[arg(long, value_name = "KIND")]
    pub source: Option<String>,

    /// Where to reach Upstart: system, session ($UPSTART_SESSION), none (job hook only), or a
    /// D-Bus address to connect to peer-to-peer, e.g. unix:abstract=/com/ubuntu/upstart
    /// [default: system].
    #[arg(long, value_name = "ADDRESS")]
    pub upstart_address: Option<String>,

    /// The Upstart job hook's socket; "" turns the hook off [default: /run/crashwatch/hook.sock].
    #[arg(long, value_name = "PATH")]
    pub upstart_hook_socket: Option<String>,

    /// The kernel log read after a gap in the Upstart connection, to count each main process
    /// that ended in it (needs root or CAP_SYSLOG); "" or "none" turns it off and a gap is
    /// inferred from Upstart's snapshot [default: /dev/kmsg].
    #[arg(long, value_name = "PATH")]
    pub upstart_kernel_log: Option<String>,

    /// Do not rebuild crash-loop windows from the journal at start-up (history.journal = false).
    #[arg(long)]
    pub no_journal_history: bool,
}
