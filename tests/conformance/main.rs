//! The conformance matrix: real systemd behaviours (Restart= policies, start limits, service
//! types, ways to die, what operators and tools do) run against a sandboxed real systemd of each
//! version, with crashwatch watching. Each case checks systemd against a truth that does not
//! come from crashwatch (the unit counts its own runs; systemd's properties), then crashwatch's
//! /metrics and event record against that truth, then `crashwatch replay` over the same
//! sandbox's journal against what crashwatch heard live.
//!
//!     cargo test --locked --test conformance -- [--systemd 252,254,257] [--case SUBSTRING]
//!                                               [--jobs N] [--write FILE]
//!
//! It is its own test target with `harness = false` and `test = false`: a few minutes of real
//! systemd per version, run explicitly by scripts/conformance.sh rather than with every `cargo
//! test`. Output: a line per finished case, the table (case x version, with crashwatch's
//! verdict), then `N passed, N failed[, N skipped]`; non-zero exit on any failure. Under
//! CI=true a case that cannot run here (no root, a version missing) is a failure; otherwise it
//! is skipped with the reason. A case a version cannot run by nature is "n/a" with the reason.

// The integration tests' harness, shared rather than copied; it allows its own dead code, as
// each test binary uses a different part of it.
#[path = "../support/mod.rs"]
mod support;

mod cases;
mod model;
mod report;
mod runner;
mod versions;

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use runner::{Outcome, Status};
use versions::SystemdVersion;

struct Options {
    versions: Vec<SystemdVersion>,
    filter: Option<String>,
    jobs: usize,
    write: Option<String>,
}

const USAGE: &str = "usage: conformance [--systemd 252,254,257] [--case SUBSTRING] [--jobs N] \
                     [--write FILE]";

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        versions: SystemdVersion::ALL.to_vec(),
        filter: None,
        jobs: 3,
        write: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--systemd" => {
                options.versions = value()?
                    .split(',')
                    .filter(|v| !v.trim().is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--case" => options.filter = Some(value()?),
            "--jobs" => {
                options.jobs = value()?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--jobs takes a positive number\n{USAGE}"))?;
            }
            "--write" => options.write = Some(value()?),
            // Flags cargo's test runner passes along to every test binary.
            "--nocapture" | "--quiet" | "-q" | "--color" | "--test-threads" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("conformance: {e}");
            return ExitCode::from(2);
        }
    };
    let cases: Vec<model::Case> = cases::all()
        .into_iter()
        .filter(|c| {
            options
                .filter
                .as_deref()
                .is_none_or(|f| c.name.to_lowercase().contains(&f.to_lowercase()))
        })
        .collect();
    if cases.is_empty() {
        eprintln!("conformance: no case matches {:?}", options.filter);
        return ExitCode::from(2);
    }
    let ci = support::in_ci();
    // Failures are reported in the table; the default hook would print each one again, mid-run.
    std::panic::set_hook(Box::new(|_| {}));

    let started = Instant::now();
    let cases = Arc::new(cases);
    let mut work = VecDeque::new();
    // Version by version, so the progress reads in the order of the table.
    for &v in &options.versions {
        for i in 0..cases.len() {
            work.push_back((i, v));
        }
    }
    let total = work.len();
    let work = Arc::new(Mutex::new(work));
    let (tx, rx) = mpsc::channel::<(usize, SystemdVersion, Outcome)>();
    let mut workers = Vec::new();
    for _ in 0..options.jobs.min(total) {
        let (work, cases, tx) = (work.clone(), cases.clone(), tx.clone());
        workers.push(thread::spawn(move || loop {
            let next = work.lock().unwrap().pop_front();
            let Some((i, v)) = next else { break };
            let outcome = runner::run(&cases[i], v);
            if tx.send((i, v, outcome)).is_err() {
                break;
            }
        }));
    }
    drop(tx);

    let mut results = report::Results::new(&cases, &options.versions);
    let width = cases.iter().map(|c| c.name.len()).max().unwrap_or(10);
    for (done, (i, v, mut outcome)) in rx.iter().enumerate() {
        if outcome.status == Status::Skip && ci {
            outcome.problems.insert(
                0,
                format!(
                    "cannot run under CI=true (a skip in CI is a failure): {}",
                    outcome.verdict
                ),
            );
            outcome.status = Status::Fail;
        }
        let status = match outcome.status {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
            Status::NotApplicable => "n/a",
        };
        println!(
            "[{:>3}/{total}] systemd {v}  {:<width$}  {status:<4}  {:5.1}s  {}",
            done + 1,
            cases[i].name,
            outcome.seconds,
            outcome.verdict
        );
        if outcome.status == Status::Fail {
            for p in &outcome.problems {
                println!("        - {}", p.replace('\n', "\n        "));
            }
        }
        results.insert(i, v, outcome);
    }
    for w in workers {
        let _ = w.join();
    }

    let elapsed = started.elapsed().as_secs_f64();
    let table = results.table();
    println!("\n{table}");
    if let Some(path) = &options.write {
        let doc = results.document(elapsed, options.jobs);
        if let Some(parent) = std::path::Path::new(path).parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(e) = std::fs::write(path, doc) {
            eprintln!("conformance: writing {path}: {e}");
            return ExitCode::from(1);
        }
        println!("wrote {path}");
    }
    let (passed, failed, skipped) = results.counts();
    println!(
        "conformance: {} s on {} jobs",
        elapsed.round(),
        options.jobs
    );
    if skipped > 0 {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("{passed} passed, {failed} failed");
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
