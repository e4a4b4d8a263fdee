//! Crash-loop detection against a real systemd: loops systemd drives itself (Restart=always),
//! loops driven from outside (Restart=no, something keeps starting the unit), and units that
//! restart or start often without crashing, which must never be flagged.
//!
//! Counts are checked against systemd's own bookkeeping (`NRestarts`) where systemd has one, so
//! the tests catch missed or double-counted signals rather than restating crashwatch's view.

use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const CRASHY: &str = "crashy.service";

fn is_transition(e: &Value, transition: &str) -> bool {
    e["event"] == "transition" && e["transition"] == transition
}

fn start_sandbox() -> Sandbox {
    Sandbox::start().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn restart_always_loop_is_flagged_and_counts_match_nrestarts() {
    require_sandbox!();
    let sb = start_sandbox();
    sb.write_unit(CRASHY, CRASHY_UNIT);
    sb.pin_loaded(&[CRASHY]);
    let cw = Crashwatch::spawn(&sb, &[]);
    sb.systemctl_ok(&["start", CRASHY]);

    // Default threshold 3 in 5 m: flagged on the third restart (~0.7 s).
    cw.expect_flagged(CRASHY, 20);

    // The event record may trail the gauge by a moment.
    let started_line = wait_until(Duration::from_secs(5), || {
        cw.unit_events(CRASHY)
            .iter()
            .any(|e| e["event"] == "crashloop_started")
    });
    assert!(
        started_line,
        "no crashloop_started line for {CRASHY} in {}",
        cw.events_path().display()
    );
    let events = cw.unit_events(CRASHY);
    let pos = events
        .iter()
        .position(|e| e["event"] == "crashloop_started")
        .unwrap();
    let restarts_before = events[..pos]
        .iter()
        .filter(|e| is_transition(e, "restart"))
        .count();
    assert_eq!(
        restarts_before,
        3,
        "crashloop_started for {CRASHY} should follow exactly 3 restart lines: {:#?}",
        &events[..=pos]
    );
    let started = &events[pos];
    assert_eq!(started["source"], "systemd", "{started}");
    // Numbers compared as numbers: the window may be fractional ("100ms"), so 300.0 is fine.
    assert_eq!(num(&started["restarts_in_window"]), Some(3.0), "{started}");
    assert_eq!(num(&started["threshold"]), Some(3.0), "{started}");
    assert_eq!(num(&started["window_seconds"]), Some(300.0), "{started}");

    let looped = wait_until(Duration::from_secs(30), || sb.n_restarts(CRASHY) >= 8);
    assert!(
        looped,
        "{CRASHY} did not reach 8 restarts in 30 s (NRestarts {})",
        sb.n_restarts(CRASHY)
    );
    sb.systemctl_ok(&["stop", CRASHY]);
    // Let the last signals reach crashwatch.
    thread::sleep(Duration::from_secs(1));

    let n = sb.n_restarts(CRASHY);
    assert!(n >= 8, "NRestarts {n} after stop");
    let settled = wait_until(Duration::from_secs(5), || {
        cw.unit_metric("crashwatch_unit_restarts_total", CRASHY) == n as f64
    });
    assert!(
        settled,
        "crashwatch_unit_restarts_total{{unit=\"{CRASHY}\"}} = {} but systemd NRestarts = {n}\n{}",
        cw.unit_metric("crashwatch_unit_restarts_total", CRASHY),
        cw.diag(CRASHY)
    );

    let events = cw.unit_events(CRASHY);
    let restart_lines: Vec<&Value> = events
        .iter()
        .filter(|e| is_transition(e, "restart"))
        .collect();
    assert_eq!(
        restart_lines.len() as u64,
        n,
        "restart transition lines for {CRASHY} vs systemd NRestarts"
    );
    // "restarts" is crashwatch's running count: 1, 2, 3, ... on consecutive restart lines.
    for (i, e) in restart_lines.iter().enumerate() {
        assert_eq!(
            num(&e["restarts"]),
            Some((i + 1) as f64),
            "restart line {} of {CRASHY}: {e}",
            i + 1
        );
        assert_eq!(e["source"], "systemd", "{e}");
    }
    let crashes = cw.unit_metric("crashwatch_unit_crashes_total", CRASHY);
    assert!(
        crashes > 0.0,
        "crashes_total for {CRASHY} is {crashes}\n{}",
        cw.diag(CRASHY)
    );
    assert!(
        events
            .iter()
            .any(|e| e["crash"] == true && !e["crash_reason"].is_null()),
        "no transition line of {CRASHY} has crash=true with a crash_reason"
    );
}

#[test]
fn outside_driven_loop_with_restart_no_is_flagged() {
    require_sandbox!();
    const UNIT: &str = "manual.service";
    let sb = start_sandbox();
    // Restart=no: systemd never restarts it, something outside does. The start limit is off
    // because six starts in a few seconds would otherwise hit the default 5-in-10 s limit.
    sb.write_unit(
        UNIT,
        "[Unit]\nStartLimitIntervalSec=0\n\n[Service]\nExecStart=/bin/false\nRestart=no\n",
    );
    sb.pin_loaded(&[UNIT]);
    let cw = Crashwatch::spawn(&sb, &[]);
    sb.systemctl_ok(&["start", UNIT]);
    for i in 1..=5 {
        let failed = wait_until(Duration::from_secs(10), || {
            sb.active_state(UNIT) == "failed"
        });
        assert!(
            failed,
            "{UNIT} not failed before start #{} (ActiveState {})",
            i + 1,
            sb.active_state(UNIT)
        );
        sb.systemctl_ok(&["start", UNIT]);
    }
    let failed = wait_until(Duration::from_secs(10), || {
        sb.active_state(UNIT) == "failed"
    });
    assert!(failed, "{UNIT} did not fail after the last start");

    let counted = wait_until(Duration::from_secs(10), || {
        cw.unit_metric("crashwatch_unit_restarts_total", UNIT) >= 5.0
    });
    assert!(
        counted,
        "restarts_total for {UNIT} never reached 5\n{}",
        cw.diag(UNIT)
    );
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        cw.unit_metric("crashwatch_unit_restarts_total", UNIT),
        5.0,
        "restarts_total for {UNIT}\n{}",
        cw.diag(UNIT)
    );
    assert_eq!(
        cw.metric("crashwatch_unit_crashlooping", &[("unit", UNIT)]),
        Some(1.0),
        "crashlooping for {UNIT}\n{}",
        cw.diag(UNIT)
    );
    // The point of this test: systemd itself saw no restart.
    assert_eq!(sb.n_restarts(UNIT), 0, "NRestarts of {UNIT}");
}

#[test]
fn healthy_restarted_and_oneshot_units_are_never_flagged() {
    require_sandbox!();
    const HEALTHY: &str = "healthy.service";
    const TICK: &str = "tick.service";
    let sb = start_sandbox();
    sb.write_unit(HEALTHY, "[Service]\nExecStart=/bin/sleep infinity\n");
    sb.write_unit(TICK, "[Service]\nType=oneshot\nExecStart=/bin/true\n");
    sb.reload();
    // Every series: the starts of units that never crash are counted here.
    let cw = Crashwatch::spawn(&sb, &["--unit-series=all"]);

    sb.systemctl_ok(&["start", HEALTHY]);
    for _ in 0..2 {
        sb.systemctl_ok(&["restart", HEALTHY]);
        assert_eq!(sb.active_state(HEALTHY), "active");
    }
    // A oneshot that runs once a second, like a frequent timer job: each run ends in
    // "inactive", which must not read as a crash or a restart.
    for _ in 0..6 {
        sb.systemctl_ok(&["start", TICK]);
        thread::sleep(Duration::from_secs(1));
    }

    let counted = wait_until(Duration::from_secs(10), || {
        cw.unit_metric("crashwatch_unit_starts_total", TICK) >= 5.0
            && cw.unit_metric("crashwatch_unit_starts_total", HEALTHY) >= 3.0
    });
    assert!(
        counted,
        "starts not counted\n{}\n{}",
        cw.diag(TICK),
        cw.diag(HEALTHY)
    );
    thread::sleep(Duration::from_secs(1));

    assert_eq!(
        cw.unit_metric("crashwatch_unit_starts_total", HEALTHY),
        3.0,
        "starts_total of {HEALTHY} (start + 2 restarts)\n{}",
        cw.diag(HEALTHY)
    );
    let tick_starts = cw.unit_metric("crashwatch_unit_starts_total", TICK);
    assert!(
        (5.0..=6.0).contains(&tick_starts),
        "starts_total of {TICK} = {tick_starts}, 6 runs were started\n{}",
        cw.diag(TICK)
    );
    for unit in [HEALTHY, TICK] {
        assert_ne!(
            cw.metric("crashwatch_unit_crashlooping", &[("unit", unit)]),
            Some(1.0),
            "{unit} flagged as crash-looping\n{}",
            cw.diag(unit)
        );
        for m in [
            "crashwatch_unit_crashes_total",
            "crashwatch_unit_restarts_total",
            "crashwatch_unit_crashloops_total",
        ] {
            assert_eq!(
                cw.unit_metric(m, unit),
                0.0,
                "{m} of {unit}\n{}",
                cw.diag(unit)
            );
        }
        let events = cw.unit_events(unit);
        assert!(
            !events.is_empty(),
            "no event-record lines for {unit} at all"
        );
        let bad: Vec<&Value> = events
            .iter()
            .filter(|e| {
                e["event"] == "crashloop_started"
                    || e["crash"] == true
                    || is_transition(e, "failed")
            })
            .collect();
        assert!(bad.is_empty(), "{unit}: unexpected lines {bad:#?}");
    }
}
