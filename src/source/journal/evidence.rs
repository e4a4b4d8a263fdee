//! What the journal holds about a crash besides the run's own lines: systemd-coredump's record
//! of a run that dumped core (signal, executable, the first frames of its backtrace), and the
//! kernel's lines when its OOM killer ended the run.
//!
//! Both are looked up only where systemd's verdict says they can exist (`core-dump`,
//! `oom-kill`), with the unit's name and the run's times as the selection: neither record names
//! the run's invocation ID. systemd-coredump dates a dump to the second (the kernel's `%t`), so
//! in a loop that dumps core more than once a second, the record shown may be a neighbouring
//! run's of the same unit. The kernel's lines are believed only from the kernel transport,
//! which journald sets itself.

use std::time::Duration;

use metrics::counter;
use serde_json::Value;

use super::context::{JournalLookup, LOOKUP_TIMEOUT};
use super::history::{run_bounded, JournalError};
use crate::event::{printable, ContextRequest, CoreDump, Micros, OomKill};
use crate::time::now_micros;

/// systemd's message ID of a core dump record (`SD_MESSAGE_COREDUMP`).
pub const COREDUMP_MESSAGE_ID: &str = "fc2e22bc6ee647b6b90729ab34a250b1";
/// The slice systemd-coredump's service instances run in (`systemd-coredump@.service`).
const COREDUMP_SLICE: &str = r"system-systemd\x2dcoredump.slice";
/// Backtrace frames kept: where it crashed, not the whole stack.
pub const FRAMES_KEPT: usize = 5;
/// The longest value kept (a frame, an executable, a kernel line), in characters.
const VALUE_MAX_CHARS: usize = 300;
/// The most journalctl output read per lookup: a record holds the whole /proc picture of the
/// process (maps, environment), a few hundred KiB for a large one.
const OUTPUT_MAX_BYTES: usize = 4 << 20;
/// When, after the run's end, its dump's record is looked for: systemd-coredump writes it only
/// once it has read the whole dump and walked the stack. The times are counted from the run's
/// end, not from the lookup, so in a loop the lookups queued behind one do not wait again. The
/// second look is made only where the kernel hands dumps to systemd-coredump; both are within
/// the 4 s an action waits for a crash's context.
const CORE_DUMP_LOOKS: [Micros; 2] = [2_000_000, 3_500_000];
/// How long after a run's end the kernel's lines about it may be dated.
const KERNEL_LATE: Micros = 2_000_000;

/// The core dump record of the crashed run, looked for while systemd-coredump may still be at
/// work; `None` when none shows up.
pub async fn core_dump(
    settings: &JournalLookup,
    request: &ContextRequest,
) -> Result<Option<CoreDump>, JournalError> {
    // The kernel dates the dump in whole seconds, at or before the run's end.
    let since = run_start(request) / 1_000_000 * 1_000_000;
    let until = request.ended + 1_000_000;
    let looks = if kernel_pipes_to_systemd_coredump() {
        &CORE_DUMP_LOOKS[..]
    } else {
        &CORE_DUMP_LOOKS[..1]
    };
    for &after in looks {
        // Capped, in case the clock moved: never longer than the look's own delay.
        let wait = (request.ended + after)
            .saturating_sub(now_micros())
            .min(after);
        tokio::time::sleep(Duration::from_micros(wait)).await;
        let args = vec![
            "--output-fields=COREDUMP_PID,COREDUMP_SIGNAL,COREDUMP_SIGNAL_NAME,COREDUMP_EXE,COREDUMP_TIMESTAMP,MESSAGE".to_owned(),
            "--lines=16".to_owned(),
            format!("--since={}", at(since)),
            format!("MESSAGE_ID={COREDUMP_MESSAGE_ID}"),
            // Only systemd-coredump's own records: anyone may log this message ID, but only
            // its service runs in this slice, and journald, not the sender, sets the field.
            format!("_SYSTEMD_SLICE={COREDUMP_SLICE}"),
            format!("COREDUMP_UNIT={}", request.unit),
        ];
        let entries = entries(settings, args).await?;
        if let Some(found) = core_dump_of(&entries, since, until) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The kernel's lines about the OOM kill of the unit's process around the run's end; `None`
/// when the journal has none (journald reads the kernel's log only where it may).
pub async fn oom_kill(
    settings: &JournalLookup,
    request: &ContextRequest,
) -> Result<Option<OomKill>, JournalError> {
    let since = run_start(request);
    let args = vec![
        "--output-fields=MESSAGE".to_owned(),
        "--lines=500".to_owned(),
        format!("--since={}", at(since)),
        format!("--until={}", at(request.ended + KERNEL_LATE)),
        "_TRANSPORT=kernel".to_owned(),
    ];
    let messages: Vec<String> = entries(settings, args)
        .await?
        .iter()
        .filter_map(|entry| entry["MESSAGE"].as_str().map(str::to_owned))
        .collect();
    let kernel_lines = oom_lines(&messages, &request.unit);
    Ok((!kernel_lines.is_empty()).then_some(OomKill { kernel_lines }))
}

/// When the run started; a minute before its end where the init system did not say.
fn run_start(request: &ContextRequest) -> Micros {
    request
        .run_started
        .unwrap_or(request.ended.saturating_sub(60_000_000))
}

/// Counts a lookup of `kind` (`core_dump`, `oom_kill`) by what it found.
pub fn count(kind: &'static str, result: &'static str) {
    counter!("crashwatch_crash_evidence_lookups_total", "kind" => kind, "result" => result)
        .increment(1);
}

/// Whether the kernel hands core dumps to systemd-coredump (`kernel.core_pattern`).
fn kernel_pipes_to_systemd_coredump() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/core_pattern")
        .is_ok_and(|pattern| pattern.starts_with('|') && pattern.contains("systemd-coredump"))
}

/// `@SECONDS.MICROS`, journalctl's absolute time.
fn at(t: Micros) -> String {
    format!("@{}.{:06}", t / 1_000_000, t % 1_000_000)
}

/// journalctl's JSON entries for `args` (matches and field selection), oldest first.
async fn entries(settings: &JournalLookup, args: Vec<String>) -> Result<Vec<Value>, JournalError> {
    let mut command = settings.json_command();
    command.args(args);
    let output = run_bounded(command, LOOKUP_TIMEOUT, OUTPUT_MAX_BYTES).await?;
    Ok(output
        .stdout
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect())
}

/// The latest record among `entries` dated from `since` to `until` (microseconds).
pub fn core_dump_of(entries: &[Value], since: Micros, until: Micros) -> Option<CoreDump> {
    entries
        .iter()
        .filter_map(|entry| {
            let dated: Micros = entry["COREDUMP_TIMESTAMP"].as_str()?.parse().ok()?;
            (since..=until).contains(&dated).then_some((dated, entry))
        })
        .max_by_key(|(dated, _)| *dated)
        .map(|(_, entry)| {
            let text = |name: &str| entry[name].as_str().map(capped);
            let signal = text("COREDUMP_SIGNAL_NAME").or_else(|| {
                let number = text("COREDUMP_SIGNAL")?;
                Some(format!("signal {number}"))
            });
            CoreDump {
                pid: text("COREDUMP_PID").and_then(|pid| pid.parse().ok()),
                signal,
                executable: text("COREDUMP_EXE"),
                frames: entry["MESSAGE"].as_str().map(frames).unwrap_or_default(),
            }
        })
}

/// The first [`FRAMES_KEPT`] frames of the first thread's stack in systemd-coredump's message,
/// without their addresses, which differ from run to run:
///
/// ```text
/// Stack trace of thread 96:
/// #0  0x00007f1e50892267 __kill (libc.so.6 + 0x3c267)
/// ```
pub fn frames(message: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in message.lines().map(str::trim) {
        let Some(number) = line.strip_prefix('#') else {
            if !out.is_empty() {
                break; // the end of the first thread's stack
            }
            continue;
        };
        let mut words = number.split_whitespace();
        let Some(index) = words
            .next()
            .filter(|i| i.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        let rest = match rest.split_first() {
            Some((address, after)) if address.starts_with("0x") => after,
            _ => &rest[..],
        };
        out.push(capped(&format!("#{index} {}", rest.join(" "))));
        if out.len() == FRAMES_KEPT {
            break;
        }
    }
    out
}

/// The kernel's `oom-kill:` line whose `task_memcg` is the unit's cgroup, and the `Killed
/// process` line of the process it names, in the order logged.
pub fn oom_lines(messages: &[String], unit: &str) -> Vec<String> {
    let suffix = format!("/{unit}");
    let mut out = Vec::new();
    let mut killed = None;
    for message in messages {
        if let Some(pid) = &killed {
            if message.contains(&format!("Killed process {pid} ")) {
                out.push(capped(message));
                break;
            }
            continue;
        }
        if !message.starts_with("oom-kill:") {
            continue;
        }
        let value = |key: &str| {
            message
                .split(',')
                .find_map(|field| field.strip_prefix(key))
                .map(str::to_owned)
        };
        let in_unit = value("task_memcg=").is_some_and(|cgroup| cgroup.ends_with(&suffix));
        if let (true, Some(pid)) = (in_unit, value("pid=")) {
            out.push(capped(message));
            killed = Some(pid);
        }
    }
    out
}

/// `text` printable (control characters escaped) and at most [`VALUE_MAX_CHARS`] long.
fn capped(text: &str) -> String {
    let text = printable(text);
    match text.char_indices().nth(VALUE_MAX_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A message as systemd-coredump 252 wrote it for a crashed bash.
    const MESSAGE: &str = "Process 94 (crash.sh) of user 0 dumped core.\n\n\
        Stack trace of thread 96:\n\
        #0  0x00007f1e50892267 __kill (libc.so.6 + 0x3c267)\n\
        #1  0x000055a3d2d05931 kill_builtin (bash + 0xa6931)\n\
        #2  0x000055a3d2ca43d2 n/a (bash + 0x453d2)\n\
        #3  0x000055a3d2caa526 execute_command_internal (bash + 0x4b526)\n\
        #4  0x000055a3d2d015a9 parse_and_execute (bash + 0xa25a9)\n\
        #5  0x000055a3d2c90fa6 n/a (bash + 0x31fa6)\n\n\
        Stack trace of thread 97:\n\
        #0  0x00007f1e50892267 poll (libc.so.6 + 0x3c267)\n\
        ELF object binary architecture: AMD x86-64";

    #[test]
    fn frames_are_the_first_threads_first_five_without_addresses() {
        assert_eq!(
            frames(MESSAGE),
            [
                "#0 __kill (libc.so.6 + 0x3c267)",
                "#1 kill_builtin (bash + 0xa6931)",
                "#2 n/a (bash + 0x453d2)",
                "#3 execute_command_internal (bash + 0x4b526)",
                "#4 parse_and_execute (bash + 0xa25a9)",
            ]
        );
        assert!(frames("Process 94 (x) of user 0 dumped core.").is_empty());
        assert_eq!(frames("#0  0x1 \u{1b}[31mred\n"), ["#0 \\u{1b}[31mred"]);
    }

    #[test]
    fn the_record_dated_within_the_run_is_chosen() {
        let record = |pid: &str, dated: &str| {
            json!({"COREDUMP_PID": pid, "COREDUMP_SIGNAL": "11", "COREDUMP_SIGNAL_NAME": "SIGSEGV",
                   "COREDUMP_EXE": "/usr/bin/bash", "COREDUMP_TIMESTAMP": dated, "MESSAGE": MESSAGE})
        };
        let entries = [
            record("90", "1796463170000000"),
            record("94", "1796463175000000"),
            record("99", "1796463180000000"),
        ];
        let found = core_dump_of(&entries, 1_796_463_174_000_000, 1_796_463_176_500_000)
            .expect("the run's record");
        assert_eq!(found.pid, Some(94));
        assert_eq!(found.signal.as_deref(), Some("SIGSEGV"));
        assert_eq!(found.executable.as_deref(), Some("/usr/bin/bash"));
        assert_eq!(found.frames.len(), FRAMES_KEPT);
        assert_eq!(found.summary(), "SIGSEGV in /usr/bin/bash (pid 94)");
        assert!(core_dump_of(&entries, 1_796_463_181_000_000, 1_796_463_190_000_000).is_none());
        let unnamed = [json!({"COREDUMP_SIGNAL": "6", "COREDUMP_TIMESTAMP": "5000000"})];
        let found = core_dump_of(&unnamed, 0, 6_000_000).expect("a record");
        assert_eq!(found.signal.as_deref(), Some("signal 6"));
        assert!(found.frames.is_empty());
    }

    #[test]
    fn the_oom_lines_are_those_of_the_units_cgroup() {
        // As mm/oom_kill.c prints them (dump_oom_summary, __oom_kill_process).
        let other = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,\
            oom_memcg=/system.slice/other.service,task_memcg=/system.slice/other.service,\
            task=other,pid=400,uid=0";
        let ours = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,\
            oom_memcg=/system.slice/hog.service,task_memcg=/system.slice/hog.service,\
            task=hog,pid=512,uid=0";
        let killed = "Memory cgroup out of memory: Killed process 512 (hog) total-vm:1052672kB, \
            anon-rss:1048576kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:2100kB oom_score_adj:0";
        let messages: Vec<String> = [
            other,
            "Memory cgroup out of memory: Killed process 400 (other) total-vm:1kB",
            "hog invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
            ours,
            killed,
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(oom_lines(&messages, "hog.service"), [ours, killed]);
        assert!(oom_lines(&messages, "og.service").is_empty());
        assert!(oom_lines(&messages, "missing.service").is_empty());
    }
}
