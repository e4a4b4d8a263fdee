//! The start-up read of the journal: journalctl, bounded in time and size, asked for PID 1's
//! lifecycle messages of the last two windows, newest first, and parsed into [`History`].

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::parser::{Parser, LIFECYCLE_MESSAGE_IDS};
use crate::event::History;
use crate::glob::UnitFilter;
use crate::internal_events::JournalReadError;
use crate::time::Micros;

/// The most journalctl output read at start-up. Entries are read newest first, so beyond it
/// only the oldest are lost.
pub const HISTORY_MAX_BYTES: usize = 32 << 20;

/// How long the start-up read may take before journalctl is killed and history skipped.
pub const HISTORY_TIMEOUT: Duration = Duration::from_secs(10);

/// The fields the parser reads, so journalctl sends nothing else (`--output-fields`). The cursor
/// and `__REALTIME_TIMESTAMP` always come.
const FIELDS: &str = "MESSAGE_ID,UNIT,USER_UNIT,INVOCATION_ID,UNIT_RESULT,EXIT_CODE,EXIT_STATUS,\
COMMAND,N_RESTARTS,JOB_TYPE,JOB_RESULT,_PID,_UID,_SOURCE_REALTIME_TIMESTAMP";

/// Why the journal could not be read at start-up. Never fatal: crashwatch starts without history.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// journalctl could not be started.
    #[error("cannot run journalctl: {0}")]
    Spawn(io::Error),
    /// journalctl's output could not be read.
    #[error("reading journalctl's output: {0}")]
    Read(io::Error),
    /// journalctl took longer than allowed and was killed.
    #[error("journalctl did not finish within {}s", .0.as_secs())]
    Timeout(Duration),
    /// journalctl failed.
    #[error("journalctl failed ({status}): {message}")]
    Failed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The first line it wrote to stderr.
        message: String,
    },
}

/// What to read at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    /// A journal directory (`journalctl --directory`); `None` for the system journal.
    pub directory: Option<PathBuf>,
    /// The oldest entries wanted (µs since the epoch; journalctl is asked from the second before).
    pub since: Micros,
    /// Entries at or after this are ignored: the live snapshot covers them.
    pub until: Micros,
}

impl HistoryQuery {
    /// journalctl's arguments: JSON, newest first (so a size limit loses only the oldest), only
    /// PID 1's lifecycle messages, only the fields the parser reads. No unit name is passed: the
    /// filter is applied afterwards, so nothing from outside reaches the command line.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--output=json".to_owned(),
            "--no-pager".to_owned(),
            "--quiet".to_owned(),
            "--reverse".to_owned(),
            format!("--since=@{}", self.since / 1_000_000),
            format!("--output-fields={FIELDS}"),
        ];
        if let Some(directory) = &self.directory {
            args.push(format!("--directory={}", directory.display()));
        }
        // Matches on different fields are ANDed, on the same field ORed (journalctl(1)).
        args.push("_PID=1".to_owned());
        args.extend(
            LIFECYCLE_MESSAGE_IDS
                .iter()
                .map(|id| format!("MESSAGE_ID={id}")),
        );
        args
    }
}

/// What a bounded run of a command produced.
pub(super) struct Bounded {
    pub(super) stdout: Vec<u8>,
    pub(super) truncated: bool,
}

/// Runs `command` (argv only, no shell) with stdin closed, reading at most `max_bytes` of its
/// output within `timeout`; a command that overruns either is killed. Only this child is ever
/// signalled, by its own handle (`kill_on_drop` covers every early return).
pub(super) async fn run_bounded(
    mut command: Command,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Bounded, JournalError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(JournalError::Spawn)?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(JournalError::Spawn(io::Error::other(
            "no pipes to the child",
        )));
    };
    let limit = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    // stderr is read on its own: a child that fills stdout past the cap is killed before it
    // would close stderr.
    let stderr = tokio::spawn(async move {
        let mut err = Vec::new();
        let _ = stderr.take(4096).read_to_end(&mut err).await;
        err
    });
    let run = async {
        let mut out = Vec::new();
        stdout
            .take(limit)
            .read_to_end(&mut out)
            .await
            .map_err(JournalError::Read)?;
        let truncated = out.len() > max_bytes;
        if truncated {
            out.truncate(max_bytes);
            // Enough read: the rest is older entries.
            let _ = child.start_kill();
        }
        let status = child.wait().await.map_err(JournalError::Read)?;
        if !status.success() && !truncated {
            let err = stderr.await.unwrap_or_default();
            let message = String::from_utf8_lossy(&err)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no message")
                .to_owned();
            return Err(JournalError::Failed { status, message });
        }
        Ok(Bounded {
            stdout: out,
            truncated,
        })
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| JournalError::Timeout(timeout))?
}

/// Runs journalctl for `query` and parses what it prints, oldest first. Bounded by
/// [`HISTORY_TIMEOUT`] and [`HISTORY_MAX_BYTES`].
pub async fn read_history(query: &HistoryQuery) -> Result<History, JournalError> {
    let mut command = Command::new("journalctl");
    command.args(query.args());
    let output = run_bounded(command, HISTORY_TIMEOUT, HISTORY_MAX_BYTES).await?;
    let until = query.until;
    // Parsing up to HISTORY_MAX_BYTES of JSON is CPU work: off the runtime's thread.
    tokio::task::spawn_blocking(move || parse(output, until))
        .await
        .map_err(|join| JournalError::Read(io::Error::other(join.to_string())))
}

/// journalctl's output, newest first, as history in time order.
fn parse(output: Bounded, until: Micros) -> History {
    if output.truncated {
        tracing::warn!(
            bytes = HISTORY_MAX_BYTES,
            "The journal holds more history than crashwatch reads; the oldest entries are left out."
        );
    }
    let mut lines: Vec<&[u8]> = output.stdout.split(|&b| b == b'\n').collect();
    if output.truncated {
        // Cut in the middle of an entry.
        lines.pop();
    }
    let mut parser = Parser::until(until);
    let mut transitions = Vec::new();
    for line in lines.into_iter().rev() {
        parser.line(line, &mut transitions);
    }
    parser.finish();
    if parser.malformed() > 0 {
        tracing::warn!(
            lines = parser.malformed(),
            "Skipped journal lines that were not JSON entries."
        );
    }
    // A clean exit is judged after later messages; put it back at its own time.
    transitions.sort_by_key(|t| t.timestamp);
    History { transitions, until }
}

/// What to read at start-up, from the configuration.
#[derive(Clone, Debug)]
pub struct HistorySettings {
    /// Whether to read history at all (`[history] journal`).
    pub enabled: bool,
    /// A journal directory to read instead of the system journal.
    pub directory: Option<PathBuf>,
    /// How far back to read: twice the longest window, since the crash before the oldest restart
    /// in a window is needed to count that restart, and a loop that began before the window may
    /// still be open.
    pub span: Duration,
    /// The units watched; history of the others is dropped.
    pub filter: UnitFilter,
}

/// The start-up history, or none: when it is turned off, when there is no journal (no directory
/// set and journald not running here), or when reading it fails (counted and logged).
/// `snapshot_at` is taken before the live snapshot: entries at or after it are left to the live
/// source.
pub async fn history(settings: &HistorySettings, snapshot_at: Micros) -> History {
    let empty = History {
        transitions: Vec::new(),
        until: snapshot_at,
    };
    if !settings.enabled {
        return empty;
    }
    let directory = settings.directory.clone();
    if !super::journal_present(directory.as_deref()) {
        tracing::info!("journald is not running; crash-loop windows start empty.");
        return empty;
    }
    let span = u64::try_from(settings.span.as_micros()).unwrap_or(u64::MAX);
    let query = HistoryQuery {
        directory,
        since: snapshot_at.saturating_sub(span),
        until: snapshot_at,
    };
    let mut history = match read_history(&query).await {
        Ok(history) => history,
        Err(error) => {
            JournalReadError {
                error: &error.to_string(),
            }
            .emit();
            return empty;
        }
    };
    history
        .transitions
        .retain(|t| settings.filter.allows(&t.unit));
    tracing::info!(
        transitions = history.transitions.len(),
        "Read the recent history of the watched units from the journal."
    );
    history
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::journal::parser::tests::{SECOND, T0};

    #[test]
    fn the_query_asks_pid_1_for_lifecycle_messages_only() {
        let query = HistoryQuery {
            directory: Some(PathBuf::from("/run/log/journal")),
            since: T0,
            until: T0 + 600 * SECOND,
        };
        let args = query.args();
        assert!(args.contains(&"--output=json".to_owned()));
        assert!(args.contains(&"--reverse".to_owned()));
        assert!(args.contains(&"--directory=/run/log/journal".to_owned()));
        assert!(args.contains(&format!("--since=@{}", T0 / SECOND)));
        assert!(args.contains(&"_PID=1".to_owned()));
        for id in LIFECYCLE_MESSAGE_IDS {
            assert!(args.contains(&format!("MESSAGE_ID={id}")), "{id}");
        }
        let fields = args
            .iter()
            .find_map(|a| a.strip_prefix("--output-fields="))
            .expect("fields");
        for needed in [
            "MESSAGE_ID",
            "UNIT",
            "INVOCATION_ID",
            "_PID",
            "_SOURCE_REALTIME_TIMESTAMP",
            "N_RESTARTS",
        ] {
            assert!(fields.split(',').any(|f| f == needed), "{needed}");
        }
    }

    #[tokio::test]
    async fn the_child_is_bounded_in_time_and_output() {
        let mut sleeper = Command::new("sleep");
        sleeper.arg("5");
        let started = std::time::Instant::now();
        let result = run_bounded(sleeper, Duration::from_millis(200), 1024).await;
        assert!(
            matches!(result, Err(JournalError::Timeout(_))),
            "{:?}",
            result.err()
        );
        assert!(started.elapsed() < Duration::from_secs(3));

        let mut endless = Command::new("yes");
        endless.arg("entry");
        let output = run_bounded(endless, Duration::from_secs(5), 1000)
            .await
            .expect("truncated, not failed");
        assert!(output.truncated);
        assert_eq!(output.stdout.len(), 1000);

        let mut failing = Command::new("sh");
        failing.args(["-c", "echo 'No journal files were found.' >&2; exit 1"]);
        let error = run_bounded(failing, Duration::from_secs(5), 1000)
            .await
            .err()
            .expect("fails");
        assert!(
            error.to_string().contains("No journal files were found."),
            "{error}"
        );

        let missing = Command::new("/nonexistent/journalctl");
        assert!(matches!(
            run_bounded(missing, Duration::from_secs(1), 10).await,
            Err(JournalError::Spawn(_))
        ));
    }
}
