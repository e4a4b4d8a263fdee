//! `crashwatch check-config`: validates a configuration file as the daemon would read it,
//! with the web configuration file it names (its certificates, keys and password hashes too).
//! Says only that each file is valid, or the one problem, never a secret.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, Overrides};

pub fn run(file: &Path) -> ExitCode {
    let origin = file.display().to_string();
    match Config::load(file).and_then(|f| Config::resolve(f, Overrides::default(), &origin)) {
        Ok(config) => {
            println!("{origin}: ok");
            if let Some(web) = &config.web.config_file {
                let serving = if config.web.tls { "TLS" } else { "plain HTTP" };
                println!("{}: ok ({serving})", web.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::logging::fatal(&e);
            ExitCode::from(2)
        }
    }
}
