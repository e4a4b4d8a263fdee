//! /metrics judged by Prometheus' own linter, after activity that exercises the awkward corners:
//! unit names full of backslashes (systemd's escapes), a template instance ('@'), and a name
//! longer than 200 bytes. Label values must be escaped correctly and the StatsD names for the
//! same units must still be valid.

use std::time::Duration;

use crate::support::*;

const CRASHY: &str = "crashy.service";
const TEMPLATE: &str = "crashy-tpl@.service";
const INSTANCE: &str = "crashy-tpl@inst\\x3a1.service";

/// A valid unit name as `systemd-escape` would produce for "hostile:name|pipe#hash-aaa...": the
/// backslashes end up in label values, where the exposition format requires escaping them.
fn hostile_unit() -> String {
    format!(
        "hostile\\x3aname\\x7cpipe\\x23hash-{}.service",
        "a".repeat(180)
    )
}

#[test]
fn metrics_pass_promtool() {
    require_sandbox!();
    require_promtool!();
    let hostile = hostile_unit();
    assert!(
        hostile.len() > 200 && hostile.len() < 256,
        "{}",
        hostile.len()
    );

    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    sb.write_unit(CRASHY, CRASHY_UNIT);
    sb.write_unit(&hostile, CRASHY_UNIT);
    sb.write_unit(TEMPLATE, CRASHY_UNIT);
    sb.reload();
    let statsd = StatsdListener::start();
    let cw = Crashwatch::spawn(&sb, &["--statsd", statsd.addr()]);
    for unit in [CRASHY, hostile.as_str(), INSTANCE] {
        sb.systemctl_ok(&["start", unit]);
    }
    for unit in [CRASHY, hostile.as_str(), INSTANCE] {
        cw.expect_flagged(unit, 20);
        assert!(sb.n_restarts(unit) >= 3, "{unit}: systemd saw no loop");
    }

    let text = cw.scrape();
    // Not vacuous: the awkward series are really there, with the name intact after unescaping.
    for unit in [hostile.as_str(), INSTANCE] {
        for m in [
            "crashwatch_unit_restarts_total",
            "crashwatch_unit_crashes_total",
            "crashwatch_unit_crashlooping",
        ] {
            assert!(
                metric_value(&text, m, &[("unit", unit)]).is_some(),
                "{m}{{unit={unit:?}}} missing from /metrics:\n{text}"
            );
        }
    }
    assert_eq!(
        metric_value(&text, "crashwatch_source_up", &[("source", "systemd")]),
        Some(1.0),
        "crashwatch_source_up{{source=\"systemd\"}}"
    );
    if let Err(e) = promtool_check_metrics(&text) {
        panic!("{e}\n--- /metrics ---\n{text}");
    }

    // StatsD: every line valid, and the hostile units have their own series.
    let lines = statsd.lines();
    for l in &lines {
        if let Err(e) = parse_statsd_line(l) {
            panic!("{e}\nall lines:\n{}", lines.join("\n"));
        }
    }
    let instance_name = format!("crashwatch.unit.{}.restarts", statsd_unit_name(INSTANCE));
    assert_eq!(
        instance_name,
        "crashwatch.unit.crashy-tpl_inst_x3a1_service.restarts"
    );
    assert!(
        statsd.counter_sum(&instance_name) >= 3.0,
        "no {instance_name} counters; lines:\n{}",
        lines.join("\n")
    );

    // The hostile name is longer than 128 bytes once sanitized: the contract cuts it and appends
    // "_" + 8 hex digits. Recognise it by its sanitized prefix and check the shape.
    let full = statsd_unit_name(&hostile);
    let segments: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("crashwatch.unit."))
        .filter_map(|rest| rest.split('.').next())
        .filter(|seg| seg.starts_with(&full[..64]))
        .collect();
    assert!(
        !segments.is_empty(),
        "no StatsD lines for {hostile}; lines:\n{}",
        lines.join("\n")
    );
    for seg in &segments {
        assert_eq!(seg, &segments[0], "one unit, several StatsD names");
        assert!(seg.len() <= 128 + 9, "{seg}: {} bytes", seg.len());
        let (cut, hash) = seg.split_at(seg.len() - 9);
        assert!(
            hash.starts_with('_') && hash[1..].bytes().all(|b| b.is_ascii_hexdigit()),
            "{seg}: no _<8 hex> suffix"
        );
        assert!(full.starts_with(cut), "{seg}: not a cut of {full}");
    }
    let hostile_restarts = format!("crashwatch.unit.{}.restarts", segments[0]);
    assert!(statsd.counter_sum(&hostile_restarts) >= 3.0);
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("crashwatch.unit.{}.crashlooping:1|g", segments[0])),
        "no crashlooping:1|g line for {hostile}"
    );
}

/// The series `text` has of `unit`, as `name{labels}` without the value.
fn series_of(text: &str, unit: &str) -> Vec<String> {
    let unit = format!("unit=\"{}\"", escape_label_value(unit));
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&unit))
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l, |(series, _)| series)
                .to_owned()
        })
        .collect()
}

/// Every family a unit that crashed with a known exit status and restarted has.
const FULL_SET: [&str; 11] = [
    "crashwatch_unit_starts_total",
    "crashwatch_unit_restarts_total",
    "crashwatch_unit_crashloops_total",
    "crashwatch_unit_crashlooping",
    "crashwatch_unit_restarts_in_window",
    "crashwatch_unit_active",
    "crashwatch_unit_crashes_total",
    "crashwatch_unit_transitions_total",
    "crashwatch_unit_last_crash_timestamp_seconds",
    "crashwatch_unit_last_exit_code",
    "crashwatch_unit_last_crash_run_seconds",
];

#[test]
fn a_healthy_unit_costs_two_series_and_a_crashing_unit_its_full_set() {
    require_sandbox!();
    const HEALTHY: &str = "healthy.service";
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    sb.write_unit(HEALTHY, "[Service]\nExecStart=/bin/sleep infinity\n");
    sb.write_unit(CRASHY, CRASHY_UNIT);
    // Stopped, it keeps its NRestarts to compare with.
    sb.pin_loaded(&[CRASHY]);
    let budget = Crashwatch::spawn(&sb, &[]);
    let all = Crashwatch::spawn(&sb, &["--unit-series=all"]);
    sb.systemctl_ok(&["start", HEALTHY]);
    // A stop and a start by hand are no crash: still healthy.
    sb.systemctl_ok(&["restart", HEALTHY]);
    sb.systemctl_ok(&["start", CRASHY]);
    budget.expect_flagged(CRASHY, 20);
    all.expect_flagged(CRASHY, 20);
    sb.systemctl_ok(&["stop", CRASHY]);
    let n = assert_counts_match(&sb, &budget, CRASHY);
    assert!(n >= 3, "{CRASHY}: systemd saw no loop (NRestarts {n})");
    assert_eq!(assert_counts_match(&sb, &all, CRASHY), n);
    let counted = wait_until(Duration::from_secs(10), || {
        all.unit_metric("crashwatch_unit_starts_total", HEALTHY) == 2.0
    });
    assert!(
        counted,
        "the restart by hand not heard\n{}",
        all.diag(HEALTHY)
    );

    // The default: two series of the healthy unit, at 0.
    let text = budget.scrape();
    let labels = format!("{{unit=\"{HEALTHY}\",source=\"systemd\"}}");
    assert_eq!(
        series_of(&text, HEALTHY),
        [
            format!("crashwatch_unit_restarts_total{labels}"),
            format!("crashwatch_unit_crashlooping{labels}"),
        ],
        "\n{text}"
    );
    for name in [
        "crashwatch_unit_restarts_total",
        "crashwatch_unit_crashlooping",
    ] {
        assert_eq!(metric_value(&text, name, &[("unit", HEALTHY)]), Some(0.0));
    }
    // Every family of the crashing unit, with its counts as systemd has them.
    let crashy = series_of(&text, CRASHY);
    for name in FULL_SET {
        assert!(
            crashy.iter().any(|s| s.starts_with(&format!("{name}{{"))),
            "{name} of {CRASHY} missing:\n{text}"
        );
    }
    let value = |name: &str| metric_value(&text, name, &[("unit", CRASHY)]);
    assert_eq!(value("crashwatch_unit_restarts_total"), Some(n as f64));
    // The first run and one per restart; each crashed, but the stop may have caught the last.
    let runs = [n as f64, n as f64 + 1.0];
    let starts = value("crashwatch_unit_starts_total").unwrap_or(0.0);
    assert!(runs.contains(&starts), "{starts} starts, {n} restarts");
    let crashes = metric_value(
        &text,
        "crashwatch_unit_crashes_total",
        &[("unit", CRASHY), ("reason", "exit-code")],
    )
    .unwrap_or(0.0);
    assert!(runs.contains(&crashes), "{crashes} crashes, {n} restarts");
    assert_eq!(value("crashwatch_unit_crashloops_total"), Some(1.0));
    assert_eq!(value("crashwatch_unit_active"), Some(0.0));
    assert_eq!(value("crashwatch_unit_last_exit_code"), Some(1.0));

    // --unit-series=all: every series of both units, as before.
    let text = all.scrape();
    let healthy = series_of(&text, HEALTHY);
    for name in &FULL_SET[..6] {
        assert!(
            healthy.iter().any(|s| s.starts_with(&format!("{name}{{"))),
            "{name} of {HEALTHY} missing with --unit-series=all:\n{text}"
        );
    }
    assert_eq!(
        metric_value(&text, "crashwatch_unit_active", &[("unit", HEALTHY)]),
        Some(1.0)
    );
    assert_eq!(
        series_of(&text, CRASHY),
        crashy,
        "the same series of {CRASHY}"
    );
}
