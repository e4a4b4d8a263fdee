//! The status API and `crashwatch status`, as an operator without Prometheus uses them: a unit
//! breaks, the loop shows first in the table and in `/api/units`, one unit's transitions are a
//! command away, and a daemon that is not running is said plainly.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_crashwatch");
const CRASHY: &str = "crashy.service";
const STEADY: &str = "steady.service";

fn status(port: u16, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("status")
        .arg("--address")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .env_remove("CRASHWATCH_CONFIG")
        .output()
        .expect("running crashwatch status")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn api(port: u16, path: &str) -> Value {
    let body = http_get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
}

fn unit_entry<'a>(document: &'a Value, unit: &str) -> &'a Value {
    document["units"]
        .as_array()
        .and_then(|units| units.iter().find(|u| u["unit"] == unit))
        .unwrap_or_else(|| panic!("{unit} missing from {document:#}"))
}

#[test]
fn the_api_shows_a_loop_with_the_numbers_prometheus_has() {
    require_sandbox!();
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    sb.write_unit(CRASHY, CRASHY_UNIT);
    sb.write_unit(STEADY, "[Service]\nExecStart=/bin/sleep infinity\n");
    sb.pin_loaded(&[CRASHY, STEADY]);
    let cw = Crashwatch::spawn(&sb, &["--threshold", "3", "--window", "60s"]);
    sb.systemctl_ok(&["start", STEADY, CRASHY]);
    cw.expect_flagged(CRASHY, 20);
    sb.systemctl_ok(&["stop", CRASHY]);
    let stopped = wait_until(Duration::from_secs(10), || {
        sb.active_state(CRASHY) != "activating"
    });
    assert!(stopped, "{CRASHY} did not stop\n{}", sb.log_tail(20));
    let port = cw.port();

    // What Prometheus says is what the API says: one set of numbers.
    let document = api(port, "/api/units");
    let crashy = unit_entry(&document, CRASHY);
    let restarts = cw.unit_metric("crashwatch_unit_restarts_total", CRASHY);
    assert_eq!(num(&crashy["restarts_total"]), Some(restarts), "{crashy:#}");
    assert!(restarts >= 3.0, "{crashy:#}");
    assert_eq!(crashy["source"], "systemd");
    assert_eq!(crashy["threshold"], 3);
    assert_eq!(num(&crashy["window_seconds"]), Some(60.0));
    assert_eq!(crashy["last_crash"]["reason"], "exit-code", "{crashy:#}");
    assert_eq!(crashy["last_crash"]["exit_code"], "exited", "{crashy:#}");
    assert_eq!(crashy["last_crash"]["exit_status"], 1, "{crashy:#}");
    assert!(crashy["last_transition"]["time"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let steady = unit_entry(&document, STEADY);
    assert_eq!(steady["crashlooping"], false);
    assert_eq!(steady["active"], true);
    assert_eq!(steady["state"], "active");
    assert_eq!(steady["substate"], "running");

    // The stop ended the loop: the API and the gauge agree on that too.
    let ended = wait_until(Duration::from_secs(10), || {
        cw.unit_metric("crashwatch_unit_crashlooping", CRASHY) == 0.0
    });
    assert!(ended, "the stop did not end the loop\n{}", cw.diag(CRASHY));
    assert_eq!(
        unit_entry(&api(port, "/api/units"), CRASHY)["crashlooping"],
        false
    );

    // A unit's transitions, bounded, oldest first, named with escapes the way clients send them.
    let path = format!("/api/units/{}/events", CRASHY.replace('.', "%2E"));
    let events = api(port, &path);
    let list = events["events"].as_array().expect("an events array");
    assert!(!list.is_empty() && list.len() <= 32, "{events:#}");
    assert!(
        list.iter().any(|e| e["transition"] == "restart"),
        "{events:#}"
    );
    assert!(
        list.iter().any(|e| e["crash_reason"] == "exit-code"),
        "{events:#}"
    );
    let times: Vec<u64> = list
        .iter()
        .filter_map(|e| e["timestamp_us"].as_u64())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

#[test]
fn the_status_command_lists_loops_first_and_says_when_no_daemon_runs() {
    require_sandbox!();
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    sb.write_unit(CRASHY, CRASHY_UNIT);
    // Sorted by name, this unit would come before the crashing one.
    sb.write_unit(
        "a-steady.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    );
    sb.pin_loaded(&[CRASHY, "a-steady.service"]);
    let mut cw = Crashwatch::spawn(&sb, &["--threshold", "3", "--window", "60s"]);
    sb.systemctl_ok(&["start", "a-steady.service", CRASHY]);
    cw.expect_flagged(CRASHY, 20);
    let port = cw.port();

    let out = status(port, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("UNIT") && lines[0].contains("LAST CRASH"),
        "{table}"
    );
    assert!(
        lines[1].starts_with(CRASHY) && lines[1].contains("LOOPING"),
        "{table}"
    );
    assert!(lines[1].contains("exit-code (exited 1)"), "{table}");
    assert!(table.contains("a-steady.service"), "{table}");
    assert!(table.contains("crash-looping."), "{table}");

    let out = status(port, &["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let document: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(unit_entry(&document, CRASHY)["crashlooping"], true);

    let out = status(port, &[CRASHY]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let transitions = text(&out.stdout);
    // The last crash comes first, then the transitions.
    assert!(
        transitions.starts_with("Last crash: exit-code (exit: exited 1"),
        "{transitions}"
    );
    assert!(
        transitions.contains("\n\ncrashy.service (systemd)\nTIME"),
        "{transitions}"
    );
    assert!(transitions.contains("restart"), "{transitions}");

    let out = status(port, &["no-such.service"]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(
        said.contains("no such unit is watched") && said.lines().count() == 1,
        "{said}"
    );

    cw.terminate(Duration::from_secs(5));
    let out = status(port, &[]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(
        said.starts_with(&format!(
            "crashwatch: no crashwatch daemon answers on 127.0.0.1:{port}"
        )),
        "{said}"
    );
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(out.stdout.is_empty());
}

/// `crashwatch status` with `args` only: no address or configuration but what they give.
fn status_with(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("status")
        .args(args)
        .env_remove("CRASHWATCH_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("running crashwatch status")
}

#[test]
fn the_status_command_reads_a_daemon_behind_tls_and_basic_auth() {
    require_sandbox!();
    require_tls_tools!();
    if let Err(reason) = crate::support::servers::python3_prerequisites() {
        skip(&reason);
        return;
    }
    // A real daemon's document, served again by a TLS server that wants basic authentication.
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    sb.write_unit(CRASHY, CRASHY_UNIT);
    sb.pin_loaded(&[CRASHY]);
    let cw = Crashwatch::spawn(&sb, &["--threshold", "3", "--window", "60s"]);
    sb.systemctl_ok(&["start", CRASHY]);
    cw.expect_flagged(CRASHY, 20);
    let recorded = http_get(cw.port(), "/api/units").expect("the daemon's /api/units");
    let dir = TempDir::new("cw-status-tls");
    let document_file = dir.path().join("units.json");
    std::fs::write(&document_file, &recorded).expect("writing the document");
    let certs = crate::support::tls::make_certificates(dir.path());
    let password = "status-s3cr3t-password";
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{password}\n")).expect("writing the password");
    let server = crate::support::servers::ScriptServer::start(
        "https_receiver.py",
        &[
            "--cert".to_owned(),
            certs.server_cert.display().to_string(),
            "--key".to_owned(),
            certs.server_key.display().to_string(),
            "--basic-auth".to_owned(),
            format!("crashwatch:{}", password_file.display()),
            "--document".to_owned(),
            document_file.display().to_string(),
        ],
    );
    let url = format!("https://localhost:{}", server.port());
    let ca = certs.ca.display().to_string();
    let other_ca = certs.other_ca.display().to_string();
    let password_path = password_file.display().to_string();
    let credentials = [
        "--basic-auth.username",
        "crashwatch",
        "--basic-auth.password-file",
        password_path.as_str(),
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        credentials
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = status_with(&args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(
            !stdout.contains("s3cr3t") && !stderr.contains("s3cr3t"),
            "{stdout}{stderr}"
        );
        (out.status.code(), stdout, stderr)
    };

    let (code, table, stderr) = run(with(&["--address", &url, "--tls.ca-file", &ca]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(CRASHY) && l.contains("LOOPING")),
        "{table}"
    );
    let (code, json, stderr) = run(with(&["--address", &url, "--tls.ca-file", &ca, "--json"]));
    assert_eq!(code, Some(0), "{stderr}");
    let printed: Value = serde_json::from_str(&json).expect("--json prints JSON");
    let served: Value = serde_json::from_str(&recorded).expect("the daemon's JSON");
    assert_eq!(printed, served);
    // IP:PORT with a --tls.* flag is spoken to over HTTPS; the server name is checked.
    let by_address = format!("127.0.0.1:{}", server.port());
    let (code, _, stderr) = run(with(&[
        "--address",
        &by_address,
        "--tls.ca-file",
        &ca,
        "--tls.server-name",
        "localhost",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    let requests = server.records();
    assert!(
        requests.iter().all(|r| r["headers"]["authorization"]
            .as_str()
            .is_some_and(|a| a.starts_with("Basic "))),
        "{requests:#?}"
    );

    // Each failure is one line that says what to look at.
    let one_line = |code: Option<i32>, stderr: &str, expected: &str, exit: i32| {
        assert_eq!(code, Some(exit), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    };
    let (code, _, stderr) = run(vec![
        "--address".into(),
        url.clone(),
        "--tls.ca-file".into(),
        ca.clone(),
    ]);
    one_line(code, &stderr, "refused the request (HTTP 401)", 1);
    let (code, _, stderr) = run(with(&["--address", &url, "--tls.ca-file", &other_ca]));
    one_line(
        code,
        &stderr,
        &format!("TLS with {url} failed: invalid peer certificate"),
        1,
    );
    let (code, _, stderr) = run(with(&[
        "--address",
        &url,
        "--tls.ca-file",
        &ca,
        "--tls.server-name",
        "someone-else.example",
    ]));
    one_line(code, &stderr, "invalid peer certificate", 1);
    // Told to, it takes any certificate.
    let (code, _, stderr) = run(with(&[
        "--address",
        &url,
        "--tls.ca-file",
        &other_ca,
        "--tls.insecure-skip-verify",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = run(vec![
        "--address".into(),
        url.clone(),
        "--basic-auth.username".into(),
        "crashwatch".into(),
    ]);
    one_line(
        code,
        &stderr,
        "--basic-auth.username and --basic-auth.password-file go together",
        2,
    );
    let (code, _, stderr) = run(with(&[
        "--address",
        &format!("http://localhost:{}", server.port()),
        "--tls.ca-file",
        &ca,
    ]));
    one_line(
        code,
        &stderr,
        "the --tls.* flags need an https:// address",
        2,
    );
    let (code, _, stderr) = run(vec![
        "--address".into(),
        url.clone(),
        "--basic-auth.username".into(),
        "crashwatch".into(),
        "--basic-auth.password-file".into(),
        "/nonexistent/password".into(),
    ]);
    one_line(
        code,
        &stderr,
        "--basic-auth.password-file: reading /nonexistent/password: ",
        2,
    );
}
