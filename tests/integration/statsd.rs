//! The StatsD sink: every line crashwatch sends must be valid StatsD (a malformed line is
//! silently dropped or misparsed by real servers), and its counters must add up to the same
//! totals as /metrics.

use std::thread;
use std::time::Duration;

use crate::support::*;

const CRASHY: &str = "crashy.service";

#[test]
fn statsd_lines_are_well_formed_and_counts_match() {
    require_sandbox!();
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    sb.write_unit(CRASHY, CRASHY_UNIT);
    sb.pin_loaded(&[CRASHY]);
    let statsd = StatsdListener::start();
    let cw = Crashwatch::spawn(&sb, &["--statsd", statsd.addr()]);
    sb.systemctl_ok(&["start", CRASHY]);

    cw.expect_flagged(CRASHY, 20);
    let looped = wait_until(Duration::from_secs(20), || sb.n_restarts(CRASHY) >= 5);
    assert!(looped, "{CRASHY} did not reach 5 restarts");
    sb.systemctl_ok(&["stop", CRASHY]);
    thread::sleep(Duration::from_secs(1));

    let n = sb.n_restarts(CRASHY);
    let settled = wait_until(Duration::from_secs(5), || {
        cw.unit_metric("crashwatch_unit_restarts_total", CRASHY) == n as f64
    });
    assert!(
        settled,
        "restarts_total {} vs NRestarts {n}\n{}",
        cw.unit_metric("crashwatch_unit_restarts_total", CRASHY),
        cw.diag(CRASHY)
    );
    let total = cw.unit_metric("crashwatch_unit_restarts_total", CRASHY);

    let name = format!("crashwatch.unit.{}.restarts", statsd_unit_name(CRASHY));
    assert_eq!(name, "crashwatch.unit.crashy_service.restarts");
    // UDP on loopback does not lose datagrams in practice, but the sender may batch.
    let matched = wait_until(Duration::from_secs(5), || {
        statsd.counter_sum(&name) == total
    });
    assert!(
        matched,
        "sum of {name} counters = {}, /metrics restarts_total = {total}; lines received:\n{}",
        statsd.counter_sum(&name),
        statsd.lines().join("\n")
    );

    let lines = statsd.lines();
    assert!(!lines.is_empty(), "no StatsD lines received");
    for l in &lines {
        if let Err(e) = parse_statsd_line(l) {
            panic!("{e}\nall lines:\n{}", lines.join("\n"));
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l == "crashwatch.unit.crashy_service.crashlooping:1|g"),
        "no crashlooping:1|g line for {CRASHY}; lines:\n{}",
        lines.join("\n")
    );
}
