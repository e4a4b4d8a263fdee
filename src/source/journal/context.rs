//! The crash context of a systemd unit's run, read from the journal.
//!
//! A run is selected by its invocation ID (`_SYSTEMD_INVOCATION_ID`), a value systemd gave as
//! bytes and crashwatch turned into hex: checked to be 32 hex digits before it reaches the
//! command line. journald cannot always attach the ID to the lines of a process that exits at
//! once (it reads it from the cgroup, which may be gone), so when the ID finds nothing the unit's
//! lines between the run's start and its end are read instead (`_SYSTEMD_UNIT`), leaving out
//! those tagged with another run. Nothing goes through a shell: every value is one argv
//! element. journalctl is bounded in time ([`LOOKUP_TIMEOUT`]) and output. The worker that asks
//! is [`crate::source::context`]'s.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use metrics::counter;
use serde_json::Value;
use tokio::process::Command;

use super::evidence;
use super::history::{run_bounded, JournalError};
use crate::event::{printable, ContextRequest, CrashContext, Micros};
use crate::internal_events::ContextLookupError;
use crate::source::context::{excerpt, Lookup};
use crate::source::mask::Masks;

/// How long one lookup may take before journalctl is killed.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// The most journalctl output read per lookup (journald keeps lines up to 48 KiB by default).
const OUTPUT_MAX_BYTES: usize = 1 << 20;
/// How long after a run's end its last lines may still reach journald, for the fallback.
const LATE_LINES: Micros = 250_000;
/// How long after a run's end its lookup waits: journald reads what a process wrote to its
/// stream after the process is gone, and the crash is heard before that.
pub const SETTLE: Duration = Duration::from_secs(1);

/// How crash contexts are read from the journal.
#[derive(Clone, Debug)]
pub struct JournalLookup {
    /// A journal directory (`journalctl --directory`); `None` for the system journal.
    pub directory: Option<PathBuf>,
    /// Lines kept per crash.
    pub lines: usize,
    /// What is masked in each line before it leaves.
    pub masks: Masks,
    /// The journalctl to run (`journalctl` from `$PATH`).
    pub journalctl: PathBuf,
}

impl JournalLookup {
    /// journalctl writing JSON entries of the journal read, quietly; matches and fields to add.
    pub(super) fn json_command(&self) -> Command {
        let mut command = Command::new(&self.journalctl);
        command.args(["--output=json", "--no-pager", "--quiet"]);
        if let Some(directory) = &self.directory {
            command.arg(format!("--directory={}", directory.display()));
        }
        command
    }
}

impl Lookup for JournalLookup {
    fn settle(&self) -> Duration {
        SETTLE
    }

    fn lookup(&self, request: &ContextRequest) -> impl Future<Output = CrashContext> + Send {
        lookup(self, request)
    }
}

/// The context of one crash: by run ID, else by unit and time; counted by result.
async fn lookup(settings: &JournalLookup, request: &ContextRequest) -> CrashContext {
    let Some(run) = request.invocation.as_deref() else {
        return CrashContext::unavailable("the init system gave no run ID");
    };
    if !valid_invocation(run) {
        return CrashContext::unavailable("the run ID is not 32 hex digits");
    }
    let mut lines = match read(settings, run, by_invocation(run)).await {
        Ok(lines) => lines,
        Err(error) => return failed(request, &error),
    };
    if lines.is_empty() && valid_unit(&request.unit) {
        if let Some(start) = request.run_started {
            let args = by_unit_between(&request.unit, start, request.ended + LATE_LINES);
            lines = match read(settings, run, args).await {
                Ok(lines) => lines,
                Err(error) => return failed(request, &error),
            };
        }
    }
    let mut context = CrashContext::found(excerpt(lines, settings.lines, &settings.masks));
    let result = if context.lines.is_empty() {
        "empty"
    } else {
        "ok"
    };
    counter!("crashwatch_crash_context_lookups_total", "result" => result).increment(1);
    if valid_unit(&request.unit) {
        match request.verdict.as_deref() {
            Some("core-dump") => {
                let found = evidence::core_dump(settings, request).await;
                context.core_dump = found_evidence(request, "core_dump", found);
            }
            Some("oom-kill") => {
                let found = evidence::oom_kill(settings, request).await;
                context.oom_kill = found_evidence(request, "oom_kill", found);
            }
            _ => {}
        }
    }
    context
}

/// What a lookup of `kind` found, counted; a failure is logged too, and leaves the lines be.
fn found_evidence<T>(
    request: &ContextRequest,
    kind: &'static str,
    found: Result<Option<T>, JournalError>,
) -> Option<T> {
    match found {
        Ok(Some(evidence)) => {
            evidence::count(kind, "found");
            Some(evidence)
        }
        Ok(None) => {
            evidence::count(kind, "none");
            None
        }
        Err(error) => {
            evidence::count(kind, "failed");
            let error = error.to_string();
            ContextLookupError {
                unit: &request.unit,
                error: &error,
            }
            .emit();
            None
        }
    }
}

fn failed(request: &ContextRequest, error: &JournalError) -> CrashContext {
    let error = error.to_string();
    ContextLookupError {
        unit: &request.unit,
        error: &error,
    }
    .emit();
    CrashContext::unavailable(format!("reading the journal failed: {}", printable(&error)))
}

/// Runs journalctl with the selection `matches` and returns the messages of run `run` (and those
/// journald could not tag with a run), oldest first.
async fn read(
    settings: &JournalLookup,
    run: &str,
    matches: Vec<String>,
) -> Result<Vec<Vec<u8>>, JournalError> {
    let mut command = settings.json_command();
    command.arg("--output-fields=MESSAGE,_SYSTEMD_INVOCATION_ID");
    command.arg(format!("--lines={}", settings.lines.max(1)));
    command.args(matches);
    let output = run_bounded(command, LOOKUP_TIMEOUT, OUTPUT_MAX_BYTES).await?;
    Ok(output
        .stdout
        .split(|&b| b == b'\n')
        .filter_map(|line| message(line, run))
        .collect())
}

/// The match of one run.
fn by_invocation(invocation: &str) -> Vec<String> {
    vec![format!("_SYSTEMD_INVOCATION_ID={invocation}")]
}

/// The match of one unit's lines between two times.
fn by_unit_between(unit: &str, since: Micros, until: Micros) -> Vec<String> {
    let at = |t: Micros| format!("@{}.{:06}", t / 1_000_000, t % 1_000_000);
    vec![
        format!("--since={}", at(since)),
        format!("--until={}", at(until)),
        format!("_SYSTEMD_UNIT={unit}"),
    ]
}

/// The MESSAGE of one journalctl JSON entry: a string, or an array of bytes for one that is not
/// valid UTF-8 or holds control characters. `None` for anything else, and for an entry of
/// another run than `run`: the fallback's time span may reach into the next run.
fn message(line: &[u8], run: &str) -> Option<Vec<u8>> {
    let entry: Value = serde_json::from_slice(line).ok()?;
    if let Some(other) = entry["_SYSTEMD_INVOCATION_ID"].as_str() {
        if !other.eq_ignore_ascii_case(run) {
            return None;
        }
    }
    match &entry["MESSAGE"] {
        Value::String(text) => Some(text.clone().into_bytes()),
        Value::Array(bytes) => bytes
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect(),
        _ => None,
    }
}

/// Whether `id` is a run ID as crashwatch writes it: 32 hex digits, nothing else.
pub fn valid_invocation(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `unit` can be one journalctl match: not empty, no `=`, no control character.
pub fn valid_unit(unit: &str) -> bool {
    !unit.is_empty() && !unit.contains('=') && !unit.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SourceEvent;
    use crate::source::context::worker;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    #[test]
    fn only_32_hex_digits_are_a_run_id() {
        assert!(valid_invocation("0123456789abcdefABCDEF0123456789"));
        for bad in [
            "",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef 123456789abcdef",
            "--since=yesterday0123456789abcde",
            "0123456789abcdef0123456789abcd\n",
        ] {
            assert!(!valid_invocation(bad), "{bad:?}");
        }
        assert!(valid_unit("a@b.service"));
        for bad in ["", "a=b.service", "a\nb.service", "a\u{1b}.service"] {
            assert!(!valid_unit(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_matches_are_single_arguments() {
        assert_eq!(
            by_invocation("0123456789abcdef0123456789abcdef"),
            ["_SYSTEMD_INVOCATION_ID=0123456789abcdef0123456789abcdef"]
        );
        assert_eq!(
            by_unit_between(
                "a b;rm -rf.service",
                1_700_000_000_123_456,
                1_700_000_001_000_000
            ),
            [
                "--since=@1700000000.123456",
                "--until=@1700000001.000000",
                "_SYSTEMD_UNIT=a b;rm -rf.service",
            ]
        );
    }

    #[test]
    fn messages_are_read_as_text_or_bytes() {
        let run = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            message(br#"{"MESSAGE":"config error: missing key X"}"#, run),
            Some(b"config error: missing key X".to_vec())
        );
        assert_eq!(
            message(br#"{"MESSAGE":[27,91,255]}"#, run),
            Some(vec![27, 91, 255])
        );
        assert_eq!(message(br#"{"MESSAGE":null}"#, run), None);
        assert_eq!(message(br#"{"MESSAGE":[256]}"#, run), None);
        assert_eq!(message(b"not json", run), None);
        let ours =
            br#"{"MESSAGE":"ours","_SYSTEMD_INVOCATION_ID":"0123456789ABCDEF0123456789ABCDEF"}"#;
        assert_eq!(message(ours, run), Some(b"ours".to_vec()));
        let next = br#"{"MESSAGE":"next run","_SYSTEMD_INVOCATION_ID":"ffffffffffffffffffffffffffffffff"}"#;
        assert_eq!(message(next, run), None);
    }

    /// A stand-in for journalctl in `dir`, running `script` (sh) with journalctl's arguments, each
    /// run also counted in `dir/runs`.
    fn fake_journalctl(dir: &std::path::Path, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).expect("a directory");
        let path = dir.join("journalctl");
        let runs = dir.join("runs");
        let text = format!("#!/bin/sh\necho run >> '{}'\n{script}\n", runs.display());
        std::fs::write(&path, text).expect("writing the script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    async fn ask(settings: JournalLookup, requests: &[ContextRequest]) -> Vec<SourceEvent> {
        let (answers, mut received) = mpsc::channel(16);
        let (handle, worker) = worker(settings, answers, CancellationToken::new());
        let task = tokio::spawn(worker);
        let mut out = Vec::new();
        for request in requests {
            assert_eq!(
                handle.request(request.clone()).status,
                crate::event::ContextStatus::Pending
            );
            out.push(received.recv().await.expect("an answer"));
        }
        drop(handle);
        task.await.expect("the worker ends with its handles");
        out
    }

    #[tokio::test]
    async fn a_run_journald_could_not_tag_is_found_by_its_unit_and_times_and_cached() {
        let dir = std::env::temp_dir().join(format!("crashwatch-context-{}", std::process::id()));
        let script = r#"for a in "$@"; do printf '%s\n' "$a"; done >> "$(dirname "$0")/args"
case "$*" in
  *_SYSTEMD_INVOCATION_ID=*) exit 0 ;;
  *_SYSTEMD_UNIT=a.service*) printf '%s\n' '{"MESSAGE":"from the unit"}' \
    '{"MESSAGE":"the next run","_SYSTEMD_INVOCATION_ID":"ffffffffffffffffffffffffffffffff"}' \
    '{"MESSAGE":[27,255]}' ;;
esac"#;
        let settings = JournalLookup {
            directory: Some("/var/log/journal".into()),
            lines: crate::source::context::DEFAULT_LINES,
            masks: Masks::defaults(),
            journalctl: fake_journalctl(&dir, script),
        };
        let request = ContextRequest {
            unit: "a.service".into(),
            invocation: Some("0123456789abcdef0123456789abcdef".into()),
            run_started: Some(1_700_000_000_000_000),
            ended: 1_700_000_001_000_000,
            verdict: None,
        };
        let answers = ask(settings, &[request.clone(), request]).await;
        for answer in &answers {
            let SourceEvent::CrashContext {
                unit,
                invocation,
                context,
                ..
            } = answer
            else {
                panic!("{answer:?}");
            };
            assert_eq!(
                (unit.as_str(), invocation.as_deref().map(str::len)),
                ("a.service", Some(32))
            );
            assert_eq!(context.lines, ["from the unit", "\\u{1b}\u{fffd}"]);
        }
        let runs = std::fs::read_to_string(dir.join("runs")).unwrap_or_default();
        assert_eq!(runs.lines().count(), 2, "by ID, then by unit; then cached");
        let args = std::fs::read_to_string(dir.join("args")).unwrap_or_default();
        for arg in [
            "_SYSTEMD_INVOCATION_ID=0123456789abcdef0123456789abcdef",
            "--directory=/var/log/journal",
            "--lines=10",
            "--since=@1700000000.000000",
            "--until=@1700000001.250000",
            "_SYSTEMD_UNIT=a.service",
        ] {
            assert!(args.lines().any(|a| a == arg), "{arg} missing from\n{args}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_failed_lookup_says_unavailable_and_why() {
        let dir = std::env::temp_dir().join(format!("crashwatch-context-f-{}", std::process::id()));
        let settings = JournalLookup {
            directory: None,
            lines: crate::source::context::DEFAULT_LINES,
            masks: Masks::defaults(),
            journalctl: fake_journalctl(&dir, "echo 'No journal files were found.' >&2; exit 1"),
        };
        let request = ContextRequest {
            unit: "a.service".into(),
            invocation: Some("0123456789abcdef0123456789abcdef".into()),
            run_started: None,
            ended: 0,
            verdict: None,
        };
        let answers = ask(settings, &[request]).await;
        let SourceEvent::CrashContext { context, .. } = &answers[0] else {
            panic!("{answers:?}");
        };
        assert_eq!(context.status, crate::event::ContextStatus::Unavailable);
        let reason = context.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("No journal files were found."), "{reason}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_full_queue_is_a_counted_drop_not_a_wait() {
        let (answers, _rx) = mpsc::channel(1);
        let settings = JournalLookup {
            directory: None,
            lines: crate::source::context::DEFAULT_LINES,
            masks: Masks::defaults(),
            journalctl: "journalctl".into(),
        };
        // The worker is never run, so the queue fills.
        let (handle, _worker) = worker(settings, answers, CancellationToken::new());
        let request = ContextRequest {
            unit: "a.service".into(),
            invocation: Some("0123456789abcdef0123456789abcdef".into()),
            run_started: None,
            ended: 0,
            verdict: None,
        };
        for _ in 0..crate::source::context::QUEUE {
            assert_eq!(
                handle.request(request.clone()).status,
                crate::event::ContextStatus::Pending
            );
        }
        let dropped = handle.request(request);
        assert_eq!(dropped.status, crate::event::ContextStatus::Unavailable);
    }
}
