//! End to end through the servers users run: a real systemd crash loop, seen by crashwatch,
//! scraped by a real Prometheus evaluating the shipped rules (alerts/crashwatch.rules.yml),
//! alerting a real Alertmanager; the shipped dashboard's queries answered by that Prometheus; and
//! crashwatch's StatsD output aggregated by the reference StatsD server.
//!
//! The rule unit tests (alerts/crashwatch.tests.yml) prove the rules against hand-written series;
//! these tests prove that the series crashwatch really exports, with the labels Prometheus really
//! attaches, make the rules fire and resolve and fill every dashboard panel, and that a real
//! StatsD server counts the restarts crashwatch reports. The servers are started here on loopback
//! ports (see `support::servers`) and torn down by their guards, also when an assertion fails.
//!
//! Durations are shortened by configuration, never by editing the shipped files: Prometheus gets a
//! copy of the rules in which only the alerts' `for:` durations are rewritten (see
//! `rules_with_for`), and crashwatch runs with a short `--window`, so a fixed unit leaves its crash
//! loop within seconds.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::servers::*;
use crate::support::*;

const CRASHY: &str = "crashy.service";
const HEALTHY: &str = "healthy.service";
/// Started last, beyond `--max-units 2`, so that crashwatch counts an overflow and the dashboard's
/// overflow query has a series to show.
const EXTRA: &str = "extra.service";

const HEALTHY_UNIT: &str = "[Unit]\n\
Description=runs quietly, never crashes\n\
\n\
[Service]\n\
ExecStart=/bin/sleep infinity\n\
Restart=always\n";

/// The `for:` every alert gets in the test copy of the rules: long enough that `for` is still
/// exercised (pending before firing), short enough for a test.
const TEST_FOR: &str = "2s";

/// The alert this file follows from Prometheus to Alertmanager.
const CRASHLOOP_ALERT: &str = "CrashwatchUnitCrashLooping";

/// Dashboard queries of metrics that only exist after crashwatch fell behind under overload: a
/// signal dropped because the source's 65 536-signal queue was full, or an event dropped because a
/// sink's 16 384-event queue was full. Neither series is created before its first drop, and a
/// quiet test cannot fill those queues without becoming a load test; these queries are checked
/// to parse and evaluate (status success), not to return data. Every other panel query must
/// return data.
const NO_DATA_WITHOUT_OVERLOAD: &[&str] = &[
    "crashwatch_signals_dropped_total",
    "crashwatch_sink_events_dropped_total",
];

fn start_sandbox() -> Sandbox {
    Sandbox::start().unwrap_or_else(|e| panic!("{e}"))
}

/// Repair `unit` the way an operator would: a drop-in that replaces the failing command with one
/// that stays up, then `systemctl daemon-reload`. systemd's pending automatic restart then runs
/// the new command.
fn fix_unit(sb: &Sandbox, unit: &str) {
    // The sandbox's unit directory is $SDTEST_DIR/units (see tests/support/systemd-sandbox.sh).
    let dropin_dir = sb.dir().join("units").join(format!("{unit}.d"));
    std::fs::create_dir_all(&dropin_dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", dropin_dir.display()));
    let dropin = dropin_dir.join("fix.conf");
    std::fs::write(
        &dropin,
        "[Service]\nExecStart=\nExecStart=/bin/sleep infinity\n",
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", dropin.display()));
    sb.systemctl_ok(&["daemon-reload"]);
}

/// Alerts in `alerts` (Alertmanager's or Prometheus's shape: both have `labels`) named `name` for
/// `unit`.
fn alerts_for<'a>(alerts: &'a [Value], name: &str, unit: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == name && a["labels"]["unit"] == unit)
        .collect()
}

fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Prometheus's alerts (`/api/v1/alerts`), pending and firing.
fn prometheus_alerts(prom: &Prometheus) -> Vec<Value> {
    let data = prom
        .api("/api/v1/alerts")
        .unwrap_or_else(|e| panic!("{e}\n{}", prom.log_tail(20)));
    data["alerts"].as_array().cloned().unwrap_or_default()
}

fn alertmanager_alerts(am: &Alertmanager) -> Vec<Value> {
    am.alerts()
        .unwrap_or_else(|e| panic!("{e}\n{}", am.log_tail(20)))
}

/// Nothing, in Prometheus or Alertmanager, may alert about the healthy unit.
fn assert_healthy_unit_never_alerted(prom: &Prometheus, am: &Alertmanager, when: &str) {
    let in_prom: Vec<Value> = prometheus_alerts(prom)
        .into_iter()
        .filter(|a| a["labels"]["unit"] == HEALTHY)
        .collect();
    assert!(
        in_prom.is_empty(),
        "{when}: Prometheus has alerts for {HEALTHY}, which never crashed: {}",
        pretty(&in_prom)
    );
    let in_am: Vec<Value> = alertmanager_alerts(am)
        .into_iter()
        .filter(|a| a["labels"]["unit"] == HEALTHY)
        .collect();
    assert!(
        in_am.is_empty(),
        "{when}: Alertmanager has alerts for {HEALTHY}, which never crashed: {}",
        pretty(&in_am)
    );
}

/// Send half a request and hang up: crashwatch counts that as an HTTP error, which gives the
/// dashboard's error panels and `crashwatch_errors_total` something to show.
fn provoke_http_error(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to crashwatch on port {port}: {e}"));
    s.write_all(b"GET /metrics HTTP/1.1\r\n")
        .expect("writing half a request");
    s.shutdown(Shutdown::Both)
        .expect("shutting the socket down");
}

#[test]
fn crash_loop_alert_reaches_alertmanager_fills_the_dashboard_and_resolves() {
    require_sandbox!();
    require_prometheus!();
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>5.1} s] {what}", t0.elapsed().as_secs_f64());

    let shipped_path = repo_file("alerts/crashwatch.rules.yml");
    let shipped = std::fs::read_to_string(&shipped_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", shipped_path.display()));
    let (rules, rewritten) = rules_with_for(&shipped, TEST_FOR);
    let alert_count = count_alerts(&shipped);
    assert!(
        alert_count > 0,
        "no `- alert:` rules in {}",
        shipped_path.display()
    );
    assert_eq!(
        rewritten,
        alert_count,
        "the `for:` rewrite changed {rewritten} lines but {} has {alert_count} alerts: every alert \
         must write its duration as one `for: <duration>` line for the test copy to be faithful",
        shipped_path.display()
    );

    let dashboard_path = repo_file("dashboards/crashwatch.json");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(&dashboard_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dashboard_path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: not JSON: {e}", dashboard_path.display()));
    let queries = dashboard_queries(&dashboard);
    assert!(
        !queries.is_empty(),
        "no panel queries in {}",
        dashboard_path.display()
    );

    let sb = start_sandbox();
    sb.write_unit(CRASHY, CRASHY_UNIT);
    sb.write_unit(HEALTHY, HEALTHY_UNIT);
    sb.write_unit(EXTRA, HEALTHY_UNIT);
    sb.reload();
    // --window 10s: the loop ends 10 s after the fix instead of 5 minutes.
    // --max-units 2: room for CRASHY and HEALTHY only, see EXTRA. Every watched unit takes a
    // slot once seen, so only the test's own units are watched.
    let cw = Crashwatch::spawn(
        &sb,
        &[
            "--window",
            "10s",
            "--max-units",
            "2",
            "--include",
            HEALTHY,
            "--include",
            CRASHY,
            "--include",
            EXTRA,
        ],
    );
    let am = Alertmanager::start();
    let prom = Prometheus::start(&rules, cw.port(), am.port());
    phase("sandbox, crashwatch, Alertmanager and Prometheus up");

    // One unit at a time, so that the two series slots go to HEALTHY and CRASHY.
    sb.systemctl_ok(&["start", HEALTHY]);
    // A healthy unit's series are crashwatch_unit_crashlooping and _restarts_total only.
    let seen = wait_until(Duration::from_secs(10), || {
        cw.metric("crashwatch_unit_crashlooping", &[("unit", HEALTHY)]) == Some(0.0)
    });
    assert!(
        seen,
        "crashwatch has no series for {HEALTHY}\n{}",
        cw.diag(HEALTHY)
    );
    sb.systemctl_ok(&["start", CRASHY]);
    let seen = wait_until(Duration::from_secs(10), || {
        cw.metric("crashwatch_unit_crashlooping", &[("unit", CRASHY)])
            .is_some()
    });
    assert!(
        seen,
        "crashwatch has no series for {CRASHY}\n{}",
        cw.diag(CRASHY)
    );
    sb.systemctl_ok(&["start", EXTRA]);
    let overflowed = wait_until(Duration::from_secs(10), || {
        cw.metric("crashwatch_units_overflow_total", &[])
            .is_some_and(|n| n >= 1.0)
    });
    assert!(
        overflowed,
        "starting {EXTRA} beyond --max-units 2 did not count an overflow\n{}",
        cw.diag(EXTRA)
    );
    provoke_http_error(cw.port());
    let errored = wait_until(Duration::from_secs(10), || {
        cw.metric("crashwatch_errors_total", &[("component", "http")])
            .is_some_and(|n| n >= 1.0)
    });
    assert!(
        errored,
        "a half request did not count an HTTP error\n{}",
        cw.diag(CRASHY)
    );
    phase("units started, overflow and HTTP error produced");

    // The crash-loop alert travels: crashwatch flags the loop, Prometheus scrapes it, keeps the
    // alert pending for TEST_FOR, fires and sends it to Alertmanager.
    let mut am_alerts = Ok(Vec::new());
    let arrived = wait_until(Duration::from_secs(40), || {
        am_alerts = am.alerts();
        am_alerts
            .as_ref()
            .is_ok_and(|a| !alerts_for(a, CRASHLOOP_ALERT, CRASHY).is_empty())
    });
    assert!(
        arrived,
        "{CRASHLOOP_ALERT} for {CRASHY} did not reach Alertmanager within 40 s.\n\
         Alertmanager has: {}\nPrometheus has: {}\ncrashwatch_unit_crashlooping in Prometheus: {:?}\n{}",
        am_alerts.as_ref().map(pretty).unwrap_or_else(Clone::clone),
        pretty(&prometheus_alerts(&prom)),
        prom.query("crashwatch_unit_crashlooping"),
        cw.diag(CRASHY)
    );
    phase("crash-loop alert in Alertmanager");
    let am_alerts = am_alerts.unwrap_or_default();
    let alert = alerts_for(&am_alerts, CRASHLOOP_ALERT, CRASHY)[0].clone();
    let expect_label = |k: &str, v: &str| {
        assert_eq!(
            alert["labels"][k],
            v,
            "label {k} of {CRASHLOOP_ALERT} in Alertmanager: {}",
            pretty(&alert)
        );
    };
    expect_label("severity", "critical");
    expect_label("job", "crashwatch");
    expect_label("source", "systemd");
    expect_label("instance", &format!("127.0.0.1:{}", cw.port()));
    let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(CRASHY) && summary.contains(&format!("127.0.0.1:{}", cw.port())),
        "summary should name the unit and the host: {}",
        pretty(&alert)
    );
    let runbook = alert["annotations"]["runbook_url"]
        .as_str()
        .unwrap_or_default();
    assert!(
        runbook.ends_with("README.md#alert-crashwatchunitcrashlooping"),
        "runbook_url should point at the README's runbook section: {}",
        pretty(&alert)
    );
    assert_healthy_unit_never_alerted(&prom, &am, "while crashing");

    // The shipped rules evaluate cleanly against real data: no rule reports an error.
    let groups = prom.api("/api/v1/rules").unwrap_or_else(|e| panic!("{e}"))["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !groups.is_empty(),
        "Prometheus loaded no rule groups\n{}",
        prom.log_tail(20)
    );
    for g in &groups {
        for r in g["rules"].as_array().into_iter().flatten() {
            assert!(
                r["health"] == "ok" && r["lastError"].as_str().unwrap_or_default().is_empty(),
                "rule {} in group {} does not evaluate cleanly: {}",
                r["name"],
                g["name"],
                pretty(r)
            );
        }
    }

    // Every dashboard query returns data, with the dashboard's variables as Grafana would fill
    // them for all instances. Rate windows need two scrapes and recording rules an evaluation,
    // so poll until all have data.
    let expects_data =
        |q: &PanelQuery| !NO_DATA_WITHOUT_OVERLOAD.iter().any(|m| q.expr.contains(m));
    let mut missing: Vec<(String, String, String)> = Vec::new();
    let filled = wait_until(Duration::from_secs(30), || {
        missing.clear();
        for q in &queries {
            let outcome = prom.query(&q.expr);
            let problem = match &outcome {
                Err(e) => Some(e.clone()),
                Ok(data)
                    if expects_data(q) && data["result"].as_array().is_none_or(Vec::is_empty) =>
                {
                    Some(format!("no data: {data}"))
                }
                Ok(_) => None,
            };
            if let Some(p) = problem {
                missing.push((q.panel.clone(), q.expr.clone(), p));
            }
        }
        missing.is_empty()
    });
    assert!(
        filled,
        "dashboard panel queries without data (or failing) within 30 s:\n{}",
        missing
            .iter()
            .map(|(panel, expr, why)| format!("- {panel}: {expr}\n  {why}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    phase(&format!("all {} dashboard queries answered", queries.len()));

    // Fix the unit: it stops crashing, crashwatch ends the loop one --window later, and the alert
    // resolves in Prometheus and in Alertmanager.
    fix_unit(&sb, CRASHY);
    let up = wait_until(Duration::from_secs(10), || {
        sb.active_state(CRASHY) == "active"
    });
    assert!(up, "{CRASHY} is {} after the fix", sb.active_state(CRASHY));
    phase("unit fixed");
    let cleared = wait_until(Duration::from_secs(30), || {
        prom.value("crashwatch_unit_crashlooping", &[("unit", CRASHY)]) == Some(0.0)
    });
    assert!(
        cleared,
        "crashwatch_unit_crashlooping of {CRASHY} in Prometheus is {:?}, not 0, 30 s after the fix\n{}",
        prom.value("crashwatch_unit_crashlooping", &[("unit", CRASHY)]),
        cw.diag(CRASHY)
    );
    phase("crashwatch_unit_crashlooping back to 0 in Prometheus");
    let resolved = wait_until(Duration::from_secs(20), || {
        alerts_for(&alertmanager_alerts(&am), CRASHLOOP_ALERT, CRASHY).is_empty()
            && alerts_for(&prometheus_alerts(&prom), CRASHLOOP_ALERT, CRASHY).is_empty()
    });
    assert!(
        resolved,
        "{CRASHLOOP_ALERT} for {CRASHY} still active after the loop ended.\n\
         Alertmanager has: {}\nPrometheus has: {}",
        pretty(&alertmanager_alerts(&am)),
        pretty(&prometheus_alerts(&prom))
    );
    phase("alert resolved in Prometheus and Alertmanager");
    assert_healthy_unit_never_alerted(&prom, &am, "after the fix");
}

#[test]
fn reference_statsd_server_counts_every_restart() {
    require_sandbox!();
    if let Err(reason) = statsd_server_prerequisites() {
        skip(&reason);
        return;
    }
    let statsd = StatsdServer::start();
    let sb = start_sandbox();
    sb.write_unit(CRASHY, CRASHY_UNIT);
    // Keep the unit loaded across daemon-reload and after: NRestarts is the reference count.
    sb.pin_loaded(&[CRASHY]);
    // --window 3s: the loop ends 3 s after the fix, so the gauge's way back to 0 is seen too.
    let cw = Crashwatch::spawn(&sb, &["--statsd", &statsd.addr(), "--window", "3s"]);
    sb.systemctl_ok(&["start", CRASHY]);

    cw.expect_flagged(CRASHY, 20);
    let looped = wait_until(Duration::from_secs(20), || sb.n_restarts(CRASHY) >= 5);
    assert!(
        looped,
        "{CRASHY} did not reach 5 restarts\n{}",
        cw.diag(CRASHY)
    );

    fix_unit(&sb, CRASHY);
    let settled = wait_until(Duration::from_secs(20), || {
        sb.active_state(CRASHY) == "active"
            && cw.metric("crashwatch_unit_crashlooping", &[("unit", CRASHY)]) == Some(0.0)
    });
    assert!(
        settled,
        "{CRASHY} did not settle after the fix (state {})\n{}",
        sb.active_state(CRASHY),
        cw.diag(CRASHY)
    );
    let n = sb.n_restarts(CRASHY);
    let counted = wait_until(Duration::from_secs(5), || {
        cw.unit_metric("crashwatch_unit_restarts_total", CRASHY) == n as f64
    });
    assert!(
        counted,
        "crashwatch_unit_restarts_total {} vs systemd's NRestarts {n}\n{}",
        cw.unit_metric("crashwatch_unit_restarts_total", CRASHY),
        cw.diag(CRASHY)
    );

    // The server aggregated what it received into its flushes. Wait for the totals to match,
    // then for a few more flushes, so that a late extra count would show.
    let unit = statsd_unit_name(CRASHY);
    let expected = [
        (
            format!("crashwatch.unit.{unit}.restarts"),
            cw.unit_metric("crashwatch_unit_restarts_total", CRASHY),
        ),
        (
            format!("crashwatch.unit.{unit}.starts"),
            cw.unit_metric("crashwatch_unit_starts_total", CRASHY),
        ),
        (
            format!("crashwatch.unit.{unit}.crashes"),
            cw.unit_metric("crashwatch_unit_crashes_total", CRASHY),
        ),
    ];
    assert!(
        expected[0].1 >= 5.0,
        "too few restarts to prove anything: {expected:?}"
    );
    let all_match = || {
        expected
            .iter()
            .all(|(name, want)| statsd.counter_total(name) == *want)
    };
    let matched = wait_until(Duration::from_secs(10), all_match);
    thread::sleep(Duration::from_millis(1500));
    for (name, want) in &expected {
        assert_eq!(
            statsd.counter_total(name),
            *want,
            "{name}: total over the StatsD server's flushes vs crashwatch's /metrics \
             (matched before the extra flushes: {matched}); flushes:\n{}\n{}",
            statsd.describe(&unit),
            statsd.log_tail(10)
        );
    }

    let gauge = format!("crashwatch.unit.{unit}.crashlooping");
    let values = statsd.gauge_values(&gauge);
    assert!(
        values.contains(&1.0) && values.last() == Some(&0.0),
        "{gauge} should have reached 1 and be back at 0 after the fix; flushed values {values:?}"
    );
    // The server's own judgement of every line it got: none malformed.
    let bad = statsd.counter_total("statsd.bad_lines_seen");
    assert_eq!(
        bad,
        0.0,
        "the StatsD server rejected lines\n{}",
        statsd.log_tail(20)
    );
}
