//! Faults crashwatch must survive without losing a restart: the system bus killed and brought
//! back mid-loop, and systemd reloading and re-executing itself under a running loop.
//!
//! Each test ends its loop by fixing the unit (a drop-in that makes it stay up) rather than
//! stopping it: the unit stays loaded and `NRestarts` stays readable, so the final comparison is
//! against systemd's own count.

use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::support::*;

const CRASHY: &str = "crashy.service";

/// A sandbox with the crashing unit written and kept loaded, so NRestarts stays readable.
fn sandbox_with_crashy() -> Sandbox {
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    sb.write_unit(CRASHY, CRASHY_UNIT);
    sb.pin_loaded(&[CRASHY]);
    sb
}

/// Starts `units` and waits until crashwatch has counted `restarts` of the crashing one.
fn start_loop(sb: &Sandbox, cw: &Crashwatch, units: &[&str], restarts: f64) {
    let mut start = vec!["start"];
    start.extend_from_slice(units);
    sb.systemctl_ok(&start);
    let seen = wait_until(Duration::from_secs(20), || {
        cw.unit_metric("crashwatch_unit_restarts_total", CRASHY) >= restarts
    });
    assert!(seen, "no loop of {CRASHY} seen\n{}", cw.diag(CRASHY));
}

/// Makes the crashing unit stay up, then waits until it does, so NRestarts stops moving.
fn fix_unit(sb: &Sandbox, unit: &str) {
    let dropins = sb.dir().join("units").join(format!("{unit}.d"));
    std::fs::create_dir_all(&dropins).expect("creating the drop-in directory");
    std::fs::write(
        dropins.join("fixed.conf"),
        "[Service]\nExecStart=\nExecStart=/bin/sleep infinity\n",
    )
    .expect("writing the drop-in");
    sb.systemctl_ok(&["daemon-reload"]);
    let up = wait_until(Duration::from_secs(20), || {
        sb.active_state(unit) == "active"
    });
    assert!(
        up,
        "{unit} did not come up after the fix\n{}",
        sb.log_tail(30)
    );
    // One more restart may have been scheduled just before the fix took effect.
    thread::sleep(Duration::from_millis(500));
}

#[test]
fn bus_killed_mid_loop_loses_no_restart() {
    require_sandbox!();
    let sb = sandbox_with_crashy();
    let cw = Crashwatch::spawn(&sb, &[]);
    start_loop(&sb, &cw, &[CRASHY], 3.0);

    // SIGKILL, so the bus cannot say goodbye; systemd keeps running units and counting.
    sb.systemctl_ok(&["kill", "--signal=SIGKILL", "dbus.service"]);
    let down = wait_until(Duration::from_secs(10), || {
        cw.metric("crashwatch_source_up", &[("source", "systemd")]) == Some(0.0)
    });
    assert!(
        down,
        "crashwatch_source_up did not drop to 0\n{}",
        cw.stderr()
    );
    let during = sb_restarts_while_down(&sb);

    // crashwatch keeps serving /metrics while the bus is away, then comes back on its own:
    // its reconnect attempts socket-activate the bus again.
    let up = wait_until(Duration::from_secs(30), || {
        cw.metric("crashwatch_source_up", &[("source", "systemd")]) == Some(1.0)
    });
    assert!(up, "crashwatch did not reconnect\n{}", cw.stderr());
    assert!(
        during > 0,
        "the loop did not go on while the bus was down; the test proves nothing"
    );

    fix_unit(&sb, CRASHY);
    assert_counts_match(&sb, &cw, CRASHY);
    let errors = cw
        .metric(
            "crashwatch_errors_total",
            &[("component", "systemd"), ("error_type", "bus_disconnected")],
        )
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "the lost bus was not counted: {errors}");
}

/// Lets the loop run on while crashwatch is cut off, and reports how many restarts that was.
fn sb_restarts_while_down(sb: &Sandbox) -> u64 {
    // No bus now: read the count through systemctl, which uses systemd's private socket.
    let counted = |sb: &Sandbox| {
        let out = sb.systemctl(&["show", "-P", "NRestarts", CRASHY]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let before = counted(sb);
    thread::sleep(Duration::from_millis(1500));
    counted(sb).saturating_sub(before)
}

#[test]
fn reloads_and_reexec_neither_reset_nor_double_counts() {
    require_sandbox!();
    let sb = sandbox_with_crashy();
    sb.write_unit(
        "steady.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    );
    sb.reload();
    // Every series: the steady unit's one start is counted below.
    let cw = Crashwatch::spawn(&sb, &["--unit-series=all"]);
    start_loop(&sb, &cw, &[CRASHY, "steady.service"], 2.0);

    for _ in 0..3 {
        sb.systemctl_ok(&["daemon-reload"]);
        thread::sleep(Duration::from_millis(300));
    }
    sb.systemctl_ok(&["daemon-reexec"]);
    thread::sleep(Duration::from_millis(500));
    sb.systemctl_ok(&["daemon-reload"]);

    // The subscription must still deliver after the re-exec: the loop keeps being counted.
    let before = cw.unit_metric("crashwatch_unit_restarts_total", CRASHY);
    assert!(
        wait_until(Duration::from_secs(10), || {
            cw.unit_metric("crashwatch_unit_restarts_total", CRASHY) >= before + 3.0
        }),
        "restarts stopped being counted after daemon-reexec\n{}",
        cw.diag(CRASHY)
    );

    fix_unit(&sb, CRASHY);
    assert_counts_match(&sb, &cw, CRASHY);
    // The steady unit went through every reload untouched: one start, nothing else.
    assert_eq!(
        cw.unit_metric("crashwatch_unit_starts_total", "steady.service"),
        1.0
    );
    assert_eq!(
        cw.unit_metric("crashwatch_unit_crashes_total", "steady.service"),
        0.0
    );
    assert_eq!(
        cw.unit_metric("crashwatch_unit_restarts_total", "steady.service"),
        0.0
    );
}

#[test]
fn a_rogue_sender_is_ignored_and_counted() {
    require_sandbox!();
    let sb = sandbox_with_crashy();
    let cw = Crashwatch::spawn(&sb, &[]);
    start_loop(&sb, &cw, &[CRASHY], 2.0);

    // A signal sent straight to a client passes its match rules whatever the sender, so send
    // forged ones to every connection on the bus: a fake crash, a fake new run, and a body with
    // the wrong signature.
    let listing = sb.busctl(&["list", "--unique", "--no-legend", "--no-pager"]);
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(':'))
        .map(str::to_owned)
        .collect();
    assert!(
        !names.is_empty(),
        "no connections listed on the sandbox bus"
    );
    let path = unit_object_path(CRASHY);
    for name in &names {
        let destination = format!("--destination={name}");
        for args in [
            vec![
                "sa{sv}as",
                "org.freedesktop.systemd1.Unit",
                "2",
                "ActiveState",
                "s",
                "failed",
                "InvocationID",
                "ay",
                "3",
                "1",
                "2",
                "3",
                "0",
            ],
            vec!["s", "not a property map"],
        ] {
            let mut emit = vec![
                "emit",
                destination.as_str(),
                path.as_str(),
                "org.freedesktop.DBus.Properties",
                "PropertiesChanged",
            ];
            emit.extend(args);
            let _ = sb.busctl(&emit);
        }
    }
    let counted = wait_until(Duration::from_secs(10), || {
        cw.metric(
            "crashwatch_errors_total",
            &[
                ("component", "systemd"),
                ("error_type", "signal_from_stranger"),
            ],
        )
        .unwrap_or(0.0)
            >= 2.0
    });
    assert!(counted, "forged signals were not counted\n{}", cw.scrape());

    fix_unit(&sb, CRASHY);
    assert_counts_match(&sb, &cw, CRASHY);
}

#[test]
fn five_hundred_units_looping_at_once_are_all_counted() {
    require_sandbox!();
    const UNITS: usize = 500;
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    sb.write_unit(
        "flood@.service",
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/false\nRestart=always\nRestartSec=2s\n",
    );
    let names: Vec<String> = (0..UNITS).map(|i| format!("flood@{i}.service")).collect();
    // One target pulls in every instance: one start job, one transaction.
    let mut target = String::from("[Unit]\nDescription=every flood unit\n");
    for u in &names {
        target.push_str(&format!("Wants={u}\n"));
    }
    sb.write_unit("flood.target", &target);
    sb.reload();
    let cw = Crashwatch::spawn(&sb, &[]);
    sb.systemctl_ok(&["start", "--no-block", "flood.target"]);

    // Every unit crashes at once and again every ~2 s: about 250 crashes a second.
    let flagged = |cw: &Crashwatch| per_flood_unit(cw, "crashwatch_unit_crashlooping", 1.0);
    let looping = wait_until(Duration::from_secs(90), || flagged(&cw) == UNITS);
    assert!(looping, "only {} of {UNITS} units flagged", flagged(&cw));

    // Fix the template: every instance comes up on its next restart and stays up.
    let dropins = sb.dir().join("units").join("flood@.service.d");
    std::fs::create_dir_all(&dropins).expect("creating the drop-in directory");
    std::fs::write(
        dropins.join("fixed.conf"),
        "[Service]\nExecStart=\nExecStart=/bin/sleep infinity\n",
    )
    .expect("writing the drop-in");
    sb.systemctl_ok(&["daemon-reload"]);
    let up = |cw: &Crashwatch| per_flood_unit(cw, "crashwatch_unit_active", 1.0);
    let all_up = wait_until(Duration::from_secs(90), || up(&cw) == UNITS);
    assert!(
        all_up,
        "only {} of {UNITS} flood units came up after the fix",
        up(&cw)
    );
    thread::sleep(Duration::from_secs(1));

    // systemd's truth, in one call rather than 500.
    let mut show = vec!["show", "-P", "NRestarts"];
    show.extend(names.iter().map(String::as_str));
    let out = sb.systemctl(&show);
    let truth: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum();
    let counted = |cw: &Crashwatch| -> f64 {
        samples(cw)
            .iter()
            .filter(|x| x.name == "crashwatch_unit_restarts_total" && is_flood(x))
            .map(|x| x.value)
            .sum()
    };
    let settled = wait_until(Duration::from_secs(30), || counted(&cw) == truth as f64);
    assert!(
        settled,
        "restarts counted {} vs systemd's {truth} over {UNITS} units; dropped signals: {:?}",
        counted(&cw),
        cw.metric("crashwatch_signals_dropped_total", &[("source", "systemd")])
    );
    assert!(
        truth >= 2 * UNITS as u64,
        "the flood was too small to prove anything: {truth}"
    );
}

fn samples(cw: &Crashwatch) -> Vec<Sample> {
    parse_samples(&cw.scrape()).unwrap_or_else(|e| panic!("unparsable /metrics: {e}"))
}

fn is_flood(sample: &Sample) -> bool {
    sample
        .label("unit")
        .is_some_and(|u| u.starts_with("flood@"))
}

/// How many flood units have `metric` at `value`, from one scrape.
fn per_flood_unit(cw: &Crashwatch, metric: &str, value: f64) -> usize {
    samples(cw)
        .iter()
        .filter(|x| x.name == metric && is_flood(x) && x.value == value)
        .count()
}

#[test]
fn dead_and_slow_sinks_never_stall_the_event_path() {
    require_sandbox!();
    let sb = sandbox_with_crashy();
    // A StatsD socket that is bound but never read: once its buffer is full, datagrams vanish.
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding a UDP socket");
    let statsd = black_hole.local_addr().expect("address").to_string();
    let cw = Crashwatch::spawn(&sb, &["--statsd", &statsd]);
    // The event record replaced by a full disk: crashwatch follows the path to the new file, and
    // every write there fails with ENOSPC.
    std::fs::remove_file(cw.events_path()).expect("removing the event record");
    std::os::unix::fs::symlink("/dev/full", cw.events_path()).expect("linking /dev/full");

    // Scrapers that connect and never finish their request, or never read the answer.
    let port = cw.port();
    let mut stalled = Vec::new();
    for i in 0..8 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
        if i % 2 == 0 {
            use std::io::Write;
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        stalled.push(s);
    }

    sb.systemctl_ok(&["start", CRASHY]);
    cw.expect_flagged(CRASHY, 20);
    fix_unit(&sb, CRASHY);
    assert_counts_match(&sb, &cw, CRASHY);
    let write_failed = cw
        .metric(
            "crashwatch_errors_total",
            &[("component", "events"), ("error_type", "write_failed")],
        )
        .unwrap_or(0.0);
    assert!(
        write_failed >= 1.0,
        "writes to a full disk were not counted"
    );
    drop(stalled);
}

#[test]
fn a_restarted_crashwatch_raises_no_false_loop_from_old_history() {
    require_sandbox!();
    let sb = sandbox_with_crashy();
    // The loop is well under way before crashwatch starts: NRestarts is high, and a snapshot
    // that failed to take it as the baseline would count it all as missed restarts.
    sb.systemctl_ok(&["start", CRASHY]);
    assert!(wait_until(Duration::from_secs(20), || sb
        .n_restarts(CRASHY)
        >= 4));
    let before = sb.n_restarts(CRASHY);

    let cw = Crashwatch::spawn(&sb, &["--no-journal-history"]);
    let after = sb.n_restarts(CRASHY);
    assert_ne!(
        cw.metric("crashwatch_unit_crashlooping", &[("unit", CRASHY)]),
        Some(1.0),
        "flagged at start-up from history crashwatch did not see"
    );
    // It sees the loop it does watch: three live restarts flag it.
    cw.expect_flagged(CRASHY, 20);

    fix_unit(&sb, CRASHY);
    let end = sb.n_restarts(CRASHY);
    let counted = cw.unit_metric("crashwatch_unit_restarts_total", CRASHY) as u64;
    // Only restarts after the snapshot count: at most those after `before`, at least those
    // after `after` (the snapshot fell between the two readings).
    assert!(
        counted <= end - before && counted >= end - after,
        "restarts_total {counted}, systemd's NRestarts {before} → {after} at start-up, {end} at the end\n{}",
        cw.diag(CRASHY)
    );
}

/// Running units the start-up test starts: reading each at start-up would cost over a thousand
/// messages.
const RUNNING_UNITS: usize = 300;

/// Messages of crashwatch's start-up beyond those per unit read (Hello, the match rules, the
/// owner of systemd's name, Subscribe, ListUnits, replies): a bound that does not grow with the
/// units that are simply up or down.
const START_UP_MESSAGES: usize = 60;

/// A service that logs each run to `<dir>/<name>.runs` and exits 3 when `<dir>/<name>.crash`
/// appears (which it removes), so every crash is asked for and counted by the unit itself.
fn crash_on_demand_unit(dir: &std::path::Path, name: &str, extra: &str) -> String {
    let runs = dir.join(format!("{name}.runs"));
    let crash = dir.join(format!("{name}.crash"));
    let (runs, crash) = (runs.display(), crash.display());
    format!(
        "[Unit]\n\
         # Each crash is asked for by the test, several within the default 10 s start limit.\n\
         StartLimitIntervalSec=0\n\
         \n\
         [Service]\n\
         ExecStart=/bin/sh -c 'echo run >>{runs}; while [ ! -e {crash} ]; do sleep 0.05; done; rm -f {crash}; exit 3'\n\
         Restart=on-failure\n\
         {extra}"
    )
}

/// How many runs a unit of [`crash_on_demand_unit`] (or another writing `<name>.runs`) logged.
fn runs(sb: &Sandbox, name: &str) -> usize {
    std::fs::read_to_string(sb.dir().join(format!("{name}.runs")))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Crashes a unit of [`crash_on_demand_unit`] once and waits until systemd has it up again.
fn crash_and_wait_up(sb: &Sandbox, name: &str) {
    let unit = format!("{name}.service");
    let (n, r) = (sb.n_restarts(&unit), runs(sb, name));
    std::fs::write(sb.dir().join(format!("{name}.crash")), "").expect("writing the crash file");
    let up = wait_until(Duration::from_secs(20), || {
        sb.n_restarts(&unit) == n + 1
            && runs(sb, name) == r + 1
            && sb.active_state(&unit) == "active"
    });
    assert!(
        up,
        "{unit} did not crash and come back\n{}",
        sb.log_tail(30)
    );
}

/// Lines of a `dbus-monitor --profile` record sent by or to crashwatch's connection, known as
/// the sender of `ListUnits` (no other client lists units while it starts).
fn messages_of_crashwatch(record: &str) -> Result<usize, String> {
    let fields = |line: &str| line.split('\t').map(str::to_owned).collect::<Vec<_>>();
    let name = record
        .lines()
        .map(fields)
        .find(|f| {
            f.first().map(String::as_str) == Some("mc")
                && f.get(7).map(String::as_str) == Some("ListUnits")
        })
        .and_then(|f| f.get(3).cloned())
        .ok_or_else(|| format!("no ListUnits call in the record:\n{record}"))?;
    Ok(record
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(fields)
        .filter(|f| f.get(3) == Some(&name) || f.get(4) == Some(&name))
        .count())
}

#[test]
fn start_up_reads_few_units_and_still_counts_those_that_crashed_before() {
    require_sandbox!();
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = sb.dir().to_path_buf();
    sb.write_unit(
        "idle@.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    );
    // Crash-looping before crashwatch starts, and up (no job) when it does.
    sb.write_unit(
        "looping.service",
        &crash_on_demand_unit(&dir, "looping", ""),
    );
    // Crashed just before crashwatch starts, and waiting to be restarted while it does.
    sb.write_unit(
        "waiting.service",
        &crash_on_demand_unit(&dir, "waiting", "RestartSec=5s\n"),
    );
    // Failed before crashwatch starts; nothing restarts it by itself.
    let failed_runs = dir.join("failed.runs");
    sb.write_unit(
        "failed.service",
        &format!(
            "[Service]\nExecStart=/bin/sh -c 'echo run >>{}; exit 3'\n",
            failed_runs.display()
        ),
    );
    sb.pin_loaded(&["looping.service", "waiting.service", "failed.service"]);
    let idle: Vec<String> = (1..=RUNNING_UNITS)
        .map(|i| format!("idle@{i}.service"))
        .collect();
    for batch in idle.chunks(100) {
        let mut start = vec!["start"];
        start.extend(batch.iter().map(String::as_str));
        sb.systemctl_ok(&start);
    }
    sb.systemctl_ok(&[
        "start",
        "looping.service",
        "waiting.service",
        "failed.service",
    ]);
    for _ in 0..3 {
        crash_and_wait_up(&sb, "looping");
    }
    let failed = wait_until(Duration::from_secs(10), || {
        sb.active_state("failed.service") == "failed"
    });
    assert!(failed, "failed.service did not fail\n{}", sb.log_tail(30));
    assert!(wait_until(Duration::from_secs(10), || runs(&sb, "waiting") == 1));
    std::fs::write(dir.join("waiting.crash"), "").expect("writing the crash file");
    let waiting = wait_until(Duration::from_secs(10), || {
        sb.property(
            "waiting.service",
            "org.freedesktop.systemd1.Unit",
            "SubState",
        )
        .contains("auto-restart")
    });
    assert!(
        waiting,
        "waiting.service is not waiting to restart\n{}",
        sb.log_tail(30)
    );

    let record_path = dir.join("monitor.txt");
    let record_file = std::fs::File::create(&record_path).expect("creating the monitor record");
    let mut monitor = Command::new("dbus-monitor")
        .args(["--address", sb.bus_address(), "--profile"])
        .stdout(record_file)
        .stderr(Stdio::null())
        .spawn()
        .expect("running dbus-monitor");
    let monitoring = wait_until(Duration::from_secs(10), || {
        std::fs::metadata(&record_path).is_ok_and(|m| m.len() > 0)
    });
    assert!(monitoring, "dbus-monitor wrote nothing");
    let cw = Crashwatch::spawn(&sb, &[]);
    thread::sleep(Duration::from_millis(500));
    terminate(&mut monitor, Duration::from_secs(5));
    let record = std::fs::read_to_string(&record_path).expect("reading the monitor record");
    let messages = messages_of_crashwatch(&record).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        messages <= START_UP_MESSAGES,
        "crashwatch's start-up took {messages} D-Bus messages with {RUNNING_UNITS} units running, more than {START_UP_MESSAGES}:\n{record}"
    );

    // Taken once crashwatch watches: the looping unit crashes only when asked, and the waiting
    // one counts its restart in NRestarts only when systemd starts it again.
    let sub = sb.property(
        "waiting.service",
        "org.freedesktop.systemd1.Unit",
        "SubState",
    );
    assert!(
        sub.contains("auto-restart"),
        "waiting.service was restarted before crashwatch watched ({sub}); nothing was tested"
    );
    let looping_before = sb.n_restarts("looping.service");
    let waiting_before = sb.n_restarts("waiting.service");
    assert_eq!(looping_before, 3, "looping.service before crashwatch");

    for _ in 0..3 {
        crash_and_wait_up(&sb, "looping");
    }
    let restarted = wait_until(Duration::from_secs(20), || {
        sb.n_restarts("waiting.service") == waiting_before + 1
            && sb.active_state("waiting.service") == "active"
    });
    assert!(
        restarted,
        "waiting.service was not restarted\n{}",
        sb.log_tail(30)
    );
    sb.systemctl_ok(&["start", "failed.service"]);
    let failed_again = wait_until(Duration::from_secs(10), || {
        runs(&sb, "failed") == 2 && sb.active_state("failed.service") == "failed"
    });
    assert!(
        failed_again,
        "failed.service did not run and fail again\n{}",
        sb.log_tail(30)
    );

    // Truth: systemd's NRestarts since crashwatch started, and the units' own runs.
    let expected = [
        (
            "looping.service",
            sb.n_restarts("looping.service") - looping_before,
            3,
        ),
        (
            "waiting.service",
            sb.n_restarts("waiting.service") - waiting_before,
            0,
        ),
        // Its second run followed a failed one: a restart, whoever started it; then it failed.
        ("failed.service", (runs(&sb, "failed") - 1) as u64, 1),
    ];
    for (unit, restarts, crashes) in expected {
        let counted = wait_until(Duration::from_secs(5), || {
            cw.unit_metric("crashwatch_unit_restarts_total", unit) == restarts as f64
                && cw.unit_metric("crashwatch_unit_crashes_total", unit) == crashes as f64
        });
        assert!(
            counted,
            "{unit}: crashwatch counted {} restarts and {} crashes, systemd {restarts} and {crashes}\n{}",
            cw.unit_metric("crashwatch_unit_restarts_total", unit),
            cw.unit_metric("crashwatch_unit_crashes_total", unit),
            cw.diag(unit)
        );
    }
    // And the units that are simply up are all watched: each has this series, crashing or not.
    let watched = parse_samples(&cw.scrape())
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .filter(|s| s.name == "crashwatch_unit_crashlooping")
        .filter(|s| s.label("unit").is_some_and(|u| u.starts_with("idle@")))
        .count();
    assert_eq!(watched, RUNNING_UNITS, "idle units with a series");
}
