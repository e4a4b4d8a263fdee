//! `crashwatch check-config`: validates a configuration file as the daemon would read it.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, Overrides};

pub fn run(file: &Path) -> ExitCode {
    let origin = file.display().to_string();
    match Config::load(file).and_then(|f| Config::resolve(f, Overrides::default(), &origin)) {
        Ok(_) => {
            println!("{origin}: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::logging::fatal(&e);
            ExitCode::from(2)
        }
    }
}
