//! `crashwatch replay`: reads a journal export and lists the crash loops in it.

use std::process::ExitCode;

use super::{resolve_config, written};
use crate::cli::ReplayArgs;
use crate::config::Overrides;

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
                eprintln!("crashwatch: cannot read {}: {e}", args.file);
                return ExitCode::from(2);
            }
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut output: std::io::Result<()> = Ok(());
    let report = crate::source::journal::replay(input, &config, |event| {
        if args.json && output.is_ok() {
            let event = crate::event::Event::Loop(event.clone());
            output = writeln!(out, "{}", crate::sink::events::to_json(&event));
        }
    });
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("crashwatch: cannot read {name}: {e}");
            return ExitCode::from(2);
        }
    };
    if report.malformed > 0 {
        let (lines, were) = match report.malformed {
            1 => ("line", "was"),
            _ => ("lines", "were"),
        };
        eprintln!(
            "crashwatch: skipped {} {lines} of {name} that {were} not journal entries",
            report.malformed
        );
    }
    if output.is_ok() && !args.json {
        output = if report.loops.is_empty() {
            writeln!(
                out,
                "No crash loops in {} lifecycle messages.",
                report.lifecycle_messages
            )
        } else {
            out.write_all(crate::source::journal::loop_table(&report.loops).as_bytes())
        };
    }
    written(output.and_then(|()| out.flush()))
}
