//! The command line's promises: `check-config` verdicts, one-line errors with the documented exit
//! codes when there is no systemd to talk to, a clean exit on SIGTERM, and log lines that journald
//! and log shippers can read (`--log-format`, priorities under journald, colour only on a
//! terminal). Operators script around these, so they are part of the interface.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
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
tags = false

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

/// Runs crashwatch with `args` and `env` (stdin and stdout closed, `$JOURNAL_STREAM` unset unless
/// given), its stderr to `stderr`, and waits up to `timeout` for it to exit.
fn run_to_exit(
    args: &[&str],
    env: &[(&str, &str)],
    stderr: impl Into<Stdio>,
    timeout: Duration,
) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning crashwatch {args:?}: {e}"));
    wait_with_deadline(child, timeout)
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
    let out = run_to_exit(
        &["run", "--listen", &format!("127.0.0.1:{}", free_port())],
        &[("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")],
        Stdio::piped(),
        Duration::from_secs(10),
    );
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
    let out = run_to_exit(
        &["run", "--listen", &format!("127.0.0.1:{}", free_port())],
        &[("DBUS_SYSTEM_BUS_ADDRESS", bus.address())],
        Stdio::piped(),
        Duration::from_secs(15),
    );
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

// ------------------------------------------------------------------------------------------------
// Log lines
// ------------------------------------------------------------------------------------------------

/// How the daemon's stderr was set up for [`daemon_log`].
#[derive(Clone, Copy, PartialEq)]
enum Stderr {
    /// A plain file.
    File,
    /// A file that `$JOURNAL_STREAM` names, as systemd sets it for a service logging to journald.
    Journal,
}

/// Runs the daemon with nothing to watch (the Upstart job hook only, no bus), so it runs
/// anywhere, with stderr into a file: it logs its start, a warning for a malformed datagram sent
/// to its hook socket, and its stop on SIGTERM. Returns the exit status and what it wrote.
fn daemon_log(args: &[&str], stderr: Stderr) -> (Option<ExitStatus>, String) {
    let dir = TempDir::new("cw-log");
    let socket = dir.path().join("hook.sock");
    let log = dir.path().join("stderr");
    let file = File::create(&log).expect("creating the stderr file");
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .args(["run", "--listen", "127.0.0.1:0", "--source", "upstart"])
        .args(["--upstart-address", "none", "--upstart-hook-socket"])
        .arg(&socket)
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if stderr == Stderr::Journal {
        cmd.env("JOURNAL_STREAM", journal_stream(&file));
    }
    let mut child = cmd.stderr(file).spawn().expect("spawning crashwatch run");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = wait_until(Duration::from_secs(20), || text().contains("Watching"));
    if started {
        UnixDatagram::unbound()
            .and_then(|s| s.send_to(b"not a hook message", &socket))
            .expect("sending to the hook socket");
        let warned = wait_until(Duration::from_secs(10), || text().contains("malformed"));
        assert!(warned, "no warning for a malformed datagram:\n{}", text());
    }
    let status = terminate(&mut child, Duration::from_secs(10));
    assert!(started, "the daemon did not start; stderr:\n{}", text());
    (status, text())
}

/// `$JOURNAL_STREAM` for `file`: its device and inode, as systemd writes them for the journal's
/// stream socket.
fn journal_stream(file: &File) -> String {
    let metadata = file.metadata().expect("stat of the stderr file");
    format!("{}:{}", metadata.dev(), metadata.ino())
}

/// Whether `line` holds an RFC 3339 date-time (`2026-01-02T`).
fn has_timestamp(line: &str) -> bool {
    line.as_bytes().windows(11).any(|w| {
        w.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            _ => b.is_ascii_digit(),
        })
    })
}

/// The priority a journald line starts with, and the rest; fails the test if it has none.
fn priority(line: &str) -> (u8, &str) {
    let parsed = line
        .strip_prefix('<')
        .and_then(|rest| rest.split_once('>'))
        .and_then(|(n, rest)| Some((n.parse().ok()?, rest)));
    let Some((n, rest)) = parsed else {
        panic!("no <N> priority at the start of {line:?}");
    };
    assert!(matches!(n, 3 | 4 | 6 | 7), "priority {n} in {line:?}");
    (n, rest)
}

#[test]
fn under_journald_every_line_carries_its_priority_and_no_timestamp() {
    let (status, log) = daemon_log(&[], Stderr::Journal);
    assert!(
        matches!(status, Some(s) if s.success()),
        "{status:?}\n{log}"
    );
    let lines = nonempty_lines(log.as_bytes());
    for line in &lines {
        priority(line);
        assert!(!has_timestamp(line), "a timestamp under journald: {line:?}");
        assert!(!line.contains('\u{1b}'), "colour under journald: {line:?}");
    }
    for expected in [
        "<6> INFO Watching 0 units",
        "<4> WARN Dropped a malformed",
        "<6> INFO Stopped.",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(expected)),
            "no line starting {expected:?}:\n{log}"
        );
    }

    // Structured formats too: the priority, then the record, with no time in it.
    for format in ["json", "logfmt"] {
        let (status, log) = daemon_log(&["--log-format", format], Stderr::Journal);
        assert!(
            matches!(status, Some(s) if s.success()),
            "{status:?}\n{log}"
        );
        for line in nonempty_lines(log.as_bytes()) {
            let (n, record) = priority(&line);
            let level = if format == "json" {
                let value: serde_json::Value = serde_json::from_str(record).unwrap_or_else(|e| {
                    panic!("{format}: not JSON after the priority ({e}): {line:?}")
                });
                assert!(value.get("time").is_none(), "{line:?}");
                value["level"].as_str().expect("a level").to_owned()
            } else {
                assert!(!record.contains("time="), "{line:?}");
                let level = record.strip_prefix("level=").expect("level= first");
                level.split(' ').next().unwrap_or_default().to_owned()
            };
            let expected = match level.as_str() {
                "error" => 3,
                "warn" => 4,
                "info" => 6,
                _ => 7,
            };
            assert_eq!(n, expected, "priority against level in {line:?}");
        }
    }

    // The line a daemon that cannot start ends with is an error: `journalctl -p err` shows it.
    let dir = TempDir::new("cw-log");
    let log = dir.path().join("stderr");
    let file = File::create(&log).unwrap();
    let stream = journal_stream(&file);
    let out = run_to_exit(
        &["run", "--listen", "127.0.0.1:0"],
        &[
            ("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent"),
            ("JOURNAL_STREAM", &stream),
        ],
        file,
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = nonempty_lines(text.as_bytes());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("<3>crashwatch: "), "{lines:?}");
}

#[test]
fn journal_stream_naming_another_file_is_not_journald() {
    // A service whose stderr was redirected (`2>file`, StandardError=file:) inherits
    // $JOURNAL_STREAM, but it no longer names stderr: plain lines, with their time.
    let dir = TempDir::new("cw-log");
    let other = File::create(dir.path().join("other")).unwrap();
    let out = run_to_exit(
        &["check-config", "/nonexistent/crashwatch.toml"],
        &[("JOURNAL_STREAM", &journal_stream(&other))],
        Stdio::piped(),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    let lines = nonempty_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("crashwatch: reading "), "{lines:?}");

    let (_, log) = daemon_log(&[], Stderr::File);
    for line in nonempty_lines(log.as_bytes()) {
        assert!(has_timestamp(&line), "no timestamp: {line:?}");
        assert!(
            !line.starts_with('<'),
            "a priority outside journald: {line:?}"
        );
        assert!(!line.contains('\u{1b}'), "colour into a file: {line:?}");
    }
}

#[test]
fn log_formats_keep_every_line_parseable() {
    let (status, log) = daemon_log(&["--log-format", "json"], Stderr::File);
    assert!(
        matches!(status, Some(s) if s.success()),
        "{status:?}\n{log}"
    );
    let records: Vec<serde_json::Value> = nonempty_lines(log.as_bytes())
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    for record in &records {
        assert!(record["level"].is_string(), "{record}");
        assert!(record["msg"].is_string(), "{record}");
        assert!(
            has_timestamp(record["time"].as_str().unwrap_or_default()),
            "{record}"
        );
    }
    let warning = records
        .iter()
        .find(|r| r["level"] == "warn")
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert_eq!(
        warning["msg"],
        "Dropped a malformed message on the job hook socket."
    );
    assert!(warning["reason"].is_string(), "{warning}");
    assert!(
        records
            .iter()
            .any(|r| r["level"] == "info" && r["units"] == 0),
        "numbers stay numbers:\n{log}"
    );

    let (status, log) = daemon_log(&["--log-format", "logfmt"], Stderr::File);
    assert!(
        matches!(status, Some(s) if s.success()),
        "{status:?}\n{log}"
    );
    let lines = nonempty_lines(log.as_bytes());
    for line in &lines {
        let (time, rest) = line.split_once(' ').expect("two fields at least");
        assert!(time.starts_with("time=") && has_timestamp(time), "{line:?}");
        assert!(rest.starts_with("level="), "{line:?}");
        assert!(rest.contains(" msg="), "{line:?}");
    }
    assert!(
        lines.iter().any(|l| l.contains(
            " level=warn msg=\"Dropped a malformed message on the job hook socket.\" reason="
        )),
        "{log}"
    );

    // A start-up failure is a record too.
    let out = run_to_exit(
        &["--log-format", "json", "run", "--listen", "127.0.0.1:0"],
        &[("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")],
        Stdio::piped(),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    let lines = nonempty_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let record: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON");
    assert_eq!(record["level"], "error", "{record}");
    assert!(
        record["msg"]
            .as_str()
            .unwrap_or_default()
            .starts_with("cannot connect to the system bus"),
        "{record}"
    );
}

#[test]
fn a_bad_log_format_is_one_line_and_exit_2() {
    for args in [
        &["--log-format", "yaml", "check-config", "x.toml"][..],
        &[
            "--log-format",
            "json",
            "--log-level",
            "loud",
            "check-config",
            "x.toml",
        ][..],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running crashwatch");
        let stderr = nonempty_lines(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr:?}");
        assert_eq!(stderr.len(), 1, "{args:?}: {stderr:?}");
        assert!(stderr[0].contains("is not one of"), "{args:?}: {stderr:?}");
    }
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let Some(script) = find_in_path("script") else {
        return skip("needs script (package util-linux) to give crashwatch a terminal");
    };
    let dir = TempDir::new("cw-tty");
    let socket = dir.path().join("hook.sock");
    // script(1) gives the command a pseudo-terminal and copies what it writes to stdout.
    let command = format!(
        "timeout -s TERM 1 '{BIN}' run --listen 127.0.0.1:0 --source upstart \
         --upstart-address none --upstart-hook-socket '{}'",
        socket.display()
    );
    let on_terminal = |no_color: Option<&str>| {
        let mut cmd = Command::new(&script);
        cmd.args(["-qec", &command, "/dev/null"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if let Some(value) = no_color {
            cmd.env("NO_COLOR", value);
        }
        let out = cmd.output().expect("running script");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("Watching"), "{no_color:?}: {text}");
        text
    };
    assert!(
        on_terminal(None).contains('\u{1b}'),
        "no colour on a terminal"
    );
    assert!(
        on_terminal(Some("")).contains('\u{1b}'),
        "an empty NO_COLOR does not count"
    );
    let plain = on_terminal(Some("1"));
    assert!(
        !plain.contains('\u{1b}'),
        "colour despite NO_COLOR: {plain:?}"
    );
}

#[test]
fn journalctl_sees_each_line_at_its_priority() {
    require_sandbox!();
    let sb = Sandbox::start_with_journal().unwrap_or_else(|e| panic!("{e}"));
    // One daemon that starts and runs, one that cannot start: journald gives their stderr to
    // the journal, with $JOURNAL_STREAM naming the stream as systemd sets it.
    let port = free_port();
    sb.write_unit(
        "cw-good.service",
        &format!("[Service]\nExecStart={BIN} run --listen 127.0.0.1:{port} --no-journal-history\n"),
    );
    sb.write_unit(
        "cw-bad.service",
        &format!("[Service]\nExecStart={BIN} run --listen nowhere\n"),
    );
    sb.reload();
    sb.systemctl_ok(&["start", "cw-good.service", "cw-bad.service"]);

    let messages = |unit: &str, priority: &str| -> Vec<serde_json::Value> {
        let out = sb.journalctl(&["-o", "json", "-u", unit, "-p", priority]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let text = |m: &serde_json::Value| m["MESSAGE"].as_str().unwrap_or_default().to_owned();
    let failed = wait_until(Duration::from_secs(20), || {
        !messages("cw-bad.service", "err").is_empty()
    });
    assert!(
        failed,
        "no err-priority message for cw-bad.service; its journal:\n{}",
        String::from_utf8_lossy(&sb.journalctl(&["-u", "cw-bad.service"]).stdout)
    );
    let errors = messages("cw-bad.service", "err");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["PRIORITY"], "3");
    assert!(
        text(&errors[0]).starts_with("crashwatch: command line: listen address"),
        "journald strips the prefix: {errors:?}"
    );

    let watching = wait_until(Duration::from_secs(20), || {
        messages("cw-good.service", "info")
            .iter()
            .any(|m| text(m).contains("Watching"))
    });
    assert!(
        watching,
        "no Watching line for cw-good.service; its journal:\n{}",
        String::from_utf8_lossy(&sb.journalctl(&["-u", "cw-good.service"]).stdout)
    );
    for m in messages("cw-good.service", "debug") {
        let line = text(&m);
        assert!(
            !line.starts_with('<'),
            "prefix left in the message: {line:?}"
        );
        assert!(
            !has_timestamp(&line),
            "a timestamp under journald: {line:?}"
        );
        assert!(!line.contains('\u{1b}'), "colour under journald: {line:?}");
        if line.contains("Watching") {
            assert_eq!(m["PRIORITY"], "6", "{m}");
        }
    }
    assert!(
        messages("cw-good.service", "err").is_empty(),
        "a healthy daemon logs no errors"
    );
}
