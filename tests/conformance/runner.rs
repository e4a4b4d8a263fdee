//! Runs one case against one systemd version: a fresh sandbox with journald, the case's units,
//! crashwatch watching, the scenario; then three judgements, in this order:
//!
//! 1. the truth: the unit's counter file (one line per run, written by the unit itself) and
//!    systemd's own properties against the case's expectation. A mismatch here is reported as
//!    "systemd did ...": the case's idea of systemd is wrong for this version;
//! 2. crashwatch live: /metrics and the event record against the same expectation, and against
//!    each other;
//! 3. history: `crashwatch replay` over the sandbox's `journalctl -o json`, which must find the
//!    loops live found, ended the same way, flagged at the same restart count.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::model::{Case, Cond, End, Expect, Needs, Replay, Step, N};
use crate::support::{parse_samples, wait_until, Crashwatch, Sandbox};
use crate::versions::{self, SystemdVersion};

const BIN: &str = env!("CARGO_BIN_EXE_crashwatch");

/// A tag journald records with the line that closes every scenario: it moves replay's clock to
/// the end of the case, as any later message would in a real journal.
const END_MARK: &str = "conformance-end";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// Cannot run here (no root, version missing); a failure under CI=true.
    Skip,
    /// This version cannot run the case by nature.
    NotApplicable,
}

pub struct Outcome {
    pub status: Status,
    /// crashwatch's verdict, or the reason for a skip or n/a.
    pub verdict: String,
    pub problems: Vec<String>,
    pub seconds: f64,
}

impl Outcome {
    fn early(status: Status, reason: String, started: Instant) -> Outcome {
        Outcome {
            status,
            verdict: reason,
            problems: Vec::new(),
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

pub fn run(case: &Case, version: SystemdVersion) -> Outcome {
    let started = Instant::now();
    if let Some(reason) = (case.not_applicable)(version) {
        return Outcome::early(Status::NotApplicable, reason.to_owned(), started);
    }
    if let Err(reason) =
        crate::support::sandbox_prerequisites().and_then(|()| versions::available(version))
    {
        return Outcome::early(Status::Skip, reason, started);
    }
    if crate::support::find_in_path("journalctl").is_none() {
        let reason = "needs journalctl (package systemd) to read the sandbox's journal";
        return Outcome::early(Status::Skip, reason.into(), started);
    }
    let sb = match versions::start(version) {
        Ok(sb) => sb,
        Err(e) => {
            return Outcome {
                status: Status::Fail,
                verdict: "sandbox did not start".into(),
                problems: vec![e],
                seconds: started.elapsed().as_secs_f64(),
            }
        }
    };
    if let Some(needs) = case.needs {
        if let Err(reason) = check_needs(&sb, needs) {
            return Outcome::early(Status::NotApplicable, reason, started);
        }
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| judge(case, &sb)));
    let (verdict, problems) = match result {
        Ok(r) => r,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            ("harness error".into(), vec![message])
        }
    };
    Outcome {
        status: if problems.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        },
        verdict,
        problems,
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn check_needs(sb: &Sandbox, needs: Needs) -> Result<(), String> {
    match needs {
        Needs::MemoryController => {
            let path = format!("/proc/{}/root/sys/fs/cgroup/cgroup.controllers", sb.pid1());
            let controllers = std::fs::read_to_string(&path).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "memory") {
                Ok(())
            } else {
                let host_v1_memory = std::fs::read_to_string("/proc/cgroups")
                    .unwrap_or_default()
                    .lines()
                    .any(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.first() == Some(&"memory") && f.get(1).is_some_and(|h| *h != "0")
                    });
                Err(if host_v1_memory {
                    format!(
                        "the sandbox's cgroup2 tree offers only [{}]: this host binds the memory \
                         controller to a cgroup v1 hierarchy (hybrid layout), so systemd cannot \
                         enforce MemoryMax= and the kernel never OOM-kills inside the unit's cgroup",
                        controllers.trim()
                    )
                } else {
                    format!(
                        "the sandbox's cgroup2 tree offers only [{}]: no memory controller to \
                         delegate, so MemoryMax= is not enforced",
                        controllers.trim()
                    )
                })
            }
        }
    }
}

/// Directory shared by host and sandbox where units count their runs.
fn counter_dir(sb: &Sandbox) -> PathBuf {
    sb.dir().join("counters")
}

fn runs(sb: &Sandbox) -> u64 {
    std::fs::read_to_string(counter_dir(sb).join("runs"))
        .map(|t| t.lines().count() as u64)
        .unwrap_or(0)
}

/// A property without busctl's type prefix and quotes; None when it cannot be read (the unit is
/// gone, say).
pub fn prop(sb: &Sandbox, unit: &str, iface: &str, name: &str) -> Option<String> {
    let path = crate::support::unit_object_path(unit);
    let out = sb.busctl(&[
        "get-property",
        "org.freedesktop.systemd1",
        &path,
        &format!("org.freedesktop.systemd1.{iface}"),
        name,
    ]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let value = text.split_once(' ').map_or("", |(_, v)| v);
    Some(value.trim_matches('"').to_string())
}

/// The scenario's transcript, for failure reports.
struct Log(Vec<String>);

impl Log {
    fn note(&mut self, line: String) {
        self.0.push(line);
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Runs the case in a started sandbox; returns crashwatch's verdict and every problem found.
fn judge(case: &Case, sb: &Sandbox) -> (String, Vec<String>) {
    let dir = counter_dir(sb);
    std::fs::create_dir_all(&dir).expect("creating the counter directory");
    let dir_text = dir.display().to_string();
    for (name, text) in &case.files {
        sb.write_unit(name, &text.replace("@DIR@", &dir_text));
    }
    if case.pin.is_empty() {
        sb.reload();
    } else {
        sb.pin_loaded(&case.pin);
    }
    let threshold = case.threshold.to_string();
    let window = format!("{}s", case.window_secs);
    let cw = Crashwatch::spawn(
        sb,
        &[
            "--threshold",
            &threshold,
            "--window",
            &window,
            "--include",
            case.unit,
            "--no-journal-history",
            // Every series, so that the starts of a case that never crashes are read too.
            "--unit-series=all",
        ],
    );

    let mut log = Log(Vec::new());
    let mut problems = Vec::new();
    let t0 = Instant::now();
    for step in &case.steps {
        if let Err(e) = run_step(sb, step, &dir_text, &mut log, t0) {
            problems.push(format!("systemd did not follow the scenario: {e}"));
            break;
        }
    }
    mark_end(sb);

    // 1. The truth.
    let runs = runs(sb);
    let truth = Truth::read(sb, case.unit, runs);
    problems.extend(truth.check(&case.expect));

    // 2. crashwatch live, once its record has settled.
    let seen = settle(&cw, case.unit, runs, case.expect.end);
    problems.extend(seen.check(&case.expect, runs));
    let verdict = seen.verdict(runs);

    // 3. History: the journal replayed.
    match replay(sb, case) {
        Ok(replayed) => problems.extend(check_replay(case, &seen, &replayed)),
        Err(e) => problems.push(format!("replay: {e}")),
    }

    if !problems.is_empty() {
        problems.push(format!("truth: {}", truth.describe()));
        problems.push(format!("scenario:\n      {}", log.0.join("\n      ")));
        problems.push(format!(
            "{} event record:\n      {}",
            case.unit,
            seen.lines
                .iter()
                .map(brief_event)
                .collect::<Vec<_>>()
                .join("\n      ")
        ));
    }
    (verdict, problems)
}

fn run_step(
    sb: &Sandbox,
    step: &Step,
    dir: &str,
    log: &mut Log,
    t0: Instant,
) -> Result<(), String> {
    let at = || format!("{:6.2}s", t0.elapsed().as_secs_f64());
    let systemctl = |log: &mut Log, args: &[&str]| {
        let out = sb.systemctl(args);
        let mut line = format!("{} systemctl {}", at(), args.join(" "));
        if !out.status.success() {
            line.push_str(&format!(" -> {} {}", out.status, output_text(&out)));
        }
        log.note(line);
        out
    };
    match step {
        Step::Start(unit) => {
            systemctl(log, &["start", "--no-block", unit]);
        }
        Step::Stop(unit) => {
            let out = systemctl(log, &["stop", unit]);
            if !out.status.success() {
                return Err(format!("systemctl stop {unit}: {}", output_text(&out)));
            }
        }
        Step::Restart(unit) => {
            systemctl(log, &["restart", "--no-block", unit]);
        }
        Step::Kill(unit, signal) => {
            let out = systemctl(log, &["kill", "-s", signal, unit]);
            if !out.status.success() {
                return Err(format!("systemctl kill {unit}: {}", output_text(&out)));
            }
        }
        Step::ResetFailed(unit) => {
            systemctl(log, &["reset-failed", unit]);
        }
        Step::DaemonReload => {
            let out = systemctl(log, &["daemon-reload"]);
            if !out.status.success() {
                return Err(format!("daemon-reload: {}", output_text(&out)));
            }
        }
        Step::DaemonReexec => {
            let out = systemctl(log, &["daemon-reexec"]);
            if !out.status.success() {
                return Err(format!("daemon-reexec: {}", output_text(&out)));
            }
        }
        Step::Inside(args) => {
            let args: Vec<String> = args.iter().map(|a| a.replace("@DIR@", dir)).collect();
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = sb.run_inside(30, &refs);
            log.note(format!("{} {} -> {}", at(), args.join(" "), out.status));
            if !out.status.success() {
                return Err(format!("{}: {}", args.join(" "), output_text(&out)));
            }
        }
        Step::Connect(path) => {
            let host = sb.dir().join("run").join(path.trim_start_matches("/run/"));
            let result = UnixStream::connect(&host);
            log.note(format!(
                "{} connect {path}: {:?}",
                at(),
                result.as_ref().err()
            ));
            result.map_err(|e| format!("connecting to {path}: {e}"))?;
        }
        Step::Sleep(ms) => {
            thread::sleep(Duration::from_millis(*ms));
            log.note(format!("{} slept {ms} ms", at()));
        }
        Step::Wait(cond, secs) => {
            let held = wait_until(Duration::from_secs(*secs), || cond_holds(sb, cond));
            log.note(format!("{} waited for {cond:?}: {held}", at()));
            if !held {
                return Err(format!(
                    "{cond:?} did not come within {secs} s (runs {}, now {})",
                    runs(sb),
                    describe_cond_state(sb, cond)
                ));
            }
        }
    }
    Ok(())
}

fn cond_holds(sb: &Sandbox, cond: &Cond) -> bool {
    match cond {
        Cond::Runs(n) => runs(sb) >= *n,
        Cond::Active(unit, state) => {
            prop(sb, unit, "Unit", "ActiveState").as_deref() == Some(*state)
        }
        Cond::Sub(unit, state) => prop(sb, unit, "Unit", "SubState").as_deref() == Some(*state),
    }
}

fn describe_cond_state(sb: &Sandbox, cond: &Cond) -> String {
    match cond {
        Cond::Runs(_) => String::new(),
        Cond::Active(unit, _) | Cond::Sub(unit, _) => format!(
            "{}/{}",
            prop(sb, unit, "Unit", "ActiveState").unwrap_or_default(),
            prop(sb, unit, "Unit", "SubState").unwrap_or_default()
        ),
    }
}

/// Writes the closing line to the journal and waits until journalctl shows it.
fn mark_end(sb: &Sandbox) {
    let _ = sb.run_inside(
        10,
        &["systemd-cat", "-t", END_MARK, "echo", "end of the scenario"],
    );
    wait_until(Duration::from_secs(5), || {
        !sb.journalctl(&[
            "--quiet",
            "-o",
            "cat",
            &format!("SYSLOG_IDENTIFIER={END_MARK}"),
        ])
        .stdout
        .is_empty()
    });
}

// ------------------------------------------------------------------------------------------------
// The truth
// ------------------------------------------------------------------------------------------------

struct Truth {
    runs: u64,
    n_restarts: Option<u64>,
    result: Option<String>,
    active: Option<String>,
    sub: Option<String>,
    exec_main: Option<(u32, i32)>,
    load_state: Option<String>,
}

impl Truth {
    fn read(sb: &Sandbox, unit: &str, runs: u64) -> Truth {
        let service = |name| prop(sb, unit, "Service", name);
        let code = service("ExecMainCode").and_then(|v| v.parse().ok());
        let status = service("ExecMainStatus").and_then(|v| v.parse().ok());
        Truth {
            runs,
            n_restarts: service("NRestarts").and_then(|v| v.parse().ok()),
            result: service("Result"),
            active: prop(sb, unit, "Unit", "ActiveState"),
            sub: prop(sb, unit, "Unit", "SubState"),
            exec_main: code.zip(status),
            load_state: prop(sb, unit, "Unit", "LoadState"),
        }
    }

    fn state(&self) -> String {
        format!(
            "{}/{}",
            self.active.as_deref().unwrap_or("?"),
            self.sub.as_deref().unwrap_or("?")
        )
    }

    fn describe(&self) -> String {
        format!(
            "runs {}, NRestarts {}, Result {}, {}, ExecMain {}, LoadState {}",
            self.runs,
            self.n_restarts
                .map_or("unreadable".into(), |n| n.to_string()),
            self.result.as_deref().unwrap_or("unreadable"),
            self.state(),
            self.exec_main
                .map_or("unreadable".into(), |(c, s)| format!("code {c} status {s}")),
            self.load_state.as_deref().unwrap_or("unreadable"),
        )
    }

    fn check(&self, expect: &Expect) -> Vec<String> {
        let mut out = Vec::new();
        let runs = self.runs;
        if !expect.runs.matches(runs, runs) {
            out.push(format!(
                "systemd did run the unit {runs} times, expected {}",
                expect.runs.describe(runs)
            ));
        }
        if let Some(n) = expect.n_restarts {
            match self.n_restarts {
                Some(v) if n.matches(v, runs) => {}
                v => out.push(format!(
                    "systemd did count NRestarts {}, expected {} ({runs} runs)",
                    v.map_or("unreadable".into(), |v| v.to_string()),
                    n.describe(runs)
                )),
            }
        }
        if let Some(r) = expect.result {
            if self.result.as_deref() != Some(r) {
                out.push(format!(
                    "systemd did end with Result {}, expected {r}",
                    self.result.as_deref().unwrap_or("unreadable")
                ));
            }
        }
        if let Some(s) = expect.state {
            if self.state() != s {
                out.push(format!("systemd did end in {}, expected {s}", self.state()));
            }
        }
        if let Some(e) = expect.exec_main {
            if self.exec_main != Some(e) {
                out.push(format!(
                    "systemd did report ExecMainCode/Status {:?}, expected {e:?}",
                    self.exec_main
                ));
            }
        }
        if let Some(l) = expect.load_state {
            if self.load_state.as_deref() != Some(l) {
                out.push(format!(
                    "systemd did load the unit as {}, expected {l}",
                    self.load_state.as_deref().unwrap_or("unreadable")
                ));
            }
        }
        out
    }
}

// ------------------------------------------------------------------------------------------------
// crashwatch live
// ------------------------------------------------------------------------------------------------

struct Seen {
    starts: u64,
    restarts: u64,
    crashes: BTreeMap<String, u64>,
    crashloops_total: u64,
    looping_now: bool,
    lines: Vec<Value>,
}

impl Seen {
    fn read(cw: &Crashwatch, unit: &str) -> Result<Seen, String> {
        let text = cw.try_scrape()?;
        let samples = parse_samples(&text)?;
        let of = |name: &str| -> Vec<&crate::support::Sample> {
            samples
                .iter()
                .filter(|s| s.name == name && s.label("unit") == Some(unit))
                .collect()
        };
        let sum = |name: &str| of(name).iter().map(|s| s.value).sum::<f64>() as u64;
        let mut crashes = BTreeMap::new();
        for s in of("crashwatch_unit_crashes_total") {
            if s.value > 0.0 {
                let reason = s.label("reason").unwrap_or("?").to_string();
                *crashes.entry(reason).or_insert(0) += s.value as u64;
            }
        }
        Ok(Seen {
            starts: sum("crashwatch_unit_starts_total"),
            restarts: sum("crashwatch_unit_restarts_total"),
            crashes,
            crashloops_total: sum("crashwatch_unit_crashloops_total"),
            looping_now: sum("crashwatch_unit_crashlooping") == 1,
            lines: cw.unit_events(unit),
        })
    }

    fn key(&self) -> String {
        format!(
            "{} {} {:?} {} {} {}",
            self.starts,
            self.restarts,
            self.crashes,
            self.crashloops_total,
            self.looping_now,
            self.lines.len()
        )
    }

    fn loops(&self) -> Vec<LoopSeen> {
        loops_of(&self.lines)
    }

    fn end(&self) -> End {
        match self.loops().last() {
            None => End::NoLoop,
            Some(l) => match l.outcome.as_str() {
                "recovered" => End::Recovered,
                "stopped" => End::Stopped,
                "gave_up" => End::GaveUp,
                _ => End::Open,
            },
        }
    }

    fn gave_up(&self) -> bool {
        self.lines
            .iter()
            .any(|e| e["event"] == "transition" && e["gave_up"] == true)
    }

    fn crashes_total(&self) -> u64 {
        self.crashes.values().sum()
    }

    fn verdict(&self, runs: u64) -> String {
        let mut v = format!("{runs} runs, {} restarts", self.restarts);
        if self.crashes.is_empty() {
            v.push_str(", no crash");
        } else {
            let by: Vec<String> = self
                .crashes
                .iter()
                .map(|(r, n)| format!("{n} {r}"))
                .collect();
            v.push_str(&format!(", crashes: {}", by.join(" + ")));
        }
        let loops = self.loops();
        match loops.len() {
            0 => v.push_str(", no loop"),
            1 => v.push_str(&format!(", loop, {}", loops[0].outcome)),
            n => v.push_str(&format!(
                ", {n} loops: {}",
                loops
                    .iter()
                    .map(|l| l.outcome.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
        if self.gave_up() {
            v.push_str(", gave_up=true");
        }
        v
    }

    fn check(&self, expect: &Expect, runs: u64) -> Vec<String> {
        let mut out = Vec::new();
        let mut count = |what: &str, value: u64, n: N| {
            if !n.matches(value, runs) {
                out.push(format!(
                    "crashwatch counted {value} {what}, the truth is {} ({runs} runs)",
                    n.describe(runs)
                ));
            }
        };
        count("starts", self.starts, expect.starts);
        count("restarts", self.restarts, expect.restarts);
        for (reason, n) in &expect.crashes {
            let got = self.crashes.get(*reason).copied().unwrap_or(0);
            count(&format!("crashes with reason {reason}"), got, *n);
        }
        for (reason, got) in &self.crashes {
            if !expect.crashes.iter().any(|(r, _)| r == reason) {
                out.push(format!(
                    "crashwatch counted {got} crashes with reason {reason}, expected none"
                ));
            }
        }
        let end = self.end();
        if end != expect.end {
            out.push(format!(
                "crashwatch ended {} (event record), expected {}",
                end.as_str(),
                expect.end.as_str()
            ));
        }
        let expected_loops = u64::from(expect.end != End::NoLoop);
        if self.crashloops_total != expected_loops {
            out.push(format!(
                "crashwatch_unit_crashloops_total is {}, expected {expected_loops}",
                self.crashloops_total
            ));
        }
        if self.looping_now != (expect.end == End::Open) {
            out.push(format!(
                "crashwatch_unit_crashlooping is {} at the end, expected {}",
                u8::from(self.looping_now),
                u8::from(expect.end == End::Open)
            ));
        }
        if expect.gave_up.is_some_and(|want| self.gave_up() != want) {
            out.push(format!(
                "crashwatch recorded gave_up={} on its transitions, expected gave_up={}",
                self.gave_up(),
                !self.gave_up()
            ));
        }
        // The event record must tell the same story as /metrics.
        let restart_lines = self
            .lines
            .iter()
            .filter(|e| e["event"] == "transition" && e["transition"] == "restart")
            .count() as u64;
        if restart_lines != self.restarts {
            out.push(format!(
                "the event record has {restart_lines} restart lines, /metrics {} restarts",
                self.restarts
            ));
        }
        let crash_lines = self
            .lines
            .iter()
            .filter(|e| e["event"] == "transition" && e["crash"] == true)
            .count() as u64;
        if crash_lines != self.crashes_total() {
            out.push(format!(
                "the event record has {crash_lines} crash lines, /metrics {} crashes",
                self.crashes_total()
            ));
        }
        let started_lines = self.loops().len() as u64;
        if started_lines != self.crashloops_total {
            out.push(format!(
                "the event record has {started_lines} crashloop_started lines, /metrics {} loops",
                self.crashloops_total
            ));
        }
        if let Some(cause) = expect.restart_cause {
            let other: Vec<String> = self
                .lines
                .iter()
                .filter(|e| e["event"] == "transition" && e["transition"] == "restart")
                .filter(|e| e["restart_cause"] != cause)
                .map(|e| e["restart_cause"].as_str().unwrap_or("none").to_owned())
                .collect();
            if !other.is_empty() {
                out.push(format!(
                    "restart lines with restart_cause {other:?}, expected {cause}"
                ));
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
struct LoopSeen {
    restarts_when_flagged: Option<u64>,
    outcome: String,
}

/// Loops in a sequence of crashloop_started / crashloop_ended lines; "open" when not ended.
fn loops_of(lines: &[Value]) -> Vec<LoopSeen> {
    let mut loops: Vec<LoopSeen> = Vec::new();
    for e in lines {
        if e["event"] == "crashloop_started" {
            loops.push(LoopSeen {
                restarts_when_flagged: e["restarts_in_window"].as_u64(),
                outcome: "open".into(),
            });
        } else if e["event"] == "crashloop_ended" {
            if let Some(l) = loops.last_mut() {
                l.outcome = e["outcome"].as_str().unwrap_or("?").to_string();
            }
        }
    }
    loops
}

/// Waits until crashwatch has heard every run and its record has stopped moving for a moment.
fn settle(cw: &Crashwatch, unit: &str, runs: u64, end: End) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last_key = String::new();
    let mut stable_since = Instant::now();
    loop {
        let seen = Seen::read(cw, unit);
        if let Ok(seen) = seen {
            let key = seen.key();
            if key != last_key {
                last_key = key;
                stable_since = Instant::now();
            }
            let heard_all = seen.starts >= runs;
            let ended = end == End::NoLoop || end == End::Open || seen.end() != End::Open;
            let quiet = stable_since.elapsed() >= Duration::from_millis(1200);
            if (quiet && heard_all && ended) || Instant::now() >= deadline {
                return seen;
            }
        } else if Instant::now() >= deadline {
            panic!("scraping crashwatch: {}", seen.err().unwrap_or_default());
        }
        thread::sleep(Duration::from_millis(150));
    }
}

fn brief_event(e: &Value) -> String {
    let t = e["timestamp_us"].as_u64().unwrap_or(0);
    let stamp = format!("{}.{:03}", (t / 1_000_000) % 1000, (t / 1000) % 1000);
    match e["event"].as_str() {
        Some("transition") => format!(
            "{stamp} {} {}/{} -> {}/{} result={} crash={} cause={} gave_up={} n_restarts={}{}",
            e["transition"].as_str().unwrap_or("?"),
            e["from_state"].as_str().unwrap_or("?"),
            e["from_substate"].as_str().unwrap_or("?"),
            e["to_state"].as_str().unwrap_or("?"),
            e["to_substate"].as_str().unwrap_or("?"),
            e["result"],
            e["crash_reason"],
            e["restart_cause"],
            e["gave_up"],
            e["n_restarts"],
            if e["inferred"] == true {
                " inferred"
            } else {
                ""
            }
        ),
        _ => format!(
            "{stamp} {} restarts_in_window={} {}",
            e["event"].as_str().unwrap_or("?"),
            e["restarts_in_window"],
            e["outcome"].as_str().unwrap_or("")
        ),
    }
}

// ------------------------------------------------------------------------------------------------
// History
// ------------------------------------------------------------------------------------------------

fn replay(sb: &Sandbox, case: &Case) -> Result<Vec<LoopSeen>, String> {
    let export = sb.journalctl(&["-o", "json"]);
    if !export.status.success() {
        return Err(format!("journalctl -o json: {}", output_text(&export)));
    }
    let mut child = Command::new(BIN)
        .args(["replay", "--json", "--threshold"])
        .arg(case.threshold.to_string())
        .arg("--window")
        .arg(format!("{}s", case.window_secs))
        .args(["--include", case.unit])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning crashwatch replay: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = export.stdout;
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for crashwatch replay: {e}"))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(format!("crashwatch replay: {}", output_text(&out)));
    }
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &Value| e["unit"] == case.unit)
        .collect();
    Ok(loops_of(&lines))
}

fn check_replay(case: &Case, seen: &Seen, replayed: &[LoopSeen]) -> Vec<String> {
    let live = seen.loops();
    let outcomes = |l: &[LoopSeen]| l.iter().map(|l| l.outcome.clone()).collect::<Vec<_>>();
    let mut out = Vec::new();
    match &case.replay {
        Replay::SameAsLive => {
            let expected: Vec<String> = match case.expect.end {
                End::NoLoop => vec![],
                end => vec![end.as_str().to_owned()],
            };
            if outcomes(replayed) != expected {
                out.push(format!(
                    "replay of the journal found loops {:?}, the truth is {expected:?}",
                    outcomes(replayed)
                ));
            }
            if outcomes(replayed) != outcomes(&live) {
                out.push(format!(
                    "live and history differ: live loops {:?}, replayed {:?}",
                    outcomes(&live),
                    outcomes(replayed)
                ));
            } else {
                for (l, r) in live.iter().zip(replayed) {
                    if r.restarts_when_flagged.is_some()
                        && l.restarts_when_flagged != r.restarts_when_flagged
                    {
                        out.push(format!(
                            "live flagged at {:?} restarts in the window, replay at {:?}",
                            l.restarts_when_flagged, r.restarts_when_flagged
                        ));
                    }
                }
            }
        }
        Replay::Differs { outcomes: want, .. } => {
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            if outcomes(replayed) != want {
                out.push(format!(
                    "replay of the journal found loops {:?}, expected {want:?}",
                    outcomes(replayed)
                ));
            }
        }
    }
    out
}
