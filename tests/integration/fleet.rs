//! A fleet, end to end on real parts: twelve nodes, each a sandboxed systemd with its own
//! crashwatch in the node's own network namespace and address (so the `instance` label is a real
//! one); a Prometheus in agent mode scraping all of them and remote-writing to a central
//! Prometheus (`--web.enable-remote-write-receiver`) that evaluates the shipped rules; a real
//! Alertmanager running the shipped example configuration, its webhooks pointed at a receiver
//! here that records every notification.
//!
//! A bad rollout makes one service loop on 4 of the 12 nodes while another service loops on one
//! node: exactly one fleet notification reaches Alertmanager's fleet receiver for the rollout
//! (the per-node alerts of that unit are inhibited) and one per-node notification for the other;
//! once both are fixed, both resolve. The first loop after crashwatch started is whole in the
//! central store, as the rules' increase() needs it.
//!
//! Only the two crash-loop alerts get a shorter `for:` in the central Prometheus's copy of the
//! rules; every other alert keeps its shipped duration, which is longer than the test, so
//! nothing else fires. The Alertmanager's copy of the example changes only the receivers' URL and
//! its group timings. crashwatch runs with a 20 s window so a fixed unit leaves its loop soon.

use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::support::receiver::HookReceiver;
use crate::support::servers::*;
use crate::support::*;

const NODES: usize = 12;
const BROKEN_BY_ROLLOUT: usize = 4;
const ROLLOUT: &str = "rollout.service";
const OTHER: &str = "other.service";
const FLEET_ALERT: &str = "CrashwatchUnitCrashLoopingFleetWide";
const NODE_ALERT: &str = "CrashwatchUnitCrashLooping";
const CRASHWATCH_PORT: u16 = 9863;

/// A healthy service. Its broken version (a drop-in) exits 1 and is restarted after 4 s: three
/// starts in 10 s stay below systemd's default start limit (5 in 10 s), which is kept, so the
/// loop lasts as long as the test needs it.
const SERVICE: &str = "[Service]\nExecStart=/bin/sleep infinity\nRestart=always\nRestartSec=4s\n";

/// The address of node `n` (from 1) and of the host's end of its link. 198.18.0.0/15 is set
/// aside for benchmarks (RFC 2544), so it collides with no real network here.
fn node_address(n: usize) -> String {
    format!("198.18.{n}.2")
}

/// A veth pair between the host and a node's network namespace; deleting the host's end on drop
/// deletes both.
struct Link {
    host_end: String,
}

impl Link {
    fn new(sb: &Sandbox, n: usize) -> Link {
        let host_end = format!("cw{}n{n}", std::process::id() % 100_000);
        let node_end = format!("{host_end}p");
        let pid1 = sb.pid1().to_string();
        let host = |args: &[&str]| run_ok("ip", args);
        let node = |args: &[&str]| {
            let mut all = vec!["-t", &pid1, "-n", "--", "ip"];
            all.extend_from_slice(args);
            run_ok("nsenter", &all);
        };
        host(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", &node_end,
        ]);
        let link = Link { host_end };
        host(&["link", "set", &node_end, "netns", &pid1]);
        host(&[
            "addr",
            "add",
            &format!("198.18.{n}.1/24"),
            "dev",
            &link.host_end,
        ]);
        host(&["link", "set", &link.host_end, "up"]);
        node(&[
            "addr",
            "add",
            &format!("{}/24", node_address(n)),
            "dev",
            &node_end,
        ]);
        node(&["link", "set", &node_end, "up"]);
        node(&["link", "set", "lo", "up"]);
        link
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_end])
            .stderr(Stdio::null())
            .status();
    }
}

fn run_ok(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One node: its systemd, its link and the crashwatch listening on the node's address (fields
/// drop in order: crashwatch first, the systemd last).
struct Node {
    _crashwatch: ServerProcess,
    _link: Link,
    sandbox: Sandbox,
}

impl Node {
    fn start(n: usize) -> Node {
        let sandbox = Sandbox::start().unwrap_or_else(|e| panic!("node {n}: {e}"));
        for unit in [ROLLOUT, OTHER] {
            sandbox.write_unit(unit, SERVICE);
        }
        sandbox.pin_loaded(&[ROLLOUT, OTHER]);
        sandbox.systemctl_ok(&["start", ROLLOUT, OTHER]);
        let link = Link::new(&sandbox, n);
        let listen = format!("{}:{CRASHWATCH_PORT}", node_address(n));
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &sandbox.pid1().to_string(), "-n", "--"])
            .arg(env!("CARGO_BIN_EXE_crashwatch"))
            .args(["run", "--web.listen-address", &listen, "--window", "20s"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", sandbox.bus_address())
            .env_remove("CRASHWATCH_CONFIG");
        let address = node_address(n);
        let crashwatch =
            ServerProcess::spawn("crashwatch", TempDir::new("cw-node"), command, || {
                http_get_from(&address, CRASHWATCH_PORT, "/metrics")
                    .is_ok_and(|text| text.contains(ROLLOUT))
            })
            .unwrap_or_else(|e| panic!("node {n}: {}", e.message));
        Node {
            _crashwatch: crashwatch,
            _link: link,
            sandbox,
        }
    }

    /// The rollout (or a fix) of `unit`: a drop-in replacing its command, then a restart.
    fn deploy(&self, unit: &str, broken: bool) {
        let dir = self.sandbox.dir().join("units").join(format!("{unit}.d"));
        std::fs::create_dir_all(&dir).expect("creating the drop-in directory");
        let command = if broken {
            "/bin/false"
        } else {
            "/bin/sleep infinity"
        };
        std::fs::write(
            dir.join("version.conf"),
            format!("[Service]\nExecStart=\nExecStart={command}\n"),
        )
        .expect("writing the drop-in");
        self.sandbox.systemctl_ok(&["daemon-reload"]);
        self.sandbox.systemctl_ok(&["restart", "--no-block", unit]);
    }
}

/// What Alertmanager's webhooks posted, each to its receiver's path.
struct Notifications(HookReceiver);

impl Notifications {
    /// Listens on a loopback port; every POST is recorded and answered 200.
    fn listen() -> (Notifications, u16) {
        let receiver = HookReceiver::start(0);
        let port = receiver.port();
        (Notifications(receiver), port)
    }

    /// The notifications posted to `receiver` about `alertname` for `unit`, as (status, body).
    fn about(&self, receiver: &str, alertname: &str, unit: &str) -> Vec<(String, Value)> {
        self.0
            .received()
            .into_iter()
            .filter(|r| {
                r.path.ends_with(&format!("/{receiver}"))
                    && r.body["commonLabels"]["alertname"] == alertname
                    && r.body["commonLabels"]["unit"] == unit
            })
            .map(|r| {
                (
                    r.body["status"].as_str().unwrap_or_default().to_owned(),
                    r.body,
                )
            })
            .collect()
    }

    /// No notification about `alertname` for `unit` reached `receiver` (it was inhibited).
    fn assert_none_about(&self, receiver: &str, alertname: &str, unit: &str) {
        assert!(
            self.about(receiver, alertname, unit).is_empty(),
            "{receiver} was notified of {alertname} for {unit}, which is inhibited:\n{}",
            self.all()
        );
    }

    fn all(&self) -> String {
        let posted: Vec<(String, Value)> = self
            .0
            .received()
            .into_iter()
            .map(|r| (r.path, r.body))
            .collect();
        serde_json::to_string_pretty(&posted).unwrap_or_default()
    }
}

/// The shipped rules, with only the `for:` of the alerts named in `short` rewritten to `for_`.
fn rules_shortening(shipped: &str, short: &[&str], for_: &str) -> String {
    let mut out = String::new();
    let mut current_is_short = false;
    let mut rewritten = 0;
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            current_is_short = short.contains(&name.trim());
        } else if trimmed.starts_with("- record:") {
            current_is_short = false;
        }
        if current_is_short && trimmed.starts_with("for:") {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}for: {for_}\n"));
            rewritten += 1;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert_eq!(
        rewritten,
        short.len(),
        "every shortened alert has one `for:` line"
    );
    out
}

/// The example Alertmanager configuration, its webhooks sent to `port` and its group timings
/// shortened; routes and inhibit rules are the shipped ones.
fn alertmanager_config(port: u16) -> String {
    let shipped = std::fs::read_to_string(repo_file("alerts/alertmanager.example.yml"))
        .expect("reading alerts/alertmanager.example.yml");
    let mut text = shipped.replace(
        "http://127.0.0.1:5001/",
        &format!("http://127.0.0.1:{port}/"),
    );
    for (from, to) in [
        ("group_wait: 30s", "group_wait: 10s"),
        ("group_interval: 5m", "group_interval: 2s"),
    ] {
        assert!(text.contains(from), "the example has `{from}`");
        text = text.replace(from, to);
    }
    text
}

/// A Prometheus started with `args` and the configuration `config`, ready when `/-/ready` is.
fn start_prometheus(name: &'static str, config: &str, args: &[String]) -> (ServerProcess, u16) {
    let dir = TempDir::new("cw-fleet-prom");
    let port = free_port();
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, config).expect("writing the Prometheus configuration");
    let data = dir.path().join("data");
    let mut command = Command::new(find_in_path("prometheus").expect("prometheus"));
    command
        .arg(format!("--config.file={}", path.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .args(args)
        .arg(if name == "agent" {
            format!("--storage.agent.path={}", data.display())
        } else {
            format!("--storage.tsdb.path={}", data.display())
        });
    let server = ServerProcess::spawn(name, dir, command, || http_get(port, "/-/ready").is_ok())
        .unwrap_or_else(|e| panic!("{}", e.message));
    (server, port)
}

/// The value of the first sample of an instant query on the central Prometheus.
fn query(port: u16, promql: &str) -> Option<f64> {
    let body = http_get(port, &format!("/api/v1/query?query={}", url_encode(promql))).ok()?;
    let value: Value = serde_json::from_str(&body).ok()?;
    value["data"]["result"][0]["value"][1]
        .as_str()?
        .parse()
        .ok()
}

#[test]
fn a_bad_rollout_pages_once_for_the_fleet_and_a_lone_loop_once_for_its_node() {
    require_sandbox!();
    if let Err(reason) = prometheus_prerequisites() {
        skip(&reason);
        return;
    }
    if find_in_path("ip").is_none() {
        skip("needs ip (Debian package iproute2) to link the nodes' network namespaces");
        return;
    }
    let (notifications, webhook_port) = Notifications::listen();
    let alertmanager = Alertmanager::start_with_config(&alertmanager_config(webhook_port));

    let shipped = std::fs::read_to_string(repo_file("alerts/crashwatch.rules.yml"))
        .expect("reading alerts/crashwatch.rules.yml");
    let rules = rules_shortening(&shipped, &[NODE_ALERT, FLEET_ALERT], "5s");
    let rules_dir = TempDir::new("cw-fleet-rules");
    let rules_path = rules_dir.path().join("crashwatch.rules.yml");
    std::fs::write(&rules_path, rules).expect("writing the rules");
    let (central, central_port) = start_prometheus(
        "central",
        &format!(
            "global:\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{}']\n",
            rules_path.display(),
            alertmanager.port()
        ),
        &[
            "--web.enable-remote-write-receiver".to_owned(),
            "--rules.alert.resend-delay=1s".to_owned(),
        ],
    );

    let nodes: Vec<Node> = (1..=NODES).map(Node::start).collect();
    let targets: Vec<String> = (1..=NODES)
        .map(|n| format!("'{}:{CRASHWATCH_PORT}'", node_address(n)))
        .collect();
    let (agent, _agent_port) = start_prometheus(
        "agent",
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: crashwatch\n    static_configs:\n      - targets: [{}]\n\
             remote_write:\n  - url: http://127.0.0.1:{central_port}/api/v1/write\n    \
             queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n",
            targets.join(", ")
        ),
        &["--enable-feature=agent".to_owned()],
    );

    // Every node's series have reached the central store, each with the node's own address.
    let running = format!("job_unit:crashwatch_unit_nodes:count{{unit=\"{ROLLOUT}\"}}");
    let all_there = wait_until(Duration::from_secs(60), || {
        query(central_port, &running) == Some(NODES as f64)
    });
    assert!(
        all_there,
        "the central Prometheus does not see {ROLLOUT} on {NODES} nodes: {:?}\n{}\n{}",
        query(central_port, &running),
        agent.log_tail(20),
        central.log_tail(20)
    );
    assert_eq!(
        query(
            central_port,
            "count(count by (instance) (crashwatch_build_info))"
        ),
        Some(NODES as f64)
    );

    for node in &nodes[..BROKEN_BY_ROLLOUT] {
        node.deploy(ROLLOUT, true);
    }
    nodes[NODES - 1].deploy(OTHER, true);

    let fired = wait_until(Duration::from_secs(120), || {
        !notifications
            .about("crashwatch-fleet", FLEET_ALERT, ROLLOUT)
            .is_empty()
            && !notifications
                .about("crashwatch-node", NODE_ALERT, OTHER)
                .is_empty()
    });
    assert!(
        fired,
        "no fleet notification for {ROLLOUT} or no per-node one for {OTHER}:\n{}\n{}",
        notifications.all(),
        central.log_tail(20)
    );
    // The truth behind the alerts: systemd's own counters on every node.
    for (i, node) in nodes.iter().enumerate() {
        let looping = i < BROKEN_BY_ROLLOUT;
        assert_eq!(
            node.sandbox.n_restarts(ROLLOUT) > 0,
            looping,
            "node {}: NRestarts of {ROLLOUT}",
            i + 1
        );
    }
    // The first loop after crashwatch started is whole in the central store: the restart
    // counter was there at 0 before the loop, so increase() and rate() see its first restart
    // (a series that appeared at 1 would lose it). Compared with systemd's NRestarts, which may
    // move on between the two reads; the shipped CrashwatchUnitHighRestartRate's first condition
    // holds on the same series.
    let lone = &nodes[NODES - 1].sandbox;
    let series = format!(
        "crashwatch_unit_restarts_total{{unit=\"{OTHER}\",instance=\"{}:{CRASHWATCH_PORT}\"}}",
        node_address(NODES)
    );
    let mut seen = (None, 0);
    let whole = wait_until(Duration::from_secs(30), || {
        let counted = query(
            central_port,
            &format!("max_over_time({series}[1h]) - min_over_time({series}[1h])"),
        );
        seen = (counted, lone.n_restarts(OTHER));
        counted == Some(seen.1 as f64)
    });
    assert!(
        whole,
        "restarts of {OTHER} in the central store, and systemd's NRestarts: {seen:?}"
    );
    let high_rate = format!("increase({series}[1h]) >= 4");
    assert!(
        wait_until(Duration::from_secs(30), || query(central_port, &high_rate)
            .is_some()),
        "{high_rate} never held"
    );
    // Long enough for any further notification of either group (group_interval 2s) and for the
    // per-node alerts of the rollout's nodes, had they not been inhibited (group_wait 10s).
    thread::sleep(Duration::from_secs(15));
    let fleet = notifications.about("crashwatch-fleet", FLEET_ALERT, ROLLOUT);
    assert_eq!(
        fleet.len(),
        1,
        "one fleet notification:\n{}",
        notifications.all()
    );
    let (status, body) = &fleet[0];
    assert_eq!(status, "firing");
    let alerts = body["alerts"].as_array().cloned().unwrap_or_default();
    assert_eq!(alerts.len(), 1, "{body:#}");
    assert!(alerts[0]["labels"].get("instance").is_none(), "{body:#}");
    let nodes_looping = alerts[0]["annotations"]["nodes"]
        .as_str()
        .unwrap_or_default();
    assert!(
        ["3", "4"].contains(&nodes_looping),
        "the rollout loops on {BROKEN_BY_ROLLOUT} nodes: {body:#}"
    );
    assert_eq!(alerts[0]["annotations"]["nodes_running"], NODES.to_string());
    notifications.assert_none_about("crashwatch-node", NODE_ALERT, ROLLOUT);
    let other = notifications.about("crashwatch-node", NODE_ALERT, OTHER);
    assert_eq!(
        other.len(),
        1,
        "one per-node notification:\n{}",
        notifications.all()
    );
    assert_eq!(
        other[0].1["commonLabels"]["instance"],
        format!("{}:{CRASHWATCH_PORT}", node_address(NODES))
    );

    for node in &nodes[..BROKEN_BY_ROLLOUT] {
        node.deploy(ROLLOUT, false);
    }
    nodes[NODES - 1].deploy(OTHER, false);
    let resolved = |receiver: &str, alertname: &str, unit: &str| {
        notifications
            .about(receiver, alertname, unit)
            .iter()
            .any(|(status, _)| status == "resolved")
    };
    let both = wait_until(Duration::from_secs(120), || {
        resolved("crashwatch-fleet", FLEET_ALERT, ROLLOUT)
            && resolved("crashwatch-node", NODE_ALERT, OTHER)
    });
    assert!(both, "not both resolved:\n{}", notifications.all());
    notifications.assert_none_about("crashwatch-node", NODE_ALERT, ROLLOUT);
    assert_eq!(
        notifications
            .about("crashwatch-fleet", FLEET_ALERT, ROLLOUT)
            .iter()
            .map(|(status, _)| status.as_str())
            .collect::<Vec<_>>(),
        ["firing", "resolved"]
    );
    drop(agent);
    drop(nodes);
}
