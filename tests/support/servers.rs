//! The real third-party servers crashwatch's output ends up in: Prometheus, Alertmanager and the
//! reference StatsD server, started by the tests on loopback ports with throw-away directories.
//!
//! Why real servers: `promtool test rules` proves the alert rules against series the test author
//! wrote by hand, and a UDP listener proves that crashwatch's StatsD lines are well formed. Neither
//! shows that the metric names and labels crashwatch actually exports fit the shipped rules and
//! dashboard, that an alert travels from Prometheus to Alertmanager with the labels a router
//! needs, or that a real StatsD server aggregates crashwatch's datagrams into the counts we claim.
//! The servers used are the ones a user runs: Debian's `prometheus` and `prometheus-alertmanager`,
//! and the npm package `statsd` run with node (scripts/test.sh installs all three).
//!
//! Every server is a [`ServerProcess`]: killed (SIGTERM, then SIGKILL) and its directory removed
//! when dropped, also when the test panics, with the tail of its log printed on failure.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{find_in_path, free_port, http_get, TempDir};

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn prctl(option: i32, ...) -> i32;
}
const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;
const PR_SET_PDEATHSIG: i32 = 1;

/// How long a server may take to answer its readiness check.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------------------------
// Prerequisites
// ------------------------------------------------------------------------------------------------

/// Why Prometheus and Alertmanager cannot be run here, or Ok.
pub fn prometheus_prerequisites() -> Result<(), String> {
    let missing: Vec<&str> = [
        ("prometheus", "prometheus (Debian package prometheus)"),
        (
            "prometheus-alertmanager",
            "prometheus-alertmanager (Debian package prometheus-alertmanager)",
        ),
    ]
    .iter()
    .filter(|(bin, _)| find_in_path(bin).is_none())
    .map(|(_, what)| *what)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "needs {} (scripts/test.sh installs them as root)",
            missing.join(" and ")
        ))
    }
}

/// Where the reference StatsD server's `stats.js` is: `$CRASHWATCH_STATSD_JS`, or where
/// scripts/test.sh installs the npm package (`target/npm` in the repository, git-ignored).
pub fn statsd_js() -> PathBuf {
    match std::env::var_os("CRASHWATCH_STATSD_JS") {
        Some(p) => PathBuf::from(p),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm/node_modules/statsd/stats.js")
        }
    }
}

/// Why the reference StatsD server cannot be run here, or Ok.
pub fn statsd_server_prerequisites() -> Result<(), String> {
    if find_in_path("node").is_none() {
        return Err("needs node (Debian package nodejs) to run the reference StatsD server".into());
    }
    let js = statsd_js();
    if !js.is_file() {
        return Err(format!(
            "needs the reference StatsD server at {} (scripts/test.sh installs it: \
             npm install --no-save --prefix target/npm statsd@0.9.0)",
            js.display()
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// A server process
// ------------------------------------------------------------------------------------------------

/// A child process with its own temporary directory and a log file (its stdout and stderr).
/// Dropping it stops the process and removes the directory.
pub struct ServerProcess {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    dir: TempDir,
}

/// Why a start failed, and whether trying again on other ports may help.
pub struct StartError {
    pub message: String,
    pub retry: bool,
}

impl ServerProcess {
    /// Start `cmd` with its output going to `<dir>/<name>.log` and wait until `ready` holds. A
    /// process that exits first is an error, retryable when its log says that a port was taken
    /// (the ports are probed free, then bound by the server, so parallel tests can race).
    pub fn spawn(
        name: &'static str,
        dir: TempDir,
        mut cmd: Command,
        mut ready: impl FnMut() -> bool,
    ) -> Result<ServerProcess, StartError> {
        let log = dir.path().join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| StartError {
            message: format!("creating {}: {e}", log.display()),
            retry: false,
        })?;
        let err = out.try_clone().map_err(|e| StartError {
            message: format!("dup of {}: {e}", log.display()),
            retry: false,
        })?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // A test process killed outside our control (a timeout's SIGKILL) runs no Drop; the kernel
        // then kills the server when the thread that started it dies. Servers are started from
        // the test's own thread, which lives until the test's guards have run.
        // SAFETY: prctl is async-signal-safe and touches only the child being set up.
        unsafe {
            cmd.pre_exec(|| {
                prctl(PR_SET_PDEATHSIG, SIGKILL as std::ffi::c_ulong);
                Ok(())
            });
        }
        let desc = format!("{:?}", cmd);
        let child = cmd.spawn().map_err(|e| StartError {
            message: format!("spawning {name} ({desc}): {e}"),
            retry: false,
        })?;
        let mut server = ServerProcess {
            name,
            child: Some(child),
            log,
            dir,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if ready() {
                return Ok(server);
            }
            let exited = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let log = server.log_tail(30);
                return Err(StartError {
                    retry: log.contains("address already in use") || log.contains("EADDRINUSE"),
                    message: format!("{name} exited ({status}) before it was ready: {desc}\n{log}"),
                });
            }
            if Instant::now() >= deadline {
                return Err(StartError {
                    message: format!(
                        "{name} not ready within {} s: {desc}\n{}",
                        STARTUP_TIMEOUT.as_secs(),
                        server.log_tail(30)
                    ),
                    retry: false,
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last `lines` lines of the server's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        format!(
            "--- {} log (last {lines} lines) ---\n{}",
            self.name,
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    /// SIGTERM, a few seconds' grace, then SIGKILL; always reaps the process.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: plain kill(2) on our own, not yet reaped child.
        unsafe { kill(child.id() as i32, SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tail(30));
        }
        self.stop();
        // `self.dir` is removed when the field drops, after the process is gone.
    }
}

/// Start a server up to three times, on fresh ports each time, while the failure is a port race.
fn start_with_retries<T>(mut attempt: impl FnMut() -> Result<T, StartError>) -> T {
    let mut last = String::new();
    for _ in 0..3 {
        match attempt() {
            Ok(t) => return t,
            Err(e) if e.retry => last = e.message,
            Err(e) => panic!("{}", e.message),
        }
    }
    panic!("{last}");
}

// ------------------------------------------------------------------------------------------------
// HTTP JSON APIs
// ------------------------------------------------------------------------------------------------

/// Percent-encode a query-string value (everything but RFC 3986's unreserved characters).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GET `path` on 127.0.0.1:`port` and parse the body as JSON, whatever the status: Prometheus
/// answers a bad query with 400 and the reason in a JSON body, which callers want to see.
///
/// Not `http_get`: that one asks for `text/plain`, which Alertmanager's API refuses (406). HTTP/1.0
/// keeps this short: the server sends the body unchunked and closes the connection after it.
pub fn get_json(port: u16, path: &str) -> Result<Value, String> {
    let fail = |why: String| format!("GET {path} on 127.0.0.1:{port}: {why}");
    let mut s =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| fail(format!("connect: {e}")))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(|e| fail(format!("send: {e}")))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| fail(format!("read: {e}")))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail(format!("no end of headers in {text:?}")))?;
    let status = head.lines().next().unwrap_or_default();
    serde_json::from_str(body).map_err(|e| fail(format!("{status}, body not JSON ({e}): {body}")))
}

// ------------------------------------------------------------------------------------------------
// Alertmanager
// ------------------------------------------------------------------------------------------------

/// A real Alertmanager on a loopback port, clustering off, with one receiver that discards
/// notifications: the tests read alerts through its API, not from a notification channel.
pub struct Alertmanager {
    server: ServerProcess,
    port: u16,
}

impl Alertmanager {
    pub fn start() -> Alertmanager {
        // Short group timings so a new or resolved alert is processed at once; the receiver has
        // no integrations, which Alertmanager accepts as "send nowhere".
        Self::start_with_config(
            "route:\n  receiver: discard\n  group_wait: 0s\n  group_interval: 1s\n  \
             repeat_interval: 1h\nreceivers:\n  - name: discard\n",
        )
    }

    /// An Alertmanager running the configuration `text`.
    pub fn start_with_config(text: &str) -> Alertmanager {
        start_with_retries(|| Self::try_start(text))
    }

    fn try_start(text: &str) -> Result<Alertmanager, StartError> {
        let dir = TempDir::new("cw-am");
        let port = free_port();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, text).map_err(|e| StartError {
            message: format!("writing {}: {e}", config.display()),
            retry: false,
        })?;
        let mut cmd = Command::new(find_in_path("prometheus-alertmanager").unwrap());
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Empty: no gossip listener, so nothing binds outside loopback.
            .arg("--cluster.listen-address=");
        let server = ServerProcess::spawn("alertmanager", dir, cmd, || {
            http_get(port, "/-/ready").is_ok()
        })?;
        Ok(Alertmanager { server, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `GET /api/v2/alerts`: the alerts Alertmanager holds that have not resolved.
    pub fn alerts(&self) -> Result<Vec<Value>, String> {
        match get_json(self.port, "/api/v2/alerts")? {
            Value::Array(a) => Ok(a),
            other => Err(format!("/api/v2/alerts returned a non-array: {other}")),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }
}

// ------------------------------------------------------------------------------------------------
// Prometheus
// ------------------------------------------------------------------------------------------------

/// A real Prometheus on a loopback port that scrapes one crashwatch every second (job
/// `crashwatch`), evaluates `rules` every second and sends alerts to one Alertmanager.
pub struct Prometheus {
    server: ServerProcess,
    port: u16,
}

impl Prometheus {
    /// `rules_text` is written into Prometheus's directory and loaded with `rule_files:`.
    pub fn start(rules_text: &str, crashwatch_port: u16, alertmanager_port: u16) -> Prometheus {
        start_with_retries(|| Self::try_start(rules_text, crashwatch_port, alertmanager_port))
    }

    fn try_start(
        rules_text: &str,
        crashwatch_port: u16,
        alertmanager_port: u16,
    ) -> Result<Prometheus, StartError> {
        let dir = TempDir::new("cw-prom");
        let port = free_port();
        let rules = dir.path().join("crashwatch.rules.yml");
        let config = dir.path().join("prometheus.yml");
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).map_err(|e| StartError {
                message: format!("writing {}: {e}", path.display()),
                retry: false,
            })
        };
        write(&rules, rules_text)?;
        write(
            &config,
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{alertmanager_port}']\n\
                 scrape_configs:\n  - job_name: crashwatch\n    static_configs:\n      - targets: ['127.0.0.1:{crashwatch_port}']\n",
                rules = rules.display()
            ),
        )?;
        let mut cmd = Command::new(find_in_path("prometheus").unwrap());
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Firing alerts are re-sent every minute by default; every second keeps Alertmanager's
            // view current within the test's short timeouts.
            .arg("--rules.alert.resend-delay=1s");
        let server = ServerProcess::spawn("prometheus", dir, cmd, || {
            http_get(port, "/-/ready").is_ok()
        })?;
        Ok(Prometheus { server, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `GET <path>` of the HTTP API; the `data` member of a `"status": "success"` answer.
    pub fn api(&self, path: &str) -> Result<Value, String> {
        let v = get_json(self.port, path)?;
        if v["status"] != "success" {
            return Err(format!("GET {path}: {v}"));
        }
        Ok(v["data"].clone())
    }

    /// An instant query: the `data` member (`resultType`, `result`) of a successful answer, or the
    /// error Prometheus gave (a parse error comes back as HTTP 400 with the reason in the body).
    pub fn query(&self, promql: &str) -> Result<Value, String> {
        self.api(&format!("/api/v1/query?query={}", url_encode(promql)))
            .map_err(|e| format!("query {promql:?}: {e}"))
    }

    /// The vector result of an instant query (empty if there is no data).
    pub fn query_vector(&self, promql: &str) -> Result<Vec<Value>, String> {
        let data = self.query(promql)?;
        match &data["result"] {
            Value::Array(a) => Ok(a.clone()),
            other => Err(format!("query {promql:?}: result is not a vector: {other}")),
        }
    }

    /// Value of the single sample of `promql` whose labels include all of `labels`.
    pub fn value(&self, promql: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.query_vector(promql)
            .ok()?
            .iter()
            .find(|s| labels.iter().all(|(k, v)| s["metric"][*k] == *v))
            .and_then(|s| s["value"][1].as_str()?.parse().ok())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }
}

// ------------------------------------------------------------------------------------------------
// Prometheus scraping over TLS, with a client certificate or basic authentication
// ------------------------------------------------------------------------------------------------

/// How a Prometheus scrapes a crashwatch that serves TLS: the CA it trusts, and the client
/// certificate and basic authentication it shows, if any.
pub struct SecureScrape<'a> {
    /// crashwatch's port on 127.0.0.1.
    pub port: u16,
    /// The CA that signed crashwatch's server certificate (`tls_config.ca_file`).
    pub ca: &'a Path,
    /// A client certificate and its key (`tls_config.cert_file`, `key_file`).
    pub client_cert: Option<(&'a Path, &'a Path)>,
    /// User and password (`basic_auth`).
    pub basic_auth: Option<(&'a str, &'a str)>,
}

impl Prometheus {
    /// A real Prometheus scraping crashwatch every second over HTTPS (job `crashwatch`), as
    /// `scrape` says; no rules, no Alertmanager.
    pub fn start_secure(scrape: &SecureScrape) -> Prometheus {
        start_with_retries(|| Self::try_start_secure(scrape))
    }

    fn try_start_secure(scrape: &SecureScrape) -> Result<Prometheus, StartError> {
        let dir = TempDir::new("cw-prom-tls");
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        let mut job = format!(
            "scrape_configs:\n  - job_name: crashwatch\n    scheme: https\n    tls_config:\n      \
             ca_file: {}\n",
            scrape.ca.display()
        );
        if let Some((cert, key)) = scrape.client_cert {
            job.push_str(&format!(
                "      cert_file: {}\n      key_file: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some((user, password)) = scrape.basic_auth {
            // The password from a file, as operators keep it; serde_json quoting is valid YAML.
            let password_file = dir.path().join("password");
            std::fs::write(&password_file, password).map_err(|e| StartError {
                message: format!("writing {}: {e}", password_file.display()),
                retry: false,
            })?;
            job.push_str(&format!(
                "    basic_auth:\n      username: {}\n      password_file: {}\n",
                json!(user),
                password_file.display()
            ));
        }
        job.push_str(&format!(
            "    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            scrape.port
        ));
        let text = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n{job}"
        );
        std::fs::write(&config, text).map_err(|e| StartError {
            message: format!("writing {}: {e}", config.display()),
            retry: false,
        })?;
        let mut cmd = Command::new(find_in_path("prometheus").unwrap());
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let server = ServerProcess::spawn("prometheus", dir, cmd, || {
            http_get(port, "/-/ready").is_ok()
        })?;
        Ok(Prometheus { server, port })
    }

    /// The health (`up`, `down`, `unknown`) and last scrape error of the job `crashwatch`'s
    /// only target, from `/api/v1/targets`.
    pub fn target_health(&self) -> Result<(String, String), String> {
        let data = self.api("/api/v1/targets")?;
        let target = data["activeTargets"]
            .as_array()
            .and_then(|targets| targets.iter().find(|t| t["labels"]["job"] == "crashwatch"))
            .ok_or_else(|| format!("no crashwatch target in {data}"))?;
        Ok((
            target["health"].as_str().unwrap_or_default().to_owned(),
            target["lastError"].as_str().unwrap_or_default().to_owned(),
        ))
    }
}

// ------------------------------------------------------------------------------------------------
// The reference StatsD server
// ------------------------------------------------------------------------------------------------

/// The reference StatsD server (node + npm `statsd`) on a loopback UDP port, flushing every 500 ms
/// through tests/support/statsd_flush_backend.js, which appends each flush to a JSON-lines file.
/// Counters are deleted after each flush (`deleteCounters`), so a flush holds exactly what arrived
/// in its interval and summing every flush gives the total the server received.
pub struct StatsdServer {
    server: ServerProcess,
    port: u16,
    flushes: PathBuf,
}

impl StatsdServer {
    pub fn start() -> StatsdServer {
        start_with_retries(Self::try_start)
    }

    fn try_start() -> Result<StatsdServer, StartError> {
        let dir = TempDir::new("cw-statsd");
        let port = {
            let s = UdpSocket::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 (udp)");
            s.local_addr().expect("local_addr of probe socket").port()
        };
        let mgmt_port = free_port();
        let flushes = dir.path().join("flushes.jsonl");
        let backend =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/statsd_flush_backend.js");
        // The server evaluates its configuration file as JavaScript; a JSON object is valid.
        let config = json!({
            "address": "127.0.0.1",
            "port": port,
            "mgmt_address": "127.0.0.1",
            "mgmt_port": mgmt_port,
            "flushInterval": 500,
            "deleteCounters": true,
            "automaticConfigReload": false,
            "backends": [backend],
            "flushFile": {"path": flushes},
        });
        let config_path = dir.path().join("config.js");
        std::fs::write(&config_path, config.to_string()).map_err(|e| StartError {
            message: format!("writing {}: {e}", config_path.display()),
            retry: false,
        })?;
        let mut cmd = Command::new(find_in_path("node").unwrap());
        cmd.arg(statsd_js()).arg(&config_path);
        // Ready when the management port answers and the backend has written its first flush:
        // both servers are bound and flushing works.
        let ready_flushes = flushes.clone();
        let server = ServerProcess::spawn("statsd", dir, cmd, move || {
            mgmt_health(mgmt_port).as_deref() == Some("health: up")
                && std::fs::read_to_string(&ready_flushes)
                    .map(|t| t.contains('\n'))
                    .unwrap_or(false)
        })?;
        Ok(StatsdServer {
            server,
            port,
            flushes,
        })
    }

    /// `127.0.0.1:<port>`, for crashwatch's `--statsd`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every complete flush so far, in order.
    pub fn flushes(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.flushes).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        complete
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", self.flushes.display()))
            })
            .collect()
    }

    /// Sum of counter `name` over every flush.
    pub fn counter_total(&self, name: &str) -> f64 {
        self.flushes()
            .iter()
            .filter_map(|f| f["counters"][name].as_f64())
            .sum()
    }

    /// The values gauge `name` had in each flush, in order (flushes before it existed left out).
    pub fn gauge_values(&self, name: &str) -> Vec<f64> {
        self.flushes()
            .iter()
            .filter_map(|f| f["gauges"][name].as_f64())
            .collect()
    }

    /// Every flushed counter and gauge whose name contains `part`, flush by flush, for failure
    /// messages.
    pub fn describe(&self, part: &str) -> String {
        let mut out = String::new();
        for f in self.flushes() {
            let mut picked = serde_json::Map::new();
            for kind in ["counters", "gauges"] {
                if let Some(m) = f[kind].as_object() {
                    for (k, v) in m.iter().filter(|(k, _)| k.contains(part)) {
                        picked.insert(format!("{kind}:{k}"), v.clone());
                    }
                }
            }
            if !picked.is_empty() {
                out.push_str(&format!("{} {}\n", f["timestamp"], Value::Object(picked)));
            }
        }
        out
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }
}

/// The answer of the StatsD management interface to `health`, e.g. `health: up`.
fn mgmt_health(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"health\n").ok()?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).ok()?;
    let _ = s.write_all(b"quit\n");
    Some(line.trim().to_string())
}

// ------------------------------------------------------------------------------------------------
// The shipped rules and dashboard
// ------------------------------------------------------------------------------------------------

/// Path of a file in the repository.
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The test copy of the shipped rules: identical except that every alert's `for:` duration is
/// replaced by `for_`. The transform is line-based and deliberately narrow: a line that is only
/// indentation, `for:` and a duration (how every alert in alerts/crashwatch.rules.yml writes it)
/// gets the new duration; nothing else changes, so expressions, labels and recording rules are
/// the shipped ones. Returns the text and how many lines were rewritten, which the caller checks
/// against the number of alerts so that a rule written another way is noticed, not skipped.
pub fn rules_with_for(shipped: &str, for_: &str) -> (String, usize) {
    let mut rewritten = 0;
    let mut out = String::with_capacity(shipped.len());
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let is_for = trimmed
            .strip_prefix("for:")
            .map(|d| {
                let d = d.trim();
                !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric())
            })
            .unwrap_or(false);
        if is_for && !indent.is_empty() {
            out.push_str(&format!("{indent}for: {for_}\n"));
            rewritten += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    (out, rewritten)
}

/// Number of `- alert:` rules in a rules file.
pub fn count_alerts(rules: &str) -> usize {
    rules
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count()
}

/// One query of a dashboard panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// The panel's title, with the target's refId.
    pub panel: String,
    /// The expression with the dashboard's variables replaced, ready for Prometheus.
    pub expr: String,
}

/// Every target `expr` of every panel (rows' nested panels included) of a Grafana dashboard, with
/// the variables replaced the way Grafana would for "All instances" over a short time range:
/// `$instance` / `${instance}` by `.*` (the variable's allValue) and Grafana's built-in interval
/// and range variables (`$__rate_interval`, `$__interval`, `$__range`, ...) by `1m`.
pub fn dashboard_queries(dashboard: &Value) -> Vec<PanelQuery> {
    fn walk(panels: &Value, out: &mut Vec<PanelQuery>) {
        for p in panels.as_array().into_iter().flatten() {
            walk(&p["panels"], out);
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(PanelQuery {
                        panel: format!(
                            "{} ({})",
                            p["title"].as_str().unwrap_or("untitled"),
                            t["refId"].as_str().unwrap_or("?")
                        ),
                        expr: substitute_variables(expr),
                    });
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// See [`dashboard_queries`]. Unknown variables are left in place, so the query fails to parse and
/// the test names the panel.
pub fn substitute_variables(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let replacement = match name {
            "instance" => Some(".*"),
            n if n.starts_with("__") && (n.contains("interval") || n.contains("range")) => {
                Some("1m")
            }
            _ => None,
        };
        match replacement {
            Some(r) => {
                out.push_str(r);
                rest = &after[len..];
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

// ------------------------------------------------------------------------------------------------
// Small servers of the tests' own: an HTTP(S) receiver and a CONNECT proxy, in Python
// ------------------------------------------------------------------------------------------------

/// Why the Python servers (tests/support/https_receiver.py, connect_proxy.py) cannot run, or Ok.
pub fn python3_prerequisites() -> Result<(), String> {
    if find_in_path("python3").is_some() {
        Ok(())
    } else {
        Err("needs python3 (Debian package python3) for the test receivers".to_owned())
    }
}

/// Why curl cannot be run to read a server behind TLS and basic authentication, or Ok.
pub fn curl_prerequisites() -> Result<(), String> {
    if find_in_path("curl").is_some() {
        Ok(())
    } else {
        Err("needs curl (Debian package curl) to read a server behind TLS".to_owned())
    }
}

/// One of the Python servers beside this file, on a loopback port it picked and wrote down, with
/// the JSON lines it records.
pub struct ScriptServer {
    server: ServerProcess,
    port: u16,
    record: PathBuf,
}

impl ScriptServer {
    /// Runs tests/support/`script` with `args`, plus `--port-file` and `--record` in its own
    /// directory, and waits until it listens.
    pub fn start(script: &'static str, args: &[String]) -> ScriptServer {
        let dir = TempDir::new("cw-script");
        let port_file = dir.path().join("port");
        let record = dir.path().join("record.jsonl");
        let mut cmd = Command::new(find_in_path("python3").expect("python3"));
        cmd.arg(repo_file(&format!("tests/support/{script}")))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--record")
            .arg(&record)
            .args(args);
        let ready_file = port_file.clone();
        let server =
            ServerProcess::spawn(script_name(script), dir, cmd, move || ready_file.is_file())
                .unwrap_or_else(|e| panic!("{}", e.message));
        let port = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{script} wrote no port"));
        ScriptServer {
            server,
            port,
            record,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every complete line recorded so far.
    pub fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.record).unwrap_or_default();
        text.lines()
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }
}

fn script_name(script: &'static str) -> &'static str {
    script.trim_end_matches(".py")
}

/// A real Alertmanager that serves its API only over TLS, to clients with a certificate signed
/// by `client_ca` and the basic authentication of `user` (bcrypt hash in its web configuration,
/// exporter-toolkit's `--web.config.file`). Read through curl with the same credentials.
pub struct AlertmanagerTls {
    server: ServerProcess,
    port: u16,
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    user: String,
    password: String,
}

/// What [`AlertmanagerTls::start`] needs: the server's certificate and key, the CA that signs
/// the certificates of its clients and its own, and one client's certificate and credentials.
pub struct AlertmanagerTlsSetup<'a> {
    pub ca: &'a Path,
    pub server_cert: &'a Path,
    pub server_key: &'a Path,
    pub client_cert: &'a Path,
    pub client_key: &'a Path,
    pub user: &'a str,
    pub password: &'a str,
    /// `bcrypt_hash(password)`.
    pub password_hash: &'a str,
}

impl AlertmanagerTls {
    pub fn start(setup: &AlertmanagerTlsSetup) -> AlertmanagerTls {
        start_with_retries(|| Self::try_start(setup))
    }

    fn try_start(setup: &AlertmanagerTlsSetup) -> Result<AlertmanagerTls, StartError> {
        let dir = TempDir::new("cw-am-tls");
        let port = free_port();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).map_err(|e| StartError {
                message: format!("writing {}: {e}", path.display()),
                retry: false,
            })?;
            Ok(path)
        };
        let config = write(
            "alertmanager.yml",
            "route:\n  receiver: discard\n  group_wait: 0s\n  group_interval: 1s\n  \
             repeat_interval: 1h\nreceivers:\n  - name: discard\n"
                .to_owned(),
        )?;
        let web = write(
            "web.yml",
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  \
                 client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n\
                 basic_auth_users:\n  {}: {}\n",
                setup.server_cert.display(),
                setup.server_key.display(),
                setup.ca.display(),
                setup.user,
                setup.password_hash
            ),
        )?;
        let mut cmd = Command::new(find_in_path("prometheus-alertmanager").unwrap());
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.config.file={}", web.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=");
        let probe = AlertmanagerTlsProbe {
            port,
            ca: setup.ca.to_owned(),
            client_cert: setup.client_cert.to_owned(),
            client_key: setup.client_key.to_owned(),
            user: setup.user.to_owned(),
            password: setup.password.to_owned(),
        };
        let server = ServerProcess::spawn("alertmanager-tls", dir, cmd, || {
            probe.get("/-/ready").is_ok()
        })?;
        Ok(AlertmanagerTls {
            server,
            port,
            ca: probe.ca,
            client_cert: probe.client_cert,
            client_key: probe.client_key,
            user: probe.user,
            password: probe.password,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `GET /api/v2/alerts` through curl: the alerts Alertmanager holds that have not resolved.
    pub fn alerts(&self) -> Result<Vec<Value>, String> {
        let probe = AlertmanagerTlsProbe {
            port: self.port,
            ca: self.ca.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
        };
        let body = probe.get("/api/v2/alerts")?;
        match serde_json::from_str(&body) {
            Ok(Value::Array(a)) => Ok(a),
            _ => Err(format!("/api/v2/alerts returned no array: {body}")),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }
}

/// curl with a client's certificate and credentials against an [`AlertmanagerTls`].
struct AlertmanagerTlsProbe {
    port: u16,
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    user: String,
    password: String,
}

impl AlertmanagerTlsProbe {
    /// The body of a 2xx answer to `GET path`.
    fn get(&self, path: &str) -> Result<String, String> {
        // The password goes through a config on standard input, not the command line.
        let mut child = Command::new(find_in_path("curl").expect("curl"))
            .args(["--silent", "--show-error", "--fail", "--max-time", "5"])
            .arg("--cacert")
            .arg(&self.ca)
            .arg("--cert")
            .arg(&self.client_cert)
            .arg("--key")
            .arg(&self.client_key)
            .args(["--config", "-"])
            .arg(format!("https://localhost:{}{path}", self.port))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running curl: {e}"))?;
        let config = format!("user = \"{}:{}\"\n", self.user, self.password);
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(config.as_bytes())
                .map_err(|e| format!("writing to curl: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("running curl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "curl GET {path}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        String::from_utf8(out.stdout).map_err(|e| format!("curl GET {path}: {e}"))
    }
}
