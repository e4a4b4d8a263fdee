//! The shipped systemd unit: hardened enough to score "OK" in `systemd-analyze security`, and
//! still able to do its job under a real systemd: readiness (`Type=notify`), the watchdog, the
//! system bus as an unprivileged user, never reporting on itself, and a clean stop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

// ------------------------------------------------------------------------------------------------
// The Debian package (scripts/package.sh)
// ------------------------------------------------------------------------------------------------

/// The unit's /metrics address, from packaging/crashwatch.toml.
const PACKAGED_METRICS_PORT: u16 = 9863;

/// Why scripts/package.sh (plus `extra` tools: name, Debian package) cannot run here, or Ok.
fn packaging_prerequisites(extra: &[(&str, &str)]) -> Result<(), String> {
    let tools = [
        ("dpkg-deb", "dpkg"),
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("strip", "binutils"),
    ];
    let missing: Vec<String> = tools
        .iter()
        .chain(extra)
        .filter(|(tool, _)| find_in_path(tool).is_none())
        .map(|(tool, package)| format!("{tool} (package {package})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("needs {} to build the package", missing.join(", ")))
    }
}

/// Makes the sandbox a machine that never had crashwatch, whatever the host has left over, and
/// one that runs its services: Docker images carry a policy-rc.d that forbids maintainer scripts
/// to start or stop any. Each removal is a whiteout in the upper layer.
fn as_a_fresh_machine(sb: &Sandbox) {
    sb.run_inside_ok(
        30,
        &[
            "rm",
            "-rf",
            "/usr/sbin/policy-rc.d",
            "/etc/crashwatch",
            "/var/lib/crashwatch",
            "/var/lib/private/crashwatch",
            "/var/log/crashwatch",
            "/var/log/private/crashwatch",
        ],
    );
}

/// scripts/package.sh over the binary under test: the .deb's path.
fn build_package(out_dir: &Path) -> PathBuf {
    build_package_revision(out_dir, 1)
}

/// The same, as Debian revision `revision`: a later revision is an upgrade of an earlier one.
fn build_package_revision(out_dir: &Path, revision: u32) -> PathBuf {
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/package.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_crashwatch"), "--out-dir"])
        .arg(out_dir)
        .args(["--revision", &revision.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("running scripts/package.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/package.sh failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(deb.is_file(), "package.sh printed {deb:?}, not a file");
    deb
}

/// `dpkg-deb --field`: one control field of the package.
fn control_field(deb: &Path, field: &str) -> String {
    let out = Command::new("dpkg-deb")
        .arg("--field")
        .arg(deb)
        .arg(field)
        .output()
        .expect("running dpkg-deb --field");
    assert!(out.status.success(), "dpkg-deb --field {field} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `dpkg-deb --info`: one control file of the package (conffiles, postinst...).
fn control_file(deb: &Path, name: &str) -> String {
    let out = Command::new("dpkg-deb")
        .arg("--info")
        .arg(deb)
        .arg(name)
        .output()
        .expect("running dpkg-deb --info");
    assert!(out.status.success(), "the package has no {name}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every path the package installs (files and directories, absolute), from `dpkg-deb --contents`.
fn package_paths(deb: &Path) -> Vec<String> {
    let out = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(deb)
        .output()
        .expect("running dpkg-deb --contents");
    assert!(out.status.success(), "dpkg-deb --contents failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // drwxr-xr-x root/root 0 2024-05-01 00:00 ./usr/bin/
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').trim_end_matches('/').to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

#[test]
fn package_carries_the_cargo_version_library_dependencies_and_conffile() {
    if let Err(reason) = packaging_prerequisites(&[]) {
        skip(&reason);
        return;
    }
    let first = TempDir::new("cw-deb");
    let deb = build_package(first.path());

    assert_eq!(
        control_field(&deb, "Version"),
        format!("{}-1", env!("CARGO_PKG_VERSION").replacen('-', "~", 1))
    );
    let arch = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .expect("running dpkg --print-architecture");
    assert_eq!(
        control_field(&deb, "Architecture"),
        String::from_utf8_lossy(&arch.stdout).trim()
    );
    let depends = control_field(&deb, "Depends");
    assert!(
        depends.split(", ").any(|d| d.starts_with("libc6 (>= ")),
        "Depends: {depends}"
    );
    assert_eq!(control_field(&deb, "Recommends"), "dbus");
    assert_eq!(
        control_file(&deb, "conffiles").trim(),
        "/etc/crashwatch/crashwatch.toml\n/etc/logrotate.d/crashwatch"
    );
    let paths = package_paths(&deb);
    for expected in [
        "/usr/bin/crashwatch",
        "/lib/systemd/system/crashwatch.service",
        "/usr/lib/sysusers.d/crashwatch.conf",
        "/etc/crashwatch/crashwatch.toml",
        "/etc/logrotate.d/crashwatch",
        "/usr/share/crashwatch/alerts/crashwatch.rules.yml",
        "/usr/share/crashwatch/alerts/crashwatch.tests.yml",
        "/usr/share/crashwatch/alerts/alertmanager.example.yml",
        "/usr/share/crashwatch/dashboards/crashwatch.json",
        "/usr/share/man/man1/crashwatch.1.gz",
        "/usr/share/man/man1/crashwatch-run.1.gz",
        "/usr/share/doc/crashwatch/copyright",
        "/usr/share/doc/crashwatch/changelog.Debian.gz",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "no {expected} in {paths:?}"
        );
    }

    // The same source and binary make the same bytes, so a rebuilt package can be verified.
    let second = TempDir::new("cw-deb");
    let again = build_package(second.path());
    let bytes = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("reading {p:?}: {e}"));
    assert!(
        bytes(&deb) == bytes(&again),
        "two builds differ: {deb:?} {again:?}"
    );
}

#[test]
fn package_passes_lintian() {
    if let Err(reason) = packaging_prerequisites(&[("lintian", "lintian")]) {
        skip(&reason);
        return;
    }
    let dir = TempDir::new("cw-deb");
    let deb = build_package(dir.path());
    // Pedantic tags are shown but pass; the overridden tags are in packaging/debian/
    // lintian-overrides, each with its reason.
    let out = Command::new("lintian")
        .args([
            "--display-level",
            ">=pedantic",
            "--fail-on",
            "error,warning,info",
        ])
        .arg(&deb)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("running lintian");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lintian ({}):\n{report}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let tags: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: ") || l.starts_with("I: "))
        .collect();
    assert!(tags.is_empty(), "lintian tags: {tags:#?}");
}

/// What the host has at `paths` (kind, size, modification time, link target; None if nothing),
/// its crashwatch user and its dpkg record of the package: the test compares them before and
/// after, whatever the machine already had.
fn host_state(paths: &[String]) -> Vec<String> {
    let mut state: Vec<String> = paths
        .iter()
        .map(|p| {
            let seen = std::fs::symlink_metadata(p).ok().map(|m| {
                (
                    m.file_type(),
                    m.len(),
                    m.modified().ok(),
                    std::fs::read_link(p).ok(),
                )
            });
            format!("{p}: {seen:?}")
        })
        .collect();
    for (program, args) in [
        ("getent", ["passwd", "crashwatch"]),
        ("dpkg-query", ["--status", "crashwatch"]),
    ] {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        state.push(format!(
            "{program} {args:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    state
}

#[test]
fn package_installs_starts_and_purges_in_a_sandbox_without_touching_the_host() {
    require_sandbox!();
    if let Err(reason) = packaging_prerequisites(&[("man", "man-db"), ("logrotate", "logrotate")]) {
        skip(&reason);
        return;
    }
    let build = TempDir::new("cw-deb");
    let deb = build_package(build.path());
    let installed = package_paths(&deb);
    // The package's own paths (not /usr or /etc), and what dpkg and the maintainer scripts add.
    let mut watched: Vec<String> = installed
        .iter()
        .filter(|p| p.contains("crashwatch"))
        .cloned()
        .collect();
    watched.extend(
        [
            "/etc/systemd/system/multi-user.target.wants/crashwatch.service",
            "/etc/systemd/system/crashwatch.service",
            "/var/lib/dpkg/info/crashwatch.list",
            "/var/lib/crashwatch",
            "/var/log/crashwatch",
        ]
        .map(str::to_owned),
    );
    let host_before = host_state(&watched);

    let sb =
        Sandbox::start_with_env(&[("SDTEST_OVERLAY_ROOT", "1")]).unwrap_or_else(|e| panic!("{e}"));
    // The sandbox's view of a path, from the host. Symlinks in it are not followed: an absolute
    // target would resolve on the host.
    let inside = |path: &str| PathBuf::from(format!("/proc/{}/root{path}", sb.pid1()));
    let exists_inside = |path: &str| std::fs::symlink_metadata(inside(path)).is_ok();
    // Nothing below may run on the host's own root: dpkg would install there.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", sb.pid1()))
        .expect("reading the sandbox's mounts");
    let root_fs = mounts.lines().find_map(|l| {
        let (mount, fs) = l.split_once(" - ")?;
        (mount.split(' ').nth(4) == Some("/")).then(|| fs.split(' ').next())?
    });
    assert_eq!(root_fs, Some("overlay"), "the sandbox's root:\n{mounts}");
    // The instance directory has the same path on both sides.
    let deb_inside = sb.dir().join(deb.file_name().expect("a file name"));
    std::fs::copy(&deb, &deb_inside).expect("copying the package into the sandbox");
    let deb_inside = deb_inside.to_str().expect("a UTF-8 path");
    as_a_fresh_machine(&sb);

    sb.run_inside_ok(300, &["dpkg", "--install", deb_inside]);
    // The postinst enabled and started it; the documented `enable --now` then changes nothing.
    assert_eq!(sb.active_state("crashwatch.service"), "active");
    sb.systemctl_ok(&["enable", "--now", "crashwatch.service"]);
    assert_eq!(sb.active_state("crashwatch.service"), "active");
    let enabled = sb.systemctl(&["is-enabled", "crashwatch.service"]);
    assert_eq!(String::from_utf8_lossy(&enabled.stdout).trim(), "enabled");
    assert!(
        exists_inside("/etc/systemd/system/multi-user.target.wants/crashwatch.service"),
        "not enabled through multi-user.target"
    );

    // The postinst made the user, and the daemon runs as it.
    let passwd = sb.run_inside_ok(30, &["getent", "passwd", "crashwatch"]);
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields.len(), 7, "{passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    let first_pid = packaged_main_pid(&sb);
    let proc_dir = format!("/proc/{first_pid}");
    let owner = sb.run_inside_ok(30, &["stat", "-c", "%u", &proc_dir]);
    assert_eq!(
        owner.trim(),
        fields[2],
        "the daemon's uid is not crashwatch's"
    );

    // The configuration may hold secrets: the daemon's group reads it, nobody else does, and
    // `crashwatch status` run by anyone else still finds the daemon at the packaged address.
    let config_mode = sb.run_inside_ok(
        30,
        &["stat", "-c", "%a %U:%G", "/etc/crashwatch/crashwatch.toml"],
    );
    assert_eq!(config_mode.trim(), "640 root:crashwatch");
    let by_someone_else = sb.run_inside(
        30,
        &[
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "cat",
            "/etc/crashwatch/crashwatch.toml",
        ],
    );
    assert!(
        !by_someone_else.status.success(),
        "an unprivileged user read the configuration"
    );

    // Serving on the packaged address, subscribed to the sandbox's systemd.
    let mut last = String::new();
    let up = wait_until(Duration::from_secs(15), || {
        last = sb
            .http_get_inside(PACKAGED_METRICS_PORT, "/metrics")
            .unwrap_or_else(|e| e);
        last.contains("crashwatch_source_up{source=\"systemd\"} 1")
    });
    assert!(
        up,
        "no healthy /metrics on {PACKAGED_METRICS_PORT}:\n{last}"
    );
    assert!(
        exists_inside("/var/log/crashwatch/events.jsonl"),
        "no event record"
    );
    // In the network namespace of the sandbox's PID 1, where the daemon listens.
    let status = sb.run_inside_ok(
        30,
        &[
            "nsenter",
            "--target=1",
            "--net",
            "--",
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "/usr/bin/crashwatch",
            "status",
            "--json",
        ],
    );
    assert!(status.contains("\"units\""), "{status}");

    // The installed logrotate configuration, forced as if a month had passed: the record goes
    // to a dated archive, and crashwatch, signalled, writes on in a fresh file at its path.
    let record = inside("/var/log/crashwatch/events.jsonl");
    let recorded = |unit: &str| {
        wait_until(Duration::from_secs(15), || {
            std::fs::read_to_string(&record).is_ok_and(|text| text.contains(unit))
        })
    };
    sb.run_inside_ok(
        30,
        &[
            "systemd-run",
            "--wait",
            "--unit=before-rotation",
            "/bin/true",
        ],
    );
    assert!(recorded("before-rotation.service"), "no record of a run");
    sb.run_inside_ok(
        60,
        &[
            "logrotate",
            "--force",
            "--state",
            "/run/crashwatch-test-logrotate.status",
            "/etc/logrotate.d/crashwatch",
        ],
    );
    let archives: Vec<PathBuf> = std::fs::read_dir(inside("/var/log/crashwatch"))
        .expect("listing /var/log/crashwatch")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("events.jsonl-"))
        })
        .collect();
    assert_eq!(archives.len(), 1, "{archives:?}");
    let archived = std::fs::read_to_string(&archives[0]).expect("reading the archive");
    assert!(archived.contains("before-rotation.service"), "{archived}");
    sb.run_inside_ok(
        30,
        &[
            "systemd-run",
            "--wait",
            "--unit=after-rotation",
            "/bin/true",
        ],
    );
    assert!(
        recorded("after-rotation.service"),
        "no fresh record after logrotate"
    );
    let archived = std::fs::read_to_string(&archives[0]).expect("reading the archive");
    assert!(!archived.contains("after-rotation.service"), "{archived}");
    let owner = sb.run_inside_ok(
        30,
        &["stat", "-c", "%u", "/var/log/crashwatch/events.jsonl"],
    );
    assert_eq!(
        owner.trim(),
        fields[2],
        "the fresh record is not crashwatch's"
    );
    assert_eq!(
        packaged_main_pid(&sb),
        first_pid,
        "SIGHUP restarted crashwatch"
    );

    // The manual, as `man` shows it, with groff's warnings on.
    let pages: Vec<&String> = installed
        .iter()
        .filter(|p| p.starts_with("/usr/share/man/man1/") && p.ends_with(".1.gz"))
        .collect();
    assert!(pages.len() > 1, "{installed:?}");
    for page in pages {
        let out = sb.run_inside(60, &["man", "--warnings", "-l", page]);
        let text = String::from_utf8_lossy(&out.stdout);
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.trim().is_empty(),
            "man -l {page} ({}): {warnings}",
            out.status
        );
        if page.ends_with("/crashwatch.1.gz") {
            assert!(text.contains("crashwatch-run(1)"), "{text}");
        }
    }

    // Everything was written into the upper layer, where the host does not look.
    assert!(inside(&format!(
        "{}/overlay/upper/usr/bin/crashwatch",
        sb.dir().display()
    ))
    .is_file());

    // Remove: stopped, files gone, the configuration kept as dpkg keeps conffiles.
    sb.run_inside_ok(120, &["dpkg", "--remove", "crashwatch"]);
    assert_eq!(sb.active_state("crashwatch.service"), "inactive");
    for path in installed.iter().filter(|p| !p.starts_with("/etc/")) {
        if path.contains("crashwatch") {
            assert!(!exists_inside(path), "{path} is left after dpkg --remove");
        }
    }
    assert!(exists_inside("/etc/crashwatch/crashwatch.toml"));

    // Purge: nothing of the package is left, and systemd no longer knows the unit.
    sb.run_inside_ok(120, &["dpkg", "--purge", "crashwatch"]);
    for path in &watched {
        assert!(!exists_inside(path), "{path} is left after dpkg --purge");
    }
    let load_state = sb.run_inside_ok(
        30,
        &[
            "systemctl",
            "show",
            "-p",
            "LoadState",
            "--value",
            "crashwatch.service",
        ],
    );
    assert_eq!(load_state.trim(), "not-found");
    assert_eq!(sb.active_state("crashwatch.service"), "inactive");
    let status = sb.run_inside(30, &["dpkg-query", "--status", "crashwatch"]);
    assert!(!status.status.success(), "still known to dpkg after purge");

    drop(sb);
    assert_eq!(host_state(&watched), host_before, "the host changed");
}

/// The installed daemon's main PID, as systemd has it.
fn packaged_main_pid(sb: &Sandbox) -> String {
    sb.run_inside_ok(
        30,
        &[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "crashwatch.service",
        ],
    )
    .trim()
    .to_owned()
}

#[test]
fn package_upgrade_keeps_an_open_loop_flagged_and_every_record() {
    require_sandbox!();
    if let Err(reason) = packaging_prerequisites(&[]) {
        skip(&reason);
        return;
    }
    const CRASHY: &str = "crashy.service";
    let build = TempDir::new("cw-deb-upgrade");
    let old = build_package_revision(build.path(), 1);
    let new = build_package_revision(build.path(), 2);
    assert_ne!(old, new);

    let sb = Sandbox::start_with_env(&[("SDTEST_OVERLAY_ROOT", "1"), ("SDTEST_JOURNAL", "1")])
        .unwrap_or_else(|e| panic!("{e}"));
    as_a_fresh_machine(&sb);
    let mut debs = Vec::new();
    for deb in [&old, &new] {
        let inside = sb.dir().join(deb.file_name().expect("a file name"));
        std::fs::copy(deb, &inside).expect("copying the package into the sandbox");
        debs.push(inside.to_str().expect("a UTF-8 path").to_owned());
    }
    let metrics = || {
        sb.http_get_inside(PACKAGED_METRICS_PORT, "/metrics")
            .unwrap_or_default()
    };
    let looping = |text: &str| {
        metric_value(text, "crashwatch_unit_crashlooping", &[("unit", CRASHY)]) == Some(1.0)
    };
    let record_path = format!("/proc/{}/root/var/log/crashwatch/events.jsonl", sb.pid1());
    let read_record = || std::fs::read_to_string(&record_path).unwrap_or_default();

    sb.run_inside_ok(300, &["dpkg", "--install", &debs[0]]);
    sb.write_unit(CRASHY, CRASHY_UNIT);
    sb.pin_loaded(&[CRASHY]);
    sb.systemctl_ok(&["start", CRASHY]);
    let mut last = String::new();
    let flagged = wait_until(Duration::from_secs(30), || {
        last = metrics();
        looping(&last)
    });
    assert!(
        flagged,
        "the loop was not flagged before the upgrade:\n{last}"
    );
    let before = read_record();
    let before = &before[..before.rfind('\n').map_or(0, |i| i + 1)];
    assert!(before.contains("crashloop_started"), "{before}");
    let old_pid = packaged_main_pid(&sb);

    // The upgrade restarts the daemon while the unit goes on looping; the new one reads the
    // loop's start back from the journal (the sandbox runs journald).
    sb.run_inside_ok(300, &["dpkg", "--install", &debs[1]]);
    let version = sb.run_inside_ok(30, &["dpkg-query", "-W", "-f", "${Version}", "crashwatch"]);
    assert!(version.ends_with("-2"), "{version}");
    assert_ne!(
        packaged_main_pid(&sb),
        old_pid,
        "the upgrade did not restart the daemon"
    );
    let flagged = wait_until(Duration::from_secs(30), || {
        last = metrics();
        looping(&last)
            && metric_value(&last, "crashwatch_unit_restarts_total", &[("unit", CRASHY)])
                .is_some_and(|n| n > 0.0)
    });
    assert!(
        flagged,
        "the loop was not flagged after the upgrade:\n{last}"
    );
    // Flagged from the journal's history, not as a new loop: nothing counted twice.
    let log = sb.run_inside(
        30,
        &["journalctl", "-u", "crashwatch.service", "--no-pager"],
    );
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    assert_eq!(
        metric_value(
            &last,
            "crashwatch_unit_crashloops_total",
            &[("unit", CRASHY)]
        ),
        Some(0.0),
        "{log}"
    );

    // Every record written before the upgrade is still there, whole, and the new daemon
    // appends after it.
    let after = read_record();
    assert!(
        after.starts_with(before),
        "the event record lost or changed records across the upgrade"
    );
    let added = &after[before.len()..];
    let new_lines: Vec<Value> = added
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        new_lines.iter().any(|e| e["unit"] == CRASHY),
        "nothing recorded after the upgrade"
    );
    assert!(
        !new_lines
            .iter()
            .any(|e| e["unit"] == CRASHY && e["event"] == "crashloop_started"),
        "the open loop was announced again after the upgrade"
    );
    sb.systemctl_ok(&["stop", CRASHY]);
}
