//! The command action: runs a program, never a shell, with the loop described in its environment.
//!
//! Unit names come from outside, so they reach the program only as the value of
//! `CRASHWATCH_UNIT`, never inside an argument a shell would parse. The program runs in a process
//! group of its own, so a timeout kills everything it started, not just the first process; its
//! output is kept up to [`MAX_OUTPUT`] per stream for the log and the rest is read and dropped, so
//! a chatty program can neither block on a full pipe nor grow crashwatch's memory.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::time::Instant;

use super::ActionRequest;
use crate::event::CrashContext;
use crate::time::format_timestamp;

/// The most of each of stdout and stderr kept for the log.
pub const MAX_OUTPUT: usize = 64 * 1024;
/// How long output is still read after the program exits, for what it left running with the
/// pipes open (a process sent to the background).
const LINGER: Duration = Duration::from_secs(1);

/// A configured command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandAction {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// How long it may run before its process group is killed.
    pub timeout: Duration,
}

/// The environment a command is given on top of crashwatch's own.
pub fn environment(request: &ActionRequest) -> Vec<(&'static str, String)> {
    let event = &request.event;
    let mut env = vec![
        ("CRASHWATCH_UNIT", event.unit.clone()),
        ("CRASHWATCH_SOURCE", event.source.as_str().to_owned()),
        ("CRASHWATCH_EVENT", request.event_name().to_owned()),
        ("CRASHWATCH_RESTARTS", event.restarts_in_window.to_string()),
        ("CRASHWATCH_THRESHOLD", event.threshold.to_string()),
        (
            "CRASHWATCH_WINDOW_SECONDS",
            event.window_seconds.to_string(),
        ),
        ("CRASHWATCH_TIMESTAMP", format_timestamp(event.timestamp)),
    ];
    if let Some(outcome) = event.ended {
        env.push(("CRASHWATCH_OUTCOME", outcome.as_str().to_owned()));
    }
    if let Some(last) = &request.last_exit {
        env.push(("CRASHWATCH_LAST_EXIT", last.reason.clone()));
        if let Some(status) = last.status {
            env.push(("CRASHWATCH_LAST_EXIT_STATUS", status.to_string()));
        }
    }
    // Facts, not log text: the frames stay in the API, where they are not in a process's
    // environment for every other process of the same user to read.
    if let Some(dump) = request.context.as_ref().and_then(|c| c.core_dump.as_ref()) {
        if let Some(signal) = &dump.signal {
            env.push(("CRASHWATCH_CORE_DUMP_SIGNAL", signal.clone()));
        }
        if let Some(executable) = &dump.executable {
            env.push(("CRASHWATCH_CORE_DUMP_EXECUTABLE", executable.clone()));
        }
    }
    env
}

/// What a run came to.
#[derive(Debug)]
pub enum Ran {
    /// The program exited (or was killed by something else than us).
    Exited {
        /// How.
        status: ExitStatus,
        /// What it wrote.
        output: Output,
    },
    /// The timeout passed; its process group was killed.
    TimedOut {
        /// What it wrote until then.
        output: Output,
    },
    /// It could not be started.
    SpawnFailed(std::io::Error),
}

/// A program's output, cut at [`MAX_OUTPUT`] per stream.
#[derive(Debug, Default)]
pub struct Output {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Whether either was cut.
    pub truncated: bool,
}

/// Runs the command for `request` to completion or timeout.
pub async fn run(action: &CommandAction, request: &ActionRequest) -> Ran {
    let Some((program, args)) = action.argv.split_first() else {
        return Ran::SpawnFailed(std::io::Error::other("empty command"));
    };
    // The crashed run's lines go in a file of their own, never on a command line or in a
    // variable a shell would expand; the file goes when the command is done.
    let lines = match request.context.as_ref().map(LinesFile::write).transpose() {
        Ok(lines) => lines,
        Err(e) => return Ran::SpawnFailed(e),
    };
    let mut command = tokio::process::Command::new(program);
    if let Some(lines) = &lines {
        command.env("CRASHWATCH_LAST_LINES_FILE", &lines.0);
    }
    command
        .args(args)
        .envs(environment(request))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Ran::SpawnFailed(e),
    };
    let mut group = Group(child);
    let (Some(stdout), Some(stderr)) = (group.0.stdout.take(), group.0.stderr.take()) else {
        return Ran::SpawnFailed(std::io::Error::other("no pipes to the child"));
    };
    let deadline = Instant::now() + action.timeout;
    let (status, output) = group.wait(stdout, stderr, deadline).await;
    match status {
        Some(Ok(status)) => Ran::Exited { status, output },
        Some(Err(e)) => Ran::SpawnFailed(e),
        None => {
            group.kill();
            // Reap it now; the group is gone either way.
            let _ = group.0.wait().await;
            Ran::TimedOut { output }
        }
    }
}

/// A file holding a crashed run's last lines, one per line (or, when there are none, why), made
/// readable by crashwatch's user only and removed when dropped.
struct LinesFile(std::path::PathBuf);

impl LinesFile {
    fn write(context: &CrashContext) -> std::io::Result<LinesFile> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let directory = std::env::var_os("RUNTIME_DIRECTORY")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let name = format!(
            "crashwatch-last-lines-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = directory.join(name);
        // create_new: never through a link or a file someone else left there.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let file_guard = LinesFile(path);
        let mut text = String::new();
        if context.lines.is_empty() {
            let reason = context
                .reason
                .as_deref()
                .unwrap_or("the run wrote nothing that was kept");
            text.push_str(&format!("# no lines: {reason}\n"));
        }
        for line in &context.lines {
            text.push_str(line);
            text.push('\n');
        }
        file.write_all(text.as_bytes())?;
        Ok(file_guard)
    }
}

impl Drop for LinesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A child that leads a process group of its own; dropping it while the child is unreaped
/// kills the whole group (a run abandoned at shutdown leaves nothing behind).
struct Group(Child);

impl Group {
    /// Waits for the exit and reads both pipes, until `deadline`; `None` for the status when the
    /// deadline came first.
    async fn wait(
        &mut self,
        mut stdout: ChildStdout,
        mut stderr: ChildStderr,
        deadline: Instant,
    ) -> (Option<std::io::Result<ExitStatus>>, Output) {
        let mut output = Output::default();
        let (mut out_open, mut err_open) = (true, true);
        let (mut out_chunk, mut err_chunk) = ([0u8; 4096], [0u8; 4096]);
        let mut status = None;
        let mut stop_at = deadline;
        while status.is_none() || out_open || err_open {
            tokio::select! {
                read = stdout.read(&mut out_chunk), if out_open => {
                    out_open = keep(read, &out_chunk, &mut output.stdout, &mut output.truncated);
                }
                read = stderr.read(&mut err_chunk), if err_open => {
                    err_open = keep(read, &err_chunk, &mut output.stderr, &mut output.truncated);
                }
                exited = self.0.wait(), if status.is_none() => {
                    status = Some(exited);
                    stop_at = deadline.min(Instant::now() + LINGER);
                }
                _ = tokio::time::sleep_until(stop_at) => break,
            }
        }
        (status, output)
    }

    fn kill(&mut self) {
        // The id is gone once the child is reaped; until then the group id cannot be reused.
        if let Some(pid) = self.0.id().and_then(|pid| i32::try_from(pid).ok()) {
            kill_group(pid);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Appends a read to `kept` up to [`MAX_OUTPUT`]; false once the pipe is done.
fn keep(read: std::io::Result<usize>, chunk: &[u8], kept: &mut Vec<u8>, cut: &mut bool) -> bool {
    match read {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            let room = MAX_OUTPUT.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..n.min(room)]);
            *cut |= n > room;
            true
        }
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) takes no pointers; a negative pid names the process group the child leads.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Checks that a command names a program that can be run: a path to an executable file, or a
/// name found in `$PATH`. A paging command that only fails when the first loop comes is the
/// worst time to learn of a typo.
pub(super) fn check_program(argv: &[String]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Some(program) = argv.first().filter(|p| !p.is_empty()) else {
        return Err(
            "must name a program, e.g. [\"/usr/local/bin/page\", \"--team\", \"web\"]".to_owned(),
        );
    };
    let executable = |path: &std::path::Path| {
        std::fs::metadata(path)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        if executable(std::path::Path::new(program)) {
            return Ok(());
        }
        return Err(format!("{program:?} is not an executable file"));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| executable(&dir.join(program))) {
        return Ok(());
    }
    Err(format!("{program:?} is not found in PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{LoopEvent, LoopOutcome, SourceKind};
    use crate::sink::actions::tests::runtime;
    use crate::sink::actions::LastExit;

    fn request(ended: Option<LoopOutcome>) -> ActionRequest {
        ActionRequest {
            event: LoopEvent {
                unit: "we'ird $(name).service".to_owned(),
                source: SourceKind::Systemd,
                timestamp: 1_700_000_000_123_456,
                ended,
                restarts_in_window: 4,
                threshold: 3,
                window_seconds: 300.0,
            },
            last_exit: Some(LastExit {
                crashed_at: 0,
                reason: "exit-code".to_owned(),
                status: Some(1),
            }),
            context: None,
        }
    }

    #[test]
    fn the_environment_describes_the_loop() {
        let start = environment(&request(None));
        let get = |env: &[(&str, String)], key: &str| {
            env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        };
        assert_eq!(
            get(&start, "CRASHWATCH_UNIT").as_deref(),
            Some("we'ird $(name).service")
        );
        assert_eq!(get(&start, "CRASHWATCH_SOURCE").as_deref(), Some("systemd"));
        assert_eq!(
            get(&start, "CRASHWATCH_EVENT").as_deref(),
            Some("loop_started")
        );
        assert_eq!(get(&start, "CRASHWATCH_RESTARTS").as_deref(), Some("4"));
        assert_eq!(get(&start, "CRASHWATCH_THRESHOLD").as_deref(), Some("3"));
        assert_eq!(
            get(&start, "CRASHWATCH_WINDOW_SECONDS").as_deref(),
            Some("300")
        );
        assert_eq!(
            get(&start, "CRASHWATCH_LAST_EXIT").as_deref(),
            Some("exit-code")
        );
        assert_eq!(
            get(&start, "CRASHWATCH_LAST_EXIT_STATUS").as_deref(),
            Some("1")
        );
        assert_eq!(
            get(&start, "CRASHWATCH_TIMESTAMP").as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(get(&start, "CRASHWATCH_OUTCOME"), None);
        let end = environment(&request(Some(LoopOutcome::GaveUp)));
        assert_eq!(get(&end, "CRASHWATCH_EVENT").as_deref(), Some("loop_ended"));
        assert_eq!(get(&end, "CRASHWATCH_OUTCOME").as_deref(), Some("gave_up"));
    }

    #[test]
    fn the_unit_name_reaches_the_program_untouched_and_output_is_kept() {
        let action = CommandAction {
            argv: vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                "printf '%s' \"$CRASHWATCH_UNIT\"; echo oops >&2; exit 3".to_owned(),
            ],
            timeout: Duration::from_secs(10),
        };
        match runtime().block_on(run(&action, &request(None))) {
            Ran::Exited { status, output } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(output.stdout, b"we'ird $(name).service");
                assert_eq!(output.stderr, b"oops\n");
                assert!(!output.truncated);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_last_lines_reach_the_program_in_a_file_that_goes_afterwards() {
        let action = CommandAction {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                r#"stat -c %a "$CRASHWATCH_LAST_LINES_FILE"; cat "$CRASHWATCH_LAST_LINES_FILE"; printf %s "$CRASHWATCH_LAST_LINES_FILE" >&2"#.into(),
            ],
            timeout: Duration::from_secs(10),
        };
        let mut with_lines = request(None);
        with_lines.context = Some(CrashContext::found(vec![
            "$(rm -rf /) stays text".into(),
            "config error".into(),
        ]));
        match runtime().block_on(run(&action, &with_lines)) {
            Ran::Exited { status, output } => {
                assert!(status.success(), "{output:?}");
                assert_eq!(
                    String::from_utf8_lossy(&output.stdout),
                    "600\n$(rm -rf /) stays text\nconfig error\n"
                );
                let path = String::from_utf8_lossy(&output.stderr).into_owned();
                assert!(!path.is_empty());
                assert!(!std::path::Path::new(&path).exists(), "{path} left behind");
            }
            other => panic!("{other:?}"),
        }
        // Without lines, no file and no variable.
        let plain = CommandAction {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                r#"printf %s "${CRASHWATCH_LAST_LINES_FILE-unset}""#.into(),
            ],
            timeout: Duration::from_secs(10),
        };
        match runtime().block_on(run(&plain, &request(None))) {
            Ran::Exited { output, .. } => assert_eq!(output.stdout, b"unset"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn output_beyond_the_cap_is_dropped_not_held() {
        let action = CommandAction {
            argv: vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                "head -c 300000 /dev/zero".to_owned(),
            ],
            timeout: Duration::from_secs(10),
        };
        match runtime().block_on(run(&action, &request(None))) {
            Ran::Exited { status, output } => {
                assert!(status.success());
                assert_eq!(output.stdout.len(), MAX_OUTPUT);
                assert!(output.truncated);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_timeout_kills_the_whole_process_group() {
        let dir = std::env::temp_dir().join(format!("crashwatch-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pid_file = dir.join("grandchild.pid");
        let action = CommandAction {
            argv: vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                format!("sleep 60 & echo $! > {}; wait", pid_file.display()),
            ],
            timeout: Duration::from_millis(500),
        };
        let ran = runtime().block_on(run(&action, &request(None)));
        assert!(matches!(ran, Ran::TimedOut { .. }), "{ran:?}");
        let pid = std::fs::read_to_string(&pid_file).expect("the grandchild's pid");
        let proc = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
        // Killed, then reaped by its parent's parent (init or a subreaper) some time later.
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            std::fs::read_to_string(proc.join("stat"))
                .map(|stat| stat.contains(") Z "))
                .unwrap_or(true)
        });
        assert!(gone, "the grandchild {} outlived the timeout", pid.trim());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_program_fails_to_spawn() {
        let action = CommandAction {
            argv: vec!["/nonexistent/page-someone".to_owned()],
            timeout: Duration::from_secs(1),
        };
        let ran = runtime().block_on(run(&action, &request(None)));
        assert!(matches!(ran, Ran::SpawnFailed(_)), "{ran:?}");
    }
}
