//! What a crashed run wrote last, looked up off the event path, whatever the log it is read from.
//!
//! The engine asks for the context of each crash it records ([`ContextHandle::request`] never
//! waits: a full queue is a counted drop). One task takes the requests in order, waits until the
//! log can hold the run's last lines ([`Lookup::settle`]), asks the [`Lookup`] (the journal
//! under systemd, the job's log file under Upstart), and sends the answer down the source channel
//! as [`SourceEvent::CrashContext`], so the engine, the only writer of the unit table, attaches
//! it to the crash of the same run. What comes back is text from outside: [`excerpt`] masks
//! secrets, escapes control characters, replaces invalid UTF-8, cuts each line at
//! [`LINE_MAX_BYTES`] and the excerpt at [`EXCERPT_MAX_BYTES`], keeping the newest lines.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::{printable, ContextRequest, CrashContext, SourceEvent};
use crate::internal_events::ContextRequestDropped;
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
/// Answers kept, by run, so a run asked about again is not read again.
pub const CACHE_ENTRIES: usize = 1024;

/// Where the lines of a crashed run are read from.
pub trait Lookup: Send + Sync + 'static {
    /// How long after a run's end its lookup waits, for the log to hold what the run wrote last.
    fn settle(&self) -> Duration;

    /// The context of one crash, counted by result.
    fn lookup(&self, request: &ContextRequest) -> impl Future<Output = CrashContext> + Send;
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
pub fn worker<L: Lookup>(
    lookup: L,
    answers: mpsc::Sender<SourceEvent>,
    shutdown: CancellationToken,
) -> (ContextHandle, impl Future<Output = ()>) {
    let (queue, requests) = mpsc::channel(QUEUE);
    (
        ContextHandle { queue },
        run(lookup, requests, answers, shutdown),
    )
}

async fn run<L: Lookup>(
    lookup: L,
    mut requests: mpsc::Receiver<ContextRequest>,
    answers: mpsc::Sender<SourceEvent>,
    shutdown: CancellationToken,
) {
    let mut cache = Cache::default();
    let settle = u64::try_from(lookup.settle().as_micros()).unwrap_or(u64::MAX);
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            request = requests.recv() => match request {
                Some(request) => request,
                None => return,
            },
        };
        let key = run_key(&request);
        let context = match cache.get(&key) {
            Some(context) => context.clone(),
            None => {
                let wait = (request.ended.saturating_add(settle))
                    .saturating_sub(now_micros())
                    .min(settle);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_micros(wait)) => {}
                }
                let context = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    context = lookup.lookup(&request) => context,
                };
                cache.insert(key, context.clone());
                context
            }
        };
        let answer = SourceEvent::CrashContext {
            unit: request.unit,
            invocation: request.invocation,
            ended: request.ended,
            context,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            sent = answers.send(answer) => if sent.is_err() { return },
        }
    }
}

/// What names one run: systemd's invocation ID, else the unit and the time its run ended.
fn run_key(request: &ContextRequest) -> String {
    match &request.invocation {
        Some(invocation) => invocation.clone(),
        None => format!("{}\n{}", request.unit, request.ended),
    }
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
    fn get(&self, run: &str) -> Option<&CrashContext> {
        self.answers.get(run)
    }

    fn insert(&mut self, run: String, context: CrashContext) {
        if self.answers.len() >= CACHE_ENTRIES {
            if let Some(oldest) = self.order.pop_front() {
                self.answers.remove(&oldest);
            }
        }
        if self.answers.insert(run.clone(), context).is_none() {
            self.order.push_back(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_cache_forgets_the_oldest_beyond_its_bound() {
        let mut cache = Cache::default();
        for n in 0..CACHE_ENTRIES + 5 {
            cache.insert(format!("{n:032x}"), CrashContext::found(Vec::new()));
        }
        assert_eq!(cache.answers.len(), CACHE_ENTRIES);
        assert!(cache.get(&format!("{:032x}", 0)).is_none());
        assert!(cache.get(&format!("{:032x}", CACHE_ENTRIES + 4)).is_some());
    }

    #[test]
    fn a_run_is_its_invocation_or_its_unit_and_end() {
        let mut request = ContextRequest {
            unit: "www".into(),
            invocation: None,
            run_started: None,
            ended: 7,
            verdict: None,
        };
        let by_end = run_key(&request);
        request.ended = 8;
        assert_ne!(run_key(&request), by_end, "another crash of the same job");
        request.invocation = Some("0123456789abcdef0123456789abcdef".into());
        assert_eq!(run_key(&request), "0123456789abcdef0123456789abcdef");
    }
}
