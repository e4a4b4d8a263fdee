//! The shipped systemd unit: hardened enough to score "OK" in `systemd-analyze security`, and
//! still able to do its job under a real systemd: readiness (`Type=notify`), the watchdog, the
//! system bus as an unprivileged user, never reporting on itself, and a clean stop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/crashwatch.service")
}

#[test]
fn packaged_unit_scores_ok_in_systemd_analyze_security() {
    if find_in_path("systemd-analyze").is_none() {
        skip_or_fail(in_ci(), "packaged_unit_scores_ok", "needs systemd-analyze");
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_file())
        .output()
        .expect("running systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for crashwatch.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall score in systemd-analyze output:\n{text}"));
    assert!(score <= 2.0, "exposure {score} is above 2.0:\n{text}");
}

#[test]
fn packaged_unit_runs_hardened_under_systemd() {
    require_sandbox!();
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    // The binary must be reachable from inside the hardened unit: not under /tmp (PrivateTmp) nor
    // /root (ProtectHome). The sandbox's /run is a directory of the test's own.
    let run = sb.dir().join("run").join("cwtest");
    std::fs::create_dir_all(&run).expect("creating the sandbox's /run/cwtest");
    std::fs::copy(env!("CARGO_BIN_EXE_crashwatch"), run.join("crashwatch"))
        .expect("copying crashwatch");
    let unit = std::fs::read_to_string(unit_file()).expect("reading the packaged unit");
    sb.write_unit("crashwatch.service", &unit);
    let dropins = sb.dir().join("units").join("crashwatch.service.d");
    std::fs::create_dir_all(&dropins).expect("creating the drop-in directory");
    // Only what the test must change: where the binary and the record are, a user that exists
    // on any machine (the package creates `crashwatch` through sysusers.d), no directories on
    // the host's /etc and /var (the sandbox shares them), and a watchdog short enough to matter.
    std::fs::write(
        dropins.join("test.conf"),
        "[Service]\n\
         ExecStart=\n\
         ExecStart=/run/cwtest/crashwatch run --events -\n\
         StandardOutput=append:/run/cwtest/events.jsonl\n\
         StandardError=append:/run/cwtest/stderr.log\n\
         User=nobody\nGroup=nogroup\n\
         LogsDirectory=\nStateDirectory=\nConfigurationDirectory=\n\
         WatchdogSec=2s\n",
    )
    .expect("writing the drop-in");
    sb.write_unit("crashy.service", CRASHY_UNIT);
    sb.reload();

    // Type=notify: `systemctl start` returns once crashwatch said READY=1, i.e. it is subscribed.
    sb.systemctl_ok(&["start", "crashwatch.service"]);
    let stderr = || std::fs::read_to_string(run.join("stderr.log")).unwrap_or_default();
    assert_eq!(
        sb.active_state("crashwatch.service"),
        "active",
        "{}",
        stderr()
    );
    sb.systemctl_ok(&["start", "crashy.service"]);

    let events = || -> Vec<Value> {
        std::fs::read_to_string(run.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let flagged = wait_until(Duration::from_secs(20), || {
        events()
            .iter()
            .any(|e| e["event"] == "crashloop_started" && e["unit"] == "crashy.service")
    });
    assert!(
        flagged,
        "no crash loop recorded by the packaged unit\n{}",
        stderr()
    );

    // Past several watchdog periods it is still the same, healthy run.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        sb.active_state("crashwatch.service"),
        "active",
        "{}",
        stderr()
    );
    let show = sb.systemctl(&[
        "show",
        "-p",
        "NRestarts",
        "-p",
        "Result",
        "crashwatch.service",
    ]);
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(
        show.contains("NRestarts=0") && show.contains("Result=success"),
        "{show}"
    );
    assert!(
        events().iter().all(|e| e["unit"] != "crashwatch.service"),
        "crashwatch reported on its own unit"
    );

    let began = Instant::now();
    sb.systemctl_ok(&["stop", "crashwatch.service"]);
    let took = began.elapsed();
    let show = sb.systemctl(&["show", "-p", "Result", "crashwatch.service"]);
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(
        show.contains("Result=success"),
        "stop was not clean: {show}\n{}",
        stderr()
    );
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
}
