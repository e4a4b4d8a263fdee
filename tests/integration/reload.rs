//! Reloading the configuration with SIGHUP (what `systemctl reload crashwatch` sends), against a
//! real systemd: new thresholds and filters take effect, the counts of units still watched are
//! kept, and a file that does not check out is refused while the running configuration stays.

use std::time::Duration;

use crate::support::*;

const KEPT: &str = "kept.service";
const DROPPED: &str = "dropped.service";
const LATE: &str = "late.service";

/// A threshold no loop reaches in a test, and `late.service` left out.
const BEFORE: &str = "[source.systemd]\n\
unit_include = [\"*.service\"]\n\
unit_exclude = [\"late.service\"]\n\
[detect]\n\
threshold = 1000\n\
window = \"5m\"\n";

/// Threshold 3, `dropped.service` left out, `late.service` watched, only errors logged.
const AFTER: &str = "[source.systemd]\n\
unit_include = [\"*.service\"]\n\
unit_exclude = [\"dropped.service\"]\n\
[detect]\n\
threshold = 3\n\
window = \"5m\"\n\
[log]\n\
level = \"error\"\n";

fn hangup(cw: &Crashwatch) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &cw.pid().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -HUP {}", cw.pid());
}

fn reload_successful(cw: &Crashwatch) -> Option<f64> {
    cw.metric("crashwatch_config_last_reload_successful", &[])
}

#[test]
fn sighup_applies_new_thresholds_and_filters_and_keeps_counts() {
    require_sandbox!();
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    for unit in [KEPT, DROPPED, LATE] {
        sb.write_unit(unit, CRASHY_UNIT);
    }
    sb.pin_loaded(&[KEPT, DROPPED, LATE]);
    let dir = TempDir::new("cw-reload");
    let config = dir.path().join("crashwatch.toml");
    std::fs::write(&config, BEFORE).unwrap();
    let cw = Crashwatch::spawn(&sb, &["--config", config.to_str().unwrap()]);
    assert_eq!(reload_successful(&cw), Some(1.0), "{}", cw.scrape());

    sb.systemctl_ok(&["start", KEPT, DROPPED]);
    let counting = wait_until(Duration::from_secs(20), || {
        cw.unit_metric("crashwatch_unit_restarts_total", KEPT) >= 4.0
            && cw.unit_metric("crashwatch_unit_restarts_total", DROPPED) >= 1.0
    });
    assert!(counting, "no restarts counted\n{}", cw.diag(KEPT));
    assert_eq!(cw.unit_metric("crashwatch_unit_crashlooping", KEPT), 0.0);
    let before = cw.unit_metric("crashwatch_unit_restarts_total", KEPT);

    std::fs::write(&config, AFTER).unwrap();
    hangup(&cw);
    // The new threshold flags the loop at its next restart; the count carries on from before.
    cw.expect_flagged(KEPT, 20);
    assert!(
        cw.unit_metric("crashwatch_unit_restarts_total", KEPT) >= before,
        "the count of a unit still watched went back\n{}",
        cw.diag(KEPT)
    );
    assert_eq!(reload_successful(&cw), Some(1.0));
    // The new log level: the reload's own info line is no longer written.
    assert!(
        !cw.stderr().contains("Reloaded the configuration"),
        "an info line after the level became error:\n{}",
        cw.stderr()
    );
    let gone = wait_until(Duration::from_secs(5), || {
        !cw.scrape().contains(&format!("unit=\"{DROPPED}\""))
    });
    assert!(gone, "{DROPPED} still has series after it was excluded");
    // Newly watched: a unit left out before is counted from its first start after the reload.
    sb.systemctl_ok(&["start", LATE]);
    let late = wait_until(Duration::from_secs(20), || {
        cw.unit_metric("crashwatch_unit_restarts_total", LATE) >= 2.0
    });
    assert!(
        late,
        "{LATE} not counted after the reload\n{}",
        cw.diag(LATE)
    );
    assert!(
        !cw.scrape().contains(&format!("unit=\"{DROPPED}\"")),
        "{DROPPED} came back"
    );

    // A bad file: refused with one error line, counted, and the running configuration stays.
    std::fs::write(&config, "[detect]\nwindw = \"5m\"\n").unwrap();
    hangup(&cw);
    let refused = wait_until(Duration::from_secs(10), || {
        reload_successful(&cw) == Some(0.0)
    });
    assert!(refused, "a bad file was not refused\n{}", cw.stderr());
    assert_eq!(
        cw.metric(
            "crashwatch_errors_total",
            &[("component", "config"), ("error_type", "reload_failed")]
        ),
        Some(1.0)
    );
    assert!(
        cw.stderr().contains("windw"),
        "the error names the problem:\n{}",
        cw.stderr()
    );
    let counted = cw.unit_metric("crashwatch_unit_restarts_total", KEPT);
    let still = wait_until(Duration::from_secs(10), || {
        cw.unit_metric("crashwatch_unit_restarts_total", KEPT) > counted
    });
    assert!(still, "counting stopped after a refused reload");
    assert_eq!(cw.unit_metric("crashwatch_unit_crashlooping", KEPT), 1.0);

    // Back to the default level: info lines again.
    std::fs::write(&config, BEFORE).unwrap();
    hangup(&cw);
    let logged = wait_until(Duration::from_secs(10), || {
        cw.stderr().contains("Reloaded the configuration")
    });
    assert!(
        logged,
        "no info line at the default level:\n{}",
        cw.stderr()
    );
    assert_eq!(reload_successful(&cw), Some(1.0));
    sb.systemctl_ok(&["stop", KEPT, LATE]);
}
