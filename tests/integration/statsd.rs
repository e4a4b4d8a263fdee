//! The StatsD sink: every line crashwatch sends must be valid StatsD (a malformed line is
//! silently dropped or misparsed by real servers), and its counters must add up to the same
//! totals as /metrics. With `--statsd-tags` every line must be valid DogStatsD, whatever the unit
//! is called, and a server that refuses the datagrams must show in `crashwatch_errors_total`.

use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

use crate::support::upstart::{watch_peer, FakeUpstart};
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

/// Job names no metric name could carry: every byte StatsD or DogStatsD gives a meaning to, a
/// newline, Unicode, two names that plain StatsD merges, and two long names sharing a prefix.
fn hostile_jobs() -> Vec<String> {
    let long = "L".repeat(300);
    vec![
        "a.service".to_owned(),
        "a_service".to_owned(),
        "comma,pipe|hash#colon:at@bang!".to_owned(),
        "new\nline\r\ttab space".to_owned(),
        "ünïcödé ジョブ".to_owned(),
        "ends with a colon:".to_owned(),
        format!("{long}-one"),
        format!("{long}-two"),
    ]
}

#[test]
fn dogstatsd_tags_carry_every_unit_name_whole() {
    let fake = FakeUpstart::peer_to_peer();
    let statsd = StatsdListener::start();
    let cw = watch_peer(&fake, &["--statsd", statsd.addr(), "--statsd-tags"]);
    let jobs = hostile_jobs();
    let mut pid = 100;
    for job in &jobs {
        fake.start(job, "", pid);
        fake.respawn(job, "", pid + 1);
        pid += 2;
    }
    // An instance: the unit is `job (instance)`, with a space and parentheses.
    fake.start("tty", "tty 1", pid);
    fake.respawn("tty", "tty 1", pid + 1);
    let mut units: Vec<String> = jobs.clone();
    units.push("tty (tty 1)".to_owned());

    let restarts = "crashwatch.unit.restarts";
    let tagged = |unit_tag: &str| -> f64 {
        statsd
            .lines()
            .iter()
            .filter_map(|l| parse_dogstatsd_line(l).ok())
            .filter(|l| l.name == restarts && l.kind == "c" && l.tag("unit") == Some(unit_tag))
            .map(|l| l.value / l.rate.unwrap_or(1.0))
            .sum()
    };
    let all_seen = wait_until(Duration::from_secs(15), || {
        let lines = statsd.lines();
        let restart_lines = lines.iter().filter(|l| l.starts_with(restarts)).count();
        restart_lines >= units.len()
    });
    let lines = statsd.lines();
    assert!(
        all_seen,
        "expected a restart line per unit; lines:\n{}\n{}",
        lines.join("\n"),
        cw.stderr()
    );

    // Every line is valid DogStatsD, with the unit and its source as tags, not in the name.
    let parsed: Vec<DogStatsdLine> = lines
        .iter()
        .map(|l| {
            parse_dogstatsd_line(l)
                .unwrap_or_else(|e| panic!("{e}\nall lines:\n{}", lines.join("\n")))
        })
        .collect();
    for line in &parsed {
        assert_eq!(line.tags.len(), 2, "{line:?}");
        assert!(line.tag("unit").is_some(), "{line:?}");
        assert_eq!(line.tag("source"), Some("upstart"), "{line:?}");
        assert!(line.name.starts_with("crashwatch.unit."), "{line:?}");
    }

    // Each unit has a tag of its own and exactly its one restart under it. Names too long for
    // one tag are cut and hashed, so only their shape is known: 200 characters, the name's start.
    let fits = |value: &String| format!("unit:{value}").chars().count() <= DOGSTATSD_MAX_TAG;
    let (whole, long): (Vec<String>, Vec<String>) = units
        .iter()
        .map(|unit| dogstatsd_tag_value(unit))
        .partition(fits);
    for tag in &whole {
        assert_eq!(
            tagged(tag),
            1.0,
            "restarts tagged unit:{tag}; lines:\n{}",
            lines.join("\n")
        );
    }
    assert!(whole.contains(&"a.service".to_owned()) && whole.contains(&"a_service".to_owned()));
    let cut: BTreeSet<&str> = parsed
        .iter()
        .filter_map(|l| l.tag("unit"))
        .filter(|t| !whole.iter().any(|w| w == t))
        .collect();
    assert_eq!(cut.len(), long.len(), "one tag per long name: {cut:?}");
    for tag in cut {
        assert_eq!(
            format!("unit:{tag}").chars().count(),
            DOGSTATSD_MAX_TAG,
            "{tag}"
        );
        assert!(long.iter().any(|l| l.starts_with(&tag[..150])), "{tag}");
        assert_eq!(tagged(tag), 1.0, "restarts tagged unit:{tag}");
    }
}

#[test]
fn a_refusing_statsd_server_is_counted_and_logged() {
    // A port that was just free: nothing listens there, so the kernel answers each datagram with
    // port-unreachable, which the next send on the connected socket reports.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port();
    let refused = format!("127.0.0.1:{port}");
    let fake = FakeUpstart::peer_to_peer();
    fake.add_running("www", "", 100);
    let cw = watch_peer(&fake, &["--statsd", &refused]);
    let labels = [("component", "statsd"), ("error_type", "send_failed")];
    assert_eq!(
        cw.metric("crashwatch_errors_total", &labels),
        Some(0.0),
        "the counter exists at zero before the first failure"
    );
    for pid in 101..=106 {
        fake.respawn("www", "", pid);
    }
    let counted = wait_until(Duration::from_secs(15), || {
        cw.metric("crashwatch_errors_total", &labels)
            .is_some_and(|n| n >= 1.0)
    });
    assert!(
        counted,
        "send_failed = {:?}\n{}",
        cw.metric("crashwatch_errors_total", &labels),
        cw.stderr()
    );
    let logged = wait_until(Duration::from_secs(5), || {
        cw.stderr().contains("Could not send to StatsD")
    });
    assert!(logged, "no log line:\n{}", cw.stderr());
    // Rate-limited: six events, one line (the next may come only after 10 s).
    assert_eq!(
        cw.stderr().matches("Could not send to StatsD").count(),
        1,
        "{}",
        cw.stderr()
    );
}
