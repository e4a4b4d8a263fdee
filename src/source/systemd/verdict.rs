//! What a run's end, a start and systemd's refusal mean: the rules that both readers of systemd
//! apply, the live [`tracker`](super::tracker) (D-Bus properties) and the
//! [`journal`](crate::source::journal) parser (lifecycle messages), so the two cannot drift apart.
//!
//! The adapters differ only in how they learn the facts: the tracker from `ActiveState`,
//! `SubState`, the `Job` property and `Result`; the journal from "Unit failed", "Unit succeeded",
//! "Scheduled restart job", "Stopping" and `UNIT_RESULT`. What the facts mean is decided here.
//!
//! - A run that ends is a **crash** when nobody asked it to stop: it failed, or its main process
//!   exited and systemd scheduled an automatic restart. Under `Restart=always` a clean exit
//!   (`Result=success`) is a crash too: the service does not stay down, so it is looping.
//! - A run that ended cleanly with nothing known yet is **undecided**: systemd says whether it
//!   restarts it only after the end itself (252 passes through `inactive/dead` first; the
//!   journal writes "Unit succeeded" before "Scheduled restart job"). Its sequel decides.
//! - A stop that someone asked for (a stop or restart job) is never a crash, however the
//!   process ended.
//! - A **restart** is a start that follows a crash, whoever made it: automatic when systemd
//!   scheduled it, external otherwise (an operator, a cron job, a keepalive script).
//! - systemd **gave up** when a run fails after the restart was scheduled and no new run came
//!   (the start limit refused it), or when it says `start-limit-hit`.

use crate::event::RestartCause;

/// How a run went down, as far as the reader can tell at that moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The unit entered `failed` ("Unit failed").
    Failed,
    /// The unit went down without failing; `result_ok` when systemd's Result is `success`.
    Exited {
        /// Result reads success (or is not known).
        result_ok: bool,
    },
    /// systemd scheduled an automatic restart (`auto-restart`, "Scheduled restart job").
    RestartScheduled,
}

/// What an ending means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody asked for it: a crash, with its reason (systemd's Result).
    Crash(String),
    /// A stop someone asked for, or a clean end that systemd does not follow with a restart.
    Stop,
    /// A clean exit whose sequel decides: see [`Sequel`].
    AwaitSequel,
}

/// What came after an undecided end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sequel {
    /// systemd scheduled an automatic restart: the clean exit was no stop anyone asked for.
    RestartScheduled,
    /// Anything else: a new run from outside, a stop job finishing, silence.
    Other,
}

/// The reason given for a crash when systemd named none.
pub const UNKNOWN_REASON: &str = "unknown";

/// Judges how a run went down. `result` is systemd's Result (`success`, `exit-code`, ...);
/// `stop_requested` whether a stop or restart job was on the unit when it went down.
pub fn judge(ending: Ending, result: Option<&str>, stop_requested: bool) -> Verdict {
    if stop_requested {
        return Verdict::Stop;
    }
    let reason = || {
        result
            .filter(|r| !r.is_empty())
            .unwrap_or(UNKNOWN_REASON)
            .to_owned()
    };
    match ending {
        Ending::Failed | Ending::RestartScheduled => Verdict::Crash(reason()),
        Ending::Exited { result_ok: false } => Verdict::Crash(reason()),
        Ending::Exited { result_ok: true } => Verdict::AwaitSequel,
    }
}

/// Decides an undecided end from what followed it.
pub fn decide(sequel: Sequel) -> Verdict {
    match sequel {
        // Restart=always restarts after a clean exit too.
        Sequel::RestartScheduled => Verdict::Crash("success".to_owned()),
        Sequel::Other => Verdict::Stop,
    }
}

/// Whether a failure means systemd will not restart the unit by itself any more.
/// `restart_scheduled`: a restart was scheduled after the last crash and no run came of it.
pub fn gave_up(restart_scheduled: bool, result: Option<&str>) -> bool {
    restart_scheduled || result == Some("start-limit-hit")
}

/// Who made a restart: systemd when it scheduled one since the crash, anyone else otherwise.
pub fn restart_cause(scheduled_by_systemd: bool) -> RestartCause {
    if scheduled_by_systemd {
        RestartCause::Automatic
    } else {
        RestartCause::External
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_asked_for_is_never_a_crash() {
        for ending in [
            Ending::Failed,
            Ending::Exited { result_ok: false },
            Ending::RestartScheduled,
        ] {
            assert_eq!(judge(ending, Some("exit-code"), true), Verdict::Stop);
        }
    }

    #[test]
    fn failures_and_scheduled_restarts_are_crashes_with_systemds_reason() {
        assert_eq!(
            judge(Ending::Failed, Some("signal"), false),
            Verdict::Crash("signal".into())
        );
        assert_eq!(
            judge(Ending::RestartScheduled, None, false),
            Verdict::Crash(UNKNOWN_REASON.into())
        );
        assert_eq!(
            judge(Ending::Exited { result_ok: false }, Some("timeout"), false),
            Verdict::Crash("timeout".into())
        );
    }

    #[test]
    fn a_clean_exit_waits_for_what_systemd_does_next() {
        assert_eq!(
            judge(Ending::Exited { result_ok: true }, Some("success"), false),
            Verdict::AwaitSequel
        );
        assert_eq!(
            decide(Sequel::RestartScheduled),
            Verdict::Crash("success".into())
        );
        assert_eq!(decide(Sequel::Other), Verdict::Stop);
    }

    #[test]
    fn giving_up_and_restart_causes() {
        assert!(gave_up(true, Some("exit-code")));
        assert!(gave_up(false, Some("start-limit-hit")));
        assert!(!gave_up(false, Some("exit-code")));
        assert_eq!(restart_cause(true), RestartCause::Automatic);
        assert_eq!(restart_cause(false), RestartCause::External);
    }
}
