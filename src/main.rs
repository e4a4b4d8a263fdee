//! The crashwatch binary: parses the command line, sets up logging and hands over to the command
//! (src/commands/). Every failure ends as one line on stderr: exit 2 for bad usage or a bad
//! configuration, 1 for anything else.

use std::process::ExitCode;
use std::str::FromStr;

use clap::Parser;

use crashwatch::cli::{Cli, Command};
use crashwatch::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match tracing::Level::from_str(&cli.log_level) {
        Ok(level) => level,
        Err(_) => {
            eprintln!(
                "crashwatch: --log-level {:?} is not one of error, warn, info, debug, trace",
                cli.log_level
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();

    match cli.command {
        Command::CheckConfig { file } => commands::check_config::run(&file),
        Command::Run(args) => commands::run::run(args),
        Command::UpstartHook(args) => commands::upstart_hook::run(args),
        Command::Replay(args) => commands::replay::run(args),
        Command::Status(args) => commands::status::run(args),
        Command::Man { out_dir, date } => commands::man::run(&out_dir, &date),
    }
}
