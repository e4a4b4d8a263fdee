//! What a crashed run wrote last, read from the journal off the event path.
//!
//! The engine asks for the context of each crash it records ([`ContextHandle::request`] never
//! waits: a full queue is a counted drop). One task takes the requests in order and runs
//! journalctl for each, bounded in time ([`LOOKUP_TIMEOUT`]) and output, then sends the answer
//! down the source channel as [`SourceEvent::CrashContext`], so the engine, the only writer of
//! the unit table, attaches it to the crash of the same run. A lookup waits until [`SETTLE`]
//! after the run ended: journald may still be reading what the run wrote when the crash is heard.
//!
//! A run is selected by its invocation ID (`_SYSTEMD_INVOCATION_ID`), a value systemd gave as
//! bytes and crashwatch turned into hex: checked to be 32 hex digits before it reaches the
//! command line. journald cannot always attach the ID to the lines of a process that exits at
//! once (it reads it from the cgroup, which may be gone), so when the ID finds nothing the unit's
//! lines between the run's start and its end are read instead (`_SYSTEMD_UNIT`), leaving out
//! those tagged with another run. Nothing goes through a shell: every value is one argv
//! element. What comes back is text from outside: control characters are escaped and
//! invalid UTF-8 replaced, each line is cut at [`LINE_MAX_BYTES`] and the excerpt at
//! [`EXCERPT_MAX_BYTES`], keeping the newest lines.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use metrics::counter;
use serde_json::Value;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::history::{run_bounded, JournalError};
use crate::event::{printable, ContextRequest, CrashContext, Micros, SourceEvent};
use crate::internal_events::{ContextLookupError, ContextRequestDropped};
use crate::source::mask::Masks;
use crate::time::now_micros;

/// Lines kept per crash, by default.
pub const DEFAULT_LINES: usize = 10;
/// The longest line kept, in bytes; a longer one is cut and ends in `…`.
pub const LINE_MAX_BYTES: usize = 512;
/// The most bytes of lines kept per crash; the oldest lines go first.
pub const EXCERPT_MAX_BYTES: usize = 4096;
/// Lookups waiting at most; a crash beyond them gets no context.
pub const QUEUE: usize = 256;
/// How long one lookup may take before journalctl is killed.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers kept, by run, so a run asked about again is not read again.
pub const CACHE_ENTRIES: usize = 1024;
/// The most journalctl output read per lookup (journald keeps lines up to 48 KiB by default).
const OUTPUT_MAX_BYTES: usize = 1 << 20;
/// How long after a run's end its last lines may still reach journald, for the fallback.
const LATE_LINES: Micros = 250_000;
/// How long after a run's end its lookup waits: journald reads what a process wrote to its
/// stream after the process is gone, and the crash is heard before that.
pub const SETTLE: Duration = Duration::from_secs(1);

/// How crash contexts are read.
#[derive(Clone, Debug)]
pub struct ContextSettings {
    /// A journal directory (`journalctl --directory`); `None` for the system journal.
    pub directory: Option<PathBuf>,
    /// Lines kept per crash.
    pub lines: usize,
    /// What is masked in each line before it leaves.
    pub masks: Masks,
    /// The journalctl to run (`journalctl` from `$PATH`).
    pub journalctl: PathBuf,
}

/// Where the engine's requests go; cheap to call from the event path.
#[derive(Clone, Debug)]
pub struct ContextHandle {
    queue: mpsc::Sender<ContextRequest>,
}

impl ContextHandle {
    /// Queues a lookup without waiting: `pending` when taken, `unavailable` when the queue is
    /// full (counted) or the worker is gone.
    pub fn request(&self, request: ContextRequest) -> CrashContext {
        match self.queue.try_send(request) {
            Ok(()) => CrashContext::pending(),
            Err(mpsc::error::TrySendError::Full(request)) => {
                ContextRequestDropped {
                    unit: &request.unit,
                }
                .emit();
                CrashContext::unavailable("too many lookups were waiting")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                CrashContext::unavailable("crashwatch is stopping")
            }
        }
    }
}

/// Starts nothing yet: returns the handle and the worker, to be spawned by the caller, which
/// answers down `answers` until `shutdown` or until every handle is gone.
pub fn worker(
    settings: ContextSettings,
    answers: mpsc::Sender<SourceEvent>,
    shutdown: CancellationToken,
) -> (ContextHandle, impl std::future::Future<Output = ()>) {
    let (queue, requests) = mpsc::channel(QUEUE);
    (
        ContextHandle { queue },
        run(settings, requests, answers, shutdown),
    )
}

async fn run(
    settings: ContextSettings,
    mut requests: mpsc::Receiver<ContextRequest>,
    answers: mpsc::Sender<SourceEvent>,
    shutdown: CancellationToken,
) {
    let mut cache = Cache::default();
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            request = requests.recv() => match request {
                Some(request) => request,
                None => return,
            },
        };
        let context = match cache.get(&request.invocation) {
            Some(context) => context.clone(),
            None => {
                let settle = u64::try_from(SETTLE.as_micros()).unwrap_or(u64::MAX);
                let wait = (request.ended.saturating_add(settle))
                    .saturating_sub(now_micros())
                    .min(settle);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_micros(wait)) => {}
                }
                let context = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    context = lookup(&settings, &request) => context,
                };
                cache.insert(request.invocation.clone(), context.clone());
                context
            }
        };
        let answer = SourceEvent::CrashContext {
            unit: request.unit,
            invocation: request.invocation,
            context,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            sent = answers.send(answer) => if sent.is_err() { return },
        }
    }
}

/// The context of one crash: by run ID, else by unit and time; counted by result.
async fn lookup(settings: &ContextSettings, request: &ContextRequest) -> CrashContext {
    if !valid_invocation(&request.invocation) {
        return CrashContext::unavailable("the run ID is not 32 hex digits");
    }
    let run = request.invocation.as_str();
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
    let context = CrashContext::found(excerpt(lines, settings.lines, &settings.masks));
    let result = if context.lines.is_empty() {
        "empty"
    } else {
        "ok"
    };
    counter!("crashwatch_crash_context_lookups_total", "result" => result).increment(1);
    context
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
    settings: &ContextSettings,
    run: &str,
    matches: Vec<String>,
) -> Result<Vec<Vec<u8>>, JournalError> {
    let mut command = Command::new(&settings.journalctl);
    command.args([
        "--output=json",
        "--no-pager",
        "--quiet",
        "--output-fields=MESSAGE,_SYSTEMD_INVOCATION_ID",
    ]);
    command.arg(format!("--lines={}", settings.lines.max(1)));
    if let Some(directory) = &settings.directory {
        command.arg(format!("--directory={}", directory.display()));
    }
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

/// The last `lines` messages made printable and masked, each cut at [`LINE_MAX_BYTES`], the
/// newest kept within [`EXCERPT_MAX_BYTES`] in all.
pub fn excerpt(messages: Vec<Vec<u8>>, lines: usize, masks: &Masks) -> Vec<String> {
    let skip = messages.len().saturating_sub(lines);
    let mut kept: VecDeque<String> = VecDeque::new();
    let mut total = 0;
    for message in messages.into_iter().skip(skip).rev() {
        // Masked before it is cut, so a secret across the cut cannot leave half of itself.
        let line = cut(
            masks.apply(printable(&String::from_utf8_lossy(&message))),
            LINE_MAX_BYTES,
        );
        if total + line.len() > EXCERPT_MAX_BYTES {
            break;
        }
        total += line.len();
        kept.push_front(line);
    }
    kept.into()
}

/// `line` cut to at most `max` bytes on a character boundary, ending in `…` when cut.
fn cut(mut line: String, max: usize) -> String {
    if line.len() <= max {
        return line;
    }
    const MARK: &str = "…";
    let mut end = max - MARK.len();
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line.truncate(end);
    line.push_str(MARK);
    line
}

/// Answers by run, the oldest forgotten first beyond [`CACHE_ENTRIES`].
#[derive(Default)]
struct Cache {
    answers: HashMap<String, CrashContext>,
    order: VecDeque<String>,
}

impl Cache {
    fn get(&self, invocation: &str) -> Option<&CrashContext> {
        self.answers.get(invocation)
    }

    fn insert(&mut self, invocation: String, context: CrashContext) {
        if self.answers.len() >= CACHE_ENTRIES {
            if let Some(oldest) = self.order.pop_front() {
                self.answers.remove(&oldest);
            }
        }
        if self.answers.insert(invocation.clone(), context).is_none() {
            self.order.push_back(invocation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_excerpt_keeps_the_newest_lines_within_the_caps() {
        let many: Vec<Vec<u8>> = (0..10_000)
            .map(|n| format!("line {n}").into_bytes())
            .collect();
        let lines = excerpt(many, DEFAULT_LINES, &Masks::default());
        assert_eq!(lines.len(), DEFAULT_LINES);
        assert_eq!(lines.first().map(String::as_str), Some("line 9990"));
        assert_eq!(lines.last().map(String::as_str), Some("line 9999"));

        let long: Vec<Vec<u8>> = (0..10).map(|_| "é".repeat(2_000).into_bytes()).collect();
        let lines = excerpt(long, DEFAULT_LINES, &Masks::default());
        assert!(lines
            .iter()
            .all(|l| l.len() <= LINE_MAX_BYTES && l.ends_with('…')));
        assert!(lines.iter().map(String::len).sum::<usize>() <= EXCERPT_MAX_BYTES);
        assert_eq!(lines.len(), EXCERPT_MAX_BYTES / LINE_MAX_BYTES);
    }

    #[test]
    fn a_secret_is_masked_before_its_line_is_cut() {
        let secret = "s".repeat(200);
        let line = format!("{} password={secret}", "x".repeat(LINE_MAX_BYTES - 20));
        let lines = excerpt(vec![line.into_bytes()], DEFAULT_LINES, &Masks::defaults());
        assert_eq!(lines.len(), 1);
        assert!(!lines[0].contains("sss"), "{:?}", lines[0]);
        assert!(lines[0].ends_with("password=[masked]"), "{:?}", lines[0]);
    }

    #[test]
    fn control_characters_and_bad_utf8_come_out_safe() {
        let lines = excerpt(
            vec![b"\x1b[31mred\x1b[0m\r\x07 \xff\xfe end".to_vec()],
            DEFAULT_LINES,
            &Masks::defaults(),
        );
        assert_eq!(lines.len(), 1);
        assert!(!lines[0].chars().any(char::is_control), "{:?}", lines[0]);
        assert!(
            lines[0].contains("red") && lines[0].contains('\u{fffd}'),
            "{:?}",
            lines[0]
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

    #[test]
    fn the_cache_forgets_the_oldest_beyond_its_bound() {
        let mut cache = Cache::default();
        for n in 0..CACHE_ENTRIES + 5 {
            cache.insert(format!("{n:032x}"), CrashContext::found(Vec::new()));
        }
        assert_eq!(cache.answers.len(), CACHE_ENTRIES);
        assert!(cache.get(&format!("{:032x}", 0)).is_none());
        assert!(cache.get(&format!("{:032x}", CACHE_ENTRIES + 4)).is_some());
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

    async fn ask(settings: ContextSettings, requests: &[ContextRequest]) -> Vec<SourceEvent> {
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
        let settings = ContextSettings {
            directory: Some("/var/log/journal".into()),
            lines: DEFAULT_LINES,
            masks: Masks::defaults(),
            journalctl: fake_journalctl(&dir, script),
        };
        let request = ContextRequest {
            unit: "a.service".into(),
            invocation: "0123456789abcdef0123456789abcdef".into(),
            run_started: Some(1_700_000_000_000_000),
            ended: 1_700_000_001_000_000,
        };
        let answers = ask(settings, &[request.clone(), request]).await;
        for answer in &answers {
            let SourceEvent::CrashContext {
                unit,
                invocation,
                context,
            } = answer
            else {
                panic!("{answer:?}");
            };
            assert_eq!((unit.as_str(), invocation.len()), ("a.service", 32));
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
        let settings = ContextSettings {
            directory: None,
            lines: DEFAULT_LINES,
            masks: Masks::defaults(),
            journalctl: fake_journalctl(&dir, "echo 'No journal files were found.' >&2; exit 1"),
        };
        let request = ContextRequest {
            unit: "a.service".into(),
            invocation: "0123456789abcdef0123456789abcdef".into(),
            run_started: None,
            ended: 0,
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
        let settings = ContextSettings {
            directory: None,
            lines: DEFAULT_LINES,
            masks: Masks::defaults(),
            journalctl: "journalctl".into(),
        };
        // The worker is never run, so the queue fills.
        let (handle, _worker) = worker(settings, answers, CancellationToken::new());
        let request = ContextRequest {
            unit: "a.service".into(),
            invocation: "0123456789abcdef0123456789abcdef".into(),
            run_started: None,
            ended: 0,
        };
        for _ in 0..QUEUE {
            assert_eq!(
                handle.request(request.clone()).status,
                crate::event::ContextStatus::Pending
            );
        }
        let dropped = handle.request(request);
        assert_eq!(dropped.status, crate::event::ContextStatus::Unavailable);
    }
}
