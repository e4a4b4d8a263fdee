//! Actions on a real crash loop: a webhook received by a listener in the test, an alert in a real
//! Alertmanager, a command that writes down the environment it was given, and the failures
//! (a closed port, a receiver that never answers, a command that overruns) counted. Over HTTPS:
//! a Python receiver (OpenSSL's side of the handshake) and an Alertmanager with its own web
//! configuration take crashwatch's requests with certificates made at test time and credentials
//! from files, through a CONNECT proxy named in the environment, and with redirects and answers
//! that must be bounded.
//!
//! Every test runs the crashing unit against a short `--window`, so a loop starts within a
//! second of `systemctl start`; it is ended with `systemctl stop` (outcome `stopped`), which the
//! detector sees at once.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::support::receiver::HookReceiver;
use crate::support::servers::*;
use crate::support::*;

const CRASHY: &str = "crashy.service";
const ALERTNAME: &str = "CrashwatchUnitCrashLooping";

fn sandbox_with_crashy() -> Sandbox {
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    sb.write_unit(CRASHY, CRASHY_UNIT);
    sb.reload();
    sb
}

/// Writes `text` as crashwatch.toml in `dir` and returns its path.
fn write_config(dir: &TempDir, text: &str) -> String {
    let path = dir.path().join("crashwatch.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path.display().to_string()
}

/// crashwatch with `config`, a short window and the default threshold of 3.
fn spawn_crashwatch(sb: &Sandbox, config: &str) -> Crashwatch {
    Crashwatch::spawn(sb, &["--config", config, "--window", "3s"])
}

/// Starts the crashing unit and waits until crashwatch flags its loop.
fn start_loop(sb: &Sandbox, cw: &Crashwatch) {
    sb.systemctl_ok(&["start", CRASHY]);
    cw.expect_flagged(CRASHY, 20);
}

/// Stops the crashing unit and waits until crashwatch has ended its loop.
fn stop_loop(sb: &Sandbox, cw: &Crashwatch) {
    sb.systemctl_ok(&["stop", CRASHY]);
    let ended = wait_until(Duration::from_secs(20), || {
        cw.metric("crashwatch_unit_crashlooping", &[("unit", CRASHY)]) == Some(0.0)
    });
    assert!(
        ended,
        "the loop of {CRASHY} did not end\n{}",
        cw.diag(CRASHY)
    );
}

fn actions_total(cw: &Crashwatch, kind: &str, event: &str, result: &str) -> f64 {
    cw.metric(
        "crashwatch_actions_total",
        &[("kind", kind), ("event", event), ("result", result)],
    )
    .unwrap_or(0.0)
}

fn action_errors(cw: &Crashwatch, error_type: &str) -> f64 {
    cw.metric(
        "crashwatch_errors_total",
        &[("component", "actions"), ("error_type", error_type)],
    )
    .unwrap_or(0.0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("reading the host name")
        .trim()
        .to_owned()
}

/// `2026-11-21T06:50:53.114Z`, as crashwatch writes timestamps.
fn is_rfc3339_utc(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && text[..4].parse::<u32>().is_ok_and(|y| y >= 2020)
}

// ------------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------------

#[test]
fn a_webhook_is_posted_once_per_loop_start_and_end_and_a_500_is_retried() {
    require_sandbox!();
    let receiver = HookReceiver::start(1);
    let dir = TempDir::new("cw-actions");
    let config = write_config(
        &dir,
        &format!(
            r#"
[[action]]
units = ["crashy.service"]
webhook = "{}"
headers = {{ Authorization = "Bearer test-token" }}
backoff = "200ms"

[[action]]
units = ["other-*.service"]
webhook = "{}"
"#,
            receiver.url("/hook"),
            receiver.url("/unrelated"),
        ),
    );
    let sb = sandbox_with_crashy();
    let cw = spawn_crashwatch(&sb, &config);

    let expect_accepted = |event: &str, round: usize| {
        let accepted = wait_until(Duration::from_secs(15), || {
            receiver.accepted("/hook", event).len() == round
        });
        assert!(
            accepted,
            "round {round}: no {event} webhook accepted: {:#?}\n{}",
            receiver.received(),
            cw.diag(CRASHY)
        );
    };
    for round in 1..=2 {
        start_loop(&sb, &cw);
        expect_accepted("loop_started", round);
        stop_loop(&sb, &cw);
        expect_accepted("loop_ended", round);
    }
    // A restart after the end, or a late duplicate, would show up now.
    thread::sleep(Duration::from_secs(1));

    let received = receiver.received();
    assert!(
        received.iter().all(|r| r.path == "/hook"),
        "an action for other units fired: {received:#?}"
    );
    // The first request was answered 500 and retried with the same body; nothing else was sent.
    assert_eq!(received.len(), 5, "{received:#?}");
    assert_eq!(received[0].status, 500);
    assert_eq!(
        received[0].body, received[1].body,
        "the retry changed the body"
    );
    let events: Vec<&str> = received[1..]
        .iter()
        .map(|r| r.body["event"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        events,
        ["loop_started", "loop_ended", "loop_started", "loop_ended"]
    );

    let start = &received[1].body;
    assert_eq!(start["unit"], CRASHY);
    assert_eq!(start["source"], "systemd");
    assert_eq!(start["outcome"], Value::Null);
    assert_eq!(start["threshold"], 3);
    assert_eq!(num(&start["window_seconds"]), Some(3.0));
    assert!(start["restarts_in_window"].as_u64() >= Some(3), "{start}");
    // /bin/false: systemd's Result is exit-code, the status 1.
    assert_eq!(start["last_exit"], "exit-code");
    assert_eq!(start["last_exit_status"], 1);
    assert_eq!(start["hostname"], hostname().as_str());
    let timestamp = start["timestamp"].as_str().unwrap_or_default();
    assert!(is_rfc3339_utc(timestamp), "{timestamp:?}");
    let end = &received[2].body;
    assert_eq!(end["event"], "loop_ended");
    assert_eq!(end["outcome"], "stopped");
    assert!(end["timestamp"].as_str() >= start["timestamp"].as_str());
    for r in &received {
        assert_eq!(
            r.headers.get("authorization").map(String::as_str),
            Some("Bearer test-token")
        );
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }

    let counted = wait_until(Duration::from_secs(5), || {
        actions_total(&cw, "webhook", "loop_ended", "ok") == 2.0
    });
    assert!(counted, "{}", cw.scrape());
    assert_eq!(actions_total(&cw, "webhook", "loop_started", "ok"), 2.0);
    assert_eq!(actions_total(&cw, "webhook", "loop_started", "failed"), 0.0);
    assert_eq!(actions_total(&cw, "webhook", "loop_ended", "failed"), 0.0);
}

/// Alertmanager's alerts named `name` for the crashing unit.
fn alerts_named(am: &Alertmanager, name: &str) -> Vec<Value> {
    am.alerts()
        .unwrap_or_else(|e| panic!("{e}\n{}", am.log_tail(20)))
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == name && a["labels"]["unit"] == CRASHY)
        .collect()
}

#[test]
fn an_alertmanager_alert_fires_while_the_loop_lasts_and_resolves_when_it_ends() {
    require_sandbox!();
    require_prometheus!();
    let am = Alertmanager::start();
    let dir = TempDir::new("cw-actions");
    // Two pushes to the same Alertmanager: one re-sent every second (valid for 4 s), which must
    // stay firing however long the loop lasts; one re-sent every minute (valid for 4 min), whose
    // prompt disappearance can only come from the resolution crashwatch pushes at the loop's end.
    let config = write_config(
        &dir,
        &format!(
            r#"
[[action]]
alertmanager = "http://127.0.0.1:{port}"
resend_interval = "1s"
labels = {{ team = "web" }}

[[action]]
alertmanager = "http://127.0.0.1:{port}/"
alertname = "CrashwatchSlowResend"
severity = "warning"
"#,
            port = am.port()
        ),
    );
    let sb = sandbox_with_crashy();
    let cw = spawn_crashwatch(&sb, &config);
    start_loop(&sb, &cw);

    let firing = wait_until(Duration::from_secs(15), || {
        alerts_named(&am, ALERTNAME).len() == 1
            && alerts_named(&am, "CrashwatchSlowResend").len() == 1
    });
    assert!(
        firing,
        "the alerts did not reach Alertmanager: {:#?}\n{}",
        am.alerts(),
        cw.diag(CRASHY)
    );
    let alert = alerts_named(&am, ALERTNAME).remove(0);
    assert_eq!(alert["status"]["state"], "active", "{alert:#}");
    let labels = &alert["labels"];
    assert_eq!(labels["source"], "systemd");
    assert_eq!(labels["instance"], hostname().as_str());
    assert_eq!(labels["severity"], "critical");
    assert_eq!(labels["team"], "web");
    let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains(CRASHY), "{summary:?}");
    let description = alert["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(description.contains("exit-code"), "{description:?}");
    assert_eq!(
        alerts_named(&am, "CrashwatchSlowResend")[0]["labels"]["severity"],
        "warning"
    );

    // Past the first push's endsAt: only the resends keep it firing.
    let first_ends = alert["endsAt"].as_str().unwrap_or_default().to_owned();
    thread::sleep(Duration::from_secs(6));
    let later = alerts_named(&am, ALERTNAME);
    assert_eq!(
        later.len(),
        1,
        "the alert lapsed while the loop went on: {:#?}\n{}",
        am.alerts(),
        cw.diag(CRASHY)
    );
    assert_eq!(later[0]["status"]["state"], "active");
    assert!(
        later[0]["endsAt"].as_str().unwrap_or_default() > first_ends.as_str(),
        "endsAt did not move: {first_ends} then {}",
        later[0]["endsAt"]
    );
    assert_eq!(
        later[0]["startsAt"], alert["startsAt"],
        "a resend restarted the alert"
    );
    assert!(actions_total(&cw, "alertmanager", "refresh", "ok") >= 2.0);

    stop_loop(&sb, &cw);
    let resolved = wait_until(Duration::from_secs(20), || {
        alerts_named(&am, ALERTNAME).is_empty()
            && alerts_named(&am, "CrashwatchSlowResend").is_empty()
    });
    assert!(
        resolved,
        "alerts still active after the loop ended: {:#?}\n{}",
        am.alerts(),
        cw.diag(CRASHY)
    );
    assert_eq!(
        actions_total(&cw, "alertmanager", "loop_started", "ok"),
        2.0
    );
    assert_eq!(actions_total(&cw, "alertmanager", "loop_ended", "ok"), 2.0);
    assert_eq!(
        actions_total(&cw, "alertmanager", "loop_started", "failed")
            + actions_total(&cw, "alertmanager", "loop_ended", "failed")
            + actions_total(&cw, "alertmanager", "refresh", "failed"),
        0.0,
        "{}",
        cw.stderr()
    );
}

/// Parses `env` output (`NAME=value` lines) into a map.
fn read_env(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

#[test]
fn a_command_gets_the_loop_in_its_environment_and_overruns_are_killed() {
    require_sandbox!();
    let dir = TempDir::new("cw-actions");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("creating the output directory");
    // The unit name reaches this script only as data in its environment; the script fails on
    // the loop's end, which must be counted. The rename makes each file appear complete.
    let record = dir.path().join("record-env.sh");
    write_script(
        &record,
        "#!/bin/sh\n\
         env > \"$1/partial\"\n\
         mv \"$1/partial\" \"$1/$CRASHWATCH_EVENT.env\"\n\
         echo command-stdout-marker\n\
         [ \"$CRASHWATCH_EVENT\" = loop_started ]\n",
    );
    // Leaves a grandchild behind and never finishes: the timeout must take both down.
    let overrun = dir.path().join("overrun.sh");
    write_script(
        &overrun,
        "#!/bin/sh\n\
         sleep 60 &\n\
         echo $! > \"$1/grandchild-$CRASHWATCH_EVENT.pid\"\n\
         wait\n",
    );
    let config = write_config(
        &dir,
        &format!(
            r#"
[[action]]
units = ["crashy.service"]
command = ["{record}", "{out}"]

[[action]]
units = ["crashy.service"]
command = ["{overrun}", "{out}"]
timeout = "1s"
"#,
            record = record.display(),
            overrun = overrun.display(),
            out = out.display(),
        ),
    );
    let sb = sandbox_with_crashy();
    let cw = spawn_crashwatch(&sb, &config);
    start_loop(&sb, &cw);
    let started_env = out.join("loop_started.env");
    assert!(
        wait_until(Duration::from_secs(15), || started_env.exists()),
        "the command did not run on the loop's start\n{}",
        cw.diag(CRASHY)
    );
    stop_loop(&sb, &cw);
    let ended_env = out.join("loop_ended.env");
    assert!(
        wait_until(Duration::from_secs(15), || ended_env.exists()),
        "the command did not run on the loop's end\n{}",
        cw.diag(CRASHY)
    );

    let start = read_env(&started_env);
    let get = |env: &BTreeMap<String, String>, key: &str| env.get(key).cloned().unwrap_or_default();
    assert_eq!(get(&start, "CRASHWATCH_UNIT"), CRASHY);
    assert_eq!(get(&start, "CRASHWATCH_SOURCE"), "systemd");
    assert_eq!(get(&start, "CRASHWATCH_EVENT"), "loop_started");
    assert_eq!(get(&start, "CRASHWATCH_THRESHOLD"), "3");
    assert_eq!(get(&start, "CRASHWATCH_WINDOW_SECONDS"), "3");
    assert!(
        get(&start, "CRASHWATCH_RESTARTS")
            .parse::<u32>()
            .is_ok_and(|n| n >= 3),
        "{start:?}"
    );
    assert_eq!(get(&start, "CRASHWATCH_LAST_EXIT"), "exit-code");
    assert_eq!(get(&start, "CRASHWATCH_LAST_EXIT_STATUS"), "1");
    assert!(
        is_rfc3339_utc(&get(&start, "CRASHWATCH_TIMESTAMP")),
        "{start:?}"
    );
    assert!(!start.contains_key("CRASHWATCH_OUTCOME"), "{start:?}");
    assert!(
        start.contains_key("PATH"),
        "crashwatch's own environment was not passed on"
    );
    let end = read_env(&ended_env);
    assert_eq!(get(&end, "CRASHWATCH_EVENT"), "loop_ended");
    assert_eq!(get(&end, "CRASHWATCH_OUTCOME"), "stopped");
    assert_eq!(get(&end, "CRASHWATCH_UNIT"), CRASHY);

    let counted = wait_until(Duration::from_secs(10), || {
        actions_total(&cw, "command", "loop_ended", "failed") >= 1.0
            && action_errors(&cw, "command_timeout") >= 2.0
    });
    assert!(counted, "failures not counted\n{}", cw.scrape());
    assert_eq!(actions_total(&cw, "command", "loop_started", "ok"), 1.0);
    assert_eq!(action_errors(&cw, "command_failed"), 1.0);
    assert!(
        cw.stderr().contains("command-stdout-marker"),
        "the command's output was not logged\n{}",
        cw.stderr()
    );
    for event in ["loop_started", "loop_ended"] {
        let pid_file = out.join(format!("grandchild-{event}.pid"));
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", pid_file.display()));
        let stat = Path::new("/proc").join(pid.trim()).join("stat");
        let gone = wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&stat).map_or(true, |s| s.contains(") Z "))
        });
        assert!(
            gone,
            "the grandchild {} of a timed-out command lives on",
            pid.trim()
        );
    }
}

#[test]
fn failed_deliveries_are_counted_and_shutdown_waits_only_briefly() {
    require_sandbox!();
    let closed_port = free_port();
    // Bound and never accepted: connections complete in the kernel and no answer ever comes.
    let black_hole = TcpListener::bind("127.0.0.1:0").expect("binding the black hole");
    let black_hole_port = black_hole.local_addr().expect("address").port();
    let dir = TempDir::new("cw-actions");
    let config = write_config(
        &dir,
        &format!(
            r#"
[[action]]
webhook = "http://127.0.0.1:{closed_port}/hook"
retries = 1
backoff = "100ms"

[[action]]
webhook = "http://127.0.0.1:{black_hole_port}/hook"
timeout = "60s"
retries = 0
"#
        ),
    );
    let sb = sandbox_with_crashy();
    let mut cw = spawn_crashwatch(&sb, &config);
    start_loop(&sb, &cw);
    let counted = wait_until(Duration::from_secs(15), || {
        actions_total(&cw, "webhook", "loop_started", "failed") >= 1.0
    });
    assert!(counted, "the closed port was not counted\n{}", cw.scrape());
    assert_eq!(action_errors(&cw, "http_failed"), 1.0);

    // The black hole holds one request for up to a minute; stopping must not wait for it.
    let status = cw.terminate(Duration::from_secs(20));
    let stderr = cw.stderr();
    assert!(
        status.is_some_and(|s| s.success()),
        "crashwatch did not exit cleanly while a delivery hung ({status:?})\n{stderr}"
    );
    assert!(
        stderr.contains("An action was given up."),
        "the abandoned delivery was not reported\n{stderr}"
    );
    drop(black_hole);
}

/// `crashwatch check-config FILE` with `env`: its exit code and its stderr.
fn check_config(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crashwatch"))
        .arg("check-config")
        .arg(config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .envs(env.iter().copied())
        .output()
        .expect("running crashwatch check-config");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_the_key_and_never_shows_a_secret() {
    let dir = TempDir::new("cw-actions");
    let secret = "inline-s3cr3t-value";
    let credentials = dir.path().join("credentials");
    std::fs::create_dir_all(&credentials).expect("creating the credentials directory");
    std::fs::write(credentials.join("am-password"), format!("{secret}\n")).expect("writing");
    let cases = [
        (
            format!(
                "[[action]]\nwebhook = \"https://127.0.0.1:9/hook\"\n\
                 basic_auth = {{ username = \"cw\", password = \"{secret}\" }}\n\
                 tls_config = {{ ca_file = \"/nonexistent/ca.pem\" }}\n"
            ),
            "action[1]: tls_config.ca_file: reading /nonexistent/ca.pem: ",
        ),
        (
            format!(
                "[[action]]\nwebhook = \"http://127.0.0.1:9/hook\"\n\
                 headers = {{ Authorization = \"Bearer {secret}\" }}\n\
                 authorization = {{ credentials_file = \"/nonexistent/token\" }}\n"
            ),
            "action[1]: authorization.credentials_file: reading /nonexistent/token: ",
        ),
        (
            format!(
                "[[action]]\nalertmanager = \"http://127.0.0.1:9093\"\n\
                 headers = {{ Authorization = \"Bearer {secret}\" }}\n\
                 basic_auth = {{ username = \"cw\", password_file = \"{}\" }}\n",
                credentials.join("am-password").display()
            ),
            "action[1]: a header Authorization cannot be given with basic_auth",
        ),
        (
            "[[action]]\nwebhook = \"http://a/\"\nbasic_auth = { password_file = \"x\" }\n"
                .to_owned(),
            "action[1]: basic_auth needs username or username_file",
        ),
        (
            "[[action]]\nwebhook = \"https://a/\"\ntls_config = { cert_file = \"/etc/hostname\" }\n"
                .to_owned(),
            "action[1]: tls_config.cert_file and tls_config.key_file go together",
        ),
        (
            "[[action]]\nwebhook = \"https://a/\"\ntls_config = { ca = \"x\" }\n".to_owned(),
            "unknown field `ca`",
        ),
        (
            // A systemd credential outside its unit: looked up here, and the line says where.
            "[[action]]\nwebhook = \"http://a/\"\n\
             basic_auth = { username = \"cw\", password_file = \"am-password\" }\n"
                .to_owned(),
            "basic_auth.password_file: reading am-password: ",
        ),
    ];
    for (text, expected) in &cases {
        let config = write_config(&dir, text);
        let (code, stdout, stderr) = check_config(&config, &[]);
        assert_eq!(code, Some(2), "{text}\n{stdout}{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(expected), "{expected:?} not in {stderr}");
        assert!(
            !stderr.contains("s3cr3t") && !stdout.contains("s3cr3t"),
            "a secret was shown: {stdout}{stderr}"
        );
    }
    // With the unit's credentials directory, the same configuration is good, and says nothing
    // of the password it read.
    let config = write_config(&dir, &cases.last().expect("cases").0);
    let credentials_dir = credentials.display().to_string();
    let (code, stdout, stderr) =
        check_config(&config, &[("CREDENTIALS_DIRECTORY", &credentials_dir)]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.ends_with(": ok\n"), "{stdout}");
    assert!(!stdout.contains("s3cr3t") && !stderr.contains("s3cr3t"));
}

// ------------------------------------------------------------------------------------------------
// HTTPS, credentials, proxies and bounds, against real servers
// ------------------------------------------------------------------------------------------------

/// Skips (or fails under CI=true) unless the Python test servers can run.
macro_rules! require_python3 {
    () => {
        if let Err(reason) = python3_prerequisites() {
            skip(&reason);
            return;
        }
    };
}

/// The records of `server` for `path` whose body's `event` is `event`.
fn recorded(server: &ScriptServer, path: &str, event: &str) -> Vec<Value> {
    server
        .records()
        .into_iter()
        .filter(|r| {
            r["path"] == path
                && serde_json::from_str::<Value>(r["body"].as_str().unwrap_or("null"))
                    .is_ok_and(|body| body["event"] == event)
        })
        .collect()
}

/// crashwatch with `config`, a short window and `env`.
fn spawn_crashwatch_with_env(sb: &Sandbox, config: &str, env: &[(&str, &str)]) -> Crashwatch {
    Crashwatch::spawn_with_env(
        sb.bus_address(),
        None,
        &["--config", config, "--window", "3s"],
        env,
    )
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn https_webhooks_carry_credentials_from_files_and_refuse_a_stranger() {
    require_sandbox!();
    require_tls_tools!();
    require_python3!();
    let dir = TempDir::new("cw-actions-tls");
    let certs = crate::support::tls::make_certificates(dir.path());
    // The bearer token is a systemd credential: a relative path, found through
    // $CREDENTIALS_DIRECTORY. The password is a file named by its absolute path.
    let credentials = dir.path().join("credentials");
    std::fs::create_dir_all(&credentials).expect("creating the credentials directory");
    let token_file = credentials.join("webhook-token");
    std::fs::write(&token_file, "token-s3cr3t-first\n").expect("writing the token");
    let password_file = dir.path().join("webhook-password");
    std::fs::write(&password_file, "password-s3cr3t\n").expect("writing the password");

    let tls_args = |extra: &[String]| -> Vec<String> {
        let mut args = vec![
            "--cert".to_owned(),
            path_text(&certs.server_cert),
            "--key".to_owned(),
            path_text(&certs.server_key),
        ];
        args.extend_from_slice(extra);
        args
    };
    // Wants a client certificate signed by the test CA.
    let mutual = ScriptServer::start(
        "https_receiver.py",
        &tls_args(&["--client-ca".to_owned(), path_text(&certs.ca)]),
    );
    // On an address the server certificate does not name, behind basic authentication.
    let elsewhere = ScriptServer::start(
        "https_receiver.py",
        &tls_args(&[
            "--bind".to_owned(),
            "127.0.0.2".to_owned(),
            "--basic-auth".to_owned(),
            format!("crashwatch:{}", password_file.display()),
        ]),
    );
    let config = write_config(
        &dir,
        &format!(
            r#"
[[action]]
units = ["crashy.service"]
webhook = "https://localhost:{mutual}/bearer?tenant=a"
retries = 0
tls_config = {{ ca_file = "{ca}", cert_file = "{cert}", key_file = "{key}" }}
authorization = {{ credentials_file = "webhook-token" }}

[[action]]
units = ["crashy.service"]
webhook = "https://127.0.0.2:{elsewhere}/basic"
retries = 0
tls_config = {{ ca_file = "{ca}", server_name = "localhost" }}
basic_auth = {{ username = "crashwatch", password_file = "{password}" }}

[[action]]
units = ["crashy.service"]
webhook = "https://localhost:{mutual}/stranger"
retries = 0
tls_config = {{ ca_file = "{other_ca}", cert_file = "{cert}", key_file = "{key}" }}

[[action]]
units = ["crashy.service"]
webhook = "https://localhost:{mutual}/without-certificate"
retries = 0
tls_config = {{ ca_file = "{ca}" }}
"#,
            mutual = mutual.port(),
            elsewhere = elsewhere.port(),
            ca = certs.ca.display(),
            other_ca = certs.other_ca.display(),
            cert = certs.client_cert.display(),
            key = certs.client_key.display(),
            password = password_file.display(),
        ),
    );
    let credentials_dir = path_text(&credentials);
    let sb = sandbox_with_crashy();
    let cw = spawn_crashwatch_with_env(
        &sb,
        &config,
        &[("CREDENTIALS_DIRECTORY", credentials_dir.as_str())],
    );

    start_loop(&sb, &cw);
    let delivered = wait_until(Duration::from_secs(15), || {
        recorded(&mutual, "/bearer?tenant=a", "loop_started").len() == 1
            && recorded(&elsewhere, "/basic", "loop_started").len() == 1
            && actions_total(&cw, "webhook", "loop_started", "failed") == 2.0
    });
    assert!(
        delivered,
        "mutual: {:#?}\nelsewhere: {:#?}\n{}\n{}",
        mutual.records(),
        elsewhere.records(),
        cw.stderr(),
        mutual.log_tail(20)
    );
    // The token is read at each request: a rotated one goes with the loop's end.
    std::fs::write(&token_file, "token-s3cr3t-second\n").expect("rotating the token");
    stop_loop(&sb, &cw);
    let ended = wait_until(Duration::from_secs(15), || {
        recorded(&mutual, "/bearer?tenant=a", "loop_ended").len() == 1
            && recorded(&elsewhere, "/basic", "loop_ended").len() == 1
    });
    assert!(ended, "{:#?}\n{}", mutual.records(), cw.stderr());

    let start = &recorded(&mutual, "/bearer?tenant=a", "loop_started")[0];
    assert_eq!(
        start["headers"]["authorization"],
        "Bearer token-s3cr3t-first"
    );
    assert_eq!(start["client_cn"], "crashwatch-test-client");
    assert_eq!(start["headers"]["content-type"], "application/json");
    let end = &recorded(&mutual, "/bearer?tenant=a", "loop_ended")[0];
    assert_eq!(
        end["headers"]["authorization"],
        "Bearer token-s3cr3t-second"
    );
    // The receiver answers 401 to any other credentials, which would count as failed.
    let basic = &recorded(&elsewhere, "/basic", "loop_started")[0];
    assert!(
        basic["headers"]["authorization"]
            .as_str()
            .is_some_and(|a| a.starts_with("Basic ")),
        "{basic}"
    );
    assert_eq!(basic["client_cn"], Value::Null);
    // Neither refused handshake got as far as a request.
    let paths: Vec<String> = mutual
        .records()
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        paths.iter().all(|p| p == "/bearer?tenant=a"),
        "a request got through a refused handshake: {paths:?}"
    );

    assert_eq!(actions_total(&cw, "webhook", "loop_started", "ok"), 2.0);
    let counted = wait_until(Duration::from_secs(10), || {
        actions_total(&cw, "webhook", "loop_ended", "ok") == 2.0
            && actions_total(&cw, "webhook", "loop_ended", "failed") == 2.0
    });
    assert!(counted, "{}", cw.scrape());
    assert_eq!(action_errors(&cw, "http_failed"), 4.0);
    let stderr = cw.stderr();
    // The first failure is logged (the next are rate-limited): one line naming the action, its
    // URL without the query, and what TLS said.
    let line = stderr
        .lines()
        .find(|l| l.contains("An action failed."))
        .unwrap_or_else(|| panic!("no failure logged:\n{stderr}"));
    let named = [
        format!(
            "action[3] https://localhost:{}/stranger: TLS: ",
            mutual.port()
        ),
        format!(
            "action[4] https://localhost:{}/without-certificate: ",
            mutual.port()
        ),
    ];
    assert!(named.iter().any(|n| line.contains(n)), "{line}");
    assert!(!stderr.contains("s3cr3t"), "a secret was logged:\n{stderr}");
    assert!(
        !stderr.contains("tenant=a"),
        "a query was logged:\n{stderr}"
    );
}

#[test]
fn an_alertmanager_behind_tls_client_certificates_and_basic_auth_takes_the_alert() {
    require_sandbox!();
    require_prometheus!();
    require_tls_tools!();
    if let Err(reason) = curl_prerequisites() {
        skip(&reason);
        return;
    }
    let dir = TempDir::new("cw-actions-am-tls");
    let certs = crate::support::tls::make_certificates(dir.path());
    let password = "am-s3cr3t-password";
    let hash = crate::support::tls::bcrypt_hash(password);
    let am = AlertmanagerTls::start(&AlertmanagerTlsSetup {
        ca: &certs.ca,
        server_cert: &certs.server_cert,
        server_key: &certs.server_key,
        client_cert: &certs.client_cert,
        client_key: &certs.client_key,
        user: "crashwatch",
        password,
        password_hash: &hash,
    });
    let credentials = dir.path().join("credentials");
    std::fs::create_dir_all(&credentials).expect("creating the credentials directory");
    std::fs::write(credentials.join("am-password"), format!("{password}\n"))
        .expect("writing the password");
    std::fs::write(credentials.join("wrong-password"), "not-the-s3cr3t\n")
        .expect("writing the password");
    let config = write_config(
        &dir,
        &format!(
            r#"
[[action]]
alertmanager = "https://localhost:{port}"
tls_config = {{ ca_file = "{ca}", cert_file = "{cert}", key_file = "{key}" }}
basic_auth = {{ username = "crashwatch", password_file = "am-password" }}

[[action]]
alertmanager = "https://localhost:{port}"
alertname = "CrashwatchWrongPassword"
retries = 0
tls_config = {{ ca_file = "{ca}", cert_file = "{cert}", key_file = "{key}" }}
basic_auth = {{ username = "crashwatch", password_file = "wrong-password" }}
"#,
            port = am.port(),
            ca = certs.ca.display(),
            cert = certs.client_cert.display(),
            key = certs.client_key.display(),
        ),
    );
    let credentials_dir = path_text(&credentials);
    let sb = sandbox_with_crashy();
    let cw = spawn_crashwatch_with_env(
        &sb,
        &config,
        &[("CREDENTIALS_DIRECTORY", credentials_dir.as_str())],
    );
    let named = |name: &str| -> Vec<Value> {
        am.alerts()
            .unwrap_or_else(|e| panic!("{e}\n{}", am.log_tail(20)))
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name && a["labels"]["unit"] == CRASHY)
            .collect()
    };
    start_loop(&sb, &cw);
    let firing = wait_until(Duration::from_secs(15), || {
        named(ALERTNAME).len() == 1
            && actions_total(&cw, "alertmanager", "loop_started", "failed") == 1.0
    });
    assert!(
        firing,
        "{:#?}\n{}\n{}",
        am.alerts(),
        cw.stderr(),
        am.log_tail(20)
    );
    assert_eq!(named(ALERTNAME)[0]["status"]["state"], "active");
    assert!(named("CrashwatchWrongPassword").is_empty());
    assert_eq!(action_errors(&cw, "http_rejected"), 1.0);
    let stderr = cw.stderr();
    assert!(
        stderr.contains(&format!(
            "action[2] https://localhost:{}/api/v2/alerts: HTTP 401",
            am.port()
        )),
        "{stderr}"
    );

    stop_loop(&sb, &cw);
    let resolved = wait_until(Duration::from_secs(20), || named(ALERTNAME).is_empty());
    assert!(resolved, "{:#?}\n{}", am.alerts(), cw.stderr());
    assert_eq!(actions_total(&cw, "alertmanager", "loop_ended", "ok"), 1.0);
    assert!(!cw.stderr().contains("s3cr3t"), "{}", cw.stderr());
}

#[test]
fn webhooks_go_through_the_proxy_the_environment_names() {
    require_sandbox!();
    require_tls_tools!();
    require_python3!();
    let dir = TempDir::new("cw-actions-proxy");
    let certs = crate::support::tls::make_certificates(dir.path());
    let proxy = ScriptServer::start("connect_proxy.py", &[]);
    let secure = ScriptServer::start(
        "https_receiver.py",
        &[
            "--cert".to_owned(),
            path_text(&certs.server_cert),
            "--key".to_owned(),
            path_text(&certs.server_key),
        ],
    );
    let plain = ScriptServer::start("https_receiver.py", &[]);
    let config = write_config(
        &dir,
        &format!(
            r#"
[[action]]
units = ["crashy.service"]
webhook = "https://localhost:{secure}/through-the-proxy"
tls_config = {{ ca_file = "{ca}" }}

[[action]]
units = ["crashy.service"]
webhook = "http://127.0.0.1:{plain}/direct"
"#,
            secure = secure.port(),
            plain = plain.port(),
            ca = certs.ca.display(),
        ),
    );
    let https_proxy = format!("http://proxyuser:proxy-s3cr3t@127.0.0.1:{}", proxy.port());
    let http_proxy = format!("http://127.0.0.1:{}", proxy.port());
    let sb = sandbox_with_crashy();
    let cw = spawn_crashwatch_with_env(
        &sb,
        &config,
        &[
            ("HTTPS_PROXY", https_proxy.as_str()),
            ("http_proxy", http_proxy.as_str()),
            ("no_proxy", "localhost.invalid, 127.0.0.1"),
        ],
    );
    start_loop(&sb, &cw);
    let delivered = wait_until(Duration::from_secs(15), || {
        recorded(&secure, "/through-the-proxy", "loop_started").len() == 1
            && recorded(&plain, "/direct", "loop_started").len() == 1
    });
    assert!(
        delivered,
        "{:#?}\n{:#?}\n{}\n{}",
        proxy.records(),
        secure.records(),
        cw.stderr(),
        proxy.log_tail(20)
    );
    let tunnels = proxy.records();
    assert_eq!(tunnels.len(), 1, "{tunnels:#?}");
    assert_eq!(tunnels[0]["method"], "CONNECT");
    assert_eq!(
        tunnels[0]["target"],
        format!("localhost:{}", secure.port()).as_str()
    );
    // user:password from $HTTPS_PROXY, as Basic credentials for the proxy.
    assert!(
        tunnels[0]["proxy_authorization"]
            .as_str()
            .is_some_and(|a| a.starts_with("Basic ")),
        "{tunnels:#?}"
    );
    assert_eq!(actions_total(&cw, "webhook", "loop_started", "failed"), 0.0);
    assert!(!cw.stderr().contains("s3cr3t"), "{}", cw.stderr());
}

#[test]
fn redirect_loops_downgrades_and_huge_answers_are_bounded() {
    require_sandbox!();
    require_tls_tools!();
    require_python3!();
    let dir = TempDir::new("cw-actions-bounds");
    let certs = crate::support::tls::make_certificates(dir.path());
    let looping = ScriptServer::start(
        "https_receiver.py",
        &["--redirect-to".to_owned(), "self".to_owned()],
    );
    let downgrading = ScriptServer::start(
        "https_receiver.py",
        &[
            "--cert".to_owned(),
            path_text(&certs.server_cert),
            "--key".to_owned(),
            path_text(&certs.server_key),
            "--redirect-to".to_owned(),
            format!("http://127.0.0.1:{}/downgraded", looping.port()),
        ],
    );
    // 64 MiB of answer to every request, with a status not worth retrying.
    let huge = ScriptServer::start(
        "https_receiver.py",
        &[
            "--status".to_owned(),
            "400".to_owned(),
            "--answer-bytes".to_owned(),
            (64 << 20).to_string(),
        ],
    );
    let config = write_config(
        &dir,
        &format!(
            r#"
[[action]]
units = ["crashy.service"]
webhook = "http://127.0.0.1:{looping}/loop"
retries = 0

[[action]]
units = ["crashy.service"]
webhook = "https://localhost:{downgrading}/secure"
retries = 0
tls_config = {{ ca_file = "{ca}" }}

[[action]]
units = ["crashy.service"]
webhook = "http://127.0.0.1:{huge}/huge"
retries = 0
"#,
            looping = looping.port(),
            downgrading = downgrading.port(),
            huge = huge.port(),
            ca = certs.ca.display(),
        ),
    );
    let sb = sandbox_with_crashy();
    let cw = spawn_crashwatch(&sb, &config);
    let rss_before = cw.rss_kib();
    start_loop(&sb, &cw);
    let counted = wait_until(Duration::from_secs(20), || {
        actions_total(&cw, "webhook", "loop_started", "failed") == 3.0
    });
    assert!(counted, "{}\n{}", cw.scrape(), cw.stderr());
    assert_eq!(action_errors(&cw, "http_failed"), 2.0);
    assert_eq!(action_errors(&cw, "http_rejected"), 1.0);

    // The first request and five redirects, each the same POST with its body; then it stops.
    let loops = looping.records();
    let to_loop: Vec<&Value> = loops.iter().filter(|r| r["path"] == "/loop").collect();
    assert_eq!(to_loop.len(), 6, "{loops:#?}");
    assert!(to_loop.iter().all(|r| r["method"] == "POST"
        && r["body"]
            .as_str()
            .is_some_and(|b| b.contains("loop_started"))));
    assert!(
        loops.iter().all(|r| r["path"] != "/downgraded"),
        "followed a redirect from https:// to http://: {loops:#?}"
    );
    assert_eq!(downgrading.records().len(), 1);

    // The answer's start is in the log line, cut; the rest was never read.
    let stderr = cw.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("/huge: HTTP 400: "))
        .unwrap_or_else(|| panic!("the rejection was not logged:\n{stderr}"));
    let excerpt = line.split("HTTP 400: ").nth(1).unwrap_or_default();
    let run = excerpt.chars().take_while(|&c| c == 'x').count();
    assert_eq!(run, 200, "{line}");
    let rss_after = cw.rss_kib();
    assert!(
        rss_after < rss_before + 16 * 1024,
        "resident memory went from {rss_before} KiB to {rss_after} KiB"
    );
}

/// Says why it fails, with a token in the line, and exits 3, restarted every half second. The
/// start limit is off: the alert is read back from Alertmanager while it fires, and with the
/// default (5 starts in 10 s) systemd would end the loop, and crashwatch resolve the alert, within
/// seconds. The default start limit is covered by the conformance matrix.
const REASONS_UNIT: &str = "[Unit]\n\
StartLimitIntervalSec=0\n\
\n\
[Service]\n\
ExecStart=/bin/sh -c 'echo starting; echo \"config error: missing key X, token=abc123def\" >&2; exit 3'\n\
Restart=always\n\
RestartSec=500ms\n";

/// The page an operator gets says why the unit crashed: the crashed run's last lines (masked)
/// reach a webhook and a real Alertmanager that ask for them, a command in a file, and nothing
/// else.
#[test]
fn the_crashed_runs_last_lines_reach_the_actions_that_ask_for_them() {
    require_sandbox!();
    require_prometheus!();
    let am = Alertmanager::start();
    let hooks = HookReceiver::start(0);
    let dir = TempDir::new("cw-actions");
    let sb = Sandbox::start_with_journal().unwrap_or_else(|e| panic!("{e}"));
    let unit = "reasons.service";
    sb.write_unit(unit, REASONS_UNIT);
    sb.pin_loaded(&[unit]);
    let copied = dir.path().join("lines.txt");
    let config = write_config(
        &dir,
        &format!(
            r#"
[history]
journal_directory = {journal:?}

[[action]]
webhook = "{logs}"
include_logs = true

[[action]]
webhook = "{plain}"

[[action]]
alertmanager = "http://127.0.0.1:{am}"
include_logs = true

[[action]]
command = ["/bin/sh", "-c", 'cp "$CRASHWATCH_LAST_LINES_FILE" {copied}']
"#,
            journal = sb.journal_dir().display().to_string(),
            logs = hooks.url("/logs"),
            plain = hooks.url("/plain"),
            am = am.port(),
            copied = copied.display(),
        ),
    );
    let cw = spawn_crashwatch(&sb, &config);
    sb.systemctl_ok(&["start", "--no-block", unit]);
    cw.expect_flagged(unit, 30);
    let want = "config error: missing key X, token=[masked]";
    // What a run writes, masked. On a loaded machine journald may not have read the whole of a
    // run's output when its lookup runs, so an excerpt may stop short; it never holds anything
    // else, and the lines are never empty.
    let masked_output =
        |lines: &[&str]| !lines.is_empty() && lines.iter().all(|l| ["starting", want].contains(l));

    let mut bodies = Vec::new();
    let posted = wait_until(Duration::from_secs(20), || {
        bodies = hooks.accepted("/logs", "loop_started");
        !bodies.is_empty() && !hooks.accepted("/plain", "loop_started").is_empty()
    });
    assert!(
        posted,
        "no webhook: {:?}\n{}",
        hooks.received().len(),
        cw.diag(unit)
    );
    let body = &bodies[0];
    let unit_document = || http_get(cw.port(), &format!("/api/units/{unit}")).unwrap_or_default();
    assert_eq!(
        body["last_lines_status"],
        "ok",
        "{body:#}\n{}",
        unit_document()
    );
    let lines = body["last_lines"].as_array().cloned().unwrap_or_default();
    let lines: Vec<&str> = lines.iter().filter_map(Value::as_str).collect();
    assert!(masked_output(&lines), "{body:#}");
    let plain = &hooks.accepted("/plain", "loop_started")[0];
    assert!(
        plain.get("last_lines").is_none(),
        "lines sent where not asked: {plain:#}"
    );

    let mut alerts = Vec::new();
    let fired = wait_until(Duration::from_secs(20), || {
        alerts = am
            .alerts()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["labels"]["unit"] == unit)
            .collect();
        !alerts.is_empty()
    });
    assert!(fired, "no alert: {:#?}", am.alerts());
    let annotation = alerts[0]["annotations"]["last_lines"]
        .as_str()
        .unwrap_or_default();
    assert!(
        masked_output(&annotation.lines().collect::<Vec<_>>()),
        "{:#}",
        alerts[0]
    );
    sb.systemctl_ok(&["stop", unit]);

    let ran = wait_until(Duration::from_secs(20), || copied.exists());
    assert!(ran, "the command did not run\n{}", cw.diag(unit));
    let text = std::fs::read_to_string(&copied).expect("the copied lines");
    assert!(masked_output(&text.lines().collect::<Vec<_>>()), "{text}");

    for (place, text) in [
        ("the webhook", body.to_string()),
        ("the alert", alerts[0].to_string()),
        ("the command's file", text),
    ] {
        assert!(!text.contains("abc123def"), "the token in {place}: {text}");
    }
}
