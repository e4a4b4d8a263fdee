//! `crashwatch run`: the daemon. Installs the Prometheus recorder, starts the runtime, maps
//! SIGINT and SIGTERM to a clean shutdown and SIGHUP to a reload of the configuration and a
//! reopening of the event record, and talks to systemd's notify socket and watchdog.

use std::path::PathBuf;
use std::process::ExitCode;

use metrics::gauge;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::resolve_config;
use crate::cli::RunArgs;
use crate::config::{Config, FileConfig, Overrides};
use crate::internal_events::ConfigReloadError;
use crate::notify::Notifier;
use crate::ReopenFlag;

pub fn run(args: RunArgs) -> ExitCode {
    let overrides = Overrides {
        listen: args.web_listen_address,
        web_config_file: args.web_config_file,
        web_systemd_socket: args.web_systemd_socket,
        web_disable_api: args.web_disable_api,
        statsd: args.statsd,
        statsd_prefix: args.statsd_prefix,
        statsd_tags: args.statsd_tags,
        events: args.events,
        events_max_size: args.events_max_size,
        events_max_files: args.events_max_files,
        events_crash_context: args.events_crash_context,
        threshold: args.detection.threshold,
        window: args.detection.window,
        include: args.detection.include,
        exclude: args.detection.exclude,
        max_units: args.max_units,
        fold_instances: args.fold_instances,
        unloaded_retention: args.unloaded_retention,
        unit_series: args.unit_series,
        source: args.source,
        upstart_address: args.upstart_address,
        upstart_hook_socket: args.upstart_hook_socket,
        upstart_kernel_log: args.upstart_kernel_log,
        no_journal_history: args.no_journal_history,
    };
    let config = match resolve_config(args.config.as_deref(), overrides.clone()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    crate::logging::set_level_from_config(config.log_level);
    // Installed inside ChangeTracking, so a scrape with nothing new reuses the last rendering.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let tracked = crate::sink::prometheus::ChangeTracking::new(recorder);
    if let Err(e) = metrics::set_global_recorder(tracked) {
        crate::logging::fatal(&format_args!("cannot install the metrics recorder: {e}"));
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            crate::logging::fatal(&format_args!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let serving = serving_on(&config.web);
    let notifier = Notifier::from_env();
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let reopen = ReopenFlag::default();
        let (reloads, reloaded) = tokio::sync::mpsc::channel(1);
        tokio::spawn(on_hangup(
            args.config.clone(),
            overrides,
            reloads,
            reopen.clone(),
        ));
        let result = crate::run(
            config,
            Some(handle),
            shutdown.clone(),
            reopen,
            reloaded,
            |units| {
                tracing::info!(units, "Watching {units} units; metrics on {serving}.");
                if let Some(notifier) = &notifier {
                    notifier.send(&format!("READY=1\nSTATUS=Watching {units} units"));
                    if let Some(interval) = Notifier::watchdog_interval() {
                        tokio::spawn(ping_watchdog(
                            Notifier::from_env(),
                            interval,
                            shutdown.clone(),
                        ));
                    }
                }
            },
        )
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
            crate::logging::fatal(&e);
            ExitCode::FAILURE
        }
    }
}

/// Where /metrics is served, for the start-up line: each URL, or the sockets systemd passed.
fn serving_on(web: &crate::config::WebSettings) -> String {
    let scheme = if web.tls { "https" } else { "http" };
    if web.systemd_socket {
        return format!("the sockets systemd passed ({scheme})");
    }
    web.listen_addresses
        .iter()
        .map(|address| format!("{scheme}://{address}/metrics"))
        .collect::<Vec<_>>()
        .join(", ")
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

/// SIGHUP (`systemctl reload crashwatch`, and logrotate's postrotate) does two things. It makes
/// the event record reopen its file at its path before the next record, so logrotate can move
/// the file away (packaging/crashwatch.logrotate). And it reads the configuration again, as at
/// start-up (the same file and command line), and hands it to the daemon; a file that does not
/// check out is refused with one log line and a counted error, and the running configuration
/// stays.
async fn on_hangup(
    path: Option<PathBuf>,
    overrides: Overrides,
    reloads: mpsc::Sender<Config>,
    reopen: ReopenFlag,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            "Cannot listen for SIGHUP; configuration changes need a restart, and the event record \
             is reopened only when its file is moved."
        );
        return;
    };
    reload_succeeded(true);
    while hangups.recv().await.is_some() {
        reopen.raise();
        let origin = path
            .as_ref()
            .map_or_else(|| "command line".to_owned(), |p| p.display().to_string());
        let file = match &path {
            Some(path) => Config::load(path),
            None => Ok(FileConfig::default()),
        };
        match file.and_then(|file| Config::resolve(file, overrides.clone(), &origin)) {
            Ok(config) => {
                crate::logging::set_level_from_config(config.log_level);
                if reloads.send(config).await.is_err() {
                    return;
                }
                reload_succeeded(true);
                tracing::info!(config = origin.as_str(), "Reloaded the configuration.");
            }
            Err(error) => {
                reload_succeeded(false);
                ConfigReloadError {
                    error: &error.to_string(),
                }
                .emit();
            }
        }
    }
}

/// `crashwatch_config_last_reload_successful` and its timestamp, as Prometheus names them.
fn reload_succeeded(ok: bool) {
    gauge!("crashwatch_config_last_reload_successful").set(f64::from(u8::from(ok)));
    if ok {
        let seconds = crate::time::now_micros() as f64 / 1e6;
        gauge!("crashwatch_config_last_reload_success_timestamp_seconds").set(seconds);
    }
}
