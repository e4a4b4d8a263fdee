//! systemd-shaped `PropertiesChanged` signals, for the benches and for the fake systemd that
//! `scripts/bench.sh` runs.
//!
//! The shapes are systemd 252's as `busctl monitor` shows them for a `Restart=always` service:
//! every signal carries the interface's whole signalled property set, not only what changed (so
//! one is about a kilobyte), and one crash-restart cycle is seven Service+Unit pairs, some
//! repeating the values of the one before. Smaller or tidier signals would flatter the decoder
//! and the tracker, so the benches use these.

use std::collections::BTreeMap;

use zbus::{Message, ObjectPath, Variant};

/// `org.freedesktop.systemd1.Service`.
pub const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";
/// `org.freedesktop.systemd1.Unit`.
pub const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
/// The interface of `PropertiesChanged`.
pub const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";

/// Properties systemd 252 lists as invalidated in every Service signal (the command lists).
const SERVICE_INVALIDATED: [&str; 14] = [
    "ExecCondition",
    "ExecConditionEx",
    "ExecStartPre",
    "ExecStartPreEx",
    "ExecStart",
    "ExecStartEx",
    "ExecStartPost",
    "ExecStartPostEx",
    "ExecReload",
    "ExecReloadEx",
    "ExecStop",
    "ExecStopEx",
    "ExecStopPost",
    "ExecStopPostEx",
];

/// Properties systemd 252 lists as invalidated in every Unit signal.
const UNIT_INVALIDATED: [&str; 2] = ["Conditions", "Asserts"];

/// The difference between the realtime and monotonic clocks the simulation pretends to have.
const BOOT_OFFSET_US: u64 = 1_700_000_000_000_000;

/// The Service properties of one signal.
#[derive(Clone, Debug)]
struct ServiceValues {
    main_pid: u32,
    result: &'static str,
    n_restarts: u32,
    exec_main_start: u64,
    exec_main_exit: u64,
    exec_main_pid: u32,
    exec_main_code: i32,
    exec_main_status: i32,
}

/// The Unit properties of one signal.
#[derive(Clone, Debug)]
struct UnitValues {
    active: &'static str,
    sub: &'static str,
    state_change: u64,
    inactive_exit: u64,
    active_enter: u64,
    active_exit: u64,
    inactive_enter: u64,
    job: u32,
    invocation: [u8; 16],
    condition: u64,
}

/// One simulated service, as systemd would describe it now.
#[derive(Clone, Debug)]
pub struct SimUnit {
    /// The unit's name, e.g. `bench-7.service`.
    pub name: String,
    /// Its object path.
    pub path: String,
    service: ServiceValues,
    unit: UnitValues,
}

impl SimUnit {
    /// The current InvocationID.
    pub fn invocation(&self) -> [u8; 16] {
        self.unit.invocation
    }

    /// The current NRestarts.
    pub fn n_restarts(&self) -> u32 {
        self.service.n_restarts
    }
}

/// One signal: which unit, which interface, and the body.
pub struct Signal {
    /// Object path of the unit.
    pub path: String,
    /// Whether this is the Service half of a pair (else the Unit half).
    pub service: bool,
    body: (
        &'static str,
        BTreeMap<&'static str, Variant<'static>>,
        Vec<&'static str>,
    ),
}

impl Signal {
    /// The signal as a D-Bus message, from `sender` when given (a received message carries one;
    /// a message to send gets its sender from the bus).
    pub fn message(&self, sender: Option<&str>) -> zbus::Result<Message> {
        let mut builder =
            Message::signal(self.path.as_str(), PROPERTIES_IFACE, "PropertiesChanged");
        if let Some(sender) = sender {
            builder = builder.sender(sender);
        }
        builder.build(&self.body)
    }
}

/// A set of services that crash and are restarted by systemd, over and over.
pub struct Sim {
    /// The services, all `active/running` to begin with.
    pub units: Vec<SimUnit>,
    next_job: u32,
    next_pid: u32,
    seed: u64,
}

impl Sim {
    /// `count` services named `{prefix}{n}.service`, running since `now_us` (µs since the epoch).
    pub fn new(prefix: &str, count: usize, now_us: u64) -> Sim {
        let mut sim = Sim {
            units: Vec::with_capacity(count),
            next_job: 100,
            next_pid: 1000,
            seed: 0x9e37_79b9_7f4a_7c15 ^ now_us,
        };
        for n in 0..count {
            let name = format!("{prefix}{n}.service");
            let path = unit_path(&name);
            let pid = sim.pid();
            let invocation = sim.invocation();
            sim.units.push(SimUnit {
                name,
                path,
                service: ServiceValues {
                    main_pid: pid,
                    result: "success",
                    n_restarts: 0,
                    exec_main_start: now_us,
                    exec_main_exit: 0,
                    exec_main_pid: pid,
                    exec_main_code: 0,
                    exec_main_status: 0,
                },
                unit: UnitValues {
                    active: "active",
                    sub: "running",
                    state_change: now_us,
                    inactive_exit: now_us,
                    active_enter: now_us,
                    active_exit: 0,
                    inactive_enter: 0,
                    job: 0,
                    invocation,
                    condition: now_us,
                },
            });
        }
        sim
    }

    fn pid(&mut self) -> u32 {
        self.next_pid += 1;
        self.next_pid
    }

    fn invocation(&mut self) -> [u8; 16] {
        // splitmix64: distinct, random-looking ids without a dependency.
        let mut id = [0u8; 16];
        for half in id.chunks_mut(8) {
            self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            half.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        id
    }

    /// One crash-restart cycle of every unit, starting at `at_us`: seven Service+Unit pairs per
    /// unit, pair by pair across the units (as systemd interleaves its queue). The crash is at
    /// `at_us`, the restart `restart_us` later.
    pub fn cycle(&mut self, at_us: u64, restart_us: u64) -> Vec<Signal> {
        let mut per_unit: Vec<Vec<Signal>> = Vec::with_capacity(self.units.len());
        for index in 0..self.units.len() {
            let job = self.next_job;
            self.next_job += 1;
            let pid = self.pid();
            let invocation = self.invocation();
            per_unit.push(cycle_of(
                &mut self.units[index],
                at_us,
                restart_us,
                job,
                pid,
                invocation,
            ));
        }
        let mut out = Vec::with_capacity(per_unit.iter().map(Vec::len).sum());
        let mut iters: Vec<_> = per_unit.into_iter().map(Vec::into_iter).collect();
        // Pair by pair: the Service and Unit halves of a pair stay together, as systemd sends them.
        loop {
            let mut any = false;
            for it in &mut iters {
                if let (Some(a), Some(b)) = (it.next(), it.next()) {
                    out.push(a);
                    out.push(b);
                    any = true;
                }
            }
            if !any {
                return out;
            }
        }
    }
}

/// One unit's cycle: crash, auto-restart wait, restart job, new run.
fn cycle_of(
    u: &mut SimUnit,
    at: u64,
    restart_us: u64,
    job: u32,
    pid: u32,
    invocation: [u8; 16],
) -> Vec<Signal> {
    let mut out = Vec::with_capacity(14);
    let mut pair = |u: &SimUnit| {
        out.push(service_signal(u));
        out.push(unit_signal(u));
    };
    // 1. The main process exits with status 1; the unit fails.
    u.service.main_pid = 0;
    u.service.result = "exit-code";
    u.service.exec_main_exit = at;
    u.service.exec_main_code = 1;
    u.service.exec_main_status = 1;
    u.unit.active = "failed";
    u.unit.sub = "failed";
    u.unit.state_change = at + 40;
    u.unit.active_exit = at + 40;
    u.unit.inactive_enter = at + 40;
    u.unit.job = 0;
    pair(u);
    // 2. At once it waits for its automatic restart.
    u.unit.active = "activating";
    u.unit.sub = "auto-restart";
    u.unit.state_change = at + 60;
    pair(u);
    // 3. RestartSec later the restart job is queued and NRestarts grows.
    u.service.n_restarts += 1;
    u.unit.job = job;
    pair(u);
    // 4. The same again (systemd sends duplicates).
    pair(u);
    // 5. The new run: a new InvocationID while the unit still reads inactive/dead.
    let start = at + restart_us;
    u.service.main_pid = pid;
    u.service.result = "success";
    u.service.exec_main_start = start;
    u.service.exec_main_exit = 0;
    u.service.exec_main_pid = pid;
    u.service.exec_main_code = 0;
    u.service.exec_main_status = 0;
    u.unit.active = "inactive";
    u.unit.sub = "dead";
    u.unit.invocation = invocation;
    u.unit.state_change = start;
    u.unit.condition = start;
    pair(u);
    // 6. Running.
    u.unit.active = "active";
    u.unit.sub = "running";
    u.unit.state_change = start + 30;
    u.unit.inactive_exit = start;
    u.unit.active_enter = start + 30;
    pair(u);
    // 7. The start job is done.
    u.unit.job = 0;
    pair(u);
    out
}

fn service_signal(u: &SimUnit) -> Signal {
    let s = &u.service;
    let mut map: BTreeMap<&'static str, Variant<'static>> = BTreeMap::new();
    map.insert("MainPID", Variant::from(s.main_pid));
    map.insert("ControlPID", Variant::from(0u32));
    map.insert("StatusText", Variant::from(""));
    map.insert("StatusErrno", Variant::from(0i32));
    map.insert("Result", Variant::from(s.result));
    map.insert("ReloadResult", Variant::from("success"));
    map.insert("CleanResult", Variant::from("success"));
    map.insert("UID", Variant::from(u32::MAX));
    map.insert("GID", Variant::from(u32::MAX));
    map.insert("NRestarts", Variant::from(s.n_restarts));
    map.insert("ExecMainStartTimestamp", Variant::from(s.exec_main_start));
    map.insert(
        "ExecMainStartTimestampMonotonic",
        Variant::from(monotonic(s.exec_main_start)),
    );
    map.insert("ExecMainExitTimestamp", Variant::from(s.exec_main_exit));
    map.insert(
        "ExecMainExitTimestampMonotonic",
        Variant::from(monotonic(s.exec_main_exit)),
    );
    map.insert("ExecMainPID", Variant::from(s.exec_main_pid));
    map.insert("ExecMainCode", Variant::from(s.exec_main_code));
    map.insert("ExecMainStatus", Variant::from(s.exec_main_status));
    Signal {
        path: u.path.clone(),
        service: true,
        body: (SERVICE_IFACE, map, SERVICE_INVALIDATED.to_vec()),
    }
}

fn unit_signal(u: &SimUnit) -> Signal {
    let v = &u.unit;
    let mut map: BTreeMap<&'static str, Variant<'static>> = BTreeMap::new();
    map.insert("ActiveState", Variant::from(v.active));
    map.insert("FreezerState", Variant::from("running"));
    map.insert("SubState", Variant::from(v.sub));
    let mut stamp = |name: &'static str, mono: &'static str, t: u64| {
        map.insert(name, Variant::from(t));
        map.insert(mono, Variant::from(monotonic(t)));
    };
    stamp(
        "StateChangeTimestamp",
        "StateChangeTimestampMonotonic",
        v.state_change,
    );
    stamp(
        "InactiveExitTimestamp",
        "InactiveExitTimestampMonotonic",
        v.inactive_exit,
    );
    stamp(
        "ActiveEnterTimestamp",
        "ActiveEnterTimestampMonotonic",
        v.active_enter,
    );
    stamp(
        "ActiveExitTimestamp",
        "ActiveExitTimestampMonotonic",
        v.active_exit,
    );
    stamp(
        "InactiveEnterTimestamp",
        "InactiveEnterTimestampMonotonic",
        v.inactive_enter,
    );
    stamp(
        "ConditionTimestamp",
        "ConditionTimestampMonotonic",
        v.condition,
    );
    stamp("AssertTimestamp", "AssertTimestampMonotonic", v.condition);
    let job_path = if v.job == 0 {
        "/".to_owned()
    } else {
        format!("/org/freedesktop/systemd1/job/{}", v.job)
    };
    // Valid by construction: "/" or a job path of digits.
    let job_path = ObjectPath::from_string_unchecked(job_path);
    map.insert("Job", Variant::from((v.job, job_path)));
    map.insert("ConditionResult", Variant::from(true));
    map.insert("AssertResult", Variant::from(true));
    map.insert("InvocationID", Variant::from(v.invocation.to_vec()));
    map.insert(
        "ActivationDetails",
        Variant::from(Vec::<(String, String)>::new()),
    );
    Signal {
        path: u.path.clone(),
        service: false,
        body: (UNIT_IFACE, map, UNIT_INVALIDATED.to_vec()),
    }
}

fn monotonic(realtime: u64) -> u64 {
    realtime.saturating_sub(BOOT_OFFSET_US)
}

/// The object path systemd gives a unit: `[A-Za-z0-9]` kept, every other byte `_xx`.
pub fn unit_path(name: &str) -> String {
    crashwatch::internals::props::unit_path(name)
}
