//! Unit churn: transient units come and go, and crashwatch forgets them. Each gets its series
//! while it exists and for `--unloaded-retention` after systemd unloads it (so a scrape sees how
//! it ended), then leaves `/metrics` and the unit table: memory follows the units that exist,
//! not every unit ever seen.

use std::time::Duration;

use crate::support::*;

/// Starts `count` transient services named `churn-<round>-<n>.service` that exit at once; systemd
/// unloads each when it ends. One shell loop inside the sandbox, so the churn is quick.
fn churn(sb: &Sandbox, round: u32, count: u32) {
    let script = format!(
        "i=0; while [ $i -lt {count} ]; do \
         systemd-run --quiet --unit=churn-{round}-$i.service /bin/true || exit 1; \
         i=$((i+1)); done"
    );
    let out = sb.run_inside(120, &["/bin/sh", "-c", &script]);
    assert!(
        out.status.success(),
        "systemd-run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Churned units with series: every unit has `crashwatch_unit_crashlooping`, whatever
/// `--unit-series` says.
fn churn_series(cw: &Crashwatch) -> usize {
    cw.scrape()
        .lines()
        .filter(|l| l.starts_with("crashwatch_unit_crashlooping{unit=\"churn-"))
        .count()
}

#[test]
fn short_lived_units_are_forgotten_and_memory_stays_flat() {
    require_sandbox!();
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    let cw = Crashwatch::spawn(
        &sb,
        &[
            "--unloaded-retention",
            "1s",
            "--window",
            "3s",
            "--threshold",
            "2",
        ],
    );

    // A transient unit run again and again from outside, failing each time, and unloaded after
    // each failure: its restarts stay in the window while it is gone, so it keeps its series past
    // the retention, until the loop is over.
    let looping = "churn-loop.service";
    for _ in 0..4 {
        let out = sb.run_inside(
            30,
            &[
                "systemd-run",
                "--quiet",
                "--unit",
                looping,
                "-p",
                "CollectMode=inactive-or-failed",
                "/bin/false",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    cw.expect_flagged(looping, 20);
    // Past the retention, but its restarts are still within the 3 s window: kept.
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        cw.metric("crashwatch_unit_crashlooping", &[("unit", looping)])
            .is_some(),
        "{looping} dropped while its restarts were still in the window\n{}",
        cw.stderr()
    );

    let mut rss_after_round = Vec::new();
    for round in 0..3 {
        churn(&sb, round, 200);
        // Heard, each of them: a unit crashwatch never saw would have no series to forget.
        let prefix = format!("churn-{round}-");
        let heard = || {
            cw.events()
                .iter()
                .filter(|e| e["transition"] == "starting")
                .filter(|e| e["unit"].as_str().is_some_and(|u| u.starts_with(&prefix)))
                .count()
        };
        let all_heard = wait_until(Duration::from_secs(30), || heard() == 200);
        assert!(all_heard, "round {round}: {} of 200 starts heard", heard());
        let forgotten = wait_until(Duration::from_secs(30), || churn_series(&cw) == 0);
        assert!(
            forgotten,
            "{} churn units still have series after round {round}\n{}",
            churn_series(&cw),
            cw.stderr()
        );
        rss_after_round.push(cw.rss_kib());
    }
    // None kept: no series of any kind is left of a churned unit.
    let kept = cw
        .scrape()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("{unit=\"churn-"))
        .count();
    assert_eq!(kept, 0, "series left of churned units");
    let forgotten = wait_until(Duration::from_secs(20), || {
        cw.metric("crashwatch_unit_crashlooping", &[("unit", looping)])
            .is_none()
    });
    assert!(
        forgotten,
        "{looping} kept after its window emptied\n{}",
        cw.diag(looping)
    );
    let left: Vec<String> = cw
        .scrape()
        .lines()
        .filter(|l| l.starts_with("crashwatch_unit_crashlooping{"))
        .map(str::to_owned)
        .collect();
    assert!(!left.iter().any(|l| l.contains("churn-")), "{left:#?}");
    assert_eq!(
        cw.metric("crashwatch_units", &[]),
        Some(left.len() as f64),
        "crashwatch_units disagrees with the series: {left:#?}"
    );
    assert_eq!(
        cw.metric("crashwatch_units_overflow_total", &[])
            .unwrap_or(0.0),
        0.0
    );

    // The first round grows the heap to what churn needs; later rounds reuse it.
    let (first, last) = (rss_after_round[0], rss_after_round[2]);
    assert!(
        last <= first + 1024,
        "resident memory grew from {first} KiB to {last} KiB over two more rounds of 200 units: {rss_after_round:?}"
    );
    eprintln!("resident memory after each round of 200 units: {rss_after_round:?} KiB");
}
