//! The systemd versions the matrix runs, and how a sandbox of one is started: the harness's own
//! (tests/support: `SystemdVersion`, `Sandbox::start_version_with_journal`), with journald,
//! because every case is replayed from the journal afterwards.

use crate::support::{systemd_version_prerequisites, Sandbox};

pub use crate::support::SystemdVersion;

/// Why this machine cannot run `version` (its files were not fetched), or Ok.
pub fn available(version: SystemdVersion) -> Result<(), String> {
    systemd_version_prerequisites(version)
}

/// A sandbox whose PID 1 is systemd `version`, with journald running in it.
pub fn start(version: SystemdVersion) -> Result<Sandbox, String> {
    Sandbox::start_version_with_journal(version)
}

/// The version as a number, for "needs at least" comparisons.
pub fn number(version: SystemdVersion) -> u32 {
    version.as_str().parse().unwrap_or(0)
}
