//! The crashwatch binary: parses the command line, reads the configuration, installs the
//! Prometheus recorder and runs the daemon. Every failure ends here as one line on stderr:
//! exit 2 for bad usage or a bad configuration, 1 for anything else.

use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crashwatch::cli::{Cli, Command, ReplayArgs, RunArgs, StatusArgs, UpstartHookArgs};
use crashwatch::config::{Config, FileConfig, Overrides};
use crashwatch::notify::Notifier;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match tracing::Level::from_str(&cli.log_level) {
        Ok(level) => level,
        Err(_) => {
            eprintln!(
                "crashwatch: --log-level {:?} is not one of error, warn, info, debug, trace",
                cli.log_level
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();

    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Run(args) => run(args),
        Command::UpstartHook(args) => upstart_hook(args),
        Command::Replay(args) => replay(args),
        Command::Status(args) => status(args),
        Command::Man { out_dir, date } => write_man_pages(&out_dir, &date),
    }
}

/// Where the packaged configuration lives; `crashwatch status` reads the listen address there.
const PACKAGED_CONFIG: &str = "/etc/crashwatch/crashwatch.toml";

/// `crashwatch status`: the daemon's units as a table (or JSON), or one unit's transitions.
fn status(args: StatusArgs) -> ExitCode {
    use std::io::Write;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    let address = match &args.address {
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(address) => address,
            Err(_) => {
                eprintln!("crashwatch: --address {text:?} is not IP:PORT");
                return ExitCode::from(2);
            }
        },
        None => {
            let path = args.config.clone().or_else(|| {
                let packaged = Path::new(PACKAGED_CONFIG);
                packaged.exists().then(|| packaged.to_path_buf())
            });
            match resolve_config(path.as_deref(), Overrides::default()) {
                Ok(config) => config.listen,
                Err(code) => return code,
            }
        }
    };
    // A daemon listening on every address answers on loopback too.
    let address = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), address.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), address.port())
        }
        _ => address,
    };
    let path = match &args.unit {
        Some(unit) => format!(
            "/api/units/{}/events",
            crashwatch::http::percent_encode(unit)
        ),
        None => "/api/units".to_owned(),
    };
    let document = match crashwatch::commands::status::fetch(address, &path) {
        Ok(document) => document,
        Err(e) => {
            eprintln!("crashwatch: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = if args.json {
        format!("{document:#}\n")
    } else if args.unit.is_some() {
        crashwatch::commands::status::events_table(&document)
    } else {
        crashwatch::commands::status::units_table(&document)
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crashwatch: writing the output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `crashwatch man --out-dir DIR --date DATE`: the manual pages, for packaging. Prints each
/// page's path.
fn write_man_pages(out_dir: &Path, date: &str) -> ExitCode {
    match crashwatch::commands::man::write_pages(out_dir, date) {
        Ok(pages) => {
            for page in pages {
                println!("{}", page.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "crashwatch: writing the manual pages to {}: {e}",
                out_dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// `crashwatch replay`: the detector over a journal export, loops printed as a table or JSON
/// lines. Finding loops is not a failure; only unreadable input (exit 2) or output (exit 1) are.
fn replay(args: ReplayArgs) -> ExitCode {
    use std::io::{BufRead, BufReader, Write};

    let overrides = Overrides {
        threshold: args.detection.threshold,
        window: args.detection.window,
        include: args.detection.include,
        exclude: args.detection.exclude,
        ..Overrides::default()
    };
    let config = match resolve_config(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let (input, name): (Box<dyn BufRead>, String) = if args.file == "-" {
        (
            Box::new(std::io::stdin().lock()),
            "standard input".to_owned(),
        )
    } else {
        match std::fs::File::open(&args.file) {
            Ok(f) => (Box::new(BufReader::new(f)), args.file.clone()),
            Err(e) => {
                eprintln!("crashwatch: cannot read {}: {e}", args.file);
                return ExitCode::from(2);
            }
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut written: std::io::Result<()> = Ok(());
    let report = crashwatch::source::journal::replay(input, &config, |event| {
        if args.json && written.is_ok() {
            let event = crashwatch::event::Event::Loop(event.clone());
            written = writeln!(out, "{}", crashwatch::sink::events::to_json(&event));
        }
    });
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("crashwatch: cannot read {name}: {e}");
            return ExitCode::from(2);
        }
    };
    if report.malformed > 0 {
        let (lines, were) = match report.malformed {
            1 => ("line", "was"),
            _ => ("lines", "were"),
        };
        eprintln!(
            "crashwatch: skipped {} {lines} of {name} that {were} not journal entries",
            report.malformed
        );
    }
    if written.is_ok() && !args.json {
        written = if report.loops.is_empty() {
            writeln!(
                out,
                "No crash loops in {} lifecycle messages.",
                report.lifecycle_messages
            )
        } else {
            out.write_all(crashwatch::source::journal::loop_table(&report.loops).as_bytes())
        };
    }
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`| head`) has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crashwatch: writing the output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `crashwatch upstart-hook`: one datagram to the daemon, then exit. Upstart holds the job's
/// `starting` and `stopping` events until the hook runs, so it starts no runtime and sends with a
/// short timeout.
fn upstart_hook(args: UpstartHookArgs) -> ExitCode {
    use crashwatch::source::upstart::hook::{self, HookError};
    let socket = args
        .socket
        .unwrap_or_else(|| std::path::PathBuf::from(hook::DEFAULT_SOCKET));
    match hook::send_from_env(&socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ HookError::Environment(_)) => {
            eprintln!("crashwatch: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("crashwatch: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &Path) -> ExitCode {
    let origin = file.display().to_string();
    match Config::load(file).and_then(|f| Config::resolve(f, Overrides::default(), &origin)) {
        Ok(_) => {
            println!("{origin}: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crashwatch: {e}");
            ExitCode::from(2)
        }
    }
}

/// Reads the configuration file, if any, and applies the command line over it. A bad file or
/// value is one line on stderr and exit 2.
fn resolve_config(path: Option<&Path>, overrides: Overrides) -> Result<Config, ExitCode> {
    let (file, origin) = match path {
        Some(path) => match Config::load(path) {
            Ok(file) => (file, path.display().to_string()),
            Err(e) => {
                eprintln!("crashwatch: {e}");
                return Err(ExitCode::from(2));
            }
        },
        None => (FileConfig::default(), "command line".to_owned()),
    };
    Config::resolve(file, overrides, &origin).map_err(|e| {
        eprintln!("crashwatch: {e}");
        ExitCode::from(2)
    })
}

fn run(args: RunArgs) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen,
        statsd: args.statsd,
        statsd_prefix: args.statsd_prefix,
        events: args.events,
        threshold: args.detection.threshold,
        window: args.detection.window,
        include: args.detection.include,
        exclude: args.detection.exclude,
        max_units: args.max_units,
        fold_instances: args.fold_instances,
        unloaded_retention: args.unloaded_retention,
        source: args.source,
        upstart_address: args.upstart_address,
        upstart_hook_socket: args.upstart_hook_socket,
        no_journal_history: args.no_journal_history,
    };
    let config = match resolve_config(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Installed inside ChangeTracking, so a scrape with nothing new reuses the last rendering.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let tracked = crashwatch::sink::prometheus::ChangeTracking::new(recorder);
    if let Err(e) = metrics::set_global_recorder(tracked) {
        eprintln!("crashwatch: cannot install the metrics recorder: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("crashwatch: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = config.listen;
    let notifier = Notifier::from_env();
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let result = crashwatch::run(config, Some(handle), shutdown.clone(), |units| {
            tracing::info!(units, %listen, "Watching {units} units; metrics on http://{listen}/metrics.");
            if let Some(notifier) = &notifier {
                notifier.send(&format!("READY=1\nSTATUS=Watching {units} units"));
                if let Some(interval) = Notifier::watchdog_interval() {
                    tokio::spawn(ping_watchdog(Notifier::from_env(), interval, shutdown.clone()));
                }
            }
        })
        .await;
        if let Some(notifier) = &notifier {
            notifier.send("STOPPING=1");
        }
        result
    });
    match result {
        Ok(()) => {
            tracing::info!("Stopped.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crashwatch: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Tells systemd's watchdog that the runtime is alive, until shutdown.
async fn ping_watchdog(
    notifier: Option<Notifier>,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let Some(notifier) = notifier else { return };
    loop {
        notifier.send("WATCHDOG=1");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// SIGINT and SIGTERM end the run cleanly: sources stop, sinks flush, exit 0.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("Cannot listen for SIGTERM/SIGINT; stop crashwatch with SIGKILL.");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("Shutting down.");
    shutdown.cancel();
}
