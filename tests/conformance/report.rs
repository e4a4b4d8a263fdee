//! The matrix as text: the pass/fail table printed at the end of a run, and CONFORMANCE.md
//! (`--write`), which adds each case's reasoning and every failure's details.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::model::{Case, Replay};
use crate::runner::{Outcome, Status};
use crate::versions::SystemdVersion;

pub struct Results<'a> {
    cases: &'a [Case],
    versions: Vec<SystemdVersion>,
    outcomes: BTreeMap<(usize, SystemdVersion), Outcome>,
}

fn cell_text(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

impl<'a> Results<'a> {
    pub fn new(cases: &'a [Case], versions: &[SystemdVersion]) -> Results<'a> {
        Results {
            cases,
            versions: versions.to_vec(),
            outcomes: BTreeMap::new(),
        }
    }

    pub fn insert(&mut self, case: usize, version: SystemdVersion, outcome: Outcome) {
        self.outcomes.insert((case, version), outcome);
    }

    /// (passed, failed, skipped); n/a counts as skipped.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for o in self.outcomes.values() {
            match o.status {
                Status::Pass => c.0 += 1,
                Status::Fail => c.1 += 1,
                Status::Skip | Status::NotApplicable => c.2 += 1,
            }
        }
        c
    }

    fn cell(&self, case: usize, version: SystemdVersion) -> String {
        match self.outcomes.get(&(case, version)) {
            None => "not run".into(),
            Some(o) => {
                let text = match o.status {
                    Status::Pass => format!("pass: {}", o.verdict),
                    Status::Fail => format!("**FAIL**: {}", o.verdict),
                    Status::Skip => format!("skipped: {}", o.verdict),
                    Status::NotApplicable => format!("n/a on {version}: {}", o.verdict),
                };
                cell_text(&text)
            }
        }
    }

    /// Case x version, with crashwatch's verdict in each cell.
    pub fn table(&self) -> String {
        let mut t = String::from("| case |");
        for v in &self.versions {
            let _ = write!(t, " systemd {v} |");
        }
        t.push_str("\n| --- |");
        for _ in &self.versions {
            t.push_str(" --- |");
        }
        t.push('\n');
        for (i, case) in self.cases.iter().enumerate() {
            let _ = write!(t, "| {} |", cell_text(case.name));
            for v in &self.versions {
                let _ = write!(t, " {} |", self.cell(i, *v));
            }
            t.push('\n');
        }
        t
    }

    pub fn document(&self, seconds: f64, jobs: usize) -> String {
        let (passed, failed, skipped) = self.counts();
        let versions: Vec<&str> = self.versions.iter().map(|v| v.as_str()).collect();
        let mut d = String::new();
        d.push_str("# Conformance matrix\n\n");
        d.push_str(
            "Written by `scripts/conformance.sh --write FILE` (tests/conformance); do not edit by \
             hand.\n\n\
             Each case runs a real systemd as PID 1 of fresh namespaces, with journald, and \
             crashwatch watching it. The truth comes from outside crashwatch: each unit appends a \
             line to a counter file on every run, and at the end systemd's own NRestarts, Result, \
             ExecMainCode/ExecMainStatus, ActiveState/SubState and LoadState are read. A case \
             first checks systemd against its expectation (a mismatch reads \"systemd did ...\"), \
             then crashwatch's /metrics and event record against the truth, then `crashwatch \
             replay` over the sandbox's `journalctl -o json` against what was heard live.\n\n\
             A cell is crashwatch's verdict: runs (from the counter), restarts, crashes by \
             systemd's Result name, whether a loop was flagged and how it ended (`recovered`, \
             `stopped`, `gave_up`, or `open` when still looping), and `gave_up=true` when a \
             transition said systemd gave up.\n\n",
        );
        let _ = writeln!(
            d,
            "systemd {}: {passed} passed, {failed} failed, {skipped} skipped or n/a; {:.0} s \
             with {jobs} cases at a time.\n",
            versions.join(", "),
            seconds
        );
        d.push_str(&self.table());
        d.push_str("\n## Why each verdict\n\n| case | expected, and why | journal |\n| --- | --- | --- |\n");
        for case in self.cases {
            let journal = match &case.replay {
                Replay::SameAsLive => "same as live".to_owned(),
                Replay::Differs { outcomes, why } => {
                    format!("replay finds {outcomes:?}: {why}")
                }
            };
            let _ = writeln!(
                d,
                "| {} | {} | {} |",
                cell_text(case.name),
                cell_text(case.why),
                cell_text(&journal)
            );
        }
        let failures: Vec<_> = self
            .outcomes
            .iter()
            .filter(|(_, o)| o.status == Status::Fail)
            .collect();
        if !failures.is_empty() {
            d.push_str("\n## Failures\n");
            for ((i, v), o) in failures {
                let _ = writeln!(d, "\n### {} on systemd {v}\n", self.cases[*i].name);
                d.push_str("```\n");
                for p in &o.problems {
                    let _ = writeln!(d, "- {p}");
                }
                d.push_str("```\n");
            }
        }
        d
    }
}
