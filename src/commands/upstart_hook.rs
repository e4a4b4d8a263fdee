//! `crashwatch upstart-hook`: run by an Upstart job's hooks, hands the job's event to the daemon.

use std::process::ExitCode;

use crate::cli::UpstartHookArgs;

/// `crashwatch upstart-hook`: one datagram to the daemon, then exit. Upstart holds the job's
/// `starting` and `stopping` events until the hook runs, so it starts no runtime and sends with a
/// short timeout.
pub fn run(args: UpstartHookArgs) -> ExitCode {
    use crate::source::upstart::hook::{self, HookError};
    let socket = args
        .socket
        .unwrap_or_else(|| std::path::PathBuf::from(hook::DEFAULT_SOCKET));
    match hook::send_from_env(&socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ HookError::Environment(_)) => {
            crate::logging::fatal(&e);
            ExitCode::from(2)
        }
        Err(e) => {
            crate::logging::fatal(&e);
            ExitCode::FAILURE
        }
    }
}
