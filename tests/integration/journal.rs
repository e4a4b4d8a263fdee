//! History from the journal, against a real systemd-journald in the sandbox: a restarted
//! crashwatch keeps a loop in progress flagged without counting its past again, and `crashwatch
//! replay` finds loops in a `journalctl -o json` export.
//!
//! The journal is the one journald wrote from the sandbox's PID 1, read on the host with
//! `journalctl --directory`, exactly as crashwatch reads it with `[history] journal_directory`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_crashwatch");

/// "Automatic restarting of a unit has been scheduled", from systemd's catalog.
const RESTART_SCHEDULED: &str = "5eb03494b6584870a536b337290809b3";

/// A loop slow enough that a freshly started crashwatch hears at most one restart before its
/// first scrape: a loop flagged then came from history.
const SLOW_CRASHY_UNIT: &str = "[Unit]\n\
Description=crashes at once, restarted forever, a second apart\n\
StartLimitIntervalSec=0\n\
\n\
[Service]\n\
ExecStart=/bin/false\n\
Restart=always\n\
RestartSec=1s\n";

fn start_sandbox() -> Sandbox {
    Sandbox::start_with_journal().unwrap_or_else(|e| panic!("{e}"))
}

/// A configuration that reads history from the sandbox's journal.
fn history_config(sb: &Sandbox) -> String {
    let path = sb.dir().join("crashwatch.toml");
    let text = format!(
        "[history]\njournal_directory = {:?}\n",
        sb.journal_dir().display().to_string()
    );
    std::fs::write(&path, text).expect("writing the configuration");
    path.display().to_string()
}

fn restart_events(cw: &Crashwatch, unit: &str) -> usize {
    cw.unit_events(unit)
        .iter()
        .filter(|e| e["event"] == "transition" && e["transition"] == "restart")
        .count()
}

#[test]
fn a_restarted_crashwatch_keeps_a_loop_in_progress_flagged_without_recounting() {
    require_sandbox!();
    let sb = start_sandbox();
    let unit = "slowcrash.service";
    sb.write_unit(unit, SLOW_CRASHY_UNIT);
    sb.pin_loaded(&[unit]);
    let config = history_config(&sb);

    let mut first = Crashwatch::spawn(&sb, &["--config", &config]);
    sb.systemctl_ok(&["start", unit]);
    first.expect_flagged(unit, 30);

    // crashwatch goes away mid-loop; the loop goes on with nobody watching but the journal.
    first.terminate(Duration::from_secs(5));
    drop(first);
    let scheduled = sb.journal_count(unit, RESTART_SCHEDULED);
    assert!(
        wait_until(Duration::from_secs(10), || {
            sb.journal_count(unit, RESTART_SCHEDULED) > scheduled
        }),
        "no restart while crashwatch was away\n{}",
        sb.log_tail(20)
    );

    let second = Crashwatch::spawn(&sb, &["--config", &config]);
    let text = second.scrape();
    let at_start = |name: &str| metric_value(&text, name, &[("unit", unit)]).unwrap_or(0.0);
    assert_eq!(
        at_start("crashwatch_unit_crashlooping"),
        1.0,
        "not flagged right after start-up\n{}",
        second.diag(unit)
    );
    assert_eq!(
        at_start("crashwatch_unit_crashloops_total"),
        0.0,
        "the loop began before this crashwatch: not a loop it saw begin"
    );
    let seeded = at_start("crashwatch_unit_restarts_in_window");
    let live_at_start = at_start("crashwatch_unit_restarts_total");
    assert!(
        live_at_start <= 1.0,
        "restarts_total {live_at_start} right after start-up: history was counted\n{}",
        second.diag(unit)
    );
    assert!(
        seeded - live_at_start >= 3.0,
        "only {seeded} restarts in the window, {live_at_start} of them live\n{}",
        second.diag(unit)
    );

    // Live restarts are counted on top of history, once each.
    let more = wait_until(Duration::from_secs(15), || {
        second.unit_metric("crashwatch_unit_restarts_total", unit) >= live_at_start + 2.0
    });
    assert!(more, "no live restarts counted\n{}", second.diag(unit));
    sb.systemctl_ok(&["stop", unit]);
    let n_restarts = sb.n_restarts(unit) as f64;
    let ended = wait_until(Duration::from_secs(10), || {
        second.metric("crashwatch_unit_crashlooping", &[("unit", unit)]) == Some(0.0)
    });
    assert!(
        ended,
        "the stop did not end the loop\n{}",
        second.diag(unit)
    );

    let live = second.unit_metric("crashwatch_unit_restarts_total", unit);
    assert!(
        wait_until(Duration::from_secs(5), || restart_events(&second, unit)
            as f64
            == live),
        "restarts_total {live} but {} restart lines in the event record",
        restart_events(&second, unit)
    );
    // The window held history and live restarts, none twice: at most every restart systemd
    // made, at least all but one (one may fall between the journal read and the snapshot).
    let window = seeded - live_at_start + live;
    assert!(
        window <= n_restarts && window >= n_restarts - 1.0,
        "{seeded} restarts from history plus {live} live, systemd NRestarts {n_restarts}"
    );
    assert!(
        live < n_restarts,
        "every restart counted live: history was counted too"
    );
    let events = second.unit_events(unit);
    assert!(
        !events.iter().any(|e| e["event"] == "crashloop_started"),
        "the loop was recorded as starting again: {events:#?}"
    );
    let ended_line = events
        .iter()
        .find(|e| e["event"] == "crashloop_ended")
        .unwrap_or_else(|| panic!("no crashloop_ended line: {events:#?}"));
    assert_eq!(ended_line["outcome"], "stopped", "{ended_line}");
}

#[test]
fn history_can_be_turned_off() {
    require_sandbox!();
    let sb = start_sandbox();
    let unit = "slowcrash.service";
    sb.write_unit(unit, SLOW_CRASHY_UNIT);
    sb.pin_loaded(&[unit]);
    sb.systemctl_ok(&["start", unit]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            sb.journal_count(unit, RESTART_SCHEDULED) >= 3
        }),
        "the unit did not loop\n{}",
        sb.log_tail(20)
    );
    let config = history_config(&sb);
    let cw = Crashwatch::spawn(&sb, &["--config", &config, "--no-journal-history"]);
    assert_ne!(
        cw.metric("crashwatch_unit_crashlooping", &[("unit", unit)]),
        Some(1.0),
        "flagged from history with history off\n{}",
        cw.diag(unit)
    );
    assert!(!cw.stderr().contains("from the journal"), "{}", cw.stderr());
}

/// `crashwatch replay <args>` with `input` on stdin; stdout, stderr and the exit code.
fn replay(args: &[&str], input: &[u8]) -> (String, String, Option<i32>) {
    let mut child = Command::new(BIN)
        .arg("replay")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning crashwatch replay");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child
        .wait_with_output()
        .expect("waiting for crashwatch replay");
    let _ = writer.join();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

#[test]
fn replay_finds_the_loops_in_a_journal_export() {
    require_sandbox!();
    let sb = start_sandbox();
    // Restart=always, a loop systemd drives; Restart=no, a loop driven by hand; a healthy unit
    // restarted by hand as often, which is no loop.
    sb.write_unit("crashy.service", CRASHY_UNIT);
    sb.write_unit(
        "keepalive.service",
        "[Service]\nExecStart=/bin/sh -c 'exit 3'\n",
    );
    sb.write_unit(
        "steady.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    );
    sb.pin_loaded(&["crashy.service", "keepalive.service"]);
    let began = Instant::now();
    sb.systemctl_ok(&["start", "crashy.service", "steady.service"]);
    for _ in 0..4 {
        sb.systemctl_ok(&["start", "keepalive.service"]);
        let failed = wait_until(Duration::from_secs(10), || {
            sb.active_state("keepalive.service") == "failed"
        });
        assert!(
            failed,
            "keepalive.service did not fail\n{}",
            sb.log_tail(20)
        );
        sb.systemctl_ok(&["restart", "steady.service"]);
    }
    assert!(
        wait_until(Duration::from_secs(20), || {
            sb.journal_count("crashy.service", RESTART_SCHEDULED) >= 4
        }),
        "crashy.service did not loop\n{}",
        sb.log_tail(20)
    );
    sb.systemctl_ok(&["stop", "crashy.service"]);
    assert!(
        began.elapsed() < Duration::from_secs(300),
        "longer than a window"
    );

    let export = sb.journalctl(&["-o", "json"]);
    assert!(export.status.success(), "journalctl -o json failed");
    let path = sb.dir().join("export.json");
    std::fs::write(&path, &export.stdout).expect("writing the export");

    let (table, stderr, code) = replay(&[&path.display().to_string()], b"");
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows.first().map(Vec::as_slice),
        Some(["UNIT", "STARTED", "ENDED", "OUTCOME", "RESTARTS", "PEAK"].as_slice()),
        "{table}"
    );
    let row = |unit: &str| rows.iter().find(|r| r.first() == Some(&unit)).cloned();
    let crashy = row("crashy.service").unwrap_or_else(|| panic!("no crashy.service:\n{table}"));
    assert_eq!(crashy[3], "stopped", "{table}");
    assert_eq!(crashy[4], "3", "{table}");
    assert!(
        crashy[5].parse::<u32>().is_ok_and(|peak| peak >= 4),
        "{table}"
    );
    let keepalive =
        row("keepalive.service").unwrap_or_else(|| panic!("no keepalive.service:\n{table}"));
    assert_eq!(keepalive[3], "open", "down since its last crash:\n{table}");
    assert!(row("steady.service").is_none(), "{table}");
    assert_eq!(rows.len(), 3, "{table}");

    // The same as JSON lines, from stdin, with a line that is no journal entry.
    let mut input = export.stdout.clone();
    input.extend_from_slice(b"-- this is not JSON --\n");
    let (json, stderr, code) = replay(&["--json", "-"], &input);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(
        stderr.contains("skipped 1 line") && stderr.lines().count() == 1,
        "{stderr}"
    );
    let events: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of = |unit: &str| -> Vec<&Value> { events.iter().filter(|e| e["unit"] == unit).collect() };
    let crashy = of("crashy.service");
    assert_eq!(crashy.len(), 2, "{json}");
    assert_eq!(crashy[0]["event"], "crashloop_started");
    assert_eq!(num(&crashy[0]["restarts_in_window"]), Some(3.0));
    assert_eq!(num(&crashy[0]["threshold"]), Some(3.0));
    assert_eq!(num(&crashy[0]["window_seconds"]), Some(300.0));
    assert_eq!(crashy[1]["event"], "crashloop_ended");
    assert_eq!(crashy[1]["outcome"], "stopped");
    assert_eq!(of("keepalive.service").len(), 1, "{json}");
    assert!(of("steady.service").is_empty(), "{json}");

    // A higher threshold for one unit, from the configuration file, as the daemon reads it.
    let config = sb.dir().join("replay.toml");
    std::fs::write(
        &config,
        "[[detect.override]]\nunits = \"keepalive.service\"\nthreshold = 10\n",
    )
    .expect("writing the configuration");
    let (table, _, code) = replay(
        &[
            "--config",
            &config.display().to_string(),
            &path.display().to_string(),
        ],
        b"",
    );
    assert_eq!(code, Some(0));
    assert!(!table.contains("keepalive.service"), "{table}");
    assert!(table.contains("crashy.service"), "{table}");
}

#[test]
fn replay_of_unreadable_input_is_one_line_and_exit_2() {
    let (stdout, stderr, code) = replay(&["/nonexistent/export.json"], b"");
    assert_eq!(code, Some(2));
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("crashwatch: cannot read /nonexistent/export.json"),
        "{stderr}"
    );
    let (stdout, stderr, code) = replay(&[], b"");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), "No crash loops in 0 lifecycle messages.");
}
