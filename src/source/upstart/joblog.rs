//! The crash context of an Upstart job: the last lines of its log file.
//!
//! With `console log` (the default since Upstart 1.4) init writes what a job's processes print to
//! `/var/log/upstart/JOB.log`, or `JOB-INSTANCE.log` for an instance, every `/` in either name
//! made `_` (init/job_process.c, `job_process_log_path`). Every run of the job writes to the same
//! file, with nothing between runs, so the excerpt is the file's last lines when the crash is
//! looked up: at once, since a respawned run starts writing to the same file within moments.
//! The output reaches init through a pseudo-terminal, so lines end in `\r\n`.

use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use metrics::counter;

use crate::event::{printable, ContextRequest, CrashContext};
use crate::internal_events::ContextLookupError;
use crate::source::context::{excerpt, Lookup};
use crate::source::mask::Masks;

/// Where Upstart writes its jobs' logs.
pub const DEFAULT_DIRECTORY: &str = "/var/log/upstart";
/// The most of a log's end read per lookup: ample for the lines kept, and a bound on a log a
/// job floods.
const TAIL_MAX_BYTES: u64 = 64 * 1024;
/// The name of the lines' source in a crash context.
const SOURCE: &str = "job log";

/// How crash contexts are read from job logs.
#[derive(Clone, Debug)]
pub struct JobLogLookup {
    /// Upstart's log directory.
    pub directory: PathBuf,
    /// Lines kept per crash.
    pub lines: usize,
    /// What is masked in each line before it leaves.
    pub masks: Masks,
}

impl Lookup for JobLogLookup {
    fn settle(&self) -> Duration {
        Duration::ZERO
    }

    fn lookup(&self, request: &ContextRequest) -> impl Future<Output = CrashContext> + Send {
        let settings = self.clone();
        let unit = request.unit.clone();
        async move {
            let read = tokio::task::spawn_blocking(move || settings.read(&unit)).await;
            let (context, result) = read.unwrap_or_else(|_| {
                let context = CrashContext::unavailable("reading the job log failed");
                (context.read_from(SOURCE), "failed")
            });
            counter!("crashwatch_crash_context_lookups_total", "result" => result).increment(1);
            context
        }
    }
}

impl JobLogLookup {
    /// The context of `unit`'s last crash, and the lookup's result as counted: a job without a
    /// log file wrote nothing that was kept (`empty`), like a run that printed nothing.
    fn read(&self, unit: &str) -> (CrashContext, &'static str) {
        let Some(path) = log_path(&self.directory, unit) else {
            let context = CrashContext::unavailable("the job's name cannot be a log file's");
            return (context.read_from(SOURCE), "failed");
        };
        match tail(&path, TAIL_MAX_BYTES) {
            Ok(bytes) => {
                let context = CrashContext::found(excerpt(lines(&bytes), self.lines, &self.masks));
                let result = if context.lines.is_empty() {
                    "empty"
                } else {
                    "ok"
                };
                (context.read_from(SOURCE), result)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let context = CrashContext::unavailable(format!(
                    "no job log at {} (the job may not use console log)",
                    printable(&path.display().to_string())
                ));
                (context.read_from(SOURCE), "empty")
            }
            Err(e) => {
                let error = format!("{}: {e}", path.display());
                ContextLookupError {
                    unit,
                    error: &error,
                }
                .emit();
                let context = CrashContext::unavailable(format!(
                    "reading the job log failed: {}",
                    printable(&error)
                ));
                (context.read_from(SOURCE), "failed")
            }
        }
    }
}

/// The log file of unit `unit` (`job`, or `job (instance)` as crashwatch names instances), as
/// Upstart names it. `None` for a name no log file can have.
pub fn log_path(directory: &Path, unit: &str) -> Option<PathBuf> {
    let (job, instance) = match unit.strip_suffix(')').and_then(|u| u.rsplit_once(" (")) {
        Some((job, instance)) => (job, Some(instance)),
        None => (unit, None),
    };
    let remap = |name: &str| name.replace('/', "_");
    let file = match instance {
        Some(instance) if !instance.is_empty() => {
            format!("{}-{}.log", remap(job), remap(instance))
        }
        _ => format!("{}.log", remap(job)),
    };
    (!job.is_empty() && !file.contains('\0') && file != ".log").then(|| directory.join(file))
}

/// The last `max` bytes of `path`, from the start of a line.
fn tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let from = length.saturating_sub(max);
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::with_capacity(usize::try_from(length - from).unwrap_or(0));
    file.take(max).read_to_end(&mut bytes)?;
    if from > 0 {
        // The first line read is likely a part of one.
        let start = bytes.iter().position(|&b| b == b'\n').map_or(0, |n| n + 1);
        bytes.drain(..start);
    }
    Ok(bytes)
}

/// The lines of a log written through a pseudo-terminal, without their `\r\n`.
fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line).to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_files_are_named_as_upstart_names_them() {
        let dir = Path::new("/var/log/upstart");
        for (unit, file) in [
            ("www", "www.log"),
            ("net/apache", "net_apache.log"),
            ("network-interface (eth0)", "network-interface-eth0.log"),
            ("tty (/dev/tty1)", "tty-_dev_tty1.log"),
            ("odd (name) (x)", "odd (name)-x.log"),
        ] {
            assert_eq!(log_path(dir, unit), Some(dir.join(file)), "{unit}");
        }
        assert_eq!(log_path(dir, ""), None);
        assert_eq!(log_path(dir, " (x)"), None);
    }

    #[test]
    fn pty_lines_lose_their_carriage_returns() {
        assert_eq!(lines(b"one\r\ntwo\r\n"), [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(lines(b"partial"), [b"partial".to_vec()]);
        assert!(lines(b"").is_empty());
    }

    #[test]
    fn a_long_log_is_read_from_its_end_at_a_line() {
        let dir = std::env::temp_dir().join(format!("crashwatch-joblog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let path = dir.join("flood.log");
        let mut text = String::new();
        for n in 0..100_000 {
            text.push_str(&format!("line {n}\r\n"));
        }
        std::fs::write(&path, &text).expect("writing the log");
        let bytes = tail(&path, 1024).expect("read");
        assert!(bytes.len() <= 1024);
        assert!(bytes.starts_with(b"line "), "starts at a line");
        let lines = lines(&bytes);
        assert_eq!(lines.last().map(Vec::as_slice), Some(&b"line 99999"[..]));
        let lookup = JobLogLookup {
            directory: dir.clone(),
            lines: 3,
            masks: Masks::defaults(),
        };
        let (context, result) = lookup.read("flood");
        assert_eq!(result, "ok");
        assert_eq!(context.lines, ["line 99997", "line 99998", "line 99999"]);
        assert_eq!(context.source, SOURCE);
        let (missing, result) = lookup.read("quiet");
        assert_eq!(result, "empty");
        assert_eq!(missing.status, crate::event::ContextStatus::Unavailable);
        assert!(
            missing
                .reason
                .as_deref()
                .unwrap_or_default()
                .contains("quiet.log"),
            "{missing:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
