//! `crashwatch replay`: reads a journal export and lists the crash loops in it, with the journal
//! parser the start-up history uses and the detector the daemon uses, its clock moved by the
//! journal's timestamps.

use std::collections::HashMap;
use std::io::{self, BufRead};
use std::process::ExitCode;

use super::table::{columns, Align};
use super::{resolve_config, written};
use crate::cli::ReplayArgs;
use crate::config::{Config, Overrides};
use crate::detect::{Detector, LoopChange, Observation, Update};
use crate::event::{printable, LoopEvent, LoopOutcome, Micros, SourceKind};
use crate::source::journal::{read_line_capped, Parser, MAX_LINE};
use crate::time::format_timestamp;

/// `crashwatch replay`: the detector over a journal export, loops printed as a table or JSON
/// lines. Finding loops is not a failure; only unreadable input (exit 2) or output (exit 1) are.
pub fn run(args: ReplayArgs) -> ExitCode {
    use std::io::{BufRead, BufReader, Write};

    let overrides = Overrides {
        threshold: args.detection.threshold,
        window: args.detection.window,
        include: args.detection.include,
        exclude: args.detection.exclude,
        ..Overrides::default()
    };
    let config = match resolve_config(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let (input, name): (Box<dyn BufRead>, String) = if args.file == "-" {
        (
            Box::new(std::io::stdin().lock()),
            "standard input".to_owned(),
        )
    } else {
        match std::fs::File::open(&args.file) {
            Ok(f) => (Box::new(BufReader::new(f)), args.file.clone()),
            Err(e) => {
                crate::logging::fatal(&format_args!("cannot read {}: {e}", args.file));
                return ExitCode::from(2);
            }
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut output: std::io::Result<()> = Ok(());
    let report = replay(input, &config, |event| {
        if args.json && output.is_ok() {
            let event = crate::event::Event::Loop(event.clone());
            output = writeln!(out, "{}", crate::sink::events::to_json(&event));
        }
    });
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            crate::logging::fatal(&format_args!("cannot read {name}: {e}"));
            return ExitCode::from(2);
        }
    };
    if report.malformed > 0 {
        let (lines, were) = match report.malformed {
            1 => ("line", "was"),
            _ => ("lines", "were"),
        };
        crate::logging::warning(&format_args!(
            "skipped {} {lines} of {name} that {were} not journal entries",
            report.malformed
        ));
    }
    if output.is_ok() && !args.json {
        output = if report.loops.is_empty() {
            writeln!(
                out,
                "No crash loops in {} lifecycle messages.",
                report.lifecycle_messages
            )
        } else {
            out.write_all(loop_table(&report.loops).as_bytes())
        };
    }
    written(output.and_then(|()| out.flush()))
}

/// A crash loop found by [`replay`].
#[derive(Clone, Debug, PartialEq)]
pub struct FoundLoop {
    /// The unit.
    pub unit: String,
    /// When it was flagged.
    pub started: Micros,
    /// When and how it ended; `None` when still open at the end of the input.
    pub ended: Option<(Micros, LoopOutcome)>,
    /// Restarts within the window when it was flagged.
    pub restarts_in_window: u32,
    /// The most restarts within the window while it lasted.
    pub peak: u32,
}

/// What [`replay`] read and found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayReport {
    /// The loops, in the order they started.
    pub loops: Vec<FoundLoop>,
    /// Journal entries read.
    pub entries: u64,
    /// Lifecycle messages among them.
    pub lifecycle_messages: u64,
    /// Lines skipped as malformed.
    pub malformed: u64,
}

/// Runs the detector over a `journalctl -o json` export, with `config`'s unit filter, threshold,
/// window and overrides, moving its clock by the journal's timestamps. Calls `on_event` for each
/// loop start and end as it is found, and returns every loop. Fails only when `input` cannot be
/// read; malformed lines are counted.
pub fn replay(
    mut input: impl BufRead,
    config: &Config,
    mut on_event: impl FnMut(&LoopEvent),
) -> io::Result<ReplayReport> {
    let mut parser = Parser::new();
    let mut detector = Detector::new(config.policy, config.overrides.clone());
    let mut found = Found::default();
    let mut line = Vec::new();
    let mut transitions = Vec::new();
    while let Some(fits) = read_line_capped(&mut input, &mut line, MAX_LINE)? {
        if !fits {
            parser.skip_malformed();
            continue;
        }
        let Some(at) = parser.line(&line, &mut transitions) else {
            continue;
        };
        detector.advance_stepwise(at, |u| found.update(u, &mut on_event));
        for t in transitions.drain(..) {
            if !config.filter.allows(&t.unit) {
                continue;
            }
            let Some(observation) = Observation::of(&t) else {
                continue;
            };
            if let Some(update) = detector.observe(&t.unit, observation, t.timestamp) {
                found.update(update, &mut on_event);
            }
        }
    }
    parser.finish();
    Ok(ReplayReport {
        loops: found.loops,
        entries: parser.entries(),
        lifecycle_messages: parser.lifecycle_messages(),
        malformed: parser.malformed(),
    })
}

/// The loops of a replay, open ones by unit.
#[derive(Default)]
struct Found {
    loops: Vec<FoundLoop>,
    open: HashMap<String, usize>,
}

impl Found {
    fn update(&mut self, update: Update, on_event: &mut impl FnMut(&LoopEvent)) {
        let open = self.open.get(&update.unit).copied();
        match (update.loop_change, open) {
            // With a threshold of one a loop can end and start again in one step; one row.
            (Some(LoopChange::Started), None) => {
                self.open.insert(update.unit.clone(), self.loops.len());
                self.loops.push(FoundLoop {
                    unit: update.unit.clone(),
                    started: update.at,
                    ended: None,
                    restarts_in_window: update.restarts_in_window,
                    peak: update.restarts_in_window,
                });
                if let Some(event) = update.loop_event(SourceKind::Systemd) {
                    on_event(&event);
                }
            }
            (Some(LoopChange::Ended(outcome)), Some(i)) => {
                self.open.remove(&update.unit);
                if let Some(found) = self.loops.get_mut(i) {
                    found.ended = Some((update.at, outcome));
                }
                if let Some(event) = update.loop_event(SourceKind::Systemd) {
                    on_event(&event);
                }
            }
            (_, Some(i)) => {
                if let Some(found) = self.loops.get_mut(i) {
                    found.peak = found.peak.max(update.restarts_in_window);
                }
            }
            _ => {}
        }
    }
}

/// The loops as a table, one row each: unit, when flagged and when ended (UTC), how it ended
/// (`open` when still looping at the end of the input), restarts within the window when
/// flagged, and the most within the window while it lasted.
pub fn loop_table(loops: &[FoundLoop]) -> String {
    let header = ["UNIT", "STARTED", "ENDED", "OUTCOME", "RESTARTS", "PEAK"];
    let rows: Vec<[String; 6]> = loops
        .iter()
        .map(|l| {
            let (ended, outcome) = match l.ended {
                Some((at, outcome)) => (format_timestamp(at), outcome.as_str().to_owned()),
                None => ("-".to_owned(), "open".to_owned()),
            };
            [
                printable(&l.unit),
                format_timestamp(l.started),
                ended,
                outcome,
                l.restarts_in_window.to_string(),
                l.peak.to_string(),
            ]
        })
        .collect();
    columns(
        header,
        &rows,
        [
            Align::Left,
            Align::Left,
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Right,
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_file;
    use crate::event::{ExitCause, ExitCode, RestartCause, Transition, TransitionKind};
    use crate::source::journal::parser::tests::{
        failing_run, kinds, line, parse, started, SECOND, T0,
    };
    use crate::source::journal::parser::*;

    fn config(text: &str) -> Config {
        let file = parse_file(text, std::path::Path::new("test.toml")).expect("valid TOML");
        Config::resolve(file, Overrides::default(), "test.toml").expect("valid config")
    }

    fn replay_lines(lines: &[String], config: &Config) -> (ReplayReport, Vec<LoopEvent>) {
        let input = lines.join("\n");
        let mut events = Vec::new();
        let report = replay(input.as_bytes(), config, |e| events.push(e.clone())).expect("replay");
        (report, events)
    }

    #[test]
    fn a_restart_always_loop_is_crashes_and_automatic_restarts() {
        let mut lines = Vec::new();
        for run in 0..4u32 {
            let start = T0 + u64::from(run) * 250_000;
            lines.extend(failing_run(
                "crashy.service",
                start,
                &format!("inv{run}"),
                run + 1,
            ));
        }
        // The operator stops it while it waits for the fifth start.
        lines.push(line(
            T0 + 1_100_000,
            UNIT_STOPPED,
            "crashy.service",
            "inv3",
            &[("JOB_TYPE", "stop"), ("JOB_RESULT", "done")],
        ));
        let (out, parser) = parse(&lines);
        assert_eq!(parser.malformed(), 0);
        assert_eq!(parser.lifecycle_messages(), 21);

        use TransitionKind::*;
        let mut expected = vec![(Starting, false), (Started, false), (Failed, true)];
        for _ in 1..4 {
            expected.extend([
                (Restart, false),
                (Starting, false),
                (Started, false),
                (Failed, true),
            ]);
        }
        expected.push((Stopped, false));
        assert_eq!(kinds(&out), expected);

        let crash = &out[2];
        assert_eq!(crash.crash.as_deref(), Some("exit-code"));
        assert_eq!(crash.result.as_deref(), Some("exit-code"));
        assert_eq!(
            crash.exit,
            Some(ExitCause {
                code: ExitCode::Exited,
                status: 1
            })
        );
        assert_eq!(
            crash.timestamp,
            T0 + 2_000,
            "stamped with the main process's exit"
        );
        assert_eq!(crash.invocation_id.as_deref(), Some("inv0"));
        let restarts: Vec<&Transition> = out.iter().filter(|t| t.kind == Restart).collect();
        assert_eq!(restarts.len(), 3);
        for (i, restart) in restarts.iter().enumerate() {
            assert_eq!(restart.restart_cause, Some(RestartCause::Automatic));
            assert_eq!(restart.n_restarts, Some(i as u32 + 1));
            assert_eq!(
                restart.invocation_id.as_deref(),
                Some(format!("inv{}", i + 1).as_str())
            );
        }
        assert!(out
            .iter()
            .all(|t| t.unit == "crashy.service" && t.source == SourceKind::Systemd));

        // The detector flags the loop at the third restart; the stop ends it.
        let (report, events) = replay_lines(&lines, &config(""));
        assert_eq!(report.loops.len(), 1, "{report:?}");
        let found = &report.loops[0];
        assert_eq!(found.unit, "crashy.service");
        assert_eq!(found.started, T0 + 750_000);
        assert_eq!(found.ended, Some((T0 + 1_100_000, LoopOutcome::Stopped)));
        assert_eq!((found.restarts_in_window, found.peak), (3, 3));
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].ended, None);
        assert_eq!(events[0].threshold, 3);
        assert_eq!(events[1].ended, Some(LoopOutcome::Stopped));
    }

    #[test]
    fn an_outside_driven_loop_counts_restarts_whoever_started_them() {
        // Restart=no; a keepalive script starts it again after every failure. systemd schedules
        // nothing, so NRestarts stays 0, but each start after a crash is a restart.
        let unit = "keepalive.service";
        let mut lines = Vec::new();
        for run in 0..4u64 {
            let start = T0 + run * 30 * SECOND;
            let inv = format!("run{run}");
            lines.push(line(
                start,
                UNIT_STARTING,
                unit,
                &inv,
                &[("JOB_TYPE", "start")],
            ));
            lines.push(started(start + 10, unit, &inv));
            lines.push(line(
                start + 5 * SECOND,
                UNIT_PROCESS_EXITED,
                unit,
                &inv,
                &[
                    ("COMMAND", "ExecStart"),
                    ("EXIT_CODE", "killed"),
                    ("EXIT_STATUS", "SEGV"),
                ],
            ));
            lines.push(line(
                start + 5 * SECOND + 100,
                UNIT_FAILED,
                unit,
                &inv,
                &[("UNIT_RESULT", "signal")],
            ));
        }
        let (out, _) = parse(&lines);
        let restarts: Vec<&Transition> = out
            .iter()
            .filter(|t| t.kind == TransitionKind::Restart)
            .collect();
        assert_eq!(restarts.len(), 3);
        assert!(restarts
            .iter()
            .all(|t| t.restart_cause == Some(RestartCause::External)));
        assert!(restarts.iter().all(|t| t.n_restarts.is_none()));
        let crashes: Vec<&Transition> = out.iter().filter(|t| t.crash.is_some()).collect();
        assert_eq!(crashes.len(), 4);
        assert_eq!(crashes[0].crash.as_deref(), Some("signal"));
        assert_eq!(
            crashes[0].exit,
            Some(ExitCause {
                code: ExitCode::Killed,
                status: 11
            })
        );
        // Each restart comes before its run's Starting, as the live tracker reports them.
        let order: Vec<TransitionKind> = out.iter().map(|t| t.kind).take(7).collect();
        use TransitionKind::*;
        assert_eq!(
            order,
            [Starting, Started, Failed, Restart, Starting, Started, Failed]
        );

        let (report, _) = replay_lines(&lines, &config(""));
        assert_eq!(report.loops.len(), 1);
        assert_eq!(report.loops[0].started, T0 + 90 * SECOND);
        // Down since its last crash, then nothing for a window: still open at the end of input.
        assert_eq!(report.loops[0].ended, None);
    }

    #[test]
    fn a_clean_restart_is_no_crash_and_no_restart() {
        // `systemctl restart steady.service`, as systemd 252 writes it.
        let unit = "steady.service";
        let lines = vec![
            started(T0, unit, "a"),
            line(
                T0 + SECOND,
                UNIT_STOPPING,
                unit,
                "a",
                &[("JOB_TYPE", "stop")],
            ),
            line(T0 + SECOND + 500, UNIT_SUCCEEDED, unit, "a", &[]),
            line(
                T0 + SECOND + 700,
                UNIT_STOPPED,
                unit,
                "a",
                &[("JOB_TYPE", "restart"), ("JOB_RESULT", "done")],
            ),
            started(T0 + SECOND + 1_800, unit, "b"),
        ];
        let mut all = Vec::new();
        for i in 0..5 {
            // Restarted by hand five times in a row: never a loop.
            all.extend(lines.iter().map(|l| {
                l.replace("\"a\"", &format!("\"a{i}\""))
                    .replace("\"b\"", &format!("\"b{i}\""))
            }));
        }
        let (out, _) = parse(&lines);
        use TransitionKind::*;
        assert_eq!(
            kinds(&out),
            [
                (Starting, false),
                (Started, false),
                (Stopping, false),
                (Stopped, false),
                (Starting, false),
                (Started, false)
            ]
        );
        let (report, _) = replay_lines(&all, &config("[detect]\nthreshold = 1\n"));
        assert!(report.loops.is_empty(), "{report:?}");
    }

    #[test]
    fn the_start_limit_is_systemd_giving_up() {
        let unit = "limited.service";
        let mut lines = Vec::new();
        for run in 0..4u32 {
            lines.extend(failing_run(
                unit,
                T0 + u64::from(run) * 250_000,
                &format!("l{run}"),
                run + 1,
            ));
        }
        // After the fourth scheduled restart systemd refuses: the same run fails again.
        lines.push(line(
            T0 + 1_050_000,
            UNIT_FAILED,
            unit,
            "l3",
            &[("UNIT_RESULT", "exit-code")],
        ));
        lines.push(line(
            T0 + 1_050_100,
            UNIT_START_FAILED,
            unit,
            "l3",
            &[("JOB_TYPE", "start"), ("JOB_RESULT", "failed")],
        ));
        let (out, _) = parse(&lines);
        let last = out.last().expect("transitions");
        assert_eq!(last.kind, TransitionKind::Failed);
        assert!(last.gave_up && last.crash.is_none());
        assert_eq!(out.iter().filter(|t| t.gave_up).count(), 1, "once");
        assert_eq!(out.iter().filter(|t| t.crash.is_some()).count(), 4);

        let (report, _) = replay_lines(&lines, &config(""));
        assert_eq!(report.loops.len(), 1);
        assert_eq!(
            report.loops[0].ended,
            Some((T0 + 1_050_000, LoopOutcome::GaveUp))
        );
    }

    #[test]
    fn malformed_lines_are_counted_and_skipped_never_fatal() {
        let good = failing_run("crashy.service", T0, "x", 1);
        let long = format!("{{\"MESSAGE\":\"{}\"}}", "a".repeat(MAX_LINE));
        let input = [
            "not json at all",
            "[1, 2, 3]",
            "{\"MESSAGE_ID\": \"39f53479d3a045ac8e11786248231fbf\", \"UNIT\": \"x.service\"}",
            "{\"__REALTIME_TIMESTAMP\": \"soon\"}",
            "{\"__REALTIME_TIMESTAMP\": ",
            "",
            "   ",
            "\u{0}\u{1}\u{ff}",
            &long,
            &good.join("\n"),
            "{\"__REALTIME_TIMESTAMP\": \"1\", \"MESSAGE_ID\": 7, \"UNIT\": null}",
        ]
        .join("\n");
        let mut events = Vec::new();
        let report =
            replay(input.as_bytes(), &config(""), |e| events.push(e.clone())).expect("replay");
        assert_eq!(report.malformed, 7, "blank lines are not malformed");
        assert_eq!(report.lifecycle_messages, 5);
        assert_eq!(report.entries, 6);

        // Binary fields and fields set twice, as journalctl prints them.
        let mut parser = Parser::new();
        let mut out = Vec::new();
        let odd = serde_json::json!({
            "__REALTIME_TIMESTAMP": T0.to_string(),
            "_PID": ["1"],
            "MESSAGE_ID": UNIT_STARTED.bytes().collect::<Vec<u8>>(),
            "UNIT": ["weird\u{1b}.service", "second.service"],
            "INVOCATION_ID": [[0x61, 0xff]],
        });
        assert_eq!(parser.line(odd.to_string().as_bytes(), &mut out), Some(T0));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].unit, "weird\u{1b}.service");
        assert_eq!(out[0].invocation_id.as_deref(), Some("a\u{fffd}"));
        assert_eq!(parser.malformed(), 0);
    }

    #[test]
    fn replay_honours_the_unit_filter_and_overrides() {
        let mut lines = Vec::new();
        for run in 0..4u32 {
            let start = T0 + u64::from(run) * SECOND;
            lines.extend(failing_run("a.service", start, &format!("a{run}"), run + 1));
            lines.extend(failing_run(
                "b.service",
                start + 1_000,
                &format!("b{run}"),
                run + 1,
            ));
        }
        let (report, _) = replay_lines(
            &lines,
            &config("[source.systemd]\nunit_exclude = [\"b*\"]\n"),
        );
        assert_eq!(
            report
                .loops
                .iter()
                .map(|l| l.unit.as_str())
                .collect::<Vec<_>>(),
            ["a.service"]
        );
        let (report, _) = replay_lines(
            &lines,
            &config("[[detect.override]]\nunits = \"a*\"\nthreshold = 10\n"),
        );
        assert_eq!(
            report
                .loops
                .iter()
                .map(|l| l.unit.as_str())
                .collect::<Vec<_>>(),
            ["b.service"]
        );
    }

    #[test]
    fn a_loop_that_recovers_ends_when_it_was_due() {
        let mut lines = Vec::new();
        for run in 0..4u32 {
            lines.extend(failing_run(
                "flaky.service",
                T0 + u64::from(run) * SECOND,
                &format!("f{run}"),
                run + 1,
            ));
        }
        // The fifth run stays up; much later another unit logs something.
        lines.push(started(T0 + 4 * SECOND, "flaky.service", "f4"));
        lines.push(started(T0 + 3_600 * SECOND, "other.service", "o"));
        let (report, _) = replay_lines(&lines, &config("[detect]\nwindow = \"1m\"\n"));
        assert_eq!(report.loops.len(), 1);
        let found = &report.loops[0];
        assert_eq!(
            found.ended,
            Some((T0 + 4 * SECOND + 60 * SECOND, LoopOutcome::Recovered))
        );
        assert_eq!(found.peak, 4);

        let table = loop_table(&report.loops);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].starts_with("UNIT           STARTED"), "{table}");
        assert_eq!(
            rows[1],
            "flaky.service  2026-11-21T06:50:55.000Z  2026-11-21T06:51:56.000Z  recovered         3     4"
        );
    }
}
