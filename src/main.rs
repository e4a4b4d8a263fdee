//! The crashwatch binary: parses the command line, sets up logging and hands over to the command
//! (src/commands/). Every failure ends as one line on stderr: exit 2 for bad usage or a bad
//! configuration, 1 for anything else.

use std::process::ExitCode;
use std::str::FromStr;

use clap::Parser;

use crashwatch::cli::{Cli, Command};
use crashwatch::commands;
use crashwatch::logging::{self, LogFormat, Output};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match LogFormat::from_str(&cli.log_format) {
        Ok(format) => format,
        Err(e) => {
            eprintln!("crashwatch: {e}");
            return ExitCode::from(2);
        }
    };
    let output = Output::detect(format);
    let level = match cli.log_level.as_deref().map(tracing::Level::from_str) {
        None => None,
        Some(Ok(level)) => Some(level),
        Some(Err(_)) => {
            output.fatal(&format_args!(
                "--log-level {:?} is not one of error, warn, info, debug, trace",
                cli.log_level.unwrap_or_default()
            ));
            return ExitCode::from(2);
        }
    };
    logging::init(output, level);

    match cli.command {
        Command::CheckConfig { file } => commands::check_config::run(&file),
        Command::Run(args) => commands::run::run(args),
        Command::UpstartHook(args) => commands::upstart_hook::run(args),
        Command::Replay(args) => commands::replay::run(args),
        Command::Status(args) => commands::status::run(args),
        Command::Man { out_dir, date } => commands::man::run(&out_dir, &date),
    }
}
