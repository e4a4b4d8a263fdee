//! Tests of the test harness itself.
//!
//! The crashwatch tests are only as good as the tools that judge them: a StatsD validator that
//! accepts anything or a sandbox that leaks processes would make them pass vacuously or poison
//! the machine. These tests pin the helpers down without involving the crashwatch binary.

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use crate::support::*;

#[test]
fn statsd_parser_accepts_well_formed_lines() {
    for ok in [
        "crashwatch.unit.crashy_service.restarts:1|c",
        "crashwatch.unit.crashy_service.crashlooping:0|g",
        "a.b:-3|g",
        "a.b:+3.5|g",
        "a.b:12.5|ms",
        "a.b:7|h",
        "a.b:user42|s",
        "a.b:1|c|@0.5",
        "x-y_z.Q9:10|c",
    ] {
        let line = parse_statsd_line(ok).unwrap_or_else(|e| panic!("{ok:?} rejected: {e}"));
        assert!(!line.name.is_empty());
    }
    let l = parse_statsd_line("crashwatch.unit.u.restarts:2|c").unwrap();
    assert_eq!(
        (l.name.as_str(), l.number(), l.kind.as_str(), l.rate),
        ("crashwatch.unit.u.restarts", 2.0, "c", None)
    );
}

#[test]
fn statsd_parser_rejects_malformed_lines() {
    for bad in [
        "",
        "nocolon|c",
        ":1|c",
        "a.b:1",
        "a.b:1|x",
        "a.b:|c",
        "a.b:one|c",
        "a.b:-1|c",
        "a.b:NaN|g",
        "a.b:1|c|#tag:v",
        "a.b:1|c|@2",
        "a.b:1|c|@0.5|x",
        "a:b.c:1|c",
        "a|b.c:1|c",
        "a@b.c:1|c",
        "a#b.c:1|c",
        "a b.c:1|c",
        "a\tb:1|c",
        "a..b:1|c",
        ".a.b:1|c",
        "a.b.:1|c",
        "a.b:1 |c",
    ] {
        assert!(
            parse_statsd_line(bad).is_err(),
            "{bad:?} should be rejected"
        );
    }
}

#[test]
fn dogstatsd_parser_accepts_the_documented_examples() {
    // The examples of Datadog's "DogStatsD datagram format", and what crashwatch sends.
    for ok in [
        "page.views:1|c",
        "fuel.level:0.5|g",
        "song.length:240|h|@0.5",
        "users.uniques:1234|s",
        "users.online:1|c|#country:china",
        "users.online:1|c|@0.5|#country:china",
        "a.b:1|d|#env:prod,beta",
        "crashwatch.unit.restarts:1|c|#unit:a.service,source:systemd",
        "crashwatch.unit.crashlooping:0|g|#unit:ünï/ジョブ@x:(1),source:upstart",
    ] {
        parse_dogstatsd_line(ok).unwrap_or_else(|e| panic!("{ok:?} rejected: {e}"));
    }
    let l = parse_dogstatsd_line("a.b:2|c|@0.5|#unit:x:y,source:upstart").unwrap();
    assert_eq!(
        (l.name.as_str(), l.value, l.kind.as_str()),
        ("a.b", 2.0, "c")
    );
    assert_eq!(l.rate, Some(0.5));
    assert_eq!(l.tag("unit"), Some("x:y"));
    assert_eq!(l.tag("source"), Some("upstart"));
    assert_eq!(l.tag("env"), None);
    let longest = format!("unit:{}", "x".repeat(DOGSTATSD_MAX_TAG - 5));
    parse_dogstatsd_line(&format!("a:1|c|#{longest}")).expect("a tag of exactly 200");
}

#[test]
fn dogstatsd_parser_rejects_malformed_lines() {
    let too_long = format!("a:1|c|#unit:{}", "x".repeat(DOGSTATSD_MAX_TAG - 4));
    for bad in [
        "",
        "a.b:1",
        "a.b:1|x",
        "a.b:1:2|c",
        "a.b:inf|g",
        "1a.b:1|c",
        "a-b.c:1|c",
        "a..b:1|c",
        "a.b:1|c|#",
        "a.b:1|c|#a:b,",
        "a.b:1|c|#,a:b",
        "a.b:1|c|#a b",
        "a.b:1|c|#a:b\tc",
        "a.b:1|c|#1a",
        "a.b:1|c|#_a",
        "a.b:1|c|#unit:",
        "a.b:1|c|#a#b",
        "a.b:1|c|#a|#b",
        "a.b:1|c|#a|@0.5",
        "a.b:1|c|@0",
        "a.b:1|c|c:container-id",
        "a.b:1|c|T1656581400",
        too_long.as_str(),
    ] {
        assert!(
            parse_dogstatsd_line(bad).is_err(),
            "{bad:?} should be rejected"
        );
    }
}

#[test]
fn dogstatsd_tag_values_follow_the_contract() {
    assert_eq!(dogstatsd_tag_value("a.service"), "a.service");
    assert_eq!(dogstatsd_tag_value("a,b|c#d e\nf"), "a_b_c_d_e_f");
    assert_eq!(dogstatsd_tag_value("x:"), "x:_");
    assert_eq!(dogstatsd_tag_value(""), "_");
}

#[test]
fn datagrams_split_into_lines() {
    assert_eq!(datagram_lines("a:1|c\nb:2|g\n"), vec!["a:1|c", "b:2|g"]);
    assert_eq!(datagram_lines("a:1|c"), vec!["a:1|c"]);
    // An empty line in the middle is kept so that validation catches it.
    assert_eq!(datagram_lines("a:1|c\n\nb:1|c"), vec!["a:1|c", "", "b:1|c"]);
}

#[test]
fn statsd_listener_collects_datagrams() {
    let listener = StatsdListener::start();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(b"t.x:1|c\nt.x:2|c\nt.g:1|g", listener.addr())
        .unwrap();
    sock.send_to(b"t.x:4|c|@0.5", listener.addr()).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || listener.lines().len() == 4),
        "got {:?}",
        listener.lines()
    );
    assert_eq!(listener.counter_sum("t.x"), 11.0);
    assert_eq!(listener.parsed().unwrap().len(), 4);
}

#[test]
fn prometheus_text_parses_with_escaped_labels() {
    let text = "# HELP m_total help\n# TYPE m_total counter\n\
        m_total{unit=\"a.service\",reason=\"exit-code\"} 2\n\
        m_total{unit=\"a.service\",reason=\"signal\"} 3\n\
        m_total{unit=\"b\\\\x3a\\\"q\\\"\\n.service\",reason=\"signal\"} 7 1700000000000\n\
        g{} 1.5\n\
        up 1\n";
    let samples = parse_samples(text).unwrap();
    assert_eq!(samples.len(), 5);
    assert_eq!(samples[2].label("unit"), Some("b\\x3a\"q\"\n.service"));
    assert_eq!(
        metric_value(text, "m_total", &[("unit", "a.service")]),
        Some(5.0)
    );
    assert_eq!(
        metric_value(text, "m_total", &[("unit", "b\\x3a\"q\"\n.service")]),
        Some(7.0)
    );
    assert_eq!(
        metric_value(text, "m_total", &[("unit", "c.service")]),
        None
    );
    assert_eq!(metric_value(text, "g", &[]), Some(1.5));
    assert_eq!(metric_value(text, "up", &[]), Some(1.0));
    assert_eq!(
        escape_label_value("b\\x3a\"q\"\n.service"),
        "b\\\\x3a\\\"q\\\"\\n.service"
    );
    assert!(parse_samples("m{unit=\"a} 1\n").is_err());
    assert!(parse_samples("m{unit=a} 1\n").is_err());
    assert!(parse_samples("m 1x\n").is_err());
}

#[test]
fn unit_object_paths_are_escaped_like_systemd() {
    assert_eq!(
        unit_object_path("crashy.service"),
        "/org/freedesktop/systemd1/unit/crashy_2eservice"
    );
    assert_eq!(
        unit_object_path("dbus-org.x@1.service"),
        "/org/freedesktop/systemd1/unit/dbus_2dorg_2ex_401_2eservice"
    );
    // A leading digit is escaped too: D-Bus path elements may not start with one.
    assert_eq!(
        unit_object_path("9p.mount"),
        "/org/freedesktop/systemd1/unit/_39p_2emount"
    );
    assert_eq!(
        unit_object_path("a\\x3ab.service"),
        "/org/freedesktop/systemd1/unit/a_5cx3ab_2eservice"
    );
}

#[test]
fn statsd_unit_names_follow_the_contract() {
    assert_eq!(statsd_unit_name("crashy.service"), "crashy_service");
    assert_eq!(
        statsd_unit_name("a\\x3ab@c-d_e.service"),
        "a_x3ab_c-d_e_service"
    );
}

#[test]
fn skipping_is_a_failure_only_in_ci() {
    skip_or_fail(false, "some_test", "reason");
    let r = std::panic::catch_unwind(|| skip_or_fail(true, "some_test", "reason"));
    assert!(r.is_err(), "under CI=true a skip must panic");
}

#[test]
fn promtool_accepts_clean_and_rejects_unlinted_metrics() {
    require_promtool!();
    promtool_check_metrics("# HELP ok_total A counter.\n# TYPE ok_total counter\nok_total 1\n")
        .unwrap();
    let err = promtool_check_metrics("bad_total 1\n").unwrap_err();
    assert!(err.contains("no help text"), "{err}");
}

#[test]
fn sandbox_runs_units_and_leaves_nothing_behind() {
    require_sandbox!();
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = sb.dir().to_path_buf();
    let pid1 = sb.pid1();
    assert!(Path::new(&format!("/proc/{pid1}")).exists());
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid1}/comm"))
            .unwrap()
            .trim(),
        "systemd"
    );
    let state = sb.busctl(&[
        "get-property",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "SystemState",
    ]);
    let state = String::from_utf8_lossy(&state.stdout);
    assert!(state.contains("running"), "SystemState {state}");

    sb.write_unit(
        "sleeper.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    );
    sb.reload();
    sb.systemctl_ok(&["start", "sleeper.service"]);
    assert_eq!(sb.active_state("sleeper.service"), "active");
    assert_eq!(sb.n_restarts("sleeper.service"), 0);
    let main_pid = sb.property(
        "sleeper.service",
        "org.freedesktop.systemd1.Service",
        "MainPID",
    );
    assert_ne!(main_pid, "u 0", "sleeper.service has no main process");

    // The sleeper lives in the sandbox's cgroup; find it to check it dies with the sandbox.
    let cgroup_name = format!("cwtest-{}", dir.file_name().unwrap().to_string_lossy());
    let cgroup_dirs: Vec<_> = [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/systemd",
    ]
    .iter()
    .map(|d| Path::new(d).join(&cgroup_name))
    .filter(|p| p.exists())
    .collect();
    assert!(!cgroup_dirs.is_empty(), "no cgroup {cgroup_name} found");
    let sleepers: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .map(|c| c.contains(&format!("/{cgroup_name}/")) && c.contains("sleeper.service"))
                .unwrap_or(false)
        })
        .collect();
    assert!(!sleepers.is_empty(), "sleeper.service process not found");

    drop(sb);
    assert!(!dir.exists(), "{} left behind", dir.display());
    for cg in &cgroup_dirs {
        assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    }
    for pid in sleepers.iter().chain([&pid1]) {
        // A zombie still has /proc/<pid>; being gone entirely is what we want.
        let gone = wait_until(Duration::from_secs(5), || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
        assert!(gone, "process {pid} survived the sandbox");
    }
}

#[test]
fn systemd_versions_parse_and_print() {
    for v in SystemdVersion::ALL {
        assert_eq!(v.as_str().parse::<SystemdVersion>(), Ok(v));
        assert_eq!(v.to_string(), v.as_str());
    }
    assert!("253".parse::<SystemdVersion>().is_err());
    assert!("".parse::<SystemdVersion>().is_err());
}

/// systemd's "Scheduled restart job" message (SD_MESSAGE_UNIT_RESTART_SCHEDULED).
const RESTART_SCHEDULED: &str = "5eb03494b6584870a536b337290809b3";

/// Each non-host systemd runs as the sandbox's PID 1 with its own journald, restarts a failing
/// unit, and logs that in a journal the Sandbox API reads.
#[test]
fn sandbox_runs_other_systemd_versions_with_their_journal() {
    for version in [SystemdVersion::V254, SystemdVersion::V257] {
        require_systemd_version!(version);
        let sb = Sandbox::start_version_with_journal(version).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sb.version(), version);
        let reported = sb.busctl(&[
            "get-property",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "Version",
        ]);
        let reported = String::from_utf8_lossy(&reported.stdout).trim().to_string();
        assert!(
            reported.starts_with(&format!("s \"{version}")),
            "Manager.Version of the {version} sandbox reads {reported}"
        );
        // The tests' unit files run these: each root must have them.
        for tool in [
            "/bin/sh",
            "/bin/false",
            "/bin/true",
            "/bin/sleep",
            "/bin/kill",
        ] {
            sb.run_inside_ok(10, &["test", "-x", tool]);
        }

        sb.write_unit(
            "failing.service",
            "[Unit]\n\
             Description=fails at once, restarted on failure\n\
             # The test watches NRestarts grow; the default start limit (5 in 10 s) would end\n\
             # the loop after 5 restarts, possibly before the second reading.\n\
             StartLimitIntervalSec=0\n\
             \n\
             [Service]\n\
             ExecStart=/bin/false\n\
             Restart=on-failure\n\
             RestartSec=100ms\n",
        );
        // Through nsenter on 254 and 257: a privileged call from the host aborts 254's PID 1.
        sb.reload();
        sb.systemctl_ok(&["start", "--no-block", "failing.service"]);
        assert!(
            wait_until(Duration::from_secs(20), || sb.n_restarts("failing.service")
                >= 1),
            "systemd {version} did not restart failing.service\n{}",
            sb.log_tail(30)
        );
        let first = sb.n_restarts("failing.service");
        assert!(
            wait_until(Duration::from_secs(20), || sb.n_restarts("failing.service")
                > first),
            "NRestarts of failing.service stayed at {first} on systemd {version}"
        );
        // PID 1 is still the one that started (no abort and restart of the namespace's init).
        assert!(Path::new(&format!("/proc/{}", sb.pid1())).exists());

        assert!(
            wait_until(Duration::from_secs(20), || {
                sb.journal_count("failing.service", RESTART_SCHEDULED) >= 1
            }),
            "no \"Scheduled restart job\" for failing.service in the {version} journal\n{}",
            String::from_utf8_lossy(&sb.journalctl(&["-o", "short-monotonic"]).stdout)
        );
        let text = sb.journalctl(&[
            "--quiet",
            "-o",
            "cat",
            "UNIT=failing.service",
            &format!("MESSAGE_ID={RESTART_SCHEDULED}"),
        ]);
        assert!(
            String::from_utf8_lossy(&text.stdout).contains("Scheduled restart job"),
            "{}",
            String::from_utf8_lossy(&text.stdout)
        );
        // The version's own journalctl reads the same files.
        assert!(
            sb.journal_count_inside("failing.service", RESTART_SCHEDULED) >= 1,
            "the {version} journalctl inside finds no \"Scheduled restart job\": {}",
            String::from_utf8_lossy(&sb.journalctl_inside(&["-n", "20"]).stderr)
        );
    }
}
