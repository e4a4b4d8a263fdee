//! Any sequence of property changes, as a rogue or broken sender could produce: the tracker must
//! never panic, and never report more restarts than starts.
#![no_main]

use crashwatch::internals::TransitionKind;
use crashwatch::internals::{ServiceProps, Tracker, UnitProps};
use libfuzzer_sys::fuzz_target;

const ACTIVE: [&str; 8] = ["active", "inactive", "failed", "activating", "deactivating", "reloading", "maintenance", "bogus"];
const SUB: [&str; 8] = ["running", "dead", "failed", "auto-restart", "start", "stop-sigterm", "dead-before-auto-restart", ""];
const RESULT_OF_JOB: [&str; 4] = ["done", "failed", "canceled", "dependency"];
const RESULT: [&str; 4] = ["success", "exit-code", "signal", "\u{0}weird"];

fuzz_target!(|data: &[u8]| {
    let mut tracker = Tracker::new();
    let (mut starts, mut restarts) = (0usize, 0usize);
    let mut clock = 0u64;
    for chunk in data.chunks(6) {
        let b = |k: usize| chunk.get(k).copied().unwrap_or(0);
        let service = (b(0) & 1 == 1).then(|| ServiceProps {
            n_restarts: Some(u32::from(b(1) % 8)),
            result: Some(RESULT[usize::from(b(2)) % RESULT.len()].to_owned()),
            exec_main_code: Some(i32::from(b(2) % 4)),
            exec_main_status: Some(i32::from(b(3))),
            exec_main_start_timestamp: Some(u64::from(b(4)) * 1000),
            exec_main_exit_timestamp: Some(u64::from(b(5)) * 1000),
        });
        let unit = (b(0) & 2 == 2).then(|| UnitProps {
            active_state: Some(ACTIVE[usize::from(b(3)) % ACTIVE.len()].to_owned()),
            sub_state: Some(SUB[usize::from(b(4)) % SUB.len()].to_owned()),
            invocation_id: Some(if b(5) % 3 == 0 { Vec::new() } else { vec![b(5) % 6; 16] }),
            job_id: Some(u32::from(b(0) >> 4)),
            state_change_timestamp: Some(clock),
            inactive_exit_timestamp: Some(u64::from(b(1)) * 1000),
        });
        // Time only moves forward, by a step per chunk or to the deadline of an undecided end.
        clock += 1000;
        if b(5) & 0x80 == 0x80 {
            clock = clock.max(tracker.next_deadline().unwrap_or(clock));
        }
        let now = clock;
        let mut transitions = Vec::new();
        // The job signals, the deadline of an undecided end and the unit's removal arrive in any
        // order relative to the property changes.
        match (b(0) >> 2) & 3 {
            1 => tracker.job_new("u.service"),
            2 => transitions.extend(tracker.job_removed("u.service", RESULT_OF_JOB[usize::from(b(1)) % 4], now)),
            3 if b(1) & 0x80 == 0x80 => transitions.extend(tracker.remove("u.service").unwrap_or_default()),
            _ => {}
        }
        transitions.extend(tracker.settle_due(now));
        transitions.extend(tracker.apply("u.service", service, unit, now));
        for t in transitions {
            match t.kind {
                TransitionKind::Starting => starts += 1,
                TransitionKind::Restart => restarts += 1,
                _ => {}
            }
        }
        assert!(restarts <= starts + 1, "{restarts} restarts for {starts} starts");
    }
});
