//! The command line's promises: `check-config` verdicts, one-line errors with the documented exit
//! codes when there is no systemd to talk to, and a clean exit on SIGTERM. Operators script
//! around these, so they are part of the interface.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_crashwatch");

/// Every key the contract documents.
const GOOD_CONFIG: &str = r#"
[source.systemd]
unit_include = ["*.service"]
unit_exclude = ["user@*.service"]

[detect]
threshold = 3
window = "5m"

[[detect.override]]
units = "slow*.service"
threshold = 5
window = "1h30m"

[sink.prometheus]
listen = "127.0.0.1:9863"

[sink.statsd]
address = "127.0.0.1:8125"
prefix = "crashwatch"

[sink.events]
path = "-"
"#;

fn check_config(path: &Path) -> Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("running crashwatch check-config")
}

fn nonempty_lines(b: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(b)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Wait for a child with a deadline; kill it if it overstays.
fn wait_with_deadline(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collecting output");
            panic!(
                "still running after {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collecting output")
}

#[test]
fn check_config_rejects_bad_files_with_one_line() {
    let dir = TempDir::new("cw-config");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, GOOD_CONFIG).unwrap();
    let out = check_config(&good);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check-config on a valid file; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{}: ok", good.display())),
        "stdout {stdout:?}"
    );

    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    assert_eq!(
        check_config(&empty).status.code(),
        Some(0),
        "every key is optional"
    );

    let bad = [
        ("unknown-key", "[detect]\nthreshold = 3\nthreshhold = 4\n"),
        ("bad-duration", "[detect]\nwindow = \"5 fortnights\"\n"),
        ("zero-threshold", "[detect]\nthreshold = 0\n"),
        (
            "all-three",
            "[detect]\nthreshold = 0\nwindow = \"soon\"\n\n[sink.prometheus]\nlisten = \"127.0.0.1:9863\"\nport = 1\n",
        ),
    ];
    for (name, contents) in bad {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, contents).unwrap();
        let out = check_config(&path);
        let stderr = nonempty_lines(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: exit status; stderr: {stderr:?}"
        );
        assert_eq!(
            stderr.len(),
            1,
            "{name}: expected exactly one line on stderr, got {stderr:?}"
        );
        assert!(
            stderr[0].contains(&path.display().to_string()),
            "{name}: the error line does not name the file: {:?}",
            stderr[0]
        );
    }
}

#[test]
fn unreachable_bus_is_one_line_and_nonzero() {
    let started = Instant::now();
    let child = Command::new(BIN)
        .args(["run", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning crashwatch run");
    let out = wait_with_deadline(child, Duration::from_secs(10));
    let stderr = nonempty_lines(&out.stderr);
    assert!(!out.status.success(), "exited successfully without a bus");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the contract says exit 1; stderr {stderr:?}"
    );
    assert_eq!(stderr.len(), 1, "expected one stderr line, got {stderr:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} to give up",
        started.elapsed()
    );
}

#[test]
fn bus_without_systemd_is_one_line_and_exit_1() {
    require_dbus_daemon!();
    let bus = PrivateBus::start();
    let child = Command::new(BIN)
        .args(["run", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning crashwatch run");
    let out = wait_with_deadline(child, Duration::from_secs(15));
    let stderr = nonempty_lines(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "no org.freedesktop.systemd1 on the bus; stderr {stderr:?}"
    );
    assert_eq!(stderr.len(), 1, "expected one stderr line, got {stderr:?}");
}

#[test]
fn sigterm_flushes_and_exits_zero() {
    require_sandbox!();
    const UNIT: &str = "crashy.service";
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    sb.write_unit(UNIT, CRASHY_UNIT);
    sb.reload();
    let mut cw = Crashwatch::spawn(&sb, &[]);
    sb.systemctl_ok(&["start", UNIT]);
    let looping = wait_until(Duration::from_secs(20), || {
        cw.unit_metric("crashwatch_unit_restarts_total", UNIT) >= 2.0
    });
    assert!(looping, "no restarts counted\n{}", cw.diag(UNIT));
    let counted = cw.unit_metric("crashwatch_unit_restarts_total", UNIT);

    let status = cw.terminate(Duration::from_secs(10));
    assert!(
        matches!(status, Some(s) if s.success()),
        "exit after SIGTERM: {status:?}; stderr:\n{}",
        cw.stderr()
    );
    // Flushed: the record ends with a complete line and holds at least the restarts that
    // /metrics had counted before the signal.
    let raw = std::fs::read_to_string(cw.events_path()).unwrap();
    assert!(raw.ends_with('\n'), "event record ends mid-line");
    let restart_lines = cw
        .unit_events(UNIT)
        .iter()
        .filter(|e| e["event"] == "transition" && e["transition"] == "restart")
        .count();
    assert!(
        restart_lines as f64 >= counted,
        "{restart_lines} restart lines after SIGTERM, /metrics had counted {counted}"
    );
}
