//! `crashwatch run`: the daemon. Installs the Prometheus recorder, starts the runtime, maps
//! SIGINT and SIGTERM to a clean shutdown and SIGHUP to reopening the event record, and talks to
//! systemd's notify socket and watchdog.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::resolve_config;
use crate::cli::RunArgs;
use crate::config::Overrides;
use crate::notify::Notifier;
use crate::ReopenFlag;

pub fn run(args: RunArgs) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen,
        statsd: args.statsd,
        statsd_prefix: args.statsd_prefix,
        events: args.events,
        events_max_size: args.events_max_size,
        events_max_files: args.events_max_files,
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
    let tracked = crate::sink::prometheus::ChangeTracking::new(recorder);
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
        let reopen = ReopenFlag::default();
        tokio::spawn(reopen_on_hangup(reopen.clone()));
        let result = crate::run(config, Some(handle), shutdown.clone(), reopen, |units| {
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

/// SIGHUP reopens the event record at its path before the next record, so that logrotate can
/// move the file away and signal (packaging/crashwatch.logrotate). Only that: SIGHUP neither
/// stops crashwatch nor reads the configuration again.
async fn reopen_on_hangup(reopen: ReopenFlag) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            "Cannot listen for SIGHUP; the event record is reopened only when its file is moved."
        );
        return;
    };
    while hangup.recv().await.is_some() {
        reopen.raise();
    }
}
