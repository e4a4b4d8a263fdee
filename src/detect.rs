//! The crash-loop detector: from what is observed about each unit, and from
//! a clock the caller moves forward, decides which units are restarting too
//! often and when that stops.
//!
//! It is pure and synchronous, with no I/O and no clock of its own, so that
//! every rule can be tested exactly and so the caller keeps full control of
//! its event loop: feed observations with [`Detector::observe`], sleep until
//! [`Detector::next_deadline`], then call [`Detector::advance`]. While nothing
//! is pending there is no deadline, so an idle daemon never wakes up.
//!
//! A unit starts looping when `threshold` restarts fall inside a sliding
//! `window`. It stops looping only when something says the episode is over
//! (it stayed up a full window, an operator stopped it, its supervisor gave
//! up, or it stayed down a full window), never merely because restarts
//! became slower: a unit that keeps crashing just under a window apart is
//! still broken, and un-flagging it would make alerts flap.
//!
//! Each unit has at most one pending deadline, the earliest of "its oldest
//! restart leaves the window" and "its loop would end". Those deadlines live
//! in one ordered set, so finding the next one and handling the due ones
//! costs a logarithm per unit touched, however many units are tracked. A unit
//! with an empty window that is not looping has nothing left to decide and
//! its state is dropped, so memory follows the number of misbehaving units,
//! not the number of units ever seen.
//!
//! Times are plain microsecond counts, and all arithmetic on them is checked
//! or saturating: a deadline that would overflow `u64` simply never arrives,
//! so clock jumps of years and windows as long as `u64` allows are harmless.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::event::{LoopEvent, SourceKind, Transition, TransitionKind};
pub use crate::event::{LoopOutcome, Micros};
use crate::glob::Glob;

/// The most restart times held per unit. Beyond it the oldest are forgotten,
/// so [`Detector::restarts_in_window`] saturates at this value and a
/// [`Policy::threshold`] above it is treated as this value.
pub const MAX_RESTARTS_HELD: usize = 4096;

/// How many restarts within how long a window make a crash loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Restarts inside the window that flag a loop. Zero is treated as one
    /// (a loop needs at least one restart) and values above
    /// [`MAX_RESTARTS_HELD`] as that maximum.
    pub threshold: u32,
    /// Length of the sliding window, and also how long a looping unit must
    /// stay up, or stay down, before its loop is considered over.
    pub window: Duration,
}

impl Default for Policy {
    /// Three restarts within five minutes.
    fn default() -> Policy {
        Policy {
            threshold: 3,
            window: Duration::from_secs(5 * 60),
        }
    }
}

impl Policy {
    fn window_micros(&self) -> Micros {
        u64::try_from(self.window.as_micros()).unwrap_or(u64::MAX)
    }

    fn effective_threshold(&self) -> usize {
        usize::try_from(self.threshold)
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_RESTARTS_HELD)
    }
}

/// Something learned about a unit from the service manager or its logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The unit was started again after a crash, whether by systemd's
    /// `Restart=`, by hand or by some other tool.
    Restart,
    /// The unit reached its running state.
    Up,
    /// The unit stopped without anyone asking.
    Crashed,
    /// An operator stopped the unit on purpose.
    Stopped,
    /// The source says no more automatic restarts will come (start limit
    /// hit, Upstart respawn limit).
    GaveUp,
}

impl Observation {
    /// What a transition tells the detector, if anything.
    pub fn of(t: &Transition) -> Option<Observation> {
        if t.gave_up {
            return Some(Observation::GaveUp);
        }
        if t.crash.is_some() {
            return Some(Observation::Crashed);
        }
        match t.kind {
            TransitionKind::Restart => Some(Observation::Restart),
            TransitionKind::Started => Some(Observation::Up),
            // A failure that is no crash is a stop someone asked for that ended badly (a stop job
            // attached when the process failed): to the detector, as much a stop as a clean one.
            TransitionKind::Stopped | TransitionKind::Failed if !t.inferred => {
                Some(Observation::Stopped)
            }
            _ => None,
        }
    }
}

/// A transition of a unit's looping state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopChange {
    /// The unit has just been flagged as crash-looping.
    Started,
    /// The unit is no longer flagged, for the given reason.
    Ended(LoopOutcome),
}

/// What changed for one unit after an observation or a clock advance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The unit's name.
    pub unit: String,
    /// Restarts now inside the unit's window.
    pub restarts_in_window: u32,
    /// Whether the unit is now flagged as crash-looping.
    pub looping: bool,
    /// The loop transition that happened, if any. When one call both ends
    /// and restarts a loop (possible only with a threshold of one), this is
    /// the later transition, `Started`.
    pub loop_change: Option<LoopChange>,
    /// The policy the unit is judged by, so reports can quote it.
    pub policy: Policy,
    /// When the change took effect: the (possibly clamped) observation time,
    /// or the time passed to [`Detector::advance`].
    pub at: Micros,
}

impl Update {
    /// The loop event this update makes, for a unit of `source`: `None` when the loop neither
    /// started nor ended.
    pub fn loop_event(&self, source: SourceKind) -> Option<LoopEvent> {
        let ended = match self.loop_change? {
            LoopChange::Started => None,
            LoopChange::Ended(outcome) => Some(outcome),
        };
        Some(LoopEvent {
            unit: self.unit.clone(),
            source,
            timestamp: self.at,
            ended,
            restarts_in_window: self.restarts_in_window,
            threshold: self.policy.threshold,
            window_seconds: self.policy.window.as_secs_f64(),
        })
    }
}

/// What the unit is doing since its last restart; it decides how a loop can
/// end by time alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    /// Restarted at this time, not yet seen up or down. Treated like being
    /// up, because some sources (Upstart's log) never report reaching the
    /// running state; without this a loop on such a source could never end.
    Starting(Micros),
    /// Seen up since this time, with no crash since.
    Up(Micros),
    /// Seen crashed at this time, with no restart and no up since.
    Down(Micros),
}

#[derive(Debug)]
struct UnitState {
    name: Arc<str>,
    policy: Policy,
    /// Restart times inside the window, oldest first.
    restarts: VecDeque<Micros>,
    looping: bool,
    run: RunState,
    /// The latest observation time, so later observations never go back
    /// before it.
    latest: Micros,
    /// The deadline currently entered in the detector's queue for this unit.
    scheduled: Option<Micros>,
}

impl UnitState {
    fn new(name: &str, policy: Policy, at: Micros) -> UnitState {
        UnitState {
            name: Arc::from(name),
            policy,
            restarts: VecDeque::new(),
            looping: false,
            run: RunState::Starting(at),
            latest: at,
            scheduled: None,
        }
    }

    fn restart_count(&self) -> u32 {
        u32::try_from(self.restarts.len()).unwrap_or(u32::MAX)
    }

    /// Applies everything that time alone decides up to `now`: restarts
    /// leaving the window, and a loop ending because the unit stayed up or
    /// stayed down for a full window.
    fn settle(&mut self, now: Micros) -> Option<LoopChange> {
        let window = self.policy.window_micros();
        let has_passed = |since: Micros| since.checked_add(window).is_some_and(|end| end <= now);
        while self.restarts.front().is_some_and(|&at| has_passed(at)) {
            self.restarts.pop_front();
        }
        if !self.looping {
            return None;
        }
        let (since, outcome) = match self.run {
            RunState::Starting(since) | RunState::Up(since) => (since, LoopOutcome::Recovered),
            RunState::Down(since) => (since, LoopOutcome::GaveUp),
        };
        if has_passed(since) {
            self.looping = false;
            Some(LoopChange::Ended(outcome))
        } else {
            None
        }
    }

    /// The earliest time at which `settle` would change something.
    fn pending_deadline(&self) -> Option<Micros> {
        let window = self.policy.window_micros();
        let expiry = self.restarts.front().and_then(|at| at.checked_add(window));
        let loop_end = if self.looping {
            let (RunState::Starting(since) | RunState::Up(since) | RunState::Down(since)) =
                self.run;
            since.checked_add(window)
        } else {
            None
        };
        match (expiry, loop_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Nothing is in the window and no loop is open, so there is nothing
    /// left to decide about the unit.
    fn is_idle(&self) -> bool {
        self.restarts.is_empty() && !self.looping
    }

    fn update(&self, loop_change: Option<LoopChange>, at: Micros) -> Update {
        Update {
            unit: self.name.to_string(),
            restarts_in_window: self.restart_count(),
            looping: self.looping,
            loop_change,
            policy: self.policy,
            at,
        }
    }
}

/// Tracks restarts per unit and flags units that are crash-looping.
#[derive(Debug)]
pub struct Detector {
    default_policy: Policy,
    overrides: Vec<(Glob, Policy)>,
    units: HashMap<Arc<str>, UnitState>,
    /// Every unit's pending deadline, ordered by time; a unit is in here
    /// exactly when its `scheduled` is set, and with that time.
    deadlines: BTreeSet<(Micros, Arc<str>)>,
    /// The latest time passed to `advance`.
    clock: Micros,
}

impl Detector {
    /// Creates a detector judging units by `default`, except those matching
    /// one of `overrides`, where the first matching pattern wins.
    pub fn new(default: Policy, overrides: Vec<(Glob, Policy)>) -> Detector {
        Detector {
            default_policy: default,
            overrides,
            units: HashMap::new(),
            deadlines: BTreeSet::new(),
            clock: 0,
        }
    }

    /// Judges units by new policies from now on (a reloaded configuration). A unit keeps its
    /// window and loop: restarts now older than its new window leave it at `now`, and a loop
    /// ends when the unit has stayed up or down for the new window. A new threshold is applied at
    /// the unit's next restart. Returns the updates of units whose count or loop changed.
    pub fn set_policies(
        &mut self,
        default: Policy,
        overrides: Vec<(Glob, Policy)>,
        now: Micros,
    ) -> Vec<Update> {
        self.default_policy = default;
        self.overrides = overrides;
        let changed: Vec<Arc<str>> = self
            .units
            .iter()
            .filter(|(name, state)| state.policy != self.policy_for(name))
            .map(|(name, _)| Arc::clone(name))
            .collect();
        let mut updates = Vec::new();
        for name in changed {
            let policy = self.policy_for(&name);
            let Some(state) = self.units.get_mut(&*name) else {
                continue;
            };
            state.policy = policy;
            let before = (state.restart_count(), state.looping);
            let loop_change = state.settle(now.max(self.clock));
            if before != (state.restart_count(), state.looping) || loop_change.is_some() {
                updates.push(state.update(loop_change, now.max(self.clock)));
            }
            self.reschedule(&name);
        }
        updates
    }

    /// The policy `unit` is judged by.
    pub fn policy_for(&self, unit: &str) -> Policy {
        self.overrides
            .iter()
            .find(|(glob, _)| glob.matches(unit))
            .map_or(self.default_policy, |&(_, policy)| policy)
    }

    /// Feeds one observation about `unit` made at time `at`. Returns an
    /// [`Update`] when the unit's restarts in window or its looping state
    /// changed, and `None` otherwise.
    ///
    /// An observation older than the latest one seen for the unit is taken
    /// as happening at that latest time, so events arriving out of order
    /// never rewrite history. Times older than the clock given to `advance`
    /// are accepted as they are, so a backlog can be replayed with its real
    /// timestamps.
    ///
    /// Changes that time alone would have made for this unit by `at` are
    /// applied first, so a caller that has not yet advanced to a deadline
    /// still gets consistent answers. `Stopped` and `GaveUp` also empty the
    /// window: whatever start comes after them is a fresh attempt, and
    /// counting the old restarts against it would re-flag a unit an operator
    /// has just repaired.
    pub fn observe(&mut self, unit: &str, observation: Observation, at: Micros) -> Option<Update> {
        if !self.units.contains_key(unit) {
            // Only a restart can move an untracked unit towards a loop;
            // remembering anything else would hold memory for every unit
            // that ever changed state.
            if observation != Observation::Restart {
                return None;
            }
            let state = UnitState::new(unit, self.policy_for(unit), at);
            self.units.insert(Arc::clone(&state.name), state);
        }
        let state = self.units.get_mut(unit)?;
        let before = (state.restart_count(), state.looping);
        let at = at.max(state.latest);
        state.latest = at;
        let mut loop_change = state.settle(at);

        match observation {
            Observation::Restart => {
                if state.restarts.len() >= MAX_RESTARTS_HELD {
                    state.restarts.pop_front();
                }
                state.restarts.push_back(at);
                state.run = RunState::Starting(at);
            }
            Observation::Up => {
                if !matches!(state.run, RunState::Up(_)) {
                    state.run = RunState::Up(at);
                }
            }
            Observation::Crashed => {
                if !matches!(state.run, RunState::Down(_)) {
                    state.run = RunState::Down(at);
                }
            }
            Observation::Stopped | Observation::GaveUp => {
                state.restarts.clear();
                if state.looping {
                    state.looping = false;
                    let outcome = if observation == Observation::Stopped {
                        LoopOutcome::Stopped
                    } else {
                        LoopOutcome::GaveUp
                    };
                    loop_change = Some(LoopChange::Ended(outcome));
                }
            }
        }

        // A zero-length window lets a new restart leave at once; settling
        // again keeps the count honest before it is compared.
        if let Some(change) = state.settle(at) {
            loop_change = Some(change);
        }
        if !state.looping && state.restarts.len() >= state.policy.effective_threshold() {
            state.looping = true;
            loop_change = Some(LoopChange::Started);
        }

        let after = (state.restart_count(), state.looping);
        let update =
            (before != after || loop_change.is_some()).then(|| state.update(loop_change, at));
        self.reschedule(unit);
        update
    }

    /// Moves the clock to `now`: restarts older than the window leave it and
    /// loops whose ending time has come end. Returns one [`Update`] per unit
    /// whose count or looping state changed. A `now` earlier than a previous
    /// call changes nothing.
    ///
    /// Only units that are due are touched, so the cost grows with their
    /// number, not with the number of units tracked.
    pub fn advance(&mut self, now: Micros) -> Vec<Update> {
        let mut updates = Vec::new();
        if now < self.clock {
            return updates;
        }
        self.clock = now;
        while self.deadlines.first().is_some_and(|(due, _)| *due <= now) {
            let Some((_, name)) = self.deadlines.pop_first() else {
                break;
            };
            let Some(state) = self.units.get_mut(&*name) else {
                continue;
            };
            state.scheduled = None;
            let before = (state.restart_count(), state.looping);
            let loop_change = state.settle(now);
            let after = (state.restart_count(), state.looping);
            if before != after || loop_change.is_some() {
                updates.push(state.update(loop_change, now));
            }
            self.reschedule(&name);
        }
        updates
    }

    /// Moves the clock to `to` one deadline at a time, handing each [`Update`] to `each`, so a
    /// change is stamped with the moment it was due rather than with the time of whatever comes
    /// next: for reading a record of the past (the journal), where time jumps. Never moves back.
    pub fn advance_stepwise(&mut self, to: Micros, mut each: impl FnMut(Update)) {
        if to < self.clock {
            return;
        }
        while let Some(due) = self.next_deadline() {
            if due > to {
                break;
            }
            // An observation older than the clock can leave a deadline behind it; it is due now.
            let at = due.max(self.clock);
            self.advance(at).into_iter().for_each(&mut each);
        }
        self.advance(to).into_iter().for_each(each);
    }

    /// The earliest time at which [`Detector::advance`] would change
    /// something, or `None` when nothing is pending, in which case the
    /// caller can sleep until the next observation.
    pub fn next_deadline(&self) -> Option<Micros> {
        self.deadlines.first().map(|&(due, _)| due)
    }

    /// Restarts inside `unit`'s window as of the latest `observe` or
    /// `advance` that touched it; zero for an untracked unit.
    pub fn restarts_in_window(&self, unit: &str) -> u32 {
        self.units.get(unit).map_or(0, UnitState::restart_count)
    }

    /// Whether `unit` is currently flagged as crash-looping.
    pub fn is_looping(&self, unit: &str) -> bool {
        self.units.get(unit).is_some_and(|state| state.looping)
    }

    /// Drops everything held about `unit`, for example when it is unloaded
    /// or no longer passes the unit filter. No update is produced.
    pub fn forget(&mut self, unit: &str) {
        if let Some(state) = self.units.remove(unit) {
            if let Some(due) = state.scheduled {
                self.deadlines.remove(&(due, state.name));
            }
        }
    }

    /// How many units have state held. A unit whose window is empty and
    /// that is not looping holds none, so this stays bounded by the number
    /// of units that recently restarted.
    pub fn tracked_units(&self) -> usize {
        self.units.len()
    }

    /// Brings `unit`'s queue entry in line with its state, and drops the
    /// state altogether once nothing is left to decide about it.
    fn reschedule(&mut self, unit: &str) {
        let Some(state) = self.units.get_mut(unit) else {
            return;
        };
        let wanted = state.pending_deadline();
        if wanted != state.scheduled {
            if let Some(old) = state.scheduled {
                self.deadlines.remove(&(old, Arc::clone(&state.name)));
            }
            if let Some(new) = wanted {
                self.deadlines.insert((new, Arc::clone(&state.name)));
            }
            state.scheduled = wanted;
        }
        // An idle unit has no pending deadline, so nothing stays queued.
        if state.is_idle() {
            self.units.remove(unit);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::event::{Transition, TransitionKind, UnitState};

    #[test]
    fn a_stop_that_ends_in_failure_is_a_stop_to_the_detector() {
        let failed = Transition::new(
            "u.service",
            SourceKind::Systemd,
            1,
            TransitionKind::Failed,
            UnitState::new("deactivating", "stop-sigterm"),
            UnitState::new("failed", "failed"),
        );
        assert_eq!(Observation::of(&failed), Some(Observation::Stopped));
        let mut crashed = failed.clone();
        crashed.crash = Some("exit-code".to_owned());
        assert_eq!(Observation::of(&crashed), Some(Observation::Crashed));
        let mut gave_up = failed;
        gave_up.gave_up = true;
        assert_eq!(Observation::of(&gave_up), Some(Observation::GaveUp));
    }

    use super::*;

    const SECOND: Micros = 1_000_000;
    /// The default window, five minutes, in microseconds.
    const WINDOW: Micros = 300 * SECOND;
    const UNIT: &str = "app.service";

    fn detector() -> Detector {
        Detector::new(Policy::default(), Vec::new())
    }

    fn policy(threshold: u32, window_secs: u64) -> Policy {
        Policy {
            threshold,
            window: Duration::from_secs(window_secs),
        }
    }

    fn glob(pattern: &str) -> Glob {
        Glob::new(pattern).expect("pattern should compile")
    }

    /// Restarts `unit` at each of `times`, returning the last update.
    fn restart_at(d: &mut Detector, unit: &str, times: &[Micros]) -> Option<Update> {
        let mut last = None;
        for &at in times {
            last = d.observe(unit, Observation::Restart, at);
        }
        last
    }

    /// Restarts `UNIT` three times, a second apart from `start`, so it loops.
    fn start_loop(d: &mut Detector, start: Micros) {
        let update = restart_at(d, UNIT, &[start, start + SECOND, start + 2 * SECOND]);
        assert_eq!(
            update.and_then(|u| u.loop_change),
            Some(LoopChange::Started)
        );
    }

    fn loop_changes(updates: &[Update]) -> Vec<Option<LoopChange>> {
        updates.iter().map(|u| u.loop_change).collect()
    }

    #[test]
    fn default_policy_is_three_in_five_minutes() {
        assert_eq!(
            Policy::default(),
            Policy {
                threshold: 3,
                window: Duration::from_secs(300)
            }
        );
    }

    #[test]
    fn third_restart_in_window_flags_the_unit() {
        let mut d = detector();
        let first = d
            .observe(UNIT, Observation::Restart, 1_000)
            .expect("count changed");
        assert_eq!(first.restarts_in_window, 1);
        assert!(!first.looping);
        assert_eq!(first.loop_change, None);

        let second = d
            .observe(UNIT, Observation::Restart, 2_000)
            .expect("count changed");
        assert_eq!(second.restarts_in_window, 2);
        assert!(!second.looping);
        assert!(!d.is_looping(UNIT));

        let third = d
            .observe(UNIT, Observation::Restart, 3_000)
            .expect("count changed");
        assert_eq!(third.restarts_in_window, 3);
        assert!(third.looping);
        assert_eq!(third.loop_change, Some(LoopChange::Started));
        assert_eq!(third.policy, Policy::default());
        assert_eq!(third.at, 3_000);
        assert_eq!(third.unit, UNIT);
        assert!(d.is_looping(UNIT));

        let fourth = d
            .observe(UNIT, Observation::Restart, 4_000)
            .expect("count changed");
        assert_eq!(fourth.restarts_in_window, 4);
        assert_eq!(fourth.loop_change, None, "a loop starts only once");
    }

    #[test]
    fn override_threshold_applies_to_matching_units() {
        let mut d = Detector::new(
            Policy::default(),
            vec![(glob("db-*.service"), policy(5, 300))],
        );
        let times = [1, 2, 3, 4].map(|s| s * SECOND);
        restart_at(&mut d, "db-main.service", &times);
        restart_at(&mut d, "web.service", &times);
        assert!(!d.is_looping("db-main.service"));
        assert!(d.is_looping("web.service"));
        let fifth = d
            .observe("db-main.service", Observation::Restart, 5 * SECOND)
            .expect("count changed");
        assert_eq!(fifth.loop_change, Some(LoopChange::Started));
        assert_eq!(fifth.policy.threshold, 5);
    }

    #[test]
    fn first_matching_override_wins() {
        let d = Detector::new(
            policy(3, 300),
            vec![
                (glob("db-*.service"), policy(5, 600)),
                (glob("*.service"), policy(2, 60)),
            ],
        );
        assert_eq!(d.policy_for("db-main.service"), policy(5, 600));
        assert_eq!(d.policy_for("web.service"), policy(2, 60));
        assert_eq!(d.policy_for("backup.timer"), policy(3, 300));
    }

    #[test]
    fn restarts_spread_wider_than_the_window_never_flag() {
        let mut d = detector();
        for i in 0..20 {
            let update = d.observe(UNIT, Observation::Restart, i * WINDOW);
            assert!(!d.is_looping(UNIT));
            assert_eq!(d.restarts_in_window(UNIT), 1);
            if let Some(update) = update {
                assert_eq!(update.loop_change, None);
            }
        }
    }

    #[test]
    fn count_decays_exactly_at_expiry() {
        let mut d = detector();
        restart_at(&mut d, UNIT, &[100, 200]);
        assert_eq!(d.next_deadline(), Some(100 + WINDOW));

        assert!(d.advance(100 + WINDOW - 1).is_empty());
        assert_eq!(d.restarts_in_window(UNIT), 2);

        let updates = d.advance(100 + WINDOW);
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].restarts_in_window, 1);
        assert_eq!(updates[0].at, 100 + WINDOW);
        assert_eq!(d.next_deadline(), Some(200 + WINDOW));

        let updates = d.advance(200 + WINDOW);
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].restarts_in_window, 0);
        assert_eq!(d.next_deadline(), None);
        assert_eq!(d.tracked_units(), 0);
    }

    #[test]
    fn idle_detector_has_no_deadline() {
        let mut d = detector();
        assert_eq!(d.next_deadline(), None);
        assert!(d.advance(1_000_000).is_empty());
        // Non-restart observations about untracked units hold nothing.
        for observation in [
            Observation::Up,
            Observation::Crashed,
            Observation::Stopped,
            Observation::GaveUp,
        ] {
            assert_eq!(d.observe(UNIT, observation, 10), None);
        }
        assert_eq!(d.next_deadline(), None);
        assert_eq!(d.tracked_units(), 0);
    }

    #[test]
    fn up_for_a_full_window_recovers() {
        let mut d = detector();
        start_loop(&mut d, 0);
        let up = 10 * SECOND;
        assert_eq!(d.observe(UNIT, Observation::Up, up), None);
        assert_eq!(
            d.next_deadline(),
            Some(WINDOW),
            "first the oldest restart expires"
        );

        let updates = d.advance(up + WINDOW - 1);
        assert!(d.is_looping(UNIT), "one microsecond short of a window");
        assert!(updates.iter().all(|u| u.loop_change.is_none()));
        assert_eq!(d.restarts_in_window(UNIT), 0);
        assert_eq!(d.next_deadline(), Some(up + WINDOW));

        let updates = d.advance(up + WINDOW);
        assert_eq!(
            loop_changes(&updates),
            vec![Some(LoopChange::Ended(LoopOutcome::Recovered))]
        );
        assert!(!updates[0].looping);
        assert!(!d.is_looping(UNIT));
        assert_eq!(d.tracked_units(), 0);
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn a_crash_while_up_restarts_the_recovery_clock() {
        let mut d = detector();
        start_loop(&mut d, 0);
        let up = 10 * SECOND;
        d.observe(UNIT, Observation::Up, up);
        d.observe(UNIT, Observation::Crashed, up + 60 * SECOND);
        let up_again = up + 120 * SECOND;
        d.observe(UNIT, Observation::Up, up_again);

        d.advance(up + WINDOW);
        assert!(d.is_looping(UNIT), "the crash broke the first stretch up");
        d.advance(up_again + WINDOW - 1);
        assert!(d.is_looping(UNIT));
        let updates = d.advance(up_again + WINDOW);
        assert_eq!(
            loop_changes(&updates),
            vec![Some(LoopChange::Ended(LoopOutcome::Recovered))]
        );
    }

    #[test]
    fn a_restart_while_up_restarts_the_recovery_clock() {
        let mut d = detector();
        start_loop(&mut d, 0);
        d.observe(UNIT, Observation::Up, 10 * SECOND);
        let restart = 200 * SECOND;
        d.observe(UNIT, Observation::Restart, restart);
        d.observe(UNIT, Observation::Up, restart + SECOND);
        d.advance(10 * SECOND + WINDOW);
        assert!(d.is_looping(UNIT));
        let updates = d.advance(restart + SECOND + WINDOW);
        assert_eq!(
            loop_changes(&updates),
            vec![Some(LoopChange::Ended(LoopOutcome::Recovered))]
        );
    }

    #[test]
    fn slow_restarts_keep_a_loop_flagged() {
        let mut d = detector();
        start_loop(&mut d, 0);
        let mut last = 2 * SECOND;
        for _ in 0..10 {
            let next = last + WINDOW - 1;
            for update in d.advance(next - 1) {
                assert_eq!(update.loop_change, None);
            }
            assert!(d.is_looping(UNIT));
            d.observe(UNIT, Observation::Up, next - 1);
            d.observe(UNIT, Observation::Crashed, next - 1);
            d.observe(UNIT, Observation::Restart, next);
            assert!(d.is_looping(UNIT));
            assert!(
                d.restarts_in_window(UNIT) < 3,
                "the count fell but the flag stays"
            );
            last = next;
        }
    }

    #[test]
    fn operator_stop_ends_a_loop_at_once() {
        let mut d = detector();
        start_loop(&mut d, 0);
        let update = d
            .observe(UNIT, Observation::Stopped, 5 * SECOND)
            .expect("loop ended");
        assert_eq!(
            update.loop_change,
            Some(LoopChange::Ended(LoopOutcome::Stopped))
        );
        assert!(!update.looping);
        assert_eq!(update.restarts_in_window, 0);
        assert!(!d.is_looping(UNIT));
        assert_eq!(d.tracked_units(), 0);
        assert_eq!(d.next_deadline(), None);

        // A later start is a fresh attempt, not the fourth restart.
        let update = d
            .observe(UNIT, Observation::Restart, 6 * SECOND)
            .expect("count changed");
        assert_eq!(update.restarts_in_window, 1);
        assert!(!update.looping);
    }

    #[test]
    fn supervisor_giving_up_ends_a_loop_at_once() {
        let mut d = detector();
        start_loop(&mut d, 0);
        let update = d
            .observe(UNIT, Observation::GaveUp, 5 * SECOND)
            .expect("loop ended");
        assert_eq!(
            update.loop_change,
            Some(LoopChange::Ended(LoopOutcome::GaveUp))
        );
        assert!(!d.is_looping(UNIT));
        assert_eq!(d.tracked_units(), 0);
    }

    #[test]
    fn stop_without_a_loop_just_empties_the_window() {
        let mut d = detector();
        restart_at(&mut d, UNIT, &[0, SECOND]);
        let update = d
            .observe(UNIT, Observation::Stopped, 2 * SECOND)
            .expect("count changed");
        assert_eq!(update.restarts_in_window, 0);
        assert_eq!(update.loop_change, None);
        assert_eq!(d.tracked_units(), 0);
    }

    #[test]
    fn down_for_a_full_window_gives_up() {
        let mut d = detector();
        start_loop(&mut d, 0);
        let crash = 3 * SECOND;
        d.observe(UNIT, Observation::Crashed, crash);
        d.advance(crash + WINDOW - 1);
        assert!(d.is_looping(UNIT));
        assert_eq!(d.next_deadline(), Some(crash + WINDOW));
        let updates = d.advance(crash + WINDOW);
        assert_eq!(
            loop_changes(&updates),
            vec![Some(LoopChange::Ended(LoopOutcome::GaveUp))]
        );
        assert_eq!(d.tracked_units(), 0);
    }

    #[test]
    fn quiet_after_a_restart_counts_as_running() {
        // Sources that never report Up still let a loop end.
        let mut d = detector();
        start_loop(&mut d, 0);
        let last_restart = 2 * SECOND;
        d.advance(last_restart + WINDOW - 1);
        assert!(d.is_looping(UNIT));
        let updates = d.advance(last_restart + WINDOW);
        assert_eq!(
            loop_changes(&updates),
            vec![Some(LoopChange::Ended(LoopOutcome::Recovered))]
        );
    }

    #[test]
    fn observe_applies_overdue_changes_first() {
        let mut d = detector();
        start_loop(&mut d, 0);
        d.observe(UNIT, Observation::Up, 3 * SECOND);
        // No advance: the unit has been up for longer than a window.
        let update = d
            .observe(UNIT, Observation::Crashed, 3 * SECOND + 2 * WINDOW)
            .expect("loop ended");
        assert_eq!(
            update.loop_change,
            Some(LoopChange::Ended(LoopOutcome::Recovered))
        );
        assert_eq!(update.restarts_in_window, 0);
        assert_eq!(d.tracked_units(), 0);
    }

    #[test]
    fn observations_going_back_in_time_are_clamped() {
        let mut d = detector();
        d.observe(UNIT, Observation::Restart, 10 * SECOND);
        let update = d
            .observe(UNIT, Observation::Restart, 5 * SECOND)
            .expect("count changed");
        assert_eq!(update.at, 10 * SECOND);
        assert_eq!(update.restarts_in_window, 2);
        // Both restarts sit at the newest time, so both leave together.
        assert_eq!(d.next_deadline(), Some(10 * SECOND + WINDOW));
        let updates = d.advance(10 * SECOND + WINDOW);
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].restarts_in_window, 0);
    }

    #[test]
    fn clock_going_backwards_changes_nothing() {
        let mut d = detector();
        restart_at(&mut d, UNIT, &[0, SECOND]);
        let updates = d.advance(WINDOW);
        assert_eq!(updates.len(), 1);
        assert_eq!(d.restarts_in_window(UNIT), 1);

        assert!(d.advance(0).is_empty());
        assert_eq!(
            d.advance(SECOND + WINDOW).len(),
            1,
            "forward again still works"
        );
        assert_eq!(d.restarts_in_window(UNIT), 0);
    }

    #[test]
    fn replayed_backlog_older_than_the_clock_expires_on_next_advance() {
        let mut d = detector();
        d.advance(10 * WINDOW);
        restart_at(&mut d, UNIT, &[0, SECOND, 2 * SECOND]);
        assert!(d.is_looping(UNIT));
        assert_eq!(d.next_deadline(), Some(WINDOW));
        let updates = d.advance(10 * WINDOW);
        assert_eq!(
            loop_changes(&updates),
            vec![Some(LoopChange::Ended(LoopOutcome::Recovered))]
        );
        assert_eq!(d.tracked_units(), 0);
    }

    #[test]
    fn far_future_jump_expires_everything() {
        let mut d = detector();
        start_loop(&mut d, 0);
        restart_at(&mut d, "other.service", &[0]);
        let updates = d.advance(u64::MAX / 2);
        assert_eq!(updates.len(), 2);
        assert!(updates
            .iter()
            .all(|u| u.restarts_in_window == 0 && !u.looping));
        assert_eq!(d.tracked_units(), 0);
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn times_near_the_end_of_u64_do_not_overflow() {
        let mut d = detector();
        let update = restart_at(
            &mut d,
            UNIT,
            &[u64::MAX - WINDOW - 10, u64::MAX - WINDOW - 5, u64::MAX - 20],
        );
        assert_eq!(
            update.and_then(|u| u.loop_change),
            Some(LoopChange::Started)
        );
        // The first two leave the window at the very end of time; the last
        // one's window would end past u64::MAX, so it never leaves and the
        // loop never ends by time.
        let updates = d.advance(u64::MAX);
        assert!(updates.iter().all(|u| u.loop_change.is_none()));
        assert!(d.is_looping(UNIT));
        assert_eq!(d.restarts_in_window(UNIT), 1);
        assert_eq!(d.next_deadline(), None);
        assert!(d.advance(u64::MAX).is_empty());
    }

    #[test]
    fn huge_windows_do_not_overflow() {
        let endless = Policy {
            threshold: 2,
            window: Duration::MAX,
        };
        let mut d = Detector::new(endless, Vec::new());
        restart_at(&mut d, UNIT, &[1, u64::MAX / 2]);
        assert!(d.is_looping(UNIT));
        assert_eq!(d.next_deadline(), None);
        assert!(d.advance(u64::MAX).is_empty());
        assert!(d.is_looping(UNIT));
    }

    #[test]
    fn zero_threshold_and_zero_window_are_safe() {
        let mut d = Detector::new(policy(0, 300), vec![(glob("instant.*"), policy(1, 0))]);
        let update = d
            .observe(UNIT, Observation::Restart, 1)
            .expect("count changed");
        assert_eq!(
            update.loop_change,
            Some(LoopChange::Started),
            "zero acts as one"
        );
        // A zero-length window holds nothing, so nothing ever loops.
        assert_eq!(d.observe("instant.service", Observation::Restart, 1), None);
        assert!(!d.is_looping("instant.service"));
        assert_eq!(d.tracked_units(), 1);
    }

    #[test]
    fn restarts_held_per_unit_saturate() {
        let mut d = Detector::new(policy(10_000, 300), Vec::new());
        for i in 0..5_000 {
            d.observe(UNIT, Observation::Restart, i);
        }
        assert_eq!(d.restarts_in_window(UNIT), 4096);
        assert!(
            d.is_looping(UNIT),
            "a threshold above the cap acts as the cap"
        );
        // The oldest held restart is the 905th, at time 904.
        assert_eq!(d.next_deadline(), Some(904 + WINDOW));
    }

    #[test]
    fn forget_drops_state_and_deadline() {
        let mut d = detector();
        start_loop(&mut d, 0);
        d.forget(UNIT);
        assert_eq!(d.tracked_units(), 0);
        assert_eq!(d.next_deadline(), None);
        assert!(!d.is_looping(UNIT));
        assert!(d.advance(u64::MAX).is_empty());
        d.forget("never-seen.service");
    }

    #[test]
    fn ten_thousand_units_loop_and_all_recover() {
        const UNITS: u64 = 10_000;
        let mut d = detector();
        let name = |i: u64| format!("worker-{i}.service");
        let mut started = 0;
        for i in 0..UNITS {
            let unit = name(i);
            for offset in 0..3 {
                if let Some(update) = d.observe(&unit, Observation::Restart, i * 10 + offset) {
                    if update.loop_change == Some(LoopChange::Started) {
                        started += 1;
                    }
                }
            }
            d.observe(&unit, Observation::Up, i * 10 + 3);
        }
        assert_eq!(started, UNITS);
        assert_eq!(d.tracked_units(), UNITS as usize);
        assert_eq!(d.next_deadline(), Some(WINDOW));

        // Halfway through, only the units whose stretch up is long enough end.
        let halfway = (UNITS / 2) * 10 + 3 + WINDOW;
        let first_half = d.advance(halfway);
        let recovered = |updates: &[Update]| {
            updates
                .iter()
                .filter(|u| u.loop_change == Some(LoopChange::Ended(LoopOutcome::Recovered)))
                .count()
        };
        assert_eq!(recovered(&first_half), (UNITS / 2 + 1) as usize);
        assert_eq!(d.tracked_units(), (UNITS / 2 - 1) as usize);

        let rest = d.advance(UNITS * 10 + WINDOW);
        assert_eq!(recovered(&rest), (UNITS / 2 - 1) as usize);
        assert!(rest.iter().all(|u| !u.looping && u.restarts_in_window == 0));
        assert_eq!(d.tracked_units(), 0);
        assert_eq!(d.next_deadline(), None);
        assert!((0..UNITS).all(|i| !d.is_looping(&name(i))));
    }

    #[test]
    fn a_shorter_window_from_a_reload_lets_old_restarts_go() {
        let five_minutes = Policy {
            threshold: 3,
            window: Duration::from_secs(300),
        };
        let mut detector = Detector::new(five_minutes, Vec::new());
        for at in [1, 2, 3] {
            detector.observe("u.service", Observation::Crashed, at * 1_000_000);
            detector.observe("u.service", Observation::Restart, at * 1_000_000 + 1);
        }
        assert!(detector.is_looping("u.service"));
        let one_minute = Policy {
            threshold: 3,
            window: Duration::from_secs(60),
        };
        // Two minutes on: the restarts are outside the new window, and the unit has been up
        // since the last one for longer than it.
        let updates = detector.set_policies(one_minute, Vec::new(), 120_000_000);
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].restarts_in_window, 0);
        assert_eq!(
            updates[0].loop_change,
            Some(LoopChange::Ended(LoopOutcome::Recovered))
        );
        assert_eq!(detector.policy_for("u.service"), one_minute);
        assert_eq!(detector.next_deadline(), None);
    }
}
