//! An emulated Upstart 1.13 for the integration tests.
//!
//! Upstart cannot be installed next to the systemd the development machines boot, so the tests
//! talk to this instead: a small D-Bus server, written from ../shared/specs/upstart.md (itself
//! taken from Upstart 1.13.2's init/job.c, init/job_process.c, init/control.c and dbus/*.xml),
//! that exposes what crashwatch reads and nothing more:
//!
//! - the manager `/com/ubuntu/Upstart` (`com.ubuntu.Upstart0_6`: `GetAllJobs`, `GetJobByName`,
//!   property `version`; signals `EventEmitted(s, as)`, `Restarted()`, `JobAdded(o)`),
//! - one object per job at `/com/ubuntu/Upstart/jobs/<escaped job>` (`…Job`: `GetAllInstances`,
//!   property `name`; signals `InstanceAdded(o)`, `InstanceRemoved(o)`),
//! - one object per instance at `…/<escaped job>/<escaped instance>`, `_` for a singleton
//!   (`…Instance`: properties `name`, `goal`, `state`, `processes a(si)`; signals
//!   `GoalChanged(s)`, `StateChanged(s)`, `Failed(i)`),
//!
//! with Upstart's escaping (`[A-Za-z0-9]` kept, every other byte `_xx`), written again here rather
//! than borrowed from crashwatch so that the two can disagree. It serves either as
//! `com.ubuntu.Upstart` on a real private dbus-daemon ([`PrivateBus`]) or peer-to-peer on an
//! abstract socket like Upstart's `unix:abstract=/com/ubuntu/upstart` (no Hello, no match rules,
//! signals without a sender).
//!
//! Tests drive it with the sequences of the spec ([`FakeUpstart::start`] a first start,
//! [`FakeUpstart::respawn`] sequence A, [`FakeUpstart::respawn_limit`] B,
//! [`FakeUpstart::segfault`] C, [`FakeUpstart::restart`] D, [`FakeUpstart::stop`] E,
//! [`FakeUpstart::spawn_failure`] F), in the order a real Upstart 1.13.2 sent them to a
//! peer-to-peer client (../shared/specs/upstart-observed/, kept as
//! tests/data/upstart-1.13.2-session.txt): `EventEmitted("stopping")` right after `killed` in D
//! and E. [`FakeUpstart::late_stopping_event`] sends it where another reading of Upstart's source
//! puts it (after `starting` in D, after `InstanceRemoved` in E), since a client must not depend
//! on either. [`recorded_steps`] turns a recorded session into the very signals it holds, for
//! [`FakeUpstart::run`] to send again. Each step changes the emulated state first and then
//! signals it, as Upstart does, and a sequence returns once every signal is on the wire. It runs
//! on a thread of its own with its own Tokio runtime, so the synchronous tests stay synchronous.
//!
//! As on a real Upstart, `Restarted()` (after a re-exec) goes to bus clients only: a re-exec
//! closes every peer-to-peer connection, and a peer-to-peer client sees only that.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::sync::mpsc;
use zbus::message::Type as MessageType;
use zbus::{Connection, Message, MessageStream, Variant};

use super::{Crashwatch, PrivateBus};

pub const UPSTART_NAME: &str = "com.ubuntu.Upstart";
pub const MANAGER_PATH: &str = "/com/ubuntu/Upstart";
pub const MANAGER_IFACE: &str = "com.ubuntu.Upstart0_6";
pub const JOB_IFACE: &str = "com.ubuntu.Upstart0_6.Job";
pub const INSTANCE_IFACE: &str = "com.ubuntu.Upstart0_6.Instance";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";

/// The states an instance passes through from `starting` to `running`, 1.13 and 1.12-or-older.
const UP_STATES: [&str; 9] = [
    "security-spawning",
    "security",
    "pre-starting",
    "pre-start",
    "spawning",
    "spawned",
    "post-starting",
    "post-start",
    "running",
];
/// Upstart 1.5 (Ubuntu 12.04) has neither the `*-ing` states nor the AppArmor `security` ones.
const UP_STATES_LEGACY: [&str; 4] = ["pre-start", "spawned", "post-start", "running"];

/// Upstart's path-element escaping (init/control.c): `[A-Za-z0-9]` kept, every other byte `_`
/// and two lowercase hex digits, the empty string `_`.
pub fn upstart_escape(element: &str) -> String {
    if element.is_empty() {
        return "_".to_owned();
    }
    let mut out = String::new();
    for b in element.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            let _ = write!(out, "_{b:02x}");
        }
    }
    out
}

/// The object path of a job.
pub fn job_path(job: &str) -> String {
    format!("{MANAGER_PATH}/jobs/{}", upstart_escape(job))
}

/// The object path of an instance.
pub fn instance_path(job: &str, instance: &str) -> String {
    format!("{}/{}", job_path(job), upstart_escape(instance))
}

/// One emulated instance.
#[derive(Clone, Debug)]
struct Instance {
    goal: String,
    state: String,
    pid: i32,
}

/// Every job and its instances, by name.
#[derive(Default, Debug)]
struct Model {
    jobs: BTreeMap<String, BTreeMap<String, Instance>>,
    /// How many times a client read an instance's `processes`: the daemon reads the main pid
    /// of each run it hears start, so a test can wait until it has.
    process_reads: u64,
}

impl Model {
    fn instance_mut(&mut self, job: &str, instance: &str) -> &mut Instance {
        self.jobs
            .entry(job.to_owned())
            .or_default()
            .entry(instance.to_owned())
            .or_insert_with(|| Instance {
                goal: "stop".into(),
                state: "waiting".into(),
                pid: 0,
            })
    }

    /// The job and instance an object path names.
    fn find(&self, path: &str) -> Option<(String, Option<String>)> {
        for (job, instances) in &self.jobs {
            if path == job_path(job) {
                return Some((job.clone(), None));
            }
            for instance in instances.keys() {
                if path == instance_path(job, instance) {
                    return Some((job.clone(), Some(instance.clone())));
                }
            }
        }
        None
    }
}

/// One step of a sequence: a change of the emulated state and the signal that tells it.
#[derive(Clone, Debug)]
pub enum Step {
    /// `InstanceAdded(P)` on the job; the instance exists, waiting.
    InstanceAdded(String, String),
    /// `InstanceRemoved(P)` on the job; the instance is gone.
    InstanceRemoved(String, String),
    /// `GoalChanged(goal)`.
    Goal(String, String, String),
    /// `StateChanged(state)`.
    State(String, String, String),
    /// A new main process, silently (Upstart signals no pid).
    Pid(String, String, i32),
    /// `Failed(status)`.
    Failed(String, String, i32),
    /// `EventEmitted(name, env)` (not sent by a legacy Upstart).
    Event(String, Vec<String>),
    /// A re-exec: `Restarted()` on a bus; peer-to-peer, every connection closed (the listener
    /// stays, as the new init listens again).
    Restarted,
}

enum Op {
    Run(Vec<Step>, std_mpsc::Sender<()>),
    Detach(std_mpsc::Sender<()>),
    Attach(std_mpsc::Sender<()>),
}

#[derive(Clone)]
enum Mode {
    Bus(String),
    Peer(String),
}

/// An emulated Upstart. Stopped on drop.
pub struct FakeUpstart {
    ops: Option<mpsc::UnboundedSender<Op>>,
    thread: Option<JoinHandle<()>>,
    model: Arc<Mutex<Model>>,
    address: String,
    legacy: bool,
    late_stopping_event: bool,
}

impl FakeUpstart {
    /// Owns `com.ubuntu.Upstart` on `bus`.
    pub fn on_bus(bus: &PrivateBus) -> FakeUpstart {
        FakeUpstart::launch(Mode::Bus(bus.address().to_owned()))
    }

    /// Serves peer-to-peer on a fresh abstract socket; [`FakeUpstart::address`] says where.
    pub fn peer_to_peer() -> FakeUpstart {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "/crashwatch-test/upstart/{}/{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        FakeUpstart::launch(Mode::Peer(name))
    }

    /// Behaves as Upstart 1.5 (Ubuntu 12.04): no `EventEmitted`, no `*-ing` states.
    pub fn legacy(mut self) -> FakeUpstart {
        self.legacy = true;
        self
    }

    /// Sends `EventEmitted("stopping")` of D and E late, where one reading of Upstart's source
    /// puts it: after `starting` in D, after `InstanceRemoved` in E. (A real 1.13.2 sends it
    /// right after `killed` in both.)
    pub fn late_stopping_event(mut self) -> FakeUpstart {
        self.late_stopping_event = true;
        self
    }

    /// The D-Bus address to give crashwatch peer-to-peer (for a bus, the bus's).
    pub fn address(&self) -> &str {
        &self.address
    }

    fn launch(mode: Mode) -> FakeUpstart {
        let model = Arc::new(Mutex::new(Model::default()));
        let (ops, ops_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let address = match &mode {
            Mode::Bus(address) => address.clone(),
            Mode::Peer(name) => format!("unix:abstract={name}"),
        };
        let thread = {
            let model = model.clone();
            thread::Builder::new()
                .name("fake-upstart".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime for the emulated Upstart");
                    runtime.block_on(Server::new(mode, model).run(ops_rx, ready_tx));
                })
                .expect("spawning the emulated Upstart")
        };
        match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the emulated Upstart did not start: {e}"),
            Err(e) => panic!("the emulated Upstart did not start: {e}"),
        }
        FakeUpstart {
            ops: Some(ops),
            thread: Some(thread),
            model,
            address,
            legacy: false,
            late_stopping_event: false,
        }
    }

    fn call(&self, op: impl FnOnce(std_mpsc::Sender<()>) -> Op) {
        let (ack, done) = std_mpsc::channel();
        self.ops
            .as_ref()
            .expect("running")
            .send(op(ack))
            .expect("the emulated Upstart is running");
        done.recv_timeout(Duration::from_secs(20))
            .expect("the emulated Upstart carried out the step");
    }

    /// Runs `steps` in order; returns once every signal is sent.
    pub fn run(&self, steps: Vec<Step>) {
        let steps = if self.legacy {
            steps
                .into_iter()
                .filter(|s| !matches!(s, Step::Event(..) | Step::Restarted))
                .collect()
        } else {
            steps
        };
        self.call(|ack| Op::Run(steps, ack));
    }

    /// Goes away: on a bus, releases the name and closes the connection; peer-to-peer, closes
    /// every connection and stops listening.
    pub fn detach(&self) {
        self.call(Op::Detach);
    }

    /// Comes back after [`FakeUpstart::detach`].
    pub fn attach(&self) {
        self.call(Op::Attach);
    }

    /// How many times a client has read an instance's `processes` (its main pid).
    pub fn process_reads(&self) -> u64 {
        self.model.lock().expect("model").process_reads
    }

    /// Adds a running instance without a signal, as one that existed before crashwatch started.
    pub fn add_running(&self, job: &str, instance: &str, pid: i32) {
        let mut model = self.model.lock().expect("model");
        let i = model.instance_mut(job, instance);
        i.goal = "start".into();
        i.state = "running".into();
        i.pid = pid;
    }

    /// Adds a job with no instance (a stopped job), without a signal.
    pub fn add_job(&self, job: &str) {
        self.model
            .lock()
            .expect("model")
            .jobs
            .entry(job.to_owned())
            .or_default();
    }

    /// The main pid the emulated instance has now (0: none).
    pub fn pid(&self, job: &str, instance: &str) -> i32 {
        let model = self.model.lock().expect("model");
        model
            .jobs
            .get(job)
            .and_then(|i| i.get(instance))
            .map_or(0, |i| i.pid)
    }

    fn env(job: &str, instance: &str, extra: &[&str]) -> Vec<String> {
        let mut env = vec![format!("JOB={job}"), format!("INSTANCE={instance}")];
        env.extend(extra.iter().map(|s| (*s).to_owned()));
        env
    }

    fn states(&self, job: &str, instance: &str, states: &[&str]) -> Vec<Step> {
        states
            .iter()
            .filter(|s| !self.legacy || !is_async_state(s))
            .map(|s| Step::State(job.into(), instance.into(), (*s).to_owned()))
            .collect()
    }

    fn goal(job: &str, instance: &str, goal: &str) -> Step {
        Step::Goal(job.into(), instance.into(), goal.to_owned())
    }

    fn event(name: &str, job: &str, instance: &str, extra: &[&str]) -> Step {
        Step::Event(name.to_owned(), Self::env(job, instance, extra))
    }

    /// The way up from `starting` (already sent) to `spawned`, then the main process and
    /// `EventEmitted("starting")`, as every start does.
    fn up_to_spawned(&self, job: &str, instance: &str, pid: i32) -> Vec<Step> {
        let up: &[&str] = if self.legacy {
            &UP_STATES_LEGACY
        } else {
            &UP_STATES
        };
        let spawned = up.iter().position(|s| *s == "spawned").unwrap_or(0);
        let mut steps = self.states(job, instance, &up[..=spawned]);
        steps.push(Step::Pid(job.into(), instance.into(), pid));
        steps.push(Self::event("starting", job, instance, &[]));
        steps
    }

    /// The way up from `starting` (already sent) to `running`, with the events as in sequence A.
    fn way_up(&self, job: &str, instance: &str, pid: i32) -> Vec<Step> {
        let mut steps = self.up_to_spawned(job, instance, pid);
        steps.extend(self.states(job, instance, &["post-starting", "post-start", "running"]));
        steps.push(Self::event("started", job, instance, &[]));
        steps
    }

    /// A first start: the instance is added, its goal set, and it goes all the way up.
    fn first_start(job: &str, instance: &str) -> Vec<Step> {
        vec![
            Step::InstanceAdded(job.into(), instance.into()),
            Self::goal(job, instance, "start"),
            Step::State(job.into(), instance.into(), "starting".into()),
        ]
    }

    /// `initctl start`: a new instance goes all the way up.
    pub fn start(&self, job: &str, instance: &str, pid: i32) {
        let mut steps = Self::first_start(job, instance);
        steps.extend(self.way_up(job, instance, pid));
        self.run(steps);
    }

    /// Sequence A: the main process exits 1 and Upstart respawns it (respawn limit not hit).
    pub fn respawn(&self, job: &str, instance: &str, new_pid: i32) {
        let mut steps = vec![Step::Pid(job.into(), instance.into(), 0)];
        steps.extend(self.states(
            job,
            instance,
            &[
                "stopping",
                "killed",
                "post-stopping",
                "post-stop",
                "starting",
            ],
        ));
        steps.push(Self::event("stopping", job, instance, &["RESULT=ok"]));
        steps.extend(self.way_up(job, instance, new_pid));
        self.run(steps);
    }

    /// Sequence B: the respawn limit is hit; Upstart stops the job.
    pub fn respawn_limit(&self, job: &str, instance: &str) {
        let failed = ["RESULT=failed", "PROCESS=respawn"];
        let mut steps = vec![Step::Pid(job.into(), instance.into(), 0)];
        steps.extend(self.failure(job, instance, 0, &failed));
        self.run(steps);
    }

    /// Sequence C: a job without `respawn` is killed by SIGSEGV.
    pub fn segfault(&self, job: &str, instance: &str) {
        let failed = ["RESULT=failed", "PROCESS=main", "EXIT_SIGNAL=SEGV"];
        let mut steps = vec![Step::Pid(job.into(), instance.into(), 0)];
        steps.extend(self.failure(job, instance, 11 << 8, &failed));
        self.run(steps);
    }

    /// Sequence F: `initctl start` of a job whose main process cannot be spawned (exec of a
    /// missing binary): up to `spawned` and its `starting` event, then `Failed(-1)` and all the
    /// way down. `initctl` says "Job failed to start".
    pub fn spawn_failure(&self, job: &str, instance: &str) {
        let mut steps = Self::first_start(job, instance);
        steps.extend(self.up_to_spawned(job, instance, 0));
        steps.extend(self.failure(job, instance, -1, &["RESULT=failed", "PROCESS=main"]));
        self.run(steps);
    }

    /// After `Failed(status)`, Upstart takes the instance down and frees it, then finishes the
    /// stopping and stopped events with the failure in their environment.
    fn failure(&self, job: &str, instance: &str, status: i32, env: &[&str]) -> Vec<Step> {
        let mut steps = vec![
            Step::Failed(job.into(), instance.into(), status),
            Self::goal(job, instance, "stop"),
        ];
        steps.extend(self.states(
            job,
            instance,
            &[
                "stopping",
                "killed",
                "post-stopping",
                "post-stop",
                "waiting",
            ],
        ));
        steps.push(Step::InstanceRemoved(job.into(), instance.into()));
        steps.push(Self::event("stopping", job, instance, env));
        steps.push(Self::event("stopped", job, instance, env));
        steps
    }

    /// Sequence D: `initctl restart`.
    pub fn restart(&self, job: &str, instance: &str, new_pid: i32) {
        let stopping = Self::event("stopping", job, instance, &["RESULT=ok"]);
        let mut steps = vec![Self::goal(job, instance, "stop")];
        steps.extend(self.states(job, instance, &["pre-stopping", "pre-stop", "stopping"]));
        steps.push(Self::goal(job, instance, "start"));
        steps.push(Step::Pid(job.into(), instance.into(), 0));
        steps.extend(self.states(job, instance, &["killed"]));
        if !self.late_stopping_event {
            steps.push(stopping.clone());
        }
        steps.extend(self.states(job, instance, &["post-stopping", "post-stop", "starting"]));
        if self.late_stopping_event {
            steps.push(stopping);
        }
        steps.extend(self.way_up(job, instance, new_pid));
        self.run(steps);
    }

    /// Sequence E: `initctl stop`.
    pub fn stop(&self, job: &str, instance: &str) {
        let stopping = Self::event("stopping", job, instance, &["RESULT=ok"]);
        let mut steps = vec![Self::goal(job, instance, "stop")];
        steps.extend(self.states(
            job,
            instance,
            &["pre-stopping", "pre-stop", "stopping", "killed"],
        ));
        if !self.late_stopping_event {
            steps.push(stopping.clone());
        }
        steps.extend(self.states(job, instance, &["post-stopping", "post-stop"]));
        steps.push(Step::Pid(job.into(), instance.into(), 0));
        steps.extend(self.states(job, instance, &["waiting"]));
        steps.push(Step::InstanceRemoved(job.into(), instance.into()));
        if self.late_stopping_event {
            steps.push(stopping);
        }
        steps.push(Self::event("stopped", job, instance, &["RESULT=ok"]));
        self.run(steps);
    }
}

/// The signals of a session recorded from a real Upstart (tests/data/), as steps that send
/// exactly those signals in that order: one line a signal,
/// `<time> signal sig=<signature> path=<path> iface=<interface> member=<member> args=(<args>)`,
/// with `#` comments and the `connected` line skipped.
pub fn recorded_steps(text: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if !line.contains(" signal ") {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what}: {line}", number + 1);
        let field = |name: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(name))
                .ok_or_else(|| bad(name))
        };
        let args = line
            .split_once(" args=(")
            .and_then(|(_, a)| a.strip_suffix(')'))
            .ok_or_else(|| bad("no args"))?;
        // The strings of the arguments: names, states, paths and env entries hold no quote.
        let strings: Vec<String> = args
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        let path = field("path=")?;
        let at_instance = || instance_of(path).ok_or_else(|| bad("not an instance path"));
        let step = match (field("member=")?, strings.as_slice()) {
            ("InstanceAdded", [p]) => {
                let (job, instance) = instance_of(p).ok_or_else(|| bad("instance"))?;
                Step::InstanceAdded(job, instance)
            }
            ("InstanceRemoved", [p]) => {
                let (job, instance) = instance_of(p).ok_or_else(|| bad("instance"))?;
                Step::InstanceRemoved(job, instance)
            }
            ("GoalChanged", [goal]) => {
                let (job, instance) = at_instance()?;
                Step::Goal(job, instance, goal.clone())
            }
            ("StateChanged", [state]) => {
                let (job, instance) = at_instance()?;
                Step::State(job, instance, state.clone())
            }
            ("Failed", []) => {
                let (job, instance) = at_instance()?;
                Step::Failed(job, instance, args.parse().map_err(|_| bad("status"))?)
            }
            ("EventEmitted", [name, env @ ..]) => Step::Event(name.clone(), env.to_vec()),
            ("Restarted", []) => Step::Restarted,
            _ => return Err(bad("not a signal the emulator sends")),
        };
        steps.push(step);
    }
    Ok(steps)
}

/// `CLOCK_MONOTONIC` in µs, the clock the job hook stamps its messages with.
pub fn monotonic_micros() -> u64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, now: *mut Timespec) -> i32;
    }
    const CLOCK_MONOTONIC: i32 = 1;
    let mut now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec (two longs on 64-bit Linux) to memory we own.
    let ok = unsafe { clock_gettime(CLOCK_MONOTONIC, &mut now) } == 0;
    assert!(ok, "CLOCK_MONOTONIC cannot be read");
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// The job and instance of an instance's object path, reversing [`upstart_escape`].
fn instance_of(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix(MANAGER_PATH)?.strip_prefix("/jobs/")?;
    let (job, instance) = rest.split_once('/')?;
    Some((upstart_unescape(job)?, upstart_unescape(instance)?))
}

/// Reverses [`upstart_escape`].
pub fn upstart_unescape(element: &str) -> Option<String> {
    if element == "_" {
        return Some(String::new());
    }
    let mut out = Vec::new();
    let mut rest = element.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'_' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else if b.is_ascii_alphanumeric() {
            out.push(b);
            rest = tail;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

impl Drop for FakeUpstart {
    fn drop(&mut self) {
        // Closing the channel ends the server's loop, and with it the runtime and connections.
        drop(self.ops.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn is_async_state(state: &str) -> bool {
    matches!(
        state,
        "security-spawning"
            | "pre-starting"
            | "spawning"
            | "post-starting"
            | "pre-stopping"
            | "post-stopping"
    )
}

/// The emulator's side: connections, their serving tasks, and the listener peer-to-peer.
struct Server {
    mode: Mode,
    model: Arc<Mutex<Model>>,
    connections: Arc<Mutex<Vec<Connection>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    fn new(mode: Mode, model: Arc<Mutex<Model>>) -> Server {
        Server {
            mode,
            model,
            connections: Arc::new(Mutex::new(Vec::new())),
            tasks: Vec::new(),
        }
    }

    async fn run(
        mut self,
        mut ops: mpsc::UnboundedReceiver<Op>,
        ready: std_mpsc::Sender<Result<(), String>>,
    ) {
        let attached = self.attach().await;
        let failed = attached.is_err();
        let _ = ready.send(attached);
        if failed {
            return;
        }
        while let Some(op) = ops.recv().await {
            match op {
                Op::Run(steps, ack) => {
                    for step in steps {
                        self.step(step).await;
                    }
                    let _ = ack.send(());
                }
                Op::Detach(ack) => {
                    self.detach().await;
                    let _ = ack.send(());
                }
                Op::Attach(ack) => {
                    if let Err(e) = self.attach().await {
                        panic!("the emulated Upstart could not come back: {e}");
                    }
                    let _ = ack.send(());
                }
            }
        }
        self.detach().await;
    }

    async fn attach(&mut self) -> Result<(), String> {
        match self.mode.clone() {
            Mode::Bus(address) => {
                let conn = zbus::connection::Builder::address(address.as_str())
                    .build()
                    .await
                    .map_err(|e| format!("connecting to {address}: {e}"))?;
                // The stream exists before the name does, so no call is missed.
                let stream = MessageStream::from(&conn);
                self.tasks.push(tokio::spawn(serve(
                    stream,
                    conn.clone(),
                    self.model.clone(),
                )));
                conn.request_name(UPSTART_NAME)
                    .await
                    .map_err(|e| format!("owning {UPSTART_NAME}: {e}"))?;
                self.connections.lock().expect("connections").push(conn);
            }
            Mode::Peer(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .map_err(|e| e.to_string())?;
                let listener = std::os::unix::net::UnixListener::bind_addr(&addr)
                    .map_err(|e| format!("listening on @{name}: {e}"))?;
                listener.set_nonblocking(true).map_err(|e| e.to_string())?;
                let listener =
                    tokio::net::UnixListener::from_std(listener).map_err(|e| e.to_string())?;
                self.tasks.push(tokio::spawn(accept(
                    listener,
                    self.model.clone(),
                    self.connections.clone(),
                )));
            }
        }
        Ok(())
    }

    async fn detach(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        let connections: Vec<Connection> =
            std::mem::take(&mut *self.connections.lock().expect("connections"));
        for conn in connections {
            if matches!(self.mode, Mode::Bus(_)) {
                let _ = conn.release_name(UPSTART_NAME).await;
            }
            let _ = conn.close().await;
        }
    }

    async fn step(&self, step: Step) {
        let (path, iface, member, body) = {
            let mut model = self.model.lock().expect("model");
            match step {
                Step::InstanceAdded(job, instance) => {
                    model.instance_mut(&job, &instance);
                    (
                        job_path(&job),
                        JOB_IFACE,
                        "InstanceAdded",
                        Body::Path(instance_path(&job, &instance)),
                    )
                }
                Step::InstanceRemoved(job, instance) => {
                    if let Some(instances) = model.jobs.get_mut(&job) {
                        instances.remove(&instance);
                    }
                    (
                        job_path(&job),
                        JOB_IFACE,
                        "InstanceRemoved",
                        Body::Path(instance_path(&job, &instance)),
                    )
                }
                Step::Goal(job, instance, goal) => {
                    goal.clone_into(&mut model.instance_mut(&job, &instance).goal);
                    (
                        instance_path(&job, &instance),
                        INSTANCE_IFACE,
                        "GoalChanged",
                        Body::Str(goal),
                    )
                }
                Step::State(job, instance, state) => {
                    state.clone_into(&mut model.instance_mut(&job, &instance).state);
                    (
                        instance_path(&job, &instance),
                        INSTANCE_IFACE,
                        "StateChanged",
                        Body::Str(state),
                    )
                }
                Step::Pid(job, instance, pid) => {
                    model.instance_mut(&job, &instance).pid = pid;
                    return;
                }
                Step::Failed(job, instance, status) => (
                    instance_path(&job, &instance),
                    INSTANCE_IFACE,
                    "Failed",
                    Body::Int(status),
                ),
                Step::Event(name, env) => (
                    MANAGER_PATH.to_owned(),
                    MANAGER_IFACE,
                    "EventEmitted",
                    Body::Event(name, env),
                ),
                Step::Restarted if matches!(self.mode, Mode::Peer(_)) => {
                    // A re-exec closes every peer-to-peer connection; nobody hears Restarted.
                    drop(model);
                    let connections: Vec<Connection> =
                        std::mem::take(&mut *self.connections.lock().expect("connections"));
                    for conn in connections {
                        let _ = conn.close().await;
                    }
                    return;
                }
                Step::Restarted => (
                    MANAGER_PATH.to_owned(),
                    MANAGER_IFACE,
                    "Restarted",
                    Body::None,
                ),
            }
        };
        let connections = self.connections.lock().expect("connections").clone();
        for conn in connections {
            let sent = match &body {
                Body::None => {
                    conn.emit_signal(None::<&str>, path.as_str(), iface, member, &())
                        .await
                }
                Body::Str(s) => {
                    conn.emit_signal(None::<&str>, path.as_str(), iface, member, &(s.as_str(),))
                        .await
                }
                Body::Int(i) => {
                    conn.emit_signal(None::<&str>, path.as_str(), iface, member, &(*i,))
                        .await
                }
                Body::Path(p) => {
                    let p = zbus::ObjectPath::try_from(p.as_str()).expect("a valid path");
                    conn.emit_signal(None::<&str>, path.as_str(), iface, member, &(p,))
                        .await
                }
                Body::Event(name, env) => {
                    conn.emit_signal(
                        None::<&str>,
                        path.as_str(),
                        iface,
                        member,
                        &(name.as_str(), env),
                    )
                    .await
                }
            };
            // A client that went away is no reason to stop the others.
            let _ = sent;
        }
    }
}

enum Body {
    None,
    Str(String),
    Int(i32),
    Path(String),
    Event(String, Vec<String>),
}

/// Accepts peer-to-peer clients as Upstart's private socket does: authenticated, no bus.
async fn accept(
    listener: tokio::net::UnixListener,
    model: Arc<Mutex<Model>>,
    connections: Arc<Mutex<Vec<Connection>>>,
) {
    let mut served = Vec::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let guid = zbus::Guid::try_from("0123456789abcdef0123456789abcdef").expect("a GUID");
        let built = zbus::connection::Builder::unix_stream(stream)
            .server(guid)
            .p2p()
            .build()
            .await;
        let Ok(conn) = built else {
            continue;
        };
        let stream = MessageStream::from(&conn);
        served.push(DropAbort(tokio::spawn(serve(
            stream,
            conn.clone(),
            model.clone(),
        ))));
        connections.lock().expect("connections").push(conn);
    }
}

/// Aborts a task when the owner (the accept loop) is aborted.
struct DropAbort(tokio::task::JoinHandle<()>);

impl Drop for DropAbort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Answers method calls on one connection.
async fn serve(mut stream: MessageStream, conn: Connection, model: Arc<Mutex<Model>>) {
    use std::future::poll_fn;
    use std::pin::Pin;

    use futures_core::Stream;

    while let Some(item) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
        let Ok(msg) = item else { break };
        if msg.message_type() != MessageType::MethodCall {
            continue;
        }
        if answer(&conn, &msg, &model).await.is_err() {
            break;
        }
    }
}

async fn answer(conn: &Connection, msg: &Message, model: &Mutex<Model>) -> zbus::Result<()> {
    let header = msg.header();
    let path = header
        .path()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let iface = header
        .interface()
        .map(|i| i.as_str().to_owned())
        .unwrap_or_default();
    let member = header
        .member()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let unknown = |what: &str| format!("{what} {path}");

    enum Reply {
        Paths(Vec<String>),
        Path(String),
        Props(Vec<(&'static str, Prop)>),
        Prop(Prop),
        Error(&'static str, String),
    }
    let reply = {
        let mut model = model.lock().expect("model");
        let found = model.find(&path);
        match (iface.as_str(), member.as_str()) {
            (MANAGER_IFACE, "GetAllJobs") if path == MANAGER_PATH => {
                Reply::Paths(model.jobs.keys().map(|j| job_path(j)).collect())
            }
            (MANAGER_IFACE, "GetJobByName") if path == MANAGER_PATH => {
                match msg.body().deserialize::<String>() {
                    Ok(name) if model.jobs.contains_key(&name) => Reply::Path(job_path(&name)),
                    _ => Reply::Error("com.ubuntu.Upstart0_6.Error.UnknownJob", unknown("no job")),
                }
            }
            (JOB_IFACE, "GetAllInstances") => match &found {
                Some((job, None)) => Reply::Paths(
                    model.jobs[job]
                        .keys()
                        .map(|i| instance_path(job, i))
                        .collect(),
                ),
                _ => Reply::Error(
                    "org.freedesktop.DBus.Error.UnknownObject",
                    unknown("no job"),
                ),
            },
            (PROPERTIES_IFACE, "GetAll" | "Get") => {
                let (wanted_iface, wanted) = match member.as_str() {
                    "Get" => match msg.body().deserialize::<(String, String)>() {
                        Ok((i, p)) => (i, Some(p)),
                        Err(_) => (String::new(), None),
                    },
                    _ => (msg.body().deserialize::<String>().unwrap_or_default(), None),
                };
                let props: Option<Vec<(&'static str, Prop)>> = match (wanted_iface.as_str(), &found)
                {
                    (INSTANCE_IFACE, Some((job, Some(instance)))) => {
                        let i = &model.jobs[job][instance];
                        let processes = if i.pid > 0 {
                            vec![("main".to_owned(), i.pid)]
                        } else {
                            Vec::new()
                        };
                        Some(vec![
                            ("name", Prop::Str(instance.clone())),
                            ("goal", Prop::Str(i.goal.clone())),
                            ("state", Prop::Str(i.state.clone())),
                            ("processes", Prop::Processes(processes)),
                        ])
                    }
                    (JOB_IFACE, Some((job, None))) => Some(vec![
                        ("name", Prop::Str(job.clone())),
                        ("description", Prop::Str(String::new())),
                    ]),
                    (MANAGER_IFACE, _) if path == MANAGER_PATH => {
                        Some(vec![("version", Prop::Str("init (upstart 1.13.2)".into()))])
                    }
                    _ => None,
                };
                match (props, wanted) {
                    (None, _) => Reply::Error(
                        "org.freedesktop.DBus.Error.UnknownObject",
                        unknown("no such object"),
                    ),
                    (Some(props), None) => Reply::Props(props),
                    (Some(props), Some(name)) => {
                        if name == "processes" {
                            model.process_reads += 1;
                        }
                        match props.into_iter().find(|(n, _)| *n == name) {
                            Some((_, prop)) => Reply::Prop(prop),
                            None => Reply::Error(
                                "org.freedesktop.DBus.Error.UnknownProperty",
                                unknown("no such property on"),
                            ),
                        }
                    }
                }
            }
            _ => Reply::Error(
                "org.freedesktop.DBus.Error.UnknownMethod",
                format!("{iface}.{member} is not emulated"),
            ),
        }
    };
    match reply {
        Reply::Paths(paths) => {
            let paths: Vec<zbus::ObjectPath<'_>> = paths
                .iter()
                .map(|p| zbus::ObjectPath::try_from(p.as_str()).expect("a valid path"))
                .collect();
            conn.reply(&header, &(paths,)).await
        }
        Reply::Path(p) => {
            let p = zbus::ObjectPath::try_from(p.as_str()).expect("a valid path");
            conn.reply(&header, &(p,)).await
        }
        Reply::Props(props) => {
            let map: std::collections::HashMap<&str, Variant<'_>> =
                props.iter().map(|(n, p)| (*n, p.variant())).collect();
            conn.reply(&header, &(map,)).await
        }
        Reply::Prop(prop) => conn.reply(&header, &(prop.variant(),)).await,
        Reply::Error(name, text) => conn.reply_error(&header, name, &(text,)).await,
    }
}

enum Prop {
    Str(String),
    Processes(Vec<(String, i32)>),
}

impl Prop {
    fn variant(&self) -> Variant<'_> {
        match self {
            Prop::Str(s) => Variant::from(s.as_str()),
            Prop::Processes(p) => Variant::from(p.clone()),
        }
    }
}

/// crashwatch watching `fake` peer-to-peer, with the hook off. Needs no bus and no root. Every
/// series of every job, so that the starts and states of jobs that never crash are read too.
pub fn watch_peer(fake: &FakeUpstart, extra: &[&str]) -> Crashwatch {
    let mut args = vec![
        "--source",
        "upstart",
        "--upstart-address",
        fake.address(),
        "--upstart-hook-socket",
        "",
        "--unit-series=all",
    ];
    args.extend_from_slice(extra);
    // No bus at all: the peer-to-peer socket must be enough.
    Crashwatch::spawn_on_bus("unix:path=/nonexistent", &args)
}
