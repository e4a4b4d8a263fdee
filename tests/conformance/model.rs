//! What a case is made of: unit files, a scenario of steps, crashwatch's policy, and the
//! expected verdicts, both systemd's (the truth) and crashwatch's.
//!
//! Counts that depend on timing (how many runs fit before a stop lands) are written relative to
//! the runs the unit's own counter file recorded, so a case states a rule ("every run after the
//! first is a restart") rather than a number that a slow machine would break.

use crate::versions::SystemdVersion;

/// One row of the matrix.
pub struct Case {
    /// Short name, `group: what`.
    pub name: &'static str,
    /// Why the expected verdict is what it is; printed with the table.
    pub why: &'static str,
    /// The unit whose verdict the case is about.
    pub unit: &'static str,
    /// Unit files written before the scenario: (name, contents). `@DIR@` stands for the case's
    /// counter directory, shared by the host and the sandbox.
    pub files: Vec<(&'static str, String)>,
    /// Units to keep loaded after they stop, so their properties can be read at the end.
    pub pin: Vec<&'static str>,
    /// crashwatch's threshold and window for the case.
    pub threshold: u32,
    pub window_secs: u64,
    pub steps: Vec<Step>,
    pub expect: Expect,
    /// What `crashwatch replay` over the journal should say, when it cannot match live.
    pub replay: Replay,
    /// Why this systemd cannot run the case at all, by nature ("n/a"), if so.
    pub not_applicable: fn(SystemdVersion) -> Option<&'static str>,
    /// A prerequisite checked against the running sandbox ("n/a" with the reason when missing).
    pub needs: Option<Needs>,
}

#[derive(Clone, Copy)]
pub enum Needs {
    /// The sandbox's own cgroup tree has the memory controller (MemoryMax= is enforced).
    MemoryController,
}

#[derive(Clone)]
pub enum Step {
    /// `systemctl start --no-block UNIT`; a refused start is not an error (it is what some cases
    /// are about), it is logged.
    Start(&'static str),
    /// `systemctl stop UNIT`, which waits for the stop to finish.
    Stop(&'static str),
    /// `systemctl restart --no-block UNIT`.
    Restart(&'static str),
    /// `systemctl kill -s SIGNAL UNIT`.
    Kill(&'static str, &'static str),
    /// `systemctl reset-failed UNIT`.
    ResetFailed(&'static str),
    DaemonReload,
    DaemonReexec,
    /// A command inside the sandbox's namespaces (`@DIR@` substituted), e.g. systemd-run.
    Inside(Vec<&'static str>),
    /// Connect to a unix socket at a path inside the sandbox's /run and close at once.
    Connect(&'static str),
    Sleep(u64),
    /// Wait for a condition read from systemd (or the counter file), up to the seconds given.
    Wait(Cond, u64),
}

#[derive(Clone, Debug)]
pub enum Cond {
    /// The counter file holds at least this many runs.
    Runs(u64),
    /// ActiveState of the unit.
    Active(&'static str, &'static str),
    /// SubState of the unit.
    Sub(&'static str, &'static str),
}

/// A count: exact, a range, or relative to the runs the counter file recorded.
#[derive(Clone, Copy, Debug)]
pub enum N {
    Exact(u64),
    AtLeast(u64),
    /// runs + offset.
    Runs(i64),
    /// runs + lo ..= runs + hi.
    RunsBetween(i64, i64),
}

impl N {
    pub fn matches(self, value: u64, runs: u64) -> bool {
        let rel = |o: i64| (runs as i64 + o).max(0) as u64;
        match self {
            N::Exact(n) => value == n,
            N::AtLeast(n) => value >= n,
            N::Runs(o) => value == rel(o),
            N::RunsBetween(lo, hi) => (rel(lo)..=rel(hi)).contains(&value),
        }
    }

    pub fn describe(self, runs: u64) -> String {
        let rel = |o: i64| (runs as i64 + o).max(0) as u64;
        match self {
            N::Exact(n) => n.to_string(),
            N::AtLeast(n) => format!("at least {n}"),
            N::Runs(o) => rel(o).to_string(),
            N::RunsBetween(lo, hi) => format!("{}..={}", rel(lo), rel(hi)),
        }
    }
}

/// How a crash loop ends, as crashwatch reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    NoLoop,
    Recovered,
    Stopped,
    GaveUp,
    /// Still crash-looping when the case ends.
    Open,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::NoLoop => "no loop",
            End::Recovered => "recovered",
            End::Stopped => "stopped",
            End::GaveUp => "gave_up",
            End::Open => "open",
        }
    }
}

pub struct Expect {
    // systemd's own account: the truth.
    pub runs: N,
    /// NRestarts; None where it cannot be read at the end (a transient unit is unloaded) or
    /// where the scenario resets it at a moment the case cannot pin down.
    pub n_restarts: Option<N>,
    pub result: Option<&'static str>,
    /// "ActiveState/SubState".
    pub state: Option<&'static str>,
    /// (ExecMainCode, ExecMainStatus): 1 exited, 2 killed, 3 dumped.
    pub exec_main: Option<(u32, i32)>,
    pub load_state: Option<&'static str>,
    // crashwatch's account.
    pub starts: N,
    pub restarts: N,
    /// Crashes by reason; every reason not named must be zero.
    pub crashes: Vec<(&'static str, N)>,
    /// `restart_cause` every restart line must carry, when one.
    pub restart_cause: Option<&'static str>,
    pub end: End,
    /// Some transition says systemd gave up; None where no transition has to carry it.
    pub gave_up: Option<bool>,
}

impl Expect {
    /// A loop systemd drives and the case stops while it waits in auto-restart: every run
    /// crashed, every run but the first was an automatic restart.
    pub fn stopped_loop(reason: &'static str) -> Expect {
        Expect {
            runs: N::AtLeast(4),
            n_restarts: Some(N::Runs(-1)),
            result: None,
            state: Some("inactive/dead"),
            exec_main: None,
            load_state: Some("loaded"),
            starts: N::Runs(0),
            restarts: N::Runs(-1),
            crashes: vec![(reason, N::Runs(0))],
            restart_cause: Some("automatic"),
            end: End::Stopped,
            gave_up: Some(false),
        }
    }

    /// One run that failed and was not restarted.
    pub fn single_failure(reason: &'static str) -> Expect {
        Expect {
            runs: N::Exact(1),
            n_restarts: Some(N::Exact(0)),
            result: Some(reason),
            state: Some("failed/failed"),
            exec_main: None,
            load_state: Some("loaded"),
            starts: N::Exact(1),
            restarts: N::Exact(0),
            crashes: vec![(reason, N::Exact(1))],
            restart_cause: None,
            end: End::NoLoop,
            gave_up: Some(false),
        }
    }

    /// Runs that ended without any crash.
    pub fn no_crash(runs: u64) -> Expect {
        Expect {
            runs: N::Exact(runs),
            n_restarts: Some(N::Exact(0)),
            result: Some("success"),
            state: None,
            exec_main: None,
            load_state: Some("loaded"),
            starts: N::Exact(runs),
            restarts: N::Exact(0),
            crashes: vec![],
            restart_cause: None,
            end: End::NoLoop,
            gave_up: Some(false),
        }
    }
}

/// What the journal replay must say.
pub enum Replay {
    /// The same loops and outcomes as live, and the same restarts when flagged.
    SameAsLive,
    /// Something the journal cannot hold: the loops and outcomes replay reports instead, and why.
    /// No case on 252 needs it: replay finds what live finds there.
    #[allow(dead_code)]
    Differs {
        outcomes: &'static [&'static str],
        why: &'static str,
    },
}

pub fn applies_everywhere(_: SystemdVersion) -> Option<&'static str> {
    None
}
