//! The kernel log as a record of what Upstart's main processes did while nobody listened.
//!
//! A stateful re-exec of Upstart (or any other break of the connection) drops every peer-to-peer
//! client, and Upstart's signals are fire-and-forget: what happened during the gap is lost, and a
//! snapshot after it can only tell that the main pid changed, "at least one" crash. But Upstart's
//! init logs the end of every job process through `nih_log`, and as pid 1 it logs to the kernel
//! log (init/job_process.c, `job_process_terminated`):
//!
//! ```text
//! init: www main process (1234) terminated with status 1
//! init: www main process (1234) killed by SEGV signal
//! init: network-interface (eth0) main process (1240) killed by signal 64
//! ```
//!
//! (`exited normally` is logged at info level and usually filtered out; it is read when present.)
//! `/dev/kmsg` gives each record as `PRI,SEQ,TIMESTAMP_US,FLAGS[,...];MESSAGE`, with the time in
//! µs on the monotonic clock, followed by continuation lines ` KEY=value` (kernel
//! Documentation/ABI/testing/dev-kmsg). Reading it needs root or `CAP_SYSLOG`, which crashwatch
//! has when it runs as an Upstart job. [`parse_line`] reads one line into a [`MainProcessEnd`];
//! [`read_window`] reads every record of the ring buffer (or of a file in the same format),
//! bounded in records, bytes and time, and keeps the ends inside a window of monotonic time.
//!
//! Only the end of a `main` process counts: pre-start, post-stop and the other scripts are not
//! the service. The log says nothing of the goal, so whether an end was a crash is still the
//! tracker's to decide.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::event::signal_number;

/// The records read at most from one log: the kernel's ring buffer holds a few thousand.
pub const MAX_RECORDS: usize = 200_000;
/// The bytes read at most from one log.
pub const MAX_BYTES: usize = 64 << 20;
/// The longest a read may take; the log is read on a thread of the blocking pool.
pub const MAX_READ_TIME: Duration = Duration::from_secs(2);
/// The longest line kept; a longer one is skipped (a kmsg record is at most about 8 KiB).
const MAX_LINE: usize = 16 << 10;

/// How a main process ended, as Upstart logged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `terminated with status N` (or `exited normally`: 0).
    Exited(i32),
    /// `killed by SEGV signal` or `killed by signal N`; `None` for a name crashwatch does not know.
    Killed(Option<i32>),
}

/// One main process end from the kernel log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MainProcessEnd {
    /// When it was logged: µs on the monotonic clock.
    pub at: u64,
    /// The unit: `job`, or `job (instance)` as Upstart names an instance (and crashwatch too).
    pub unit: String,
    /// The pid of the process that ended.
    pub pid: u32,
    /// How it ended.
    pub ending: Ending,
}

/// Reads one line of `/dev/kmsg` output. `None` for continuation lines (` KEY=value`), records
/// that are not an Upstart main process end, and anything malformed.
pub fn parse_line(line: &[u8]) -> Option<MainProcessEnd> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\n').unwrap_or(line);
    let (prefix, message) = line.split_once(';')?;
    let mut fields = prefix.split(',');
    let _priority: u32 = fields.next()?.parse().ok()?;
    let _sequence: u64 = fields.next()?.parse().ok()?;
    let at: u64 = fields.next()?.parse().ok()?;
    let (unit, pid, ending) = parse_message(message)?;
    Some(MainProcessEnd {
        at,
        unit: unit.to_owned(),
        pid,
        ending,
    })
}

/// Reads `init: <unit> main process (<pid>) <how it ended>`.
fn parse_message(message: &str) -> Option<(&str, u32, Ending)> {
    let rest = message.strip_prefix("init: ")?;
    // The last occurrence: an instance name may contain anything, the tail cannot.
    let at = rest.rfind(" main process (")?;
    let unit = &rest[..at];
    if unit.is_empty() {
        return None;
    }
    let (pid, how) = rest[at + " main process (".len()..].split_once(") ")?;
    let pid: u32 = pid.parse().ok().filter(|&p| p > 0)?;
    let ending = if let Some(status) = how.strip_prefix("terminated with status ") {
        Ending::Exited(status.parse().ok()?)
    } else if how == "exited normally" {
        Ending::Exited(0)
    } else if let Some(number) = how.strip_prefix("killed by signal ") {
        Ending::Killed(Some(number.parse().ok()?))
    } else {
        let name = how.strip_prefix("killed by ")?.strip_suffix(" signal")?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        Ending::Killed(signal_number(name))
    };
    Some((unit, pid, ending))
}

/// The main process ends logged in `path` whose time lies in `from..=to` (monotonic µs), in the
/// order they were logged. `path` is `/dev/kmsg` (opened non-blocking: each read gives one record
/// and the end of the buffer is `EAGAIN`) or a file of records in the same format. Stops after
/// [`MAX_RECORDS`] lines, [`MAX_BYTES`] or [`MAX_READ_TIME`]. Fails only when `path` cannot be
/// opened or read.
pub fn read_window(path: &Path, from: u64, to: u64) -> std::io::Result<Vec<MainProcessEnd>> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let started = Instant::now();
    let mut found = Vec::new();
    let mut buf = vec![0u8; 8 << 10];
    let mut line = Vec::new();
    let mut skipping = false;
    let (mut lines, mut bytes) = (0usize, 0usize);
    while lines < MAX_RECORDS && bytes < MAX_BYTES && started.elapsed() < MAX_READ_TIME {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // /dev/kmsg: records were overwritten under the reader; it goes on with the next.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(e),
        };
        bytes += n;
        for chunk in buf[..n].split_inclusive(|&b| b == b'\n') {
            if !skipping {
                line.extend_from_slice(chunk);
            }
            if line.len() > MAX_LINE {
                line.clear();
                skipping = true;
            }
            if chunk.ends_with(b"\n") {
                lines += 1;
                if let Some(end) = parse_line(&line).filter(|e| (from..=to).contains(&e.at)) {
                    found.push(end);
                }
                line.clear();
                skipping = false;
            }
        }
    }
    if let Some(end) = parse_line(&line).filter(|e| (from..=to).contains(&e.at)) {
        found.push(end);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(at: u64, unit: &str, pid: u32, ending: Ending) -> Option<MainProcessEnd> {
        Some(MainProcessEnd {
            at,
            unit: unit.to_owned(),
            pid,
            ending,
        })
    }

    #[test]
    fn upstart_main_process_ends_are_read() {
        assert_eq!(
            parse_line(
                b"4,1021,5093726012,-;init: www main process (1234) terminated with status 1\n"
            ),
            end(5_093_726_012, "www", 1234, Ending::Exited(1))
        );
        assert_eq!(
            parse_line(b"12,88,77,-,caller=T1;init: www main process (9) killed by SEGV signal"),
            end(77, "www", 9, Ending::Killed(Some(11)))
        );
        assert_eq!(
            parse_line(
                b"4,5,6,c;init: network-interface (eth0) main process (40) killed by signal 64"
            ),
            end(6, "network-interface (eth0)", 40, Ending::Killed(Some(64)))
        );
        assert_eq!(
            parse_line(b"6,5,6,-;init: www main process (40) exited normally"),
            end(6, "www", 40, Ending::Exited(0))
        );
        assert_eq!(
            parse_line(
                b"4,5,6,-;init: x (a main process (1) b) main process (7) killed by WAT signal"
            ),
            end(6, "x (a main process (1) b)", 7, Ending::Killed(None)),
            "the last `main process (` names the process"
        );
    }

    #[test]
    fn everything_else_is_passed_over() {
        for line in [
            &b" SUBSYSTEM=net"[..],
            b" DEVICE=+usb:2-1",
            b"4,1022,5093726100,-;init: www main process ended, respawning",
            b"4,1023,5093726200,-;init: www respawning too fast, stopped",
            b"4,1024,5093726300,-;init: www post-start process (12) terminated with status 1",
            b"6,1025,5093726400,-;usb 2-1: new high-speed USB device number 3",
            b"4,1026,5093726500,-;systemd: www main process (1) terminated with status 1",
            b"4,x,5,-;init: www main process (1) terminated with status 1",
            b"4,1,,-;init: www main process (1) terminated with status 1",
            b"4,1;init: www main process (1) terminated with status 1",
            b"init: www main process (1) terminated with status 1",
            b"4,1,5,-;init: www main process (0) terminated with status 1",
            b"4,1,5,-;init: www main process (-3) terminated with status 1",
            b"4,1,5,-;init: www main process (1) terminated with status",
            b"4,1,5,-;init: www main process (1) terminated with status 99999999999",
            b"4,1,5,-;init: www main process (1) killed by  signal",
            b"4,1,5,-;init: www main process (1) killed by S\xc3\xa9GV signal",
            b"4,1,5,-;init:  main process (1) killed by SEGV signal",
            b"4,1,5,-;init: main process (1) killed by SEGV signal",
            b"4,1,99999999999999999999999,-;init: www main process (1) exited normally",
            b"4,1,5,-;init: www main process (1",
            b"\xff\xfe;\x00\x01",
            b"",
            b";",
        ] {
            assert_eq!(
                parse_line(line),
                None,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        let huge = format!(
            "4,1,5,-;init: {} main process (1) terminated with status 1",
            "w".repeat(1 << 20)
        );
        assert!(parse_line(huge.as_bytes()).is_some_and(|e| e.unit.len() == 1 << 20));
    }

    #[test]
    fn a_window_of_a_log_file_is_read() {
        let dir = std::env::temp_dir().join(format!("crashwatch-kmsg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let path = dir.join("kmsg");
        let mut text = String::new();
        for (at, pid) in [(10, 1), (20, 2), (30, 3), (40, 4)] {
            text.push_str(&format!(
                "4,{pid},{at},-;init: www main process ({pid}) terminated with status 1\n \
                 SUBSYSTEM=x\n"
            ));
        }
        text.push_str(&format!("6,9,25,-;{}\n", "x".repeat(MAX_LINE * 2)));
        text.push_str("\u{0}\u{1}garbage\n");
        // The last record may lack its newline.
        text.push_str("4,9,35,-;init: www main process (9) killed by SEGV signal");
        std::fs::write(&path, text).expect("writing the log");
        let found = read_window(&path, 20, 35).expect("readable");
        let pids: Vec<u32> = found.iter().map(|e| e.pid).collect();
        assert_eq!(pids, [2, 3, 9]);
        assert!(read_window(&dir.join("missing"), 0, u64::MAX).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
