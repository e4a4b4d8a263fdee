//! Why a unit crashed, against a real systemd and journald in the sandbox: each crash shows the
//! last lines its own run wrote, in `/api/units/{unit}`, in `crashwatch status UNIT` and as the
//! exit code in `/metrics`; a flood keeps only the newest lines within the caps, escape
//! sequences come out safe, two units crashing at once each get their own lines, and without
//! journald the loop is still flagged on time and the context says why it is missing.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_crashwatch");

/// Says what is wrong on stderr and exits 3, restarted every second. The start limit is off:
/// the test reads the context of whichever run crashed last while the loop goes on, and with the
/// default (5 starts in 10 s) systemd would stop it after five runs. The default start limit is
/// covered by the conformance matrix.
const CONFIG_ERROR_UNIT: &str = "[Unit]\n\
StartLimitIntervalSec=0\n\
\n\
[Service]\n\
ExecStart=/bin/sh -c 'echo starting up; echo \"config error: missing key X\" >&2; exit 3'\n\
Restart=always\n\
RestartSec=1s\n";

/// Writes 10,000 lines, then one with escape sequences, a bell and bytes that are not UTF-8, and
/// exits 4. journald's rate limit is off for it, so every line is kept. The start limit is off
/// for the same reason as above: a later run's lookup may be the one that sees the whole flood.
const FLOOD_UNIT: &str = "[Unit]\n\
StartLimitIntervalSec=0\n\
\n\
[Service]\n\
ExecStart=/bin/sh -c 'i=0; while [ $$i -lt 10000 ]; do echo \"flood line $$i\"; \
i=$$((i+1)); done; printf \"\\\\033[31mred\\\\033[0m\\\\a \\\\377 end\\\\n\"; exit 4'\n\
Restart=always\n\
RestartSec=5s\n\
LogRateLimitIntervalSec=0\n";

/// Writes a configuration that reads the sandbox's journal, then `extra`; returns its path.
fn journal_config(sb: &Sandbox, extra: &str) -> String {
    let config = sb.dir().join("crashwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[history]\njournal_directory = {:?}\n\n{extra}",
            sb.journal_dir().display().to_string()
        ),
    )
    .expect("writing the configuration");
    config.display().to_string()
}

fn api(cw: &Crashwatch, unit: &str) -> Value {
    let path = format!("/api/units/{unit}");
    let body = http_get(cw.port(), &path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
}

/// Waits for `unit`'s last crash to have a context in `status`; returns the unit's document.
fn wait_for_context(cw: &Crashwatch, unit: &str, status: &str) -> Value {
    let mut last = Value::Null;
    let found = wait_until(Duration::from_secs(30), || {
        last = api(cw, unit);
        last["last_crash"]["context"]["status"] == status
    });
    assert!(
        found,
        "no {status} context for {unit}: {last:#}\n{}",
        cw.diag(unit)
    );
    last
}

/// What `crashwatch status UNIT` prints about `unit` (stdout).
fn status_of(cw: &Crashwatch, unit: &str) -> String {
    let out = Command::new(BIN)
        .args([
            "status",
            "--address",
            &format!("127.0.0.1:{}", cw.port()),
            unit,
        ])
        .env_remove("CRASHWATCH_CONFIG")
        .output()
        .expect("running crashwatch status");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(document: &Value) -> Vec<String> {
    document["last_crash"]["context"]["lines"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_crashed_runs_last_lines_show_where_operators_look() {
    require_sandbox!();
    let sb = Sandbox::start_with_journal().unwrap_or_else(|e| panic!("{e}"));
    let (config_error, flood) = ("cfgerr.service", "flood.service");
    sb.write_unit(config_error, CONFIG_ERROR_UNIT);
    sb.write_unit(flood, FLOOD_UNIT);
    sb.pin_loaded(&[config_error, flood]);
    let config = journal_config(&sb, "");
    let cw = Crashwatch::spawn(&sb, &["--config", &config, "--events-crash-context"]);
    // Both at once: each must get its own run's lines.
    sb.systemctl_ok(&["start", "--no-block", config_error, flood]);

    let document = wait_for_context(&cw, config_error, "ok");
    let seen = lines(&document);
    assert_eq!(
        seen.last().map(String::as_str),
        Some("config error: missing key X"),
        "{document:#}"
    );
    assert!(seen.iter().all(|l| !l.contains("flood")), "{seen:?}");
    assert_eq!(document["last_crash"]["exit_status"], 3, "{document:#}");
    assert_eq!(document["last_crash"]["context"]["source"], "journal");
    assert!(
        document["last_crash"]["context"]["run_seconds"]
            .as_f64()
            .is_some(),
        "{document:#}"
    );
    assert_eq!(
        cw.metric("crashwatch_unit_last_exit_code", &[("unit", config_error)]),
        Some(3.0)
    );
    assert!(cw
        .metric(
            "crashwatch_unit_last_crash_run_seconds",
            &[("unit", config_error)]
        )
        .is_some_and(|s| (0.0..5.0).contains(&s)));

    let records = cw.unit_events(config_error);
    let record = records
        .iter()
        .find(|e| e["event"] == "crash_context" && e["status"] == "ok")
        .unwrap_or_else(|| panic!("no crash_context record: {records:#?}"));
    assert_eq!(
        record["lines"].as_array().and_then(|l| l.last()),
        Some(&Value::from("config error: missing key X")),
        "{record:#}"
    );
    assert!(
        records.iter().any(|e| e["event"] == "transition"),
        "the other records are still written"
    );

    // The loop goes on, and a newer crash waits about a second for its lines ("pending"): ask
    // until the last crash shown is one whose lines have arrived.
    let status = || status_of(&cw, config_error);
    let mut text = String::new();
    wait_until(Duration::from_secs(15), || {
        text = status();
        !text.contains("Last lines: pending")
    });
    assert!(
        text.starts_with("Last crash: exit-code (exit: exited 3"),
        "{text}"
    );
    let excerpt = text.find("  config error: missing key X\n");
    let table = text.find("TIME");
    assert!(
        excerpt.is_some() && table.is_some() && excerpt < table,
        "the excerpt comes before the events table\n{text}"
    );

    // journald may still be reading a flood when the lookup runs: a later crash of the loop
    // then gets the whole of it.
    let mut document = Value::Null;
    let whole = wait_until(Duration::from_secs(30), || {
        document = api(&cw, flood);
        lines(&document).last().is_some_and(|l| l.ends_with("end"))
    });
    assert!(whole, "{document:#}\n{}", cw.diag(flood));
    let seen = lines(&document);
    assert!(seen.len() <= 10, "{seen:?}");
    assert!(seen.iter().all(|l| l.len() <= 512));
    assert!(seen.iter().map(String::len).sum::<usize>() <= 4096);
    assert_eq!(
        seen.get(seen.len().saturating_sub(2)).map(String::as_str),
        Some("flood line 9999"),
        "{seen:?}"
    );
    let last = seen.last().expect("a line");
    assert!(last.contains("red") && last.ends_with("end"), "{last:?}");
    assert!(!last.chars().any(char::is_control), "{last:?}");
    assert!(seen.iter().all(|l| !l.contains("config error")), "{seen:?}");
    assert_eq!(
        cw.metric("crashwatch_unit_last_exit_code", &[("unit", flood)]),
        Some(4.0)
    );
    sb.systemctl_ok(&["stop", config_error, flood]);
}

#[test]
fn without_journald_the_loop_is_flagged_on_time_and_the_context_says_why() {
    require_sandbox!();
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    let unit = "nojournal.service";
    // No start limit: the loop must still run when crashwatch flags it, whatever the timing.
    sb.write_unit(
        unit,
        "[Unit]\nStartLimitIntervalSec=0\n\n[Service]\nExecStart=/bin/sh -c 'echo bye; exit 3'\n\
         Restart=always\nRestartSec=100ms\n",
    );
    sb.pin_loaded(&[unit]);
    let cw = Crashwatch::spawn(&sb, &[]);
    sb.systemctl_ok(&["start", unit]);
    cw.expect_flagged(unit, 30);
    let document = wait_for_context(&cw, unit, "unavailable");
    let reason = document["last_crash"]["context"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("journald"), "{document:#}");
    assert_eq!(
        cw.metric("crashwatch_unit_last_exit_code", &[("unit", unit)]),
        Some(3.0)
    );
    sb.systemctl_ok(&["stop", unit]);
}

/// Fails twice, writing which run it is, then comes up for good: a run counter in a file the unit
/// keeps itself, so the truth about which run wrote what comes from the unit. systemd's default
/// start limit (5 starts in 10 s) is kept: three starts stay below it.
const FAILS_TWICE_UNIT: &str = "[Service]\n\
ExecStart=/bin/sh -c 'n=$$(($$(cat /run/twice.count 2>/dev/null || echo 0) + 1)); \
echo $$n > /run/twice.count; echo \"run $$n: cannot open the database\" >&2; \
[ $$n -ge 3 ] && exec sleep infinity; exit 5'\n\
Restart=on-failure\n\
RestartSec=200ms\n";

#[test]
fn a_crash_before_crashwatch_started_shows_with_its_lines() {
    require_sandbox!();
    let sb = Sandbox::start_with_journal().unwrap_or_else(|e| panic!("{e}"));
    let unit = "twice.service";
    sb.write_unit(unit, FAILS_TWICE_UNIT);
    sb.pin_loaded(&[unit]);
    sb.systemctl_ok(&["start", "--no-block", unit]);
    assert!(
        wait_until(Duration::from_secs(30), || sb.n_restarts(unit) == 2
            && sb.active_state(unit) == "active"),
        "twice.service did not come up after two crashes: NRestarts {}, {}",
        sb.n_restarts(unit),
        sb.active_state(unit)
    );
    // journald may still be writing the last crash's lines: the journal itself says when it has
    // them.
    let written = wait_until(Duration::from_secs(30), || {
        let out = sb.journalctl(&["-u", unit, "-o", "cat"]);
        String::from_utf8_lossy(&out.stdout).contains("run 2: cannot open the database")
    });
    assert!(written, "journald never wrote the second run's line");

    let config = journal_config(&sb, "");
    let cw = Crashwatch::spawn(&sb, &["--config", &config]);
    let document = wait_for_context(&cw, unit, "ok");
    assert_eq!(
        lines(&document).last().map(String::as_str),
        Some("run 2: cannot open the database"),
        "the second run crashed last: {document:#}"
    );
    assert_eq!(document["last_crash"]["exit_status"], 5, "{document:#}");
    // Shown, not counted: history counts nothing.
    assert_eq!(
        cw.metric("crashwatch_unit_restarts_total", &[("unit", unit)]),
        Some(0.0)
    );
    let printed = status_of(&cw, unit);
    assert!(
        printed.contains("run 2: cannot open the database"),
        "status {unit} does not show the last crash's lines:\n{printed}"
    );
    sb.systemctl_ok(&["stop", unit]);
}

/// Prints five lines, two of them with secrets, and fails three times (a run counter it keeps
/// itself); then stays up. journald may still be reading a run's output when its lookup runs, a
/// second after the crash, on a loaded machine: a later crash's lookup then has every line. Four
/// starts in about three seconds stay below systemd's default start limit.
const LEAKY_UNIT: &str = "[Service]\n\
ExecStart=/bin/sh -c 'n=$$(($$(cat /run/leaky.count 2>/dev/null || echo 0) + 1)); \
echo $$n > /run/leaky.count; [ $$n -gt 3 ] && exec sleep infinity; \
echo \"step 1\"; echo \"step 2\"; echo \"connecting to postgres://app:hunter2pw@db/app\"; \
echo \"customer order 12345 failed\"; echo \"retry with password=hunter2pw failed\" >&2; exit 7'\n\
Restart=on-failure\n\
RestartSec=1s\n";

#[test]
fn secrets_are_masked_and_the_line_count_is_the_configured_one() {
    require_sandbox!();
    let sb = Sandbox::start_with_journal().unwrap_or_else(|e| panic!("{e}"));
    let unit = "leaky.service";
    sb.write_unit(unit, LEAKY_UNIT);
    sb.pin_loaded(&[unit]);
    let config = journal_config(
        &sb,
        "[crash_context]\nlines = 3\nmask = ['order (?P<secret>[0-9]+)']\n",
    );
    let cw = Crashwatch::spawn(&sb, &["--config", &config, "--events-crash-context"]);
    sb.systemctl_ok(&["start", "--no-block", unit]);
    let want = [
        "connecting to postgres://app:[masked]@db/app",
        "customer order [masked] failed",
        "retry with password=[masked] failed",
    ];
    let mut document = Value::Null;
    wait_until(Duration::from_secs(30), || {
        document = api(&cw, unit);
        lines(&document) == want
    });
    assert_eq!(
        lines(&document),
        [
            "connecting to postgres://app:[masked]@db/app",
            "customer order [masked] failed",
            "retry with password=[masked] failed",
        ],
        "the last 3 lines, masked: {document:#}"
    );
    let printed = status_of(&cw, unit);
    assert!(printed.contains("password=[masked]"), "{printed}");
    let record = std::fs::read_to_string(cw.events_path()).expect("the event record");
    assert!(record.contains("password=[masked]"), "{record}");
    for (place, text) in [
        ("the API", document.to_string()),
        ("status", printed),
        ("the event record", record),
    ] {
        assert!(!text.contains("hunter2pw"), "a secret in {place}: {text}");
        assert!(
            !text.contains("12345"),
            "a masked order number in {place}: {text}"
        );
    }
    sb.systemctl_ok(&["stop", unit]);
}

/// The unit of the core dump test: it dumps core once and stays down (no Restart=), so its one
/// crash is the last. A real dump needs a real `systemd-coredump`, and the kernel sends dumps to
/// the program in `kernel.core_pattern`, a setting for the whole machine that a sandbox cannot
/// point at its own. So the unit does the kernel's part: a child bash crashes with SIGSEGV and
/// the kernel writes its core into the working directory (a plain `core_pattern`, checked by the
/// test); the unit pipes that core to systemd-coredump with the arguments the kernel would give
/// (`%P %u %g %s %t %c %h`, its own PID as the one that crashed), then dies of SIGSEGV itself,
/// dumping core again, so systemd's verdict is `core-dump`. LimitCORE: the dumps need a core size
/// limit above zero, which a service does not always inherit.
const DUMPER_SCRIPT: &str = "#!/bin/bash\n\
echo \"about to dump core\"\n\
cd \"$(mktemp -d)\"\n\
bash -c 'kill -SEGV $$'\n\
/usr/lib/systemd/systemd-coredump $$ 0 0 11 \"$(date +%s)\" 18446744073709551615 \"$(hostname)\" <core*\n\
kill -SEGV $$\n";

#[test]
fn a_core_dump_shows_its_signal_executable_and_first_frames() {
    require_sandbox!();
    let cache = systemd_cache_dir().join("coredump");
    if !cache.join(".complete").exists() {
        skip(&format!(
            "needs the host's systemd-coredump in {} (run `scripts/lib/systemd-versions.sh coredump` as root)",
            cache.display()
        ));
        return;
    }
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if pattern.trim().is_empty() || pattern.starts_with('|') || pattern.contains('/') {
        skip(&format!(
            "needs kernel.core_pattern to write a core into the crashing process's working \
             directory (it is {:?})",
            pattern.trim()
        ));
        return;
    }
    // A copy-on-write root: systemd-coredump and the dumps it keeps stay in the sandbox.
    let sb = Sandbox::start_with_journal_and(&[("SDTEST_OVERLAY_ROOT", "1")])
        .unwrap_or_else(|e| panic!("{e}"));
    let binary = cache.join("systemd-coredump");
    sb.run_inside_ok(
        30,
        &[
            "cp",
            binary.to_str().expect("a UTF-8 path"),
            "/usr/lib/systemd/systemd-coredump",
        ],
    );
    for unit in ["systemd-coredump.socket", "systemd-coredump@.service"] {
        let text = std::fs::read_to_string(cache.join(unit)).expect("the packaged unit");
        sb.write_unit(unit, &text);
    }
    let script = sb.dir().join("dumper.sh");
    std::fs::write(&script, DUMPER_SCRIPT).expect("writing the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let unit = "dumper.service";
    sb.write_unit(
        unit,
        &format!(
            "[Service]\nExecStart={}\nLimitCORE=infinity\n",
            script.display()
        ),
    );
    sb.pin_loaded(&[unit]);
    sb.systemctl_ok(&["start", "systemd-coredump.socket"]);
    let config = journal_config(&sb, "");
    let cw = Crashwatch::spawn(&sb, &["--config", &config]);
    sb.systemctl_ok(&["start", unit]);

    let mut document = Value::Null;
    let found = wait_until(Duration::from_secs(30), || {
        document = api(&cw, unit);
        document["last_crash"]["context"]["core_dump"].is_object()
    });
    assert!(found, "no core dump shown: {document:#}\n{}", cw.diag(unit));
    // The truth: systemd's verdict, and the record systemd-coredump wrote to the journal.
    assert_eq!(
        sb.property(unit, "org.freedesktop.systemd1.Service", "Result"),
        "s \"core-dump\""
    );
    assert_eq!(
        document["last_crash"]["reason"], "core-dump",
        "{document:#}"
    );
    let out = sb.journalctl(&[
        "-o",
        "json",
        "MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1",
        &format!("COREDUMP_UNIT={unit}"),
    ]);
    let record: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no core dump record in the journal: {out:?}"));
    let dump = &document["last_crash"]["context"]["core_dump"];
    assert_eq!(dump["signal"], "SIGSEGV", "{dump:#}");
    assert_eq!(dump["signal"], record["COREDUMP_SIGNAL_NAME"], "{record:#}");
    assert_eq!(dump["executable"], record["COREDUMP_EXE"], "{record:#}");
    assert_eq!(
        dump["pid"].as_u64().map(|p| p.to_string()).as_deref(),
        record["COREDUMP_PID"].as_str(),
        "{record:#}"
    );
    let message = record["MESSAGE"].as_str().unwrap_or_default();
    let frames: Vec<&str> = dump["frames"]
        .as_array()
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        !frames.is_empty() && frames.len() <= 5,
        "{dump:#}\n{message}"
    );
    // Each frame is one of systemd-coredump's, in its order, without the address.
    let logged: Vec<String> = message
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            let mut words: Vec<&str> = l.split_whitespace().collect();
            words.remove(1);
            words.join(" ")
        })
        .collect();
    assert_eq!(frames, logged[..frames.len()], "{message}");
    assert_eq!(
        lines(&document).first().map(String::as_str),
        Some("about to dump core")
    );

    let printed = status_of(&cw, unit);
    let summary = format!(
        "Core dump: SIGSEGV in {} (pid {})\n  {}\n",
        dump["executable"].as_str().unwrap_or_default(),
        dump["pid"],
        frames[0]
    );
    assert!(printed.contains(&summary), "{summary}\n{printed}");
    assert_eq!(
        cw.metric(
            "crashwatch_crash_evidence_lookups_total",
            &[("kind", "core_dump"), ("result", "found")]
        ),
        Some(1.0)
    );
}
