//! The commands of the `crashwatch` binary, the daemon (`run`) among them: each a thin user of
//! the library that reads its arguments, does one thing and says how it went in its exit code,
//! with any failure as one line on stderr (exit 2 for bad usage or a bad configuration, 1 for
//! anything else).

pub mod check_config;
pub mod man;
pub mod replay;
pub mod run;
pub mod status;
pub mod table;
pub mod upstart_hook;

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, FileConfig, Overrides};

/// Where the package installs the configuration file.
const PACKAGED_CONFIG: &str = "/etc/crashwatch/crashwatch.toml";

/// Reads the configuration file, if any, and applies the command line over it. A bad file or
/// value is one line on stderr and exit 2.
/// The configuration from `path` (or the defaults) with the command line's overrides; a bad
/// file is said on stderr and gives exit 2.
fn resolve_config(path: Option<&Path>, overrides: Overrides) -> Result<Config, ExitCode> {
    let (file, origin) = match path {
        Some(path) => match Config::load(path) {
            Ok(file) => (file, path.display().to_string()),
            Err(e) => {
                crate::logging::fatal(&e);
                return Err(ExitCode::from(2));
            }
        },
        None => (FileConfig::default(), "command line".to_owned()),
    };
    Config::resolve(file, overrides, &origin).map_err(|e| {
        crate::logging::fatal(&e);
        ExitCode::from(2)
    })
}

/// Writes a command's output to stdout. A reader that went away (`| head`) is no failure.
fn write_stdout(text: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => written(Err(e)),
    }
}

/// The exit code for how writing the output went.
fn written(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            crate::logging::fatal(&format_args!("writing the output: {e}"));
            ExitCode::FAILURE
        }
    }
}
