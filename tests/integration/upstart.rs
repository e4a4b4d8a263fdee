//! The Upstart source against an emulated Upstart 1.13 (see `support/upstart.rs`), on a real
//! private dbus-daemon and peer-to-peer, and the job hook end to end with the real binary.
//!
//! Each test replays the spec's sequences (A crash-respawn, B respawn limit, C segfault without
//! respawn, D `initctl restart`, E `initctl stop`, F spawn failure) and checks what crashwatch
//! exports: the same counts and crash-loop flags a systemd unit would get, under the same metric
//! names, with `source="upstart"`. One replays, signal for signal, a session recorded from a real
//! Upstart 1.13.2 (tests/data/upstart-1.13.2-session.txt) and holds crashwatch to what Upstart
//! itself counted.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::upstart::*;
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_crashwatch");
const WWW: &str = "www";
const SETTLE: Duration = Duration::from_secs(15);

/// crashwatch watching `fake` on `bus`, with the hook off. Every series of every job, so that
/// the starts and states of jobs that never crash are read too.
fn watch_bus(bus: &PrivateBus, extra: &[&str]) -> Crashwatch {
    let mut args = vec![
        "--source",
        "upstart",
        "--upstart-hook-socket",
        "",
        "--unit-series=all",
    ];
    args.extend_from_slice(extra);
    Crashwatch::spawn_on_bus(bus.address(), &args)
}

/// The status API's document at `path`.
fn api(cw: &Crashwatch, path: &str) -> Value {
    let body = http_get(cw.port(), path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
}

/// `unit`'s entry in `GET /api/units`.
fn api_unit(cw: &Crashwatch, unit: &str) -> Value {
    let document = api(cw, "/api/units");
    document["units"]
        .as_array()
        .and_then(|units| units.iter().find(|u| u["unit"] == unit).cloned())
        .unwrap_or_else(|| panic!("{unit} missing from {document:#}"))
}

/// `crashwatch status [args]` against `cw`.
fn status(cw: &Crashwatch, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("status")
        .arg("--address")
        .arg(format!("127.0.0.1:{}", cw.port()))
        .args(args)
        .env_remove("CRASHWATCH_CONFIG")
        .output()
        .expect("running crashwatch status")
}

/// Waits until `unit`'s `metric` reads `value`; fails with the unit's series otherwise.
fn expect_metric(cw: &Crashwatch, metric: &str, unit: &str, value: f64) {
    let reached = wait_until(SETTLE, || cw.unit_metric(metric, unit) == value);
    assert!(
        reached,
        "{metric}{{unit={unit:?}}} = {}, expected {value}\n{}",
        cw.unit_metric(metric, unit),
        cw.diag(unit)
    );
}

fn loop_events(cw: &Crashwatch, unit: &str, event: &str) -> Vec<Value> {
    cw.unit_events(unit)
        .into_iter()
        .filter(|e| e["event"] == event)
        .collect()
}

/// The event record is written by a thread of its own, a moment after /metrics changes: waits
/// until `unit` has `n` records of `event`, and returns them.
fn wait_records(cw: &Crashwatch, unit: &str, event: &str, n: usize) -> Vec<Value> {
    let reached = wait_until(SETTLE, || loop_events(cw, unit, event).len() >= n);
    let records = loop_events(cw, unit, event);
    assert!(
        reached,
        "{} {event} records of {unit}, expected {n}: {records:?}",
        records.len()
    );
    records
}

#[test]
fn emulated_upstart_escapes_paths_like_upstart() {
    assert_eq!(
        instance_path("network-interface", "eth0"),
        "/com/ubuntu/Upstart/jobs/network_2dinterface/eth0"
    );
    assert_eq!(instance_path("www", ""), "/com/ubuntu/Upstart/jobs/www/_");
    assert_eq!(upstart_escape("a.b_c"), "a_2eb_5fc");
}

#[test]
fn a_crash_respawn_is_a_crash_and_an_automatic_restart() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    let fake = FakeUpstart::on_bus(&bus);
    fake.add_running(WWW, "", 100);
    fake.add_job("idle");
    let cw = watch_bus(&bus, &[]);
    assert!(
        cw.stderr().contains("Watching 1 units"),
        "the snapshot found www:\n{}",
        cw.stderr()
    );

    fake.respawn(WWW, "", 101);
    expect_metric(&cw, "crashwatch_unit_restarts_total", WWW, 1.0);
    expect_metric(&cw, "crashwatch_unit_active", WWW, 1.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashes_total", WWW), 1.0);
    assert_eq!(
        cw.metric(
            "crashwatch_unit_crashes_total",
            &[("unit", WWW), ("reason", "unknown"), ("source", "upstart")]
        ),
        Some(1.0)
    );
    assert_eq!(cw.unit_metric("crashwatch_unit_starts_total", WWW), 1.0);

    let records = wait_records(&cw, WWW, "transition", 4);
    let kinds: Vec<&str> = records
        .iter()
        .map(|t| t["transition"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["failed", "restart", "starting", "started"]);
    let restart = &records[1];
    assert_eq!(restart["source"], "upstart");
    assert_eq!(restart["restart_cause"], "automatic");
    assert_eq!(restart["to_state"], "start");
    let crash = &records[0];
    assert_eq!(crash["crash"], true);
    assert_eq!(crash["crash_reason"], "unknown");
    assert_eq!(crash["from_substate"], "running");
}

#[test]
fn a_respawning_job_is_flagged_as_crash_looping() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    let fake = FakeUpstart::on_bus(&bus);
    fake.add_running(WWW, "", 100);
    let cw = watch_bus(&bus, &[]);
    for pid in 101..=103 {
        fake.respawn(WWW, "", pid);
    }
    expect_metric(&cw, "crashwatch_unit_crashlooping", WWW, 1.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_restarts_total", WWW), 3.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashes_total", WWW), 3.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashloops_total", WWW), 1.0);
    let started = wait_records(&cw, WWW, "crashloop_started", 1);
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["source"], "upstart");
}

#[test]
fn initctl_restart_cycles_are_no_crash_loop() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    let fake = FakeUpstart::on_bus(&bus);
    fake.add_running(WWW, "", 100);
    let cw = watch_bus(&bus, &[]);
    for pid in 101..=105 {
        fake.restart(WWW, "", pid);
    }
    expect_metric(&cw, "crashwatch_unit_starts_total", WWW, 5.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_restarts_total", WWW), 0.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashes_total", WWW), 0.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashlooping", WWW), 0.0);
    assert_eq!(
        cw.metric(
            "crashwatch_unit_transitions_total",
            &[("unit", WWW), ("transition", "stopped")]
        ),
        Some(5.0)
    );
    assert!(loop_events(&cw, WWW, "crashloop_started").is_empty());
}

#[test]
fn a_late_stopping_event_counts_the_same_as_upstarts_own_order() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    // D and E with EventEmitted("stopping") where another reading of Upstart's source puts it.
    let fake = FakeUpstart::on_bus(&bus).late_stopping_event();
    fake.add_running(WWW, "", 100);
    let cw = watch_bus(&bus, &[]);
    for pid in 101..=104 {
        fake.restart(WWW, "", pid);
    }
    fake.stop(WWW, "");
    expect_metric(&cw, "crashwatch_unit_active", WWW, 0.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_starts_total", WWW), 4.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashes_total", WWW), 0.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_restarts_total", WWW), 0.0);
    assert_eq!(
        cw.metric(
            "crashwatch_unit_transitions_total",
            &[("unit", WWW), ("transition", "stopped")]
        ),
        Some(5.0)
    );
    assert_eq!(api_unit(&cw, WWW)["substate"], "waiting");
}

#[test]
fn the_respawn_limit_ends_the_loop_as_given_up() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    let fake = FakeUpstart::on_bus(&bus);
    fake.add_running(WWW, "", 100);
    let cw = watch_bus(&bus, &[]);
    // `respawn limit 10 5`: ten respawns, and the eleventh death stops the job.
    for pid in 101..=110 {
        fake.respawn(WWW, "", pid);
    }
    expect_metric(&cw, "crashwatch_unit_crashlooping", WWW, 1.0);
    fake.respawn_limit(WWW, "");
    expect_metric(&cw, "crashwatch_unit_crashlooping", WWW, 0.0);
    expect_metric(&cw, "crashwatch_unit_crashes_total", WWW, 11.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_restarts_total", WWW), 10.0);
    let ended = wait_records(&cw, WWW, "crashloop_ended", 1);
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["outcome"], "gave_up", "not recovered: {ended:?}");
    // Ten cycles of four, and the last crash.
    let last = wait_records(&cw, WWW, "transition", 41)
        .pop()
        .expect("transitions");
    assert_eq!(last["gave_up"], true, "{last}");
    assert_eq!(last["crash"], true);
    assert_eq!(last["result"], "failed");
    // Followed down to where Upstart left it: the record, the API and the table say so.
    assert_eq!(
        (&last["from_state"], &last["from_substate"]),
        (&Value::from("start"), &Value::from("running")),
        "{last}"
    );
    assert_eq!(
        (&last["to_state"], &last["to_substate"]),
        (&Value::from("stop"), &Value::from("waiting")),
        "{last}"
    );
    let www = api_unit(&cw, WWW);
    assert_eq!(
        (&www["state"], &www["substate"]),
        (&"stop".into(), &"waiting".into())
    );
    assert_eq!(www["gave_up"], true, "{www:#}");
    assert_eq!(www["active"], false, "{www:#}");
    let out = status(&cw, &[]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with("www") && row.contains("stop/waiting") && row.contains("GAVE UP"),
        "{table}"
    );
}

#[test]
fn status_prints_upstart_crashes_without_exit_details_and_a_spawn_failure() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    let fake = FakeUpstart::on_bus(&bus);
    fake.add_running(WWW, "", 100);
    let cw = watch_bus(&bus, &[]);
    // A respawn: a crash with a reason and no exit code or status.
    fake.respawn(WWW, "", 101);
    // F: exec of a missing binary. Upstart gets it up to spawned, then fails it and stops it.
    fake.spawn_failure("badexec", "");
    expect_metric(&cw, "crashwatch_unit_restarts_total", WWW, 1.0);
    expect_metric(&cw, "crashwatch_unit_crashes_total", "badexec", 1.0);
    assert_eq!(
        cw.metric(
            "crashwatch_unit_crashes_total",
            &[("unit", "badexec"), ("reason", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        cw.unit_metric("crashwatch_unit_starts_total", "badexec"),
        1.0
    );
    assert_eq!(cw.unit_metric("crashwatch_unit_active", "badexec"), 0.0);
    let badexec = api_unit(&cw, "badexec");
    assert_eq!(
        (&badexec["state"], &badexec["substate"]),
        (&"stop".into(), &"waiting".into()),
        "{badexec:#}"
    );
    assert_eq!(
        badexec["gave_up"], false,
        "no respawn to give up: {badexec:#}"
    );
    assert!(
        badexec["last_crash"].get("exit_code").is_none(),
        "{badexec:#}"
    );
    let crash = wait_records(&cw, "badexec", "transition", 2)
        .into_iter()
        .find(|t| t["crash"] == true)
        .expect("a crash");
    assert_eq!(crash["from_substate"], "spawned", "{crash}");
    assert_eq!(crash["to_substate"], "waiting", "{crash}");

    let out = status(&cw, &[]);
    assert!(out.status.success(), "status failed: {out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |unit: &str| {
        table
            .lines()
            .find(|l| l.starts_with(unit))
            .unwrap_or_else(|| panic!("no {unit} in\n{table}"))
            .to_owned()
    };
    assert!(row(WWW).ends_with(" unknown"), "{table}");
    assert!(row("badexec").contains("stop/waiting"), "{table}");
    assert!(row("badexec").ends_with(" failed"), "{table}");
    let out = status(&cw, &["badexec"]);
    assert!(out.status.success(), "status failed: {out:?}");
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(
        events.starts_with("Last crash: failed (exit: -, ran -)"),
        "{events}"
    );
    let crash = events
        .lines()
        .skip_while(|l| !l.starts_with("TIME"))
        .find(|l| l.contains(" failed "))
        .unwrap_or_default();
    assert!(
        crash.contains("stop/waiting") && crash.ends_with("crash: failed"),
        "{events}"
    );
}

#[test]
fn a_segfault_without_respawn_is_one_crash_with_its_signal() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    let fake = FakeUpstart::on_bus(&bus);
    let cw = watch_bus(&bus, &[]);
    fake.start("db", "", 200);
    expect_metric(&cw, "crashwatch_unit_active", "db", 1.0);
    fake.segfault("db", "");
    expect_metric(&cw, "crashwatch_unit_crashes_total", "db", 1.0);
    assert_eq!(
        cw.metric(
            "crashwatch_unit_crashes_total",
            &[("unit", "db"), ("reason", "signal")]
        ),
        Some(1.0)
    );
    // starting, started, the crash.
    let crash = wait_records(&cw, "db", "transition", 3)
        .into_iter()
        .find(|t| t["crash"] == true)
        .expect("a crash");
    assert_eq!(crash["exit_code"], "killed");
    assert_eq!(crash["exit_status"], 11);
    // Started again by hand: a restart, by someone other than Upstart's respawn.
    fake.start("db", "", 201);
    expect_metric(&cw, "crashwatch_unit_restarts_total", "db", 1.0);
    let restart = wait_records(&cw, "db", "transition", 4)
        .into_iter()
        .find(|t| t["transition"] == "restart")
        .expect("a restart");
    assert_eq!(restart["restart_cause"], "external");
    // The stopping and stopped events repeat the failure; it is still one crash.
    assert_eq!(cw.unit_metric("crashwatch_unit_crashes_total", "db"), 1.0);
}

#[test]
fn instances_are_units_of_their_own_and_initctl_stop_is_a_stop() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    let fake = FakeUpstart::on_bus(&bus);
    let cw = watch_bus(&bus, &[]);
    let job = "network-interface";
    let (eth0, eth1) = ("network-interface (eth0)", "network-interface (eth1)");
    fake.start(job, "eth0", 300);
    fake.start(job, "eth1", 301);
    fake.respawn(job, "eth1", 302);
    fake.stop(job, "eth0");
    expect_metric(&cw, "crashwatch_unit_restarts_total", eth1, 1.0);
    expect_metric(&cw, "crashwatch_unit_active", eth0, 0.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashes_total", eth0), 0.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_restarts_total", eth0), 0.0);
    let kinds: Vec<Value> = wait_records(&cw, eth0, "transition", 4)
        .iter()
        .map(|t| t["transition"].clone())
        .collect();
    assert_eq!(kinds, ["starting", "started", "stopping", "stopped"]);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashes_total", eth1), 1.0);
}

#[test]
fn a_removed_instance_leaves_its_series_after_the_retention() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    let fake = FakeUpstart::on_bus(&bus);
    let cw = watch_bus(&bus, &["--unloaded-retention", "1s"]);
    let job = "network-interface";
    let (eth0, eth1) = ("network-interface (eth0)", "network-interface (eth1)");
    fake.start(job, "eth0", 300);
    fake.start(job, "eth1", 301);
    expect_metric(&cw, "crashwatch_unit_active", eth0, 1.0);
    fake.stop(job, "eth0");
    expect_metric(&cw, "crashwatch_unit_active", eth0, 0.0);
    let gone = wait_until(Duration::from_secs(10), || {
        cw.metric("crashwatch_unit_starts_total", &[("unit", eth0)])
            .is_none()
    });
    assert!(gone, "{eth0} kept its series\n{}", cw.diag(eth0));
    assert_eq!(cw.unit_metric("crashwatch_unit_active", eth1), 1.0);
}

#[test]
fn upstart_1_5_is_followed_from_instance_signals_alone() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    let fake = FakeUpstart::on_bus(&bus).legacy();
    fake.add_running(WWW, "", 100);
    let cw = watch_bus(&bus, &[]);
    for pid in 101..=103 {
        fake.respawn(WWW, "", pid);
    }
    fake.restart(WWW, "", 104);
    expect_metric(&cw, "crashwatch_unit_starts_total", WWW, 4.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_restarts_total", WWW), 3.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashes_total", WWW), 3.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashloops_total", WWW), 1.0);
}

#[test]
fn a_restart_missed_while_away_is_caught_by_the_snapshot() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    let fake = FakeUpstart::on_bus(&bus);
    fake.add_running(WWW, "", 100);
    let cw = watch_bus(&bus, &[]);

    // Upstart leaves the bus; the job respawns meanwhile; Upstart comes back.
    fake.detach();
    let down = wait_until(SETTLE, || {
        cw.metric("crashwatch_source_up", &[("source", "upstart")]) == Some(0.0)
    });
    assert!(down, "source_up stayed 1 while Upstart was away");
    fake.run(vec![Step::Pid(WWW.into(), String::new(), 200)]);
    fake.attach();
    expect_metric(&cw, "crashwatch_unit_restarts_total", WWW, 1.0);
    assert_eq!(
        cw.metric("crashwatch_source_up", &[("source", "upstart")]),
        Some(1.0)
    );
    // The inferred crash, restart, starting and started.
    let restart = wait_records(&cw, WWW, "transition", 4)
        .into_iter()
        .find(|t| t["transition"] == "restart")
        .expect("a restart");
    assert_eq!(restart["inferred"], true);

    // After a re-exec (`Restarted`) the same: a snapshot, and the pid tells.
    fake.run(vec![
        Step::Pid(WWW.into(), String::new(), 300),
        Step::Restarted,
    ]);
    expect_metric(&cw, "crashwatch_unit_restarts_total", WWW, 2.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashes_total", WWW), 2.0);
}

#[test]
fn peer_to_peer_works_without_a_bus_and_reconnects() {
    let fake = FakeUpstart::peer_to_peer();
    fake.add_running(WWW, "", 100);
    let cw = watch_peer(&fake, &[]);
    for pid in 101..=103 {
        fake.respawn(WWW, "", pid);
    }
    fake.start("network-interface", "eth0", 400);
    expect_metric(&cw, "crashwatch_unit_crashlooping", WWW, 1.0);
    expect_metric(
        &cw,
        "crashwatch_unit_starts_total",
        "network-interface (eth0)",
        1.0,
    );

    // The socket goes away and comes back; a respawn happened in between.
    fake.detach();
    wait_disconnected(&cw);
    fake.run(vec![Step::Pid(WWW.into(), String::new(), 500)]);
    fake.attach();
    expect_metric(&cw, "crashwatch_unit_restarts_total", WWW, 4.0);
    let up = wait_until(SETTLE, || {
        cw.metric("crashwatch_source_up", &[("source", "upstart")]) == Some(1.0)
    });
    assert!(up, "not reconnected\n{}", cw.stderr());
    // And signals flow again.
    let reads = fake.process_reads();
    fake.respawn(WWW, "", 501);
    expect_metric(&cw, "crashwatch_unit_restarts_total", WWW, 5.0);
    // A pid is compared across a gap only once the daemon knows the pid of the run before it:
    // wait until it has read it, as it does for every run it hears start.
    let read = wait_until(SETTLE, || fake.process_reads() > reads);
    assert!(
        read,
        "the main pid of the new run was never read\n{}",
        cw.diag(WWW)
    );

    // A re-exec closes the connection without a word (no Restarted peer-to-peer); a respawn
    // in the gap is caught by the snapshot after the reconnect.
    fake.run(vec![
        Step::Pid(WWW.into(), String::new(), 600),
        Step::Restarted,
    ]);
    expect_metric(&cw, "crashwatch_unit_restarts_total", WWW, 6.0);
}

/// One record as `/dev/kmsg` gives it: `PRI,SEQ,TIMESTAMP_US,FLAGS;MESSAGE`, with a continuation
/// line as the kernel adds to some.
fn kmsg_record(seq: u64, at: u64, message: &str) -> String {
    format!("4,{seq},{at},-;{message}\n SUBSYSTEM=none\n")
}

/// Waits until crashwatch has noticed that its connection to Upstart is gone.
fn wait_disconnected(cw: &Crashwatch) {
    let down = wait_until(SETTLE, || {
        cw.metric("crashwatch_source_up", &[("source", "upstart")]) == Some(0.0)
    });
    assert!(
        down,
        "the closed connection was not noticed\n{}",
        cw.diag(WWW)
    );
}

#[test]
fn the_runs_that_ended_during_a_gap_are_counted_from_the_kernel_log() {
    let dir = TempDir::new("cw-kmsg");
    let log = dir.path().join("kmsg");
    // An end logged before crashwatch heard anything is not the gap's.
    let before = kmsg_record(
        1,
        monotonic_micros(),
        "init: www main process (99) terminated with status 1",
    );
    std::fs::write(&log, before).expect("writing the kernel log");
    let fake = FakeUpstart::peer_to_peer();
    fake.add_running(WWW, "", 100);
    let cw = watch_peer(
        &fake,
        &["--upstart-kernel-log", log.to_str().expect("utf-8")],
    );
    fake.respawn(WWW, "", 101);
    expect_metric(&cw, "crashwatch_unit_restarts_total", WWW, 1.0);

    // Upstart re-executes; its main process ends three times before crashwatch is back.
    fake.detach();
    wait_disconnected(&cw);
    let mut records = String::new();
    for (seq, pid, how) in [
        (2, 101, "terminated with status 2"),
        (3, 102, "killed by SEGV signal"),
        (4, 103, "terminated with status 2"),
    ] {
        fake.run(vec![Step::Pid(WWW.into(), String::new(), pid + 1)]);
        let message = format!("init: www main process ({pid}) {how}");
        records.push_str(&kmsg_record(seq, monotonic_micros(), &message));
        let respawning = "init: www main process ended, respawning";
        records.push_str(&kmsg_record(seq, monotonic_micros(), respawning));
    }
    let other = "init: other main process (7) terminated with status 1";
    records.push_str(&kmsg_record(5, monotonic_micros(), other));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("the kernel log");
    std::io::Write::write_all(&mut file, records.as_bytes()).expect("appending to it");
    fake.attach();

    expect_metric(&cw, "crashwatch_unit_restarts_total", WWW, 4.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashes_total", WWW), 4.0);
    let by_reason = |reason| {
        cw.metric(
            "crashwatch_unit_crashes_total",
            &[("unit", WWW), ("reason", reason)],
        )
    };
    assert_eq!(by_reason("exit-code"), Some(2.0), "{}", cw.diag(WWW));
    assert_eq!(by_reason("signal"), Some(1.0), "{}", cw.diag(WWW));
    // Heard: crash, restart, starting, started; then for each end the same, inferred.
    let inferred: Vec<Value> = wait_records(&cw, WWW, "transition", 4 + 12)
        .into_iter()
        .filter(|t| t["inferred"] == true)
        .collect();
    assert_eq!(inferred.len(), 12, "{inferred:?}");
    let statuses: Vec<&Value> = inferred
        .iter()
        .filter(|t| t["crash"] == true)
        .map(|t| &t["exit_status"])
        .collect();
    assert_eq!(statuses, [2, 11, 2], "{inferred:?}");
    assert_eq!(
        cw.metric(
            "crashwatch_errors_total",
            &[
                ("component", "upstart"),
                ("error_type", "kernel_log_unreadable")
            ]
        ),
        None
    );
}

#[test]
fn an_unreadable_kernel_log_is_counted_and_the_gap_inferred() {
    let dir = TempDir::new("cw-kmsg");
    let missing = dir.path().join("missing");
    let fake = FakeUpstart::peer_to_peer();
    fake.add_running(WWW, "", 100);
    let cw = watch_peer(
        &fake,
        &["--upstart-kernel-log", missing.to_str().expect("utf-8")],
    );
    expect_metric(&cw, "crashwatch_unit_active", WWW, 1.0);
    fake.detach();
    wait_disconnected(&cw);
    fake.run(vec![Step::Pid(WWW.into(), String::new(), 300)]);
    fake.attach();
    expect_metric(&cw, "crashwatch_unit_restarts_total", WWW, 1.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashes_total", WWW), 1.0);
    let unreadable = cw.metric(
        "crashwatch_errors_total",
        &[
            ("component", "upstart"),
            ("error_type", "kernel_log_unreadable"),
        ],
    );
    assert_eq!(unreadable, Some(1.0), "{}", cw.stderr());
    // Said once in the log, which reaches the test through a pipe a moment later.
    let said = wait_until(SETTLE, || {
        cw.stderr().contains("Cannot read the kernel log")
    });
    assert!(said, "{}", cw.stderr());
}

/// What Upstart itself said of the recorded session: the header of the data file.
const RECORDED_TRUTH: &str = "# Upstart's truth: www ran 6 times (5 respawns, then 'respawning too fast, stopped'); steady 4 runs, no crash; worker 9 runs (8 crashes, then stopped); net 7 runs (6 crashes, then stopped).";

#[test]
fn a_recorded_session_of_a_real_upstart_counts_what_upstart_counted() {
    let recorded = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/upstart-1.13.2-session.txt"),
    )
    .expect("the recorded session");
    assert!(
        recorded.lines().any(|l| l == RECORDED_TRUTH),
        "the header's truth changed; update the table below with it"
    );
    let steps = recorded_steps(&recorded).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        steps.len(),
        recorded.lines().filter(|l| l.contains(" signal ")).count()
    );

    // As recorded: a session init, peer-to-peer, that crashwatch was attached to from the start.
    let fake = FakeUpstart::peer_to_peer();
    let cw = watch_peer(&fake, &[]);
    fake.run(steps);

    // (unit, runs, respawns, crashes by reason, crash loops, how the loop ended, given up). The
    // truth for www, steady, worker and net is the header's; crashonce (SIGSEGV, no respawn) and
    // badexec (a spawn failure) are what their signals say, one crash each.
    type Truth<'a> = (
        &'a str,
        f64,
        f64,
        &'a [(&'a str, f64)],
        f64,
        Option<&'a str>,
        bool,
    );
    let truth: [Truth; 6] = [
        (
            "www",
            6.0,
            5.0,
            &[("unknown", 6.0)],
            1.0,
            Some("gave_up"),
            true,
        ),
        ("steady", 4.0, 0.0, &[], 0.0, None, false),
        (
            "worker",
            9.0,
            8.0,
            &[("unknown", 8.0)],
            1.0,
            Some("stopped"),
            false,
        ),
        (
            "net (eth0)",
            7.0,
            6.0,
            &[("unknown", 6.0)],
            1.0,
            Some("stopped"),
            false,
        ),
        ("crashonce", 1.0, 0.0, &[("signal", 1.0)], 0.0, None, false),
        ("badexec", 1.0, 0.0, &[("failed", 1.0)], 0.0, None, false),
    ];
    // The last signal is badexec's stopped: once its crash is in, everything before it is.
    expect_metric(&cw, "crashwatch_unit_crashes_total", "badexec", 1.0);
    for (unit, runs, respawns, crashes, loops, ended, gave_up) in truth {
        let crashed: f64 = crashes.iter().map(|(_, n)| n).sum();
        expect_metric(&cw, "crashwatch_unit_starts_total", unit, runs);
        expect_metric(&cw, "crashwatch_unit_crashes_total", unit, crashed);
        for (reason, n) in crashes {
            assert_eq!(
                cw.metric(
                    "crashwatch_unit_crashes_total",
                    &[("unit", unit), ("reason", reason)]
                ),
                Some(*n),
                "{}",
                cw.diag(unit)
            );
        }
        assert_eq!(
            cw.unit_metric("crashwatch_unit_restarts_total", unit),
            respawns,
            "{}",
            cw.diag(unit)
        );
        assert_eq!(
            cw.unit_metric("crashwatch_unit_crashloops_total", unit),
            loops
        );
        assert_eq!(cw.unit_metric("crashwatch_unit_crashlooping", unit), 0.0);
        if let Some(outcome) = ended {
            let records = wait_records(&cw, unit, "crashloop_ended", 1);
            assert_eq!(records[0]["outcome"], outcome, "{unit}: {records:?}");
        }
        let entry = api_unit(&cw, unit);
        assert_eq!(entry["gave_up"], gave_up, "{entry:#}");
        let end = if unit == "steady" {
            "running"
        } else {
            "waiting"
        };
        assert_eq!(entry["substate"], end, "{entry:#}");
    }
}

#[test]
fn auto_picks_upstart_when_systemd_is_not_on_the_bus() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    let fake = FakeUpstart::on_bus(&bus);
    fake.add_running(WWW, "", 100);
    let cw = Crashwatch::spawn_on_bus(
        bus.address(),
        &["--source", "auto", "--upstart-hook-socket", ""],
    );
    fake.respawn(WWW, "", 101);
    expect_metric(&cw, "crashwatch_unit_restarts_total", WWW, 1.0);
    assert_eq!(
        cw.metric(
            "crashwatch_unit_restarts_total",
            &[("unit", WWW), ("source", "upstart")]
        ),
        Some(1.0)
    );
}

/// Every per-unit metric a systemd unit gets, by name.
const UNIT_METRICS: [&str; 9] = [
    "crashwatch_unit_starts_total",
    "crashwatch_unit_crashes_total",
    "crashwatch_unit_restarts_total",
    "crashwatch_unit_transitions_total",
    "crashwatch_unit_crashlooping",
    "crashwatch_unit_restarts_in_window",
    "crashwatch_unit_crashloops_total",
    "crashwatch_unit_last_crash_timestamp_seconds",
    "crashwatch_unit_active",
];

#[test]
fn prometheus_and_statsd_output_has_the_systemd_shape() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    let fake = FakeUpstart::on_bus(&bus);
    fake.add_running(WWW, "", 100);
    let statsd = StatsdListener::start();
    let cw = watch_bus(&bus, &["--statsd", statsd.addr()]);
    for pid in 101..=103 {
        fake.respawn(WWW, "", pid);
    }
    fake.start("network-interface", "eth0", 600);
    fake.respawn("network-interface", "eth0", 601);
    expect_metric(&cw, "crashwatch_unit_crashlooping", WWW, 1.0);
    expect_metric(
        &cw,
        "crashwatch_unit_restarts_total",
        "network-interface (eth0)",
        1.0,
    );

    let text = cw.scrape();
    let samples = parse_samples(&text).expect("/metrics parses");
    for unit in [WWW, "network-interface (eth0)"] {
        for name in UNIT_METRICS {
            let series: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.name == name && s.label("unit") == Some(unit))
                .collect();
            assert!(!series.is_empty(), "no {name} for {unit}:\n{text}");
            for s in series {
                assert_eq!(s.label("source"), Some("upstart"), "{s:?}");
                let mut labels: Vec<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
                labels.sort_unstable();
                let expected: &[&str] = match name {
                    "crashwatch_unit_crashes_total" => &["reason", "source", "unit"],
                    "crashwatch_unit_transitions_total" => &["source", "transition", "unit"],
                    _ => &["source", "unit"],
                };
                assert_eq!(labels, expected, "{s:?}");
            }
        }
    }
    match promtool_prerequisites() {
        Ok(()) => promtool_check_metrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}")),
        Err(reason) => skip(&reason),
    }

    let restarts = "crashwatch.unit.www.restarts";
    let matched = wait_until(SETTLE, || statsd.counter_sum(restarts) == 3.0);
    assert!(
        matched,
        "{restarts} sums to {}; lines:\n{}",
        statsd.counter_sum(restarts),
        statsd.lines().join("\n")
    );
    let instance = format!(
        "crashwatch.unit.{}.restarts",
        statsd_unit_name("network-interface (eth0)")
    );
    assert_eq!(
        instance,
        "crashwatch.unit.network-interface__eth0_.restarts"
    );
    let matched = wait_until(SETTLE, || statsd.counter_sum(&instance) == 1.0);
    assert!(matched, "lines:\n{}", statsd.lines().join("\n"));
    let lines = statsd.lines();
    for line in &lines {
        parse_statsd_line(line).unwrap_or_else(|e| panic!("{e}\nall lines:\n{}", lines.join("\n")));
    }
    for expected in [
        "crashwatch.unit.www.crashlooping:1|g",
        "crashwatch.unit.www.crashes:1|c",
        "crashwatch.unit.www.starts:1|c",
        "crashwatch.unit.www.crashloops:1|c",
        "crashwatch.unit.www.transitions.restart:1|c",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "no {expected}; lines:\n{}",
            lines.join("\n")
        );
    }
}

// ------------------------------------------------------------------------------------------------
// The job hook
// ------------------------------------------------------------------------------------------------

/// A daemon with no D-Bus at all, listening for the hook on a socket in a fresh directory.
struct HookDaemon {
    cw: Crashwatch,
    socket: PathBuf,
    _dir: TempDir,
}

impl HookDaemon {
    fn start() -> HookDaemon {
        let dir = TempDir::new("cw-upstart-hook");
        let socket = dir.path().join("run").join("hook.sock");
        let socket_arg = socket.display().to_string();
        let cw = Crashwatch::spawn_on_bus(
            "unix:path=/nonexistent",
            &[
                "--source",
                "upstart",
                "--upstart-address",
                "none",
                "--upstart-hook-socket",
                &socket_arg,
                // The starts of jobs that never crash are read too.
                "--unit-series=all",
            ],
        );
        HookDaemon {
            cw,
            socket,
            _dir: dir,
        }
    }

    /// Runs the real `crashwatch upstart-hook` with the environment Upstart would give it.
    fn hook(&self, vars: &[(&str, &str)]) -> Output {
        run_hook(&self.socket, vars)
    }

    fn event(&self, event: &str, job: &str, instance: &str, extra: &[(&str, &str)]) {
        let mut vars = vec![
            ("UPSTART_EVENTS", event),
            ("JOB", job),
            ("INSTANCE", instance),
        ];
        vars.extend_from_slice(extra);
        let out = self.hook(&vars);
        assert!(
            out.status.success(),
            "upstart-hook {vars:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn run_hook(socket: &Path, vars: &[(&str, &str)]) -> Output {
    let started = Instant::now();
    let mut cmd = Command::new(BIN);
    cmd.arg("upstart-hook")
        .arg("--socket")
        .arg(socket)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running crashwatch upstart-hook");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the hook took {:?}: it must never hold a job up",
        started.elapsed()
    );
    out
}

#[test]
fn the_hook_hands_events_to_the_daemon_end_to_end() {
    let d = HookDaemon::start();
    let mode = std::fs::metadata(&d.socket)
        .expect("the hook socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner and root may write");

    let cw = &d.cw;
    d.event("starting", WWW, "", &[]);
    d.event("started", WWW, "", &[]);
    // Three crash-respawns as the hook job sees them: stopping RESULT=ok, then starting.
    for _ in 0..3 {
        d.event("stopping", WWW, "", &[("RESULT", "ok")]);
        d.event("starting", WWW, "", &[]);
    }
    expect_metric(cw, "crashwatch_unit_crashlooping", WWW, 1.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_restarts_total", WWW), 3.0);

    // Sequence C as the hook sees it: RESULT=failed on stopping and stopped, one crash.
    let failed = [
        ("RESULT", "failed"),
        ("PROCESS", "main"),
        ("EXIT_SIGNAL", "SEGV"),
    ];
    d.event("stopping", WWW, "", &failed);
    d.event("stopped", WWW, "", &failed);
    expect_metric(cw, "crashwatch_unit_crashes_total", WWW, 4.0);
    assert_eq!(
        cw.metric(
            "crashwatch_unit_crashes_total",
            &[("unit", WWW), ("reason", "signal")]
        ),
        Some(1.0)
    );

    // An instance job, stopped on request: stopping then stopped is no crash.
    d.event("starting", "tty", "tty1", &[]);
    d.event("stopping", "tty", "tty1", &[("RESULT", "ok")]);
    d.event("stopped", "tty", "tty1", &[("RESULT", "ok")]);
    let reached = wait_until(SETTLE, || {
        cw.metric(
            "crashwatch_unit_transitions_total",
            &[("unit", "tty (tty1)"), ("transition", "stopped")],
        ) == Some(1.0)
    });
    assert!(reached, "{}", cw.diag("tty (tty1)"));
    assert_eq!(
        cw.unit_metric("crashwatch_unit_crashes_total", "tty (tty1)"),
        0.0
    );
    assert_eq!(
        cw.metric("crashwatch_source_up", &[("source", "upstart")]),
        Some(1.0)
    );
}

#[test]
fn hook_messages_that_arrive_out_of_order_are_put_back_in_order() {
    let d = HookDaemon::start();
    let cw = &d.cw;
    let sock = UnixDatagram::unbound().expect("a socket");
    let send = |message: String| {
        sock.send_to(message.as_bytes(), &d.socket)
            .expect("sending a hook message");
    };
    let message = |event: &str, extra: &str, stamp: u64| {
        format!(
            r#"{{"v":2,"event":"{event}","job":"www","instance":""{extra},"monotonic_us":{stamp}}}"#
        )
    };
    // Stamped a moment ago, as hooks that ran then; sent now, each respawn's `starting` a few
    // milliseconds before the `stopping` it follows, as a real Upstart's hooks delivered them.
    let t = monotonic_micros() - 10_000;
    send(message("starting", "", t));
    for i in 1..=3 {
        let stopped_at = t + i * 1_000;
        send(message("starting", "", stopped_at + 300));
        std::thread::sleep(Duration::from_millis(5));
        send(message("stopping", r#","result":"ok""#, stopped_at));
    }
    expect_metric(cw, "crashwatch_unit_restarts_total", WWW, 3.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashes_total", WWW), 3.0);
    assert_eq!(cw.unit_metric("crashwatch_unit_crashlooping", WWW), 1.0);
    // No hook said `started`: whether www is up is unknown, and shown as unknown, not down.
    assert_eq!(
        cw.metric("crashwatch_unit_active", &[("unit", WWW)]),
        None,
        "{}",
        cw.diag(WWW)
    );
    assert_eq!(api_unit(cw, WWW)["active"], Value::Null);
    // The hook of an older crashwatch sends version 1, unstamped: still read, in receipt order.
    send(r#"{"v":1,"event":"started","job":"www","instance":""}"#.to_owned());
    expect_metric(cw, "crashwatch_unit_active", WWW, 1.0);
    let kinds: Vec<Value> = wait_records(cw, WWW, "transition", 14)
        .iter()
        .map(|t| t["transition"].clone())
        .collect();
    assert_eq!(
        kinds[..5],
        ["starting", "stopping", "failed", "restart", "starting"]
    );
}

#[test]
fn garbage_on_the_hook_socket_is_counted_and_dropped() {
    let d = HookDaemon::start();
    let cw = &d.cw;
    let sock = UnixDatagram::unbound().expect("a socket");
    let too_big = {
        let mut m = br#"{"v":1,"event":"starting","job":""#.to_vec();
        m.extend(std::iter::repeat_n(b'x', 10_000));
        m.extend_from_slice(br#""}"#);
        m
    };
    let garbage: Vec<Vec<u8>> = vec![
        vec![0x00, 0xff, 0xfe, 0x80, 0x01],
        b"not json at all".to_vec(),
        br#"{"v":2,"event":"starting","job":"www"}"#.to_vec(),
        br#"{"v":1,"event":"starting","job":"www","rm":"-rf"}"#.to_vec(),
        br#"{"v":1,"event":"exploded","job":"www"}"#.to_vec(),
        too_big,
        Vec::new(),
    ];
    for g in &garbage {
        sock.send_to(g, &d.socket).expect("sending garbage");
    }
    let errors = |cw: &Crashwatch| {
        cw.metric(
            "crashwatch_errors_total",
            &[
                ("component", "upstart"),
                ("error_type", "hook_decode_failed"),
            ],
        )
        .unwrap_or(0.0)
    };
    let counted = wait_until(SETTLE, || errors(cw) == garbage.len() as f64);
    assert!(
        counted,
        "hook_decode_failed = {}, expected {}\n{}",
        errors(cw),
        garbage.len(),
        cw.stderr()
    );
    // Nothing of it became a unit, and the daemon still takes real events.
    assert!(cw.events().is_empty(), "{:?}", cw.events());
    d.event("starting", WWW, "", &[]);
    expect_metric(cw, "crashwatch_unit_starts_total", WWW, 1.0);
}

#[test]
fn the_hook_fails_fast_and_says_why() {
    let dir = TempDir::new("cw-upstart-nohook");
    let missing = dir.path().join("nobody-listens.sock");
    // No daemon: exit 1, one line, at once.
    let out = run_hook(&missing, &[("JOB", WWW), ("UPSTART_EVENTS", "starting")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    // Not run for a job event: exit 2.
    let out = run_hook(&missing, &[("UPSTART_EVENTS", "starting")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run_hook(&missing, &[("JOB", WWW), ("UPSTART_EVENTS", "startup")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn a_second_daemon_does_not_steal_the_hook_socket() {
    let d = HookDaemon::start();
    let socket = d.socket.display().to_string();
    let out = Command::new(BIN)
        .args([
            "run",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--source",
            "upstart",
            "--upstart-address",
            "none",
            "--upstart-hook-socket",
            &socket,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("running a second crashwatch");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hook"), "{stderr}");
    // The first one still listens.
    d.event("starting", WWW, "", &[]);
    expect_metric(&d.cw, "crashwatch_unit_starts_total", WWW, 1.0);
}

/// A job's crash shows the last lines of its log file as Upstart writes it (`console log`:
/// `/var/log/upstart/JOB.log`, lines through a pseudo-terminal ending in `\r\n`), masked.
#[test]
fn a_crash_shows_the_last_lines_of_the_jobs_log() {
    require_dbus_daemon!();
    let dir = TempDir::new("upstart-job-logs");
    let logs = dir.path().join("upstart");
    std::fs::create_dir_all(&logs).expect("the log directory");
    // What a job that fails on a bad setting writes, as init logs it.
    std::fs::write(
        logs.join("www.log"),
        "www starting\r\nlistening on :8080\r\nconnecting with password=hunter2\r\n\
         fatal: cannot bind :8080: address in use\r\n",
    )
    .expect("the job log");
    let config = dir.path().join("crashwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[source.upstart]\njob_log_directory = {:?}\n\n[crash_context]\nlines = 3\n",
            logs.display().to_string()
        ),
    )
    .expect("the configuration");
    let bus = PrivateBus::start();
    let fake = FakeUpstart::on_bus(&bus);
    fake.add_running(WWW, "", 100);
    fake.add_running("quiet", "", 200);
    let cw = watch_bus(&bus, &["--config", &config.display().to_string()]);

    fake.respawn(WWW, "", 101);
    fake.respawn("quiet", "", 201);
    let mut document = Value::Null;
    let answered = wait_until(SETTLE, || {
        document = api(&cw, "/api/units/www");
        document["last_crash"]["context"]["status"] == "ok"
    });
    assert!(answered, "no context for www: {document:#}");
    let context = &document["last_crash"]["context"];
    assert_eq!(context["source"], "job log");
    assert_eq!(
        context["lines"],
        serde_json::json!([
            "listening on :8080",
            "connecting with password=[masked]",
            "fatal: cannot bind :8080: address in use",
        ]),
        "{document:#}"
    );
    let printed = status(&cw, &[WWW]);
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.contains("fatal: cannot bind :8080: address in use"),
        "{printed}"
    );
    assert!(!printed.contains("hunter2"), "{printed}");

    // A job without a log file (no `console log`) says where the log would have been.
    let mut quiet = Value::Null;
    let answered = wait_until(SETTLE, || {
        quiet = api(&cw, "/api/units/quiet");
        quiet["last_crash"]["context"]["status"] == "unavailable"
    });
    assert!(answered, "{quiet:#}");
    let reason = quiet["last_crash"]["context"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("quiet.log"), "{reason}");
}
