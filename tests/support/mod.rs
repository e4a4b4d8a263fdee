//! Shared pieces of the integration tests.
//!
//! crashwatch only means something against a real systemd: the interesting behaviour (automatic
//! restarts, `NRestarts`, the order of `PropertiesChanged` signals, start limits) lives in systemd,
//! not in our code. So the tests drive a real systemd running as PID 1 of fresh namespaces
//! (see `systemd-sandbox.sh` beside this file), point the real `crashwatch` binary at that
//! instance's system bus, and compare what crashwatch exports (Prometheus text, StatsD datagrams,
//! the JSON-lines event record) with what systemd itself reports. That systemd is the host's 252
//! unless a test asks for another [`SystemdVersion`] (254 or 257, which
//! `scripts/lib/systemd-versions.sh` fetches into `target/systemd`).
//!
//! What is here:
//! - [`Sandbox`]: one throw-away systemd + dbus-daemon per test, so tests run in parallel;
//!   [`Sandbox::start_version`] picks the systemd version.
//! - [`Crashwatch`]: the binary under test, started against a sandbox, with scraping helpers.
//! - [`StatsdListener`] and [`parse_statsd_line`]: a UDP sink and a strict line validator.
//! - [`promtool_check_metrics`]: the Prometheus project's own linter as the judge of /metrics.
//! - [`servers`]: real Prometheus, Alertmanager and reference StatsD servers on loopback ports.
//! - gating macros ([`require_sandbox!`], [`require_promtool!`], ...): tests whose prerequisites
//!   are missing skip with a reason, except under `CI=true`, where a skip is a failure.
//!
//! Nothing here depends on crates beyond `std` and `serde_json`; temporary directories are made
//! by hand ([`TempDir`]) because `tempfile` is not a dependency.
#![allow(dead_code)] // each test module uses a different subset of these helpers

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub mod journal;
pub mod receiver;
pub mod servers;
pub mod tls;
pub mod upstart;

// libc is linked into every Rust binary on Linux anyway; declaring the two calls we need avoids a
// dependency on the `libc` crate.
extern "C" {
    fn geteuid() -> u32;
    fn kill(pid: i32, sig: i32) -> i32;
    fn setns(fd: i32, nstype: i32) -> i32;
}
const SIGTERM: i32 = 15;
const SIGHUP: i32 = 1;
const CLONE_NEWNET: i32 = 0x4000_0000;

/// Set this to keep sandbox and crashwatch directories (systemd log, units, event record) after
/// the test, for post-mortems.
pub const KEEP_ENV: &str = "CRASHWATCH_TEST_KEEP";

// ------------------------------------------------------------------------------------------------
// Gating
// ------------------------------------------------------------------------------------------------

/// True when running in CI (`CI=true`), where missing prerequisites must fail, not skip: a test
/// that silently skips in CI proves nothing.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Report a missing prerequisite of the running test. Outside CI this prints the reason and the
/// caller returns early; under `CI=true` it panics.
pub fn skip(reason: &str) {
    let current = thread::current();
    // libtest names each test's thread after the test.
    let test = current.name().unwrap_or("test");
    skip_or_fail(in_ci(), test, reason);
}

/// The decision behind [`skip`], separate so it can be tested without touching the environment.
pub fn skip_or_fail(ci: bool, test: &str, reason: &str) {
    if ci {
        panic!("{test}: prerequisite missing under CI=true (a skip in CI is a failure): {reason}");
    }
    eprintln!("skipping {test}: {reason}");
}

/// Skip (or, under CI=true, fail) the calling test unless a sandboxed systemd can be started.
#[macro_export]
macro_rules! require_sandbox {
    () => {
        if let Err(reason) = $crate::support::sandbox_prerequisites() {
            $crate::support::skip(&reason);
            return;
        }
    };
}

/// Skip (or, under CI=true, fail) the calling test unless a sandbox can run systemd `$version`
/// (a [`SystemdVersion`]): the sandbox prerequisites, plus the version's cached files.
#[macro_export]
macro_rules! require_systemd_version {
    ($version:expr) => {
        if let Err(reason) = $crate::support::sandbox_prerequisites()
            .and_then(|()| $crate::support::systemd_version_prerequisites($version))
        {
            $crate::support::skip(&reason);
            return;
        }
    };
}

/// Skip (or, under CI=true, fail) the calling test unless `promtool` is installed.
#[macro_export]
macro_rules! require_promtool {
    () => {
        if let Err(reason) = $crate::support::promtool_prerequisites() {
            $crate::support::skip(&reason);
            return;
        }
    };
}

/// Skip (or, under CI=true, fail) the calling test unless Prometheus and Alertmanager are
/// installed.
#[macro_export]
macro_rules! require_prometheus {
    () => {
        if let Err(reason) = $crate::support::servers::prometheus_prerequisites() {
            $crate::support::skip(&reason);
            return;
        }
    };
}

/// Skip (or, under CI=true, fail) the calling test unless `openssl` and `htpasswd` are installed
/// (certificates and bcrypt hashes are made at test time; see [`tls`]).
#[macro_export]
macro_rules! require_tls_tools {
    () => {
        if let Err(reason) = $crate::support::tls::openssl_prerequisites()
            .and_then(|()| $crate::support::tls::htpasswd_prerequisites())
        {
            $crate::support::skip(&reason);
            return;
        }
    };
}

/// Skip (or, under CI=true, fail) the calling test unless `dbus-daemon` is installed.
#[macro_export]
macro_rules! require_dbus_daemon {
    () => {
        if $crate::support::find_in_path("dbus-daemon").is_none() {
            $crate::support::skip(
                "needs dbus-daemon (Debian package dbus) to run a bus without systemd on it",
            );
            return;
        }
    };
}

/// Locate an executable in `$PATH` (plus the sbin directories, which a non-login root shell may
/// lack).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// Why a sandbox cannot be started here, or Ok. Probed once per process: the namespace probe
/// costs a fork.
pub fn sandbox_prerequisites() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            // SAFETY: geteuid has no preconditions and cannot fail.
            if unsafe { geteuid() } != 0 {
                return Err("needs root and unshare (namespaces) to run a private systemd".into());
            }
            let tools = [
                ("unshare", "util-linux"),
                ("nsenter", "util-linux"),
                ("setpriv", "util-linux"),
                ("script", "bsdutils"),
                ("busctl", "systemd"),
                ("systemctl", "systemd"),
                ("dbus-daemon", "dbus"),
                ("timeout", "coreutils"),
            ];
            let missing: Vec<String> = tools
                .iter()
                .filter(|(t, _)| find_in_path(t).is_none())
                .map(|(t, pkg)| format!("{t} (package {pkg})"))
                .collect();
            if !missing.is_empty() {
                return Err(format!("needs {}", missing.join(", ")));
            }
            if !Path::new("/lib/systemd/systemd").exists() {
                return Err("needs /lib/systemd/systemd (package systemd)".into());
            }
            // Root is not enough inside an unprivileged container: check that the namespaces the
            // sandbox uses can actually be created.
            let probe = Command::new("unshare")
                .args([
                    "--pid",
                    "--mount",
                    "--cgroup",
                    "--fork",
                    "--mount-proc",
                    "true",
                ])
                .stdin(Stdio::null())
                .output();
            match probe {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!(
                    "needs root and unshare: creating pid/mount/cgroup namespaces failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Err(format!("needs root and unshare: cannot run unshare: {e}")),
            }
        })
        .clone()
}

/// Why a sandbox cannot run `version` here, or Ok: 252 is the host's systemd, the others must
/// have been fetched by `scripts/lib/systemd-versions.sh` (which `scripts/test.sh` runs as root).
pub fn systemd_version_prerequisites(version: SystemdVersion) -> Result<(), String> {
    if version == SystemdVersion::V252 {
        return Ok(());
    }
    let dir = systemd_cache_dir().join(version.as_str());
    if dir.join(".complete").exists() {
        Ok(())
    } else {
        Err(format!(
            "needs systemd {version} in {} (run `scripts/lib/systemd-versions.sh {version}` as root)",
            dir.display()
        ))
    }
}

pub fn promtool_prerequisites() -> Result<(), String> {
    if find_in_path("promtool").is_some() {
        Ok(())
    } else {
        Err("needs promtool (Debian package prometheus) to lint /metrics".into())
    }
}

// ------------------------------------------------------------------------------------------------
// Temporary directories, ports, polling
// ------------------------------------------------------------------------------------------------

/// A directory under /tmp with a name unique across processes and threads (pid, counter,
/// nanoseconds), removed on drop unless [`KEEP_ENV`] is set.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/{tag}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago. crashwatch does not support `--listen
/// 127.0.0.1:0`, so the test has to choose; [`Crashwatch::spawn`] retries if the port got taken
/// in between.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 to find a free port");
    l.local_addr().expect("local_addr of probe listener").port()
}

/// Poll `cond` every 50 ms until it holds or `timeout` passes; returns whether it held. Tests wait
/// for events instead of sleeping a fixed time, which keeps them fast and robust on a slow CI.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------------------------------------
// Sandbox: a private systemd
// ------------------------------------------------------------------------------------------------

/// Path of the project's sandbox script.
pub fn sandbox_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/systemd-sandbox.sh")
}

/// Where `scripts/lib/systemd-versions.sh` keeps the systemd versions other than the host's:
/// `$SDTEST_SYSTEMD_CACHE`, by default `target/systemd` in the repository.
pub fn systemd_cache_dir() -> PathBuf {
    match std::env::var_os("SDTEST_SYSTEMD_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/systemd"),
    }
}

/// The systemd a [`Sandbox`] runs as its PID 1. What systemd says on the bus changes between
/// versions (254 added SubStates such as `auto-restart-queued`), and hosts run all of these:
/// Debian 12 and RHEL 9 ship 252, Debian 13 ships 257.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SystemdVersion {
    /// The host's own systemd (Debian 12).
    V252,
    /// bookworm-backports' build, layered over the host's /usr inside the sandbox.
    V254,
    /// trixie's, in a copy-on-write root of its own.
    V257,
}

impl SystemdVersion {
    pub const ALL: [SystemdVersion; 3] = [
        SystemdVersion::V252,
        SystemdVersion::V254,
        SystemdVersion::V257,
    ];

    /// The major version, as `SDTEST_SYSTEMD` and `Manager.Version` spell it: "252".
    pub fn as_str(self) -> &'static str {
        match self {
            SystemdVersion::V252 => "252",
            SystemdVersion::V254 => "254",
            SystemdVersion::V257 => "257",
        }
    }
}

impl fmt::Display for SystemdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SystemdVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SystemdVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s.trim())
            .ok_or_else(|| format!("unknown systemd version {s:?} (known: 252, 254, 257)"))
    }
}

const SANDBOX_TAG: &str = "cw-sd";

/// See [`Sandbox::pin_loaded`].
const PIN_TARGET: &str = "cwtest-pin.target";

/// Stop sandboxes left behind by test processes that died without running `Drop` (killed by a
/// timeout, SIGKILL...). Their directory names carry the owning pid; a dead owner means the
/// sandbox is an orphan. Runs once per test process.
fn sweep_orphaned_sandboxes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/tmp") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&format!("{SANDBOX_TAG}-")) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let _ = Command::new("bash")
                .arg(sandbox_script())
                .arg("stop")
                .env("SDTEST_DIR", e.path())
                .stdin(Stdio::null())
                .output();
            let _ = std::fs::remove_dir_all(e.path());
        }
    });
}

/// A dbus-daemon of our own on a socket in a temporary directory, killed on drop. Its policy
/// lets anyone own any name, as a test bus should.
pub struct PrivateBus {
    child: Option<Child>,
    address: String,
    _dir: TempDir,
}

impl PrivateBus {
    pub fn start() -> PrivateBus {
        let dir = TempDir::new("cw-bus");
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("writing the bus configuration");
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning dbus-daemon");
        // The socket file exists a moment before dbus-daemon listens on it: wait for a connection.
        let ready = wait_until(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        assert!(ready, "dbus-daemon did not listen on {}", socket.display());
        PrivateBus {
            child: Some(child),
            address: format!("unix:path={}", socket.display()),
            _dir: dir,
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A real systemd (PID 1 of its own namespaces) with its own system bus. Stopped and removed on
/// drop: no processes, cgroups or directories are left behind.
pub struct Sandbox {
    dir: TempDir,
    bus_address: String,
    pid1: u32,
    unit_dir: PathBuf,
    version: SystemdVersion,
}

impl Sandbox {
    pub fn start() -> Result<Sandbox, String> {
        Sandbox::start_with_env(&[])
    }

    /// [`Sandbox::start`] with extra environment for the script (its knobs, e.g. SDTEST_JOURNAL).
    /// The host's systemd 252.
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Sandbox, String> {
        Sandbox::start_version(SystemdVersion::V252, env)
    }

    /// A sandbox whose PID 1 is systemd `version`, with extra environment for the script.
    /// Versions other than 252 must have been fetched (see [`systemd_version_prerequisites`]).
    pub fn start_version(version: SystemdVersion, env: &[(&str, &str)]) -> Result<Sandbox, String> {
        systemd_version_prerequisites(version)?;
        sweep_orphaned_sandboxes();
        let dir = TempDir::new(SANDBOX_TAG);
        let out = Command::new("bash")
            .arg(sandbox_script())
            .arg("start")
            .env("SDTEST_DIR", dir.path())
            .env("SDTEST_SYSTEMD", version.as_str())
            .env("SDTEST_SYSTEMD_CACHE", systemd_cache_dir())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", sandbox_script().display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut vars = BTreeMap::new();
        for line in stdout.lines() {
            if let Some((k, v)) = line.split_once('=') {
                vars.insert(k.to_string(), v.to_string());
            }
        }
        let parsed = (|| {
            let bus_address = vars.get("DBUS_SYSTEM_BUS_ADDRESS")?.clone();
            let pid1 = vars.get("SDTEST_PID1")?.parse().ok()?;
            let unit_dir = PathBuf::from(vars.get("SDTEST_UNIT_DIR")?);
            Some((bus_address, pid1, unit_dir))
        })();
        match (out.status.success(), parsed) {
            (true, Some((bus_address, pid1, unit_dir))) => Ok(Sandbox {
                dir,
                bus_address,
                pid1,
                unit_dir,
                version,
            }),
            _ => {
                let _ = Command::new("bash")
                    .arg(sandbox_script())
                    .arg("stop")
                    .env("SDTEST_DIR", dir.path())
                    .output();
                Err(format!(
                    "systemd {version} sandbox in {} did not start ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
                    dir.path().display(),
                    out.status
                ))
            }
        }
    }

    /// Address for host-side clients, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn bus_address(&self) -> &str {
        &self.bus_address
    }

    /// Host pid of the namespace's systemd.
    pub fn pid1(&self) -> u32 {
        self.pid1
    }

    /// The systemd version this sandbox runs.
    pub fn version(&self) -> SystemdVersion {
        self.version
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Write a unit file into the sandbox's unit directory. Call [`Sandbox::reload`] afterwards.
    pub fn write_unit(&self, name: &str, contents: &str) {
        let path = self.unit_dir.join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("writing unit {}: {e}", path.display()));
    }

    /// `Manager.Reload`, which replies only once the reload is complete. On 252 it is called over
    /// the bus from the host. Newer versions abort PID 1 on a privileged call from a peer outside
    /// their pid namespace (observed on 254: an assertion on the peer's pid), so there it is
    /// `systemctl daemon-reload` inside the namespace, which also waits for the reload.
    pub fn reload(&self) {
        if self.version != SystemdVersion::V252 {
            let out = self.systemctl(&["daemon-reload"]);
            assert!(
                out.status.success(),
                "systemctl daemon-reload failed: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(20)
            );
            return;
        }
        let out = self.busctl(&[
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "Reload",
        ]);
        assert!(
            out.status.success(),
            "Manager.Reload failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(20)
        );
    }

    /// Keep `units` loaded after they stop. systemd garbage-collects an inactive unit nobody
    /// references, and a reloaded unit reads `NRestarts` 0; tests that compare crashwatch's counts
    /// with `NRestarts` after `systemctl stop` need it to stay. Any dependency from an active unit
    /// is a reference, and `After=` is one that starts nothing.
    pub fn pin_loaded(&self, units: &[&str]) {
        let mut pin = String::from("[Unit]\nDescription=keeps test units loaded\n");
        for u in units {
            pin.push_str(&format!("After={u}\n"));
        }
        self.write_unit(PIN_TARGET, &pin);
        self.reload();
        self.systemctl_ok(&["start", PIN_TARGET]);
    }

    /// `busctl --address=<sandbox bus> <args>`.
    pub fn busctl(&self, args: &[&str]) -> Output {
        Command::new("busctl")
            .arg(format!("--address={}", self.bus_address))
            .arg("--timeout=30")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running busctl")
    }

    /// `systemctl <args>` inside the sandbox. It has to run in the namespaces: systemctl talks to
    /// /run/systemd/private, which refuses clients whose pid it cannot see. `timeout` sits inside
    /// nsenter because nsenter does not forward signals.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut command = vec!["systemctl"];
        command.extend_from_slice(args);
        self.run_inside(30, &command)
    }

    /// [`Sandbox::systemctl`], panicking with systemctl's output if it fails.
    pub fn systemctl_ok(&self, args: &[&str]) {
        let out = self.systemctl(args);
        assert!(
            out.status.success(),
            "systemctl {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A unit property as busctl prints it, e.g. `u 7` or `s "failed"`.
    pub fn property(&self, unit: &str, iface: &str, prop: &str) -> String {
        let path = unit_object_path(unit);
        let out = self.busctl(&[
            "get-property",
            "org.freedesktop.systemd1",
            &path,
            iface,
            prop,
        ]);
        assert!(
            out.status.success(),
            "get-property {iface}.{prop} of {unit} ({path}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// systemd's own count of automatic restarts of a service.
    pub fn n_restarts(&self, unit: &str) -> u64 {
        let v = self.property(unit, "org.freedesktop.systemd1.Service", "NRestarts");
        v.strip_prefix("u ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("NRestarts of {unit}: unexpected busctl output {v:?}"))
    }

    /// `ActiveState` without busctl's type prefix and quotes, e.g. `failed`.
    pub fn active_state(&self, unit: &str) -> String {
        let v = self.property(unit, "org.freedesktop.systemd1.Unit", "ActiveState");
        v.trim_start_matches("s ").trim_matches('"').to_string()
    }

    /// `args` run inside the sandbox's pid and mount namespaces, as root, with a clean
    /// environment (the PATH a maintainer script expects, the C locale) and `timeout` seconds.
    /// The programs are those of the sandbox's own root: for 254 its systemctl and journalctl,
    /// for 257 trixie's everything.
    pub fn run_inside(&self, timeout: u32, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-p", "-m", "--"])
            .args([
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "LC_ALL=C",
            ])
            .args(["timeout", &timeout.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running nsenter ... {args:?}: {e}"))
    }

    /// [`Sandbox::run_inside`], panicking with the output if the command fails; returns stdout.
    pub fn run_inside_ok(&self, timeout: u32, args: &[&str]) -> String {
        let out = self.run_inside(timeout, args);
        assert!(
            out.status.success(),
            "{args:?} inside the sandbox failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`http_get`] to 127.0.0.1:`port` of the sandbox's own network namespace, where its
    /// services listen: their loopback is not the host's.
    pub fn http_get_inside(&self, port: u16, path: &str) -> Result<String, String> {
        let netns = std::fs::File::open(format!("/proc/{}/ns/net", self.pid1))
            .map_err(|e| format!("opening the sandbox's network namespace: {e}"))?;
        let path = path.to_owned();
        // setns(CLONE_NEWNET) moves only the calling thread, so a thread of its own makes the
        // request and ends with it.
        thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) with a namespace file descriptor we own, open for the call.
            if unsafe { setns(netns.as_raw_fd(), CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "entering the sandbox's network namespace: {}",
                    std::io::Error::last_os_error()
                ));
            }
            http_get(port, &path)
        })
        .join()
        .map_err(|_| "the request thread panicked".to_owned())?
    }

    /// The last lines of systemd's log (its console transcript), for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("systemd.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!("--- systemd log (last {lines} lines) ---\n{tail}")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tail(40));
        }
        let out = Command::new("bash")
            .arg(sandbox_script())
            .arg("stop")
            .env("SDTEST_DIR", self.dir.path())
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "stopping sandbox {} failed: {}",
                self.dir.path().display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("stopping sandbox {}: {e}", self.dir.path().display()),
        }
        // `self.dir` is removed when the field drops, after the sandbox is gone.
    }
}

/// systemd's D-Bus object path for a unit: every byte outside [A-Za-z0-9] (and a leading digit)
/// becomes `_xx` in lowercase hex.
pub fn unit_object_path(unit: &str) -> String {
    let mut p = String::from("/org/freedesktop/systemd1/unit/");
    if unit.is_empty() {
        p.push('_');
    }
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            p.push(b as char);
        } else {
            let _ = write!(p, "_{b:02x}");
        }
    }
    p
}

// ------------------------------------------------------------------------------------------------
// Crashwatch: the binary under test
// ------------------------------------------------------------------------------------------------

/// A running `crashwatch run` pointed at a bus, with its /metrics port and event record. Killed
/// (SIGTERM, then SIGKILL) on drop.
pub struct Crashwatch {
    child: Option<Child>,
    port: u16,
    events: PathBuf,
    stderr: Arc<Mutex<String>>,
    dir: TempDir,
}

impl Crashwatch {
    /// `crashwatch run --listen 127.0.0.1:<free port> --events <file> <extra_args>` against the
    /// sandbox's system bus; returns once it has logged its "Watching" line.
    pub fn spawn(sandbox: &Sandbox, extra_args: &[&str]) -> Crashwatch {
        Self::spawn_on_bus(sandbox.bus_address(), extra_args)
    }

    pub fn spawn_on_bus(bus_address: &str, extra_args: &[&str]) -> Crashwatch {
        Self::spawn_with_events(bus_address, None, extra_args)
    }

    /// Like [`Crashwatch::spawn_on_bus`], with the event record at `events` (when given) instead
    /// of in the run's own temporary directory.
    pub fn spawn_with_events(
        bus_address: &str,
        events: Option<&Path>,
        extra_args: &[&str],
    ) -> Crashwatch {
        Self::spawn_with_env(bus_address, events, extra_args, &[])
    }

    /// Like [`Crashwatch::spawn_with_events`], with `env` added to crashwatch's environment
    /// (systemd's `CREDENTIALS_DIRECTORY`, proxies).
    pub fn spawn_with_env(
        bus_address: &str,
        events: Option<&Path>,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Crashwatch {
        // The port may be taken between probing and binding (parallel tests); retry then.
        let mut last_err = String::new();
        for _ in 0..3 {
            match Self::try_spawn(bus_address, events, extra_args, env) {
                Ok(cw) => return cw,
                Err((err, retry)) => {
                    if !retry {
                        panic!("{err}");
                    }
                    last_err = err;
                }
            }
        }
        panic!("{last_err}");
    }

    fn try_spawn(
        bus_address: &str,
        events: Option<&Path>,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Crashwatch, (String, bool)> {
        let dir = TempDir::new("cw-run");
        let port = free_port();
        let events = events.map_or_else(|| dir.path().join("events.jsonl"), Path::to_owned);
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_crashwatch"));
        cmd.arg("run")
            .arg("--listen")
            .arg(&listen)
            .arg("--events")
            .arg(&events)
            .args(extra_args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus_address)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let args_desc = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
        let mut child = cmd
            .spawn()
            .map_err(|e| (format!("spawning crashwatch {args_desc}: {e}"), false))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        {
            // Keep draining stderr for the whole run: a full pipe would block the daemon.
            let stderr = stderr.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut s = stderr.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let mut cw = Crashwatch {
            child: Some(child),
            port,
            events,
            stderr,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if cw.stderr().contains("Watching") {
                return Ok(cw);
            }
            let exited = cw.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                // Give the reader thread a moment to collect the last words.
                thread::sleep(Duration::from_millis(100));
                let err = cw.stderr();
                let retry = err.contains("in use");
                return Err((
                    format!(
                        "crashwatch {args_desc} exited ({status}) before logging \"Watching\"; stderr:\n{err}"
                    ),
                    retry,
                ));
            }
            if Instant::now() >= deadline {
                return Err((
                    format!(
                        "crashwatch {args_desc} did not log \"Watching\" within 20 s; stderr:\n{}",
                        cw.stderr()
                    ),
                    false,
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGHUP, as logrotate's `postrotate` does.
    pub fn hangup(&self) {
        let pid = self.pid();
        // pid 0 would signal the test's own process group.
        assert!(pid != 0, "crashwatch is not running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { kill(pid as i32, SIGHUP) };
    }

    /// How the daemon exited, if it has; never waits.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The daemon's resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn events_path(&self) -> &Path {
        &self.events
    }

    /// Everything crashwatch wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// /metrics over plain HTTP/1.1.
    pub fn try_scrape(&self) -> Result<String, String> {
        http_get(self.port, "/metrics")
    }

    /// /metrics, panicking with crashwatch's stderr if the scrape fails.
    pub fn scrape(&self) -> String {
        self.try_scrape().unwrap_or_else(|e| {
            panic!(
                "scraping /metrics on port {}: {e}\ncrashwatch stderr:\n{}",
                self.port,
                self.stderr()
            )
        })
    }

    /// Value of `name` summed over all series whose labels include `labels`; `None` if no series
    /// matches. Summing lets `crashes_total{unit=...}` cover every `reason`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.scrape(), name, labels)
    }

    /// Waits up to `seconds` for `unit` to be flagged as crash-looping; fails the test with
    /// crashwatch's view of the unit if it is not.
    pub fn expect_flagged(&self, unit: &str, seconds: u64) {
        let flagged = wait_until(Duration::from_secs(seconds), || {
            self.unit_metric("crashwatch_unit_crashlooping", unit) == 1.0
        });
        assert!(
            flagged,
            "{unit} was not flagged as crash-looping within {seconds} s\n{}",
            self.diag(unit)
        );
    }

    /// Like [`Crashwatch::metric`] with `unit=<unit>`, absent treated as 0.
    pub fn unit_metric(&self, name: &str, unit: &str) -> f64 {
        self.metric(name, &[("unit", unit)]).unwrap_or(0.0)
    }

    /// The complete lines of the event record, parsed. A trailing partial line (being written
    /// right now) is ignored; a malformed complete line fails the test.
    pub fn events(&self) -> Vec<Value> {
        let text = match std::fs::read_to_string(&self.events) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("reading event record {}: {e}", self.events.display()),
        };
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        complete
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!(
                        "event record {} line {}: not JSON ({e}): {l}",
                        self.events.display(),
                        i + 1
                    )
                })
            })
            .collect()
    }

    /// Event-record lines of one unit.
    pub fn unit_events(&self, unit: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["unit"] == unit)
            .collect()
    }

    /// A block of context for assertion messages: stderr tail and this unit's series.
    pub fn diag(&self, unit: &str) -> String {
        let metrics = self
            .try_scrape()
            .unwrap_or_else(|e| format!("(scrape failed: {e})"));
        let series: Vec<&str> = metrics
            .lines()
            .filter(|l| l.contains(&format!("unit=\"{}\"", escape_label_value(unit))))
            .collect();
        let err = self.stderr();
        let lines: Vec<&str> = err.lines().collect();
        format!(
            "--- /metrics series for {unit} ---\n{}\n--- crashwatch stderr (last 30 lines) ---\n{}",
            series.join("\n"),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// SIGTERM, then wait up to `timeout` for the exit status (SIGKILL after that).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        terminate(&mut child, timeout)
    }
}

/// SIGTERM to `child`, then wait up to `timeout` for its exit status; SIGKILL and `None` if it
/// overstays.
pub fn terminate(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { kill(child.id() as i32, SIGTERM) };
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Crashwatch {
    fn drop(&mut self) {
        if thread::panicking() {
            let err = self.stderr();
            let lines: Vec<&str> = err.lines().collect();
            eprintln!(
                "--- crashwatch stderr (last 40 lines) ---\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        let _ = self.terminate(Duration::from_secs(3));
    }
}

/// Waits until crashwatch's restart count equals systemd's, and says both when it does not;
/// returns the count.
pub fn assert_counts_match(sb: &Sandbox, cw: &Crashwatch, unit: &str) -> u64 {
    let n = sb.n_restarts(unit);
    let matched = wait_until(Duration::from_secs(10), || {
        cw.unit_metric("crashwatch_unit_restarts_total", unit) == n as f64
    });
    assert!(
        matched,
        "crashwatch_unit_restarts_total{{unit=\"{unit}\"}} = {} but systemd NRestarts = {n}\n{}",
        cw.unit_metric("crashwatch_unit_restarts_total", unit),
        cw.diag(unit)
    );
    n
}

/// GET a path from 127.0.0.1:<port> and return the body of a 200 response. HTTP/1.1 with
/// `Connection: close`; chunked bodies are decoded.
pub fn http_get(port: u16, path: &str) -> Result<String, String> {
    http_get_from("127.0.0.1", port, path)
}

/// [`http_get`] from `host:port`.
pub fn http_get_from(host: &str, port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect((host, port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "no header/body separator in {:?}",
                String::from_utf8_lossy(&raw)
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!(
            "status line {status:?}, body {:?}",
            String::from_utf8_lossy(body)
        ));
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    String::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk header")?;
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size_str:?}: {e}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A JSON number as f64, whether written as `300` or `300.0`.
pub fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

// ------------------------------------------------------------------------------------------------
// Prometheus text format
// ------------------------------------------------------------------------------------------------

/// One sample line of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse every sample line (comments skipped). Label values are unescaped (`\\`, `\"`, `\n`) so
/// they compare equal to the raw unit names. Lines that do not parse are errors: crashwatch's
/// output has to be machine-readable, not just "mostly".
pub fn parse_samples(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_sample(line).map_err(|e| format!("line {}: {e}: {line}", i + 1))?);
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let consumed;
        loop {
            // label name
            let mut key = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c == '=' || c == '}' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            match chars.next() {
                Some((i, '}')) if key.is_empty() => {
                    consumed = i + 1;
                    break;
                }
                Some((_, '=')) => {}
                _ => return Err("bad label set".into()),
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key}: value not quoted"));
            }
            let mut val = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => val.push('\\'),
                        Some((_, '"')) => val.push('"'),
                        Some((_, 'n')) => val.push('\n'),
                        other => return Err(format!("label {key}: bad escape {other:?}")),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => val.push(c),
                    None => return Err(format!("label {key}: unterminated value")),
                }
            }
            labels.push((key.trim().to_string(), val));
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => {
                    consumed = i + 1;
                    break;
                }
                _ => return Err("bad label separator".into()),
            }
        }
        rest = &r[consumed..];
    }
    let mut fields = rest.split_whitespace();
    let v = fields.next().ok_or("no value")?;
    let value = match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => v.parse().map_err(|e| format!("bad value {v:?}: {e}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Sum of `name` over series whose labels include all of `labels`; `None` if none match.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let samples = parse_samples(text).unwrap_or_else(|e| panic!("/metrics does not parse: {e}"));
    let mut found = None;
    for s in samples.iter().filter(|s| s.name == name) {
        if labels.iter().all(|(k, v)| s.label(k) == Some(*v)) {
            *found.get_or_insert(0.0) += s.value;
        }
    }
    found
}

/// Escape a label value as the exposition format requires.
pub fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Run `promtool check metrics` on `text`. Ok only if promtool exits 0 and reports nothing.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running promtool: {e}"))?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing to promtool: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for promtool: {e}"))?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && report.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics ({}): {report}", out.status))
    }
}

// ------------------------------------------------------------------------------------------------
// StatsD
// ------------------------------------------------------------------------------------------------

/// A StatsD line, validated by [`parse_statsd_line`].
#[derive(Debug, Clone, PartialEq)]
pub struct StatsdLine {
    pub name: String,
    pub value: String,
    pub kind: String,
    pub rate: Option<f64>,
}

impl StatsdLine {
    /// Numeric value (not meaningful for sets).
    pub fn number(&self) -> f64 {
        self.value.parse().unwrap_or(f64::NAN)
    }
}

/// Strictly validate one StatsD line `name:value|type[|@rate]`:
/// - name: non-empty dot-separated segments, none empty, no ':' '|' '@' '#', whitespace or
///   control characters (those would be read as separators or tags by a StatsD server);
/// - type: c, g, ms, h or s;
/// - value: a finite number (gauges may carry a sign, meaning a delta), any non-empty token for
///   sets;
/// - optional sample rate in (0, 1]. DogStatsD tags (`|#`) are rejected.
pub fn parse_statsd_line(line: &str) -> Result<StatsdLine, String> {
    let err = |why: &str| Err(format!("bad StatsD line {line:?}: {why}"));
    let Some((name, rest)) = line.split_once(':') else {
        return err("no ':'");
    };
    if name.is_empty() {
        return err("empty name");
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '|' | '@' | '#') || c.is_whitespace() || c.is_control())
    {
        return err(&format!("name contains {c:?}"));
    }
    if name.split('.').any(|seg| seg.is_empty()) {
        return err("empty name segment");
    }
    let mut parts = rest.split('|');
    let value = parts.next().unwrap_or_default();
    let Some(kind) = parts.next() else {
        return err("no '|type'");
    };
    if !matches!(kind, "c" | "g" | "ms" | "h" | "s") {
        return err(&format!("unknown type {kind:?}"));
    }
    let rate = match parts.next() {
        None => None,
        Some(r) => {
            let Some(r) = r.strip_prefix('@') else {
                return err("unexpected field after type");
            };
            match r.parse::<f64>() {
                Ok(x) if x > 0.0 && x <= 1.0 => Some(x),
                _ => return err("bad sample rate"),
            }
        }
    };
    if parts.next().is_some() {
        return err("trailing fields");
    }
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return err("empty or blank value");
    }
    if kind != "s" {
        let signed = value.starts_with('+') || value.starts_with('-');
        if signed && kind != "g" {
            return err("sign on a non-gauge value");
        }
        match value.parse::<f64>() {
            Ok(v) if v.is_finite() => {}
            _ => return err("value is not a finite number"),
        }
    }
    Ok(StatsdLine {
        name: name.to_string(),
        value: value.to_string(),
        kind: kind.to_string(),
        rate,
    })
}

/// A DogStatsD metric line, validated by [`parse_dogstatsd_line`].
#[derive(Debug, Clone, PartialEq)]
pub struct DogStatsdLine {
    pub name: String,
    pub value: f64,
    pub kind: String,
    pub rate: Option<f64>,
    pub tags: Vec<String>,
}

impl DogStatsdLine {
    /// The value of the first tag `key:value` with this key (the key ends at the first ':').
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find_map(|t| t.split_once(':').filter(|(k, _)| *k == key).map(|(_, v)| v))
    }
}

/// The longest tag Datadog keeps, `key:value` together, in characters.
pub const DOGSTATSD_MAX_TAG: usize = 200;

/// Strictly validate one DogStatsD metric line against the datagram format Datadog documents
/// ("DogStatsD datagram format": `<METRIC_NAME>:<VALUE>|<TYPE>|@<SAMPLE_RATE>|#<TAG>,<TAG>`):
/// - name: ASCII alphanumerics, underscores and periods, starting with a letter, at most 200
///   characters, no empty segment (Datadog's metric naming rules);
/// - value: one finite number (no packed `v1:v2` values); type: c, g, ms, h, s or d;
/// - then, in this order and each at most once, `@rate` in (0, 1] and `#tags`; any other field
///   (`|c:` container ids, `|T` timestamps, a second `|#`) is refused;
/// - tags: comma-separated, none empty, each starting with a letter, at most
///   [`DOGSTATSD_MAX_TAG`] characters, not ending in ':', and free of '|', ',', '#', whitespace
///   and control characters, so no value can end the line, the field or the tag early. Any
///   other character, Unicode included, is allowed: Datadog keeps Unicode letters and turns
///   other punctuation into '_' itself.
pub fn parse_dogstatsd_line(line: &str) -> Result<DogStatsdLine, String> {
    let err = |why: &str| Err(format!("bad DogStatsD line {line:?}: {why}"));
    let mut fields = line.split('|');
    let head = fields.next().unwrap_or_default();
    let Some((name, value)) = head.split_once(':') else {
        return err("no ':' after the name");
    };
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return err("name does not start with a letter");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '.'))
    {
        return err(&format!("name contains {c:?}"));
    }
    if name.len() > 200 || name.split('.').any(str::is_empty) {
        return err("name too long or with an empty segment");
    }
    let value: f64 = match value.parse() {
        Ok(v) if f64::is_finite(v) => v,
        _ => return err("value is not one finite number"),
    };
    let Some(kind) = fields.next() else {
        return err("no '|type'");
    };
    if !matches!(kind, "c" | "g" | "ms" | "h" | "s" | "d") {
        return err(&format!("unknown type {kind:?}"));
    }
    let (mut rate, mut tags) = (None, None);
    for field in fields {
        if let Some(r) = field.strip_prefix('@') {
            if rate.is_some() || tags.is_some() {
                return err("sample rate repeated or after the tags");
            }
            match r.parse::<f64>() {
                Ok(x) if x > 0.0 && x <= 1.0 => rate = Some(x),
                _ => return err("bad sample rate"),
            }
        } else if let Some(list) = field.strip_prefix('#') {
            if tags.is_some() {
                return err("a second tag field");
            }
            let mut parsed = Vec::new();
            for tag in list.split(',') {
                if let Err(why) = check_dogstatsd_tag(tag) {
                    return err(&format!("tag {tag:?}: {why}"));
                }
                parsed.push(tag.to_owned());
            }
            tags = Some(parsed);
        } else {
            return err(&format!("unexpected field {field:?}"));
        }
    }
    Ok(DogStatsdLine {
        name: name.to_owned(),
        value,
        kind: kind.to_owned(),
        rate,
        tags: tags.unwrap_or_default(),
    })
}

fn check_dogstatsd_tag(tag: &str) -> Result<(), &'static str> {
    if !tag.starts_with(char::is_alphabetic) {
        return Err("does not start with a letter");
    }
    if tag.chars().count() > DOGSTATSD_MAX_TAG {
        return Err("longer than 200 characters");
    }
    if tag.ends_with(':') {
        return Err("ends with ':'");
    }
    if tag
        .chars()
        .any(|c| matches!(c, '|' | ',' | '#') || c.is_whitespace() || c.is_control())
    {
        return Err("holds a separator, whitespace or a control character");
    }
    Ok(())
}

/// The tag value the contract gives a unit name: ',', '|', '#', whitespace and control
/// characters become '_', everything else is kept; an empty name or one ending in ':' gets a
/// '_' appended. Values too long for one tag are cut and hashed, which tests check by shape.
pub fn dogstatsd_tag_value(unit: &str) -> String {
    let mut value: String = unit
        .chars()
        .map(|c| {
            if matches!(c, ',' | '|' | '#') || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if value.is_empty() || value.ends_with(':') {
        value.push('_');
    }
    value
}

/// Split a datagram into lines: several metrics may share one, separated by '\n'. A single
/// trailing newline is tolerated; an empty line anywhere else is kept (and fails validation).
pub fn datagram_lines(d: &str) -> Vec<String> {
    let d = d.strip_suffix('\n').unwrap_or(d);
    d.split('\n').map(str::to_string).collect()
}

/// Collects every StatsD datagram sent to 127.0.0.1:<port> on a background thread.
pub struct StatsdListener {
    addr: String,
    datagrams: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StatsdListener {
    pub fn start() -> StatsdListener {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("binding StatsD listener");
        // A short timeout so the thread notices `stop` promptly.
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set_read_timeout");
        let addr = sock.local_addr().expect("local_addr").to_string();
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (datagrams, stop) = (datagrams.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = sock.recv_from(&mut buf) {
                        let d = String::from_utf8_lossy(&buf[..n]).into_owned();
                        datagrams.lock().unwrap().push(d);
                    }
                }
            })
        };
        StatsdListener {
            addr,
            datagrams,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:<port>`, for `--statsd`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Every line received so far, in arrival order.
    pub fn lines(&self) -> Vec<String> {
        self.datagrams
            .lock()
            .unwrap()
            .iter()
            .flat_map(|d| datagram_lines(d))
            .collect()
    }

    /// Every line, validated; the first invalid line is the error.
    pub fn parsed(&self) -> Result<Vec<StatsdLine>, String> {
        self.lines().iter().map(|l| parse_statsd_line(l)).collect()
    }

    /// Sum of the values of counter lines named `name`, scaled by their sample rates.
    pub fn counter_sum(&self, name: &str) -> f64 {
        self.lines()
            .iter()
            .filter_map(|l| parse_statsd_line(l).ok())
            .filter(|l| l.name == name && l.kind == "c")
            .map(|l| l.number() / l.rate.unwrap_or(1.0))
            .sum()
    }
}

impl Drop for StatsdListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The contract's StatsD form of a unit name: bytes outside [A-Za-z0-9_-] become '_'. Names
/// longer than 128 bytes are additionally shortened with a hash suffix, which tests check by
/// shape (see the test for hostile names), not by value.
pub fn statsd_unit_name(unit: &str) -> String {
    unit.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                b as char
            } else {
                '_'
            }
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Units used by several tests
// ------------------------------------------------------------------------------------------------

/// A service that fails immediately and is restarted by systemd every ~240 ms, forever: the
/// start limit is disabled, otherwise systemd would give up after 5 restarts in 10 s. /bin/false
/// exits with status 1 and cannot dump core (kernel.core_pattern is machine-wide).
pub const CRASHY_UNIT: &str = "[Unit]\n\
Description=crashes at once, restarted forever\n\
StartLimitIntervalSec=0\n\
\n\
[Service]\n\
ExecStart=/bin/false\n\
Restart=always\n\
RestartSec=100ms\n";
