//! The job hook: `crashwatch upstart-hook`, run by Upstart on every job event, hands the event
//! to the running daemon over a local socket and exits.
//!
//! Upstart runs one process per job instance at a time and blocks the `starting` and `stopping`
//! events until the hook job is running, so the hook must be cheap and must never wait: it
//! sends one datagram and exits. The daemon does the thinking.
//!
//! Each event runs a hook process of its own, so two hooks race: on a real Upstart 1.13.2 the
//! `starting` of a respawn reached the daemon before the `stopping` it follows in 3 of 7 runs of
//! a fast respawn loop. So the hook stamps its message with `CLOCK_MONOTONIC`, read as it starts
//! (the host's one clock that every process reads alike and that never steps), and the daemon
//! holds each message for [`REORDER_WINDOW_US`] and hands them on in the order of their stamps
//! ([`Reorder`]). Nothing finer is to be had: Upstart's event environment carries no pid of the
//! job and no sequence number.
//!
//! Wire format, version 2: one UTF-8 JSON object per datagram on a Unix datagram socket, at most
//! [`MAX_MESSAGE`] bytes:
//!
//! ```json
//! {"v":2,"event":"stopping","job":"www","instance":"","result":"failed","process":"main","exit_status":"1","monotonic_us":81736452113}
//! ```
//!
//! `v` (2), `event` (`starting`, `started`, `stopping` or `stopped`), `job` (not empty) and
//! `monotonic_us` (the hook's `CLOCK_MONOTONIC` in µs) are required; `instance` defaults to
//! empty; `result`, `process`, `exit_status` and `exit_signal` are Upstart's `$RESULT`,
//! `$PROCESS`, `$EXIT_STATUS` and `$EXIT_SIGNAL`, copied as strings and left out when unset.
//! Version 1, the same without `monotonic_us`, is still read (a hook of an older crashwatch): it
//! is ordered by when it was received. Unknown fields, another version, control characters in a
//! name, binary or oversized datagrams are refused whole: a datagram is a message or garbage,
//! nothing in between. A datagram socket keeps messages whole without framing, and the file mode
//! (0600) of the socket lets only its owner (the daemon's user) and root send.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::tracker::{JobEvent, JobEventKind};
use crate::time::{monotonic_micros, Micros};

/// Where the daemon listens and the hook sends, unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/crashwatch/hook.sock";

/// The largest datagram accepted. Upstart's environment values are short; a job or instance name
/// longer than this is not one Upstart made.
pub const MAX_MESSAGE: usize = 4096;

/// The version of the wire format this build writes.
pub const WIRE_VERSION: u32 = 2;

/// The oldest version this build still reads: version 1 has no `monotonic_us`.
pub const OLDEST_WIRE_VERSION: u32 = 1;

/// How long the daemon holds a hook message, in µs of `CLOCK_MONOTONIC` after the hook stamped
/// it, so that one stamped earlier but received later is handed on first. Two hooks of one job
/// run about a millisecond apart; 50 ms covers a loaded host and is too short to matter to a
/// crash-loop window.
pub const REORDER_WINDOW_US: u64 = 50_000;

/// Messages held at most; beyond that the oldest goes on at once, so a flood costs no memory.
const MAX_HELD: usize = 4096;

/// How long the hook may wait for the daemon's socket to take its datagram.
const SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// One hook message as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookMessage {
    /// The wire format version, [`WIRE_VERSION`].
    pub v: u32,
    /// The event that ran the hook.
    pub event: String,
    /// `$JOB`.
    pub job: String,
    /// `$INSTANCE`.
    #[serde(default)]
    pub instance: String,
    /// `$RESULT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// `$PROCESS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// `$EXIT_STATUS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<String>,
    /// `$EXIT_SIGNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<String>,
    /// `CLOCK_MONOTONIC` in µs when the hook started (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monotonic_us: Option<u64>,
}

/// A hook message as the daemon reads it: the job event, and the hook's monotonic stamp (none
/// from a version 1 hook).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookEvent {
    /// The job event.
    pub event: JobEvent,
    /// `monotonic_us`.
    pub monotonic_us: Option<u64>,
}

/// Why a datagram was refused, or why the hook could not send. Each is a short fixed phrase so it
/// can be logged without echoing what a stranger sent.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Larger than [`MAX_MESSAGE`].
    #[error("message larger than {MAX_MESSAGE} bytes")]
    Oversized,
    /// Not UTF-8 JSON of the expected shape.
    #[error("not a hook message: {0}")]
    Malformed(&'static str),
    /// A version this build does not speak.
    #[error("unsupported hook message version {0}")]
    Version(u32),
    /// A field out of range.
    #[error("invalid hook message: {0}")]
    Invalid(&'static str),
    /// The hook was not run by Upstart for a job event.
    #[error("{0}")]
    Environment(String),
    /// The daemon's socket did not take the message.
    #[error("cannot hand the event to crashwatch at {path}: {source}")]
    Send {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl HookMessage {
    /// Builds the message from Upstart's environment as the hook job sees it, stamped with
    /// `monotonic_us`. `UPSTART_EVENTS` names the events that started the hook; the first job
    /// event among them is the one sent.
    pub fn from_env(
        var: impl Fn(&str) -> Option<String>,
        monotonic_us: u64,
    ) -> Result<HookMessage, HookError> {
        let job = var("JOB").filter(|j| !j.is_empty()).ok_or_else(|| {
            HookError::Environment(
                "$JOB is not set: run upstart-hook from an Upstart job started on job events"
                    .to_owned(),
            )
        })?;
        let events = var("UPSTART_EVENTS").unwrap_or_default();
        let event = events
            .split_whitespace()
            .find(|e| JobEventKind::parse(e).is_some())
            .ok_or_else(|| {
                HookError::Environment(format!(
                    "$UPSTART_EVENTS ({events:?}) names none of starting, started, stopping, stopped"
                ))
            })?;
        Ok(HookMessage {
            v: WIRE_VERSION,
            event: event.to_owned(),
            job,
            instance: var("INSTANCE").unwrap_or_default(),
            result: var("RESULT"),
            process: var("PROCESS"),
            exit_status: var("EXIT_STATUS"),
            exit_signal: var("EXIT_SIGNAL"),
            monotonic_us: Some(monotonic_us),
        })
    }

    /// The datagram.
    pub fn encode(&self) -> Result<Vec<u8>, HookError> {
        let bytes = serde_json::to_vec(self).map_err(|_| HookError::Malformed("unencodable"))?;
        if bytes.len() > MAX_MESSAGE {
            return Err(HookError::Oversized);
        }
        Ok(bytes)
    }

    /// Reads and checks a datagram of either version.
    pub fn decode(bytes: &[u8]) -> Result<HookEvent, HookError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(HookError::Oversized);
        }
        if std::str::from_utf8(bytes).is_err() {
            return Err(HookError::Malformed("not UTF-8"));
        }
        // A fixed phrase, not serde's message: that one quotes what the sender wrote.
        let message: HookMessage = serde_json::from_slice(bytes).map_err(|e| {
            HookError::Malformed(match e.classify() {
                serde_json::error::Category::Data => "JSON of the wrong shape",
                _ => "not JSON",
            })
        })?;
        match (message.v, message.monotonic_us) {
            (OLDEST_WIRE_VERSION, None) | (WIRE_VERSION, Some(_)) => {}
            (OLDEST_WIRE_VERSION, Some(_)) => {
                return Err(HookError::Invalid("monotonic_us in a version 1 message"))
            }
            (WIRE_VERSION, None) => return Err(HookError::Invalid("no monotonic_us")),
            (v, _) => return Err(HookError::Version(v)),
        }
        let kind =
            JobEventKind::parse(&message.event).ok_or(HookError::Invalid("unknown event"))?;
        if message.job.is_empty() {
            return Err(HookError::Invalid("empty job"));
        }
        let fields = [
            &message.job,
            &message.instance,
            message.result.as_ref().unwrap_or(&message.job),
            message.process.as_ref().unwrap_or(&message.job),
            message.exit_status.as_ref().unwrap_or(&message.job),
            message.exit_signal.as_ref().unwrap_or(&message.job),
        ];
        if fields.iter().any(|f| f.chars().any(char::is_control)) {
            return Err(HookError::Invalid("control character in a field"));
        }
        Ok(HookEvent {
            event: JobEvent {
                kind,
                job: message.job,
                instance: message.instance,
                result: message.result,
                process: message.process,
                exit_status: message.exit_status,
                exit_signal: message.exit_signal,
            },
            monotonic_us: message.monotonic_us,
        })
    }
}

/// Hook messages held for [`REORDER_WINDOW_US`] and handed on in the order the hooks stamped
/// them. Pure: every time is passed in, monotonic µs.
#[derive(Debug, Default)]
pub struct Reorder {
    held: Vec<Held>,
    received: u64,
}

#[derive(Debug)]
struct Held {
    /// When it may go on: its stamp (or its receipt, whichever is earlier) plus the window.
    due: u64,
    /// The order among messages: the hook's stamp, or the receipt for a version 1 message.
    stamp: u64,
    /// Receipt order, for equal stamps.
    seq: u64,
    event: JobEvent,
    /// When it happened, on the realtime clock.
    at: Micros,
}

impl Reorder {
    /// An empty buffer.
    pub fn new() -> Reorder {
        Reorder::default()
    }

    /// Holds `message`, received at monotonic `now` (realtime `now_realtime`). Its time is the
    /// hook's stamp taken over to the realtime clock: the event happened when the hook ran, not
    /// when its datagram arrived. A stamp ahead of `now` (another clock) counts as `now`.
    pub fn push(&mut self, message: HookEvent, now: u64, now_realtime: Micros) {
        let stamp = message
            .monotonic_us
            .filter(|stamp| *stamp > 0)
            .unwrap_or(now)
            .min(now);
        self.received += 1;
        self.held.push(Held {
            due: stamp.saturating_add(REORDER_WINDOW_US),
            stamp,
            seq: self.received,
            event: message.event,
            at: now_realtime.saturating_sub(now - stamp),
        });
        if self.held.len() > MAX_HELD {
            let waiting = self.held.iter_mut().filter(|h| h.due > 0);
            if let Some(oldest) = waiting.min_by_key(|h| (h.stamp, h.seq)) {
                oldest.due = 0;
            }
        }
    }

    /// When the next message may go on (monotonic µs), if one is held.
    pub fn next_due(&self) -> Option<u64> {
        self.held.iter().map(|h| h.due).min()
    }

    /// The messages due at monotonic `now`, oldest stamp first, each with its realtime time.
    pub fn release(&mut self, now: u64) -> Vec<(JobEvent, Micros)> {
        let (mut due, held): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.due <= now);
        self.held = held;
        due.sort_by_key(|h| (h.stamp, h.seq));
        due.into_iter().map(|h| (h.event, h.at)).collect()
    }

    /// Every message held, oldest stamp first, due or not (at shutdown).
    pub fn drain(&mut self) -> Vec<(JobEvent, Micros)> {
        self.release(u64::MAX)
    }
}

/// Runs the hook: reads the environment, sends one datagram to `socket`, returns. Never waits
/// longer than a short send timeout.
pub fn send_from_env(socket: &Path) -> Result<(), HookError> {
    // First of all: the stamp orders this hook against the one of the job's next event.
    let monotonic_us = monotonic_micros();
    let var = |key: &str| std::env::var_os(key).map(|v| v.to_string_lossy().into_owned());
    let bytes = HookMessage::from_env(var, monotonic_us)?.encode()?;
    let send = |socket: &Path| -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        sock.set_write_timeout(Some(SEND_TIMEOUT))?;
        sock.send_to(&bytes, socket)?;
        Ok(())
    };
    send(socket).map_err(|source| HookError::Send {
        path: socket.to_owned(),
        source,
    })
}

/// The daemon's end: a datagram socket at a path, readable and writable by its owner only,
/// removed again when dropped.
#[derive(Debug)]
pub struct HookSocket {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl HookSocket {
    /// Binds `path`, creating its directory if needed. A stale socket left by a previous run is
    /// replaced; a live one (another crashwatch) or a file that is not a socket is an error. The
    /// socket is bound under a temporary name and renamed into place once its mode is 0600, so
    /// it is never writable by others, whatever the umask.
    pub fn bind(path: &Path) -> io::Result<HookSocket> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixDatagram::unbound()?.connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another process is listening on it",
                    ));
                }
                std::fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "it exists and is not a socket",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let temporary = dir.join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&temporary);
        let socket = UnixDatagram::bind(&temporary)?;
        let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&temporary);
            return Err(e);
        }
        socket.set_nonblocking(true)?;
        Ok(HookSocket {
            socket: tokio::net::UnixDatagram::from_std(socket)?,
            path: path.to_owned(),
        })
    }

    /// The path the socket is bound at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next datagram. `buf` must hold `MAX_MESSAGE + 1` bytes so that an oversized
    /// datagram shows as one (the kernel cuts it to the buffer).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.recv(buf).await
    }
}

impl Drop for HookSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn a_hook_message_round_trips() {
        let message = HookMessage::from_env(
            env(&[
                ("JOB", "www"),
                ("INSTANCE", ""),
                ("UPSTART_EVENTS", "stopping"),
                ("RESULT", "failed"),
                ("PROCESS", "main"),
                ("EXIT_SIGNAL", "SEGV"),
            ]),
            81_736_452_113,
        )
        .expect("valid environment");
        let bytes = message.encode().expect("encodes");
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            r#"{"v":2,"event":"stopping","job":"www","instance":"","result":"failed","process":"main","exit_signal":"SEGV","monotonic_us":81736452113}"#
        );
        let decoded = HookMessage::decode(&bytes).expect("decodes");
        assert_eq!(decoded.monotonic_us, Some(81_736_452_113));
        let event = decoded.event;
        assert_eq!(event.kind, JobEventKind::Stopping);
        assert_eq!(event.unit(), "www");
        assert_eq!(event.exit_signal.as_deref(), Some("SEGV"));
        assert_eq!(event.exit_status, None);
    }

    #[test]
    fn the_environment_must_come_from_a_job_event() {
        assert!(HookMessage::from_env(env(&[("UPSTART_EVENTS", "starting")]), 1).is_err());
        assert!(
            HookMessage::from_env(env(&[("JOB", "www"), ("UPSTART_EVENTS", "startup")]), 1)
                .is_err()
        );
        let m = HookMessage::from_env(
            env(&[("JOB", "www"), ("UPSTART_EVENTS", "runlevel starting")]),
            1,
        )
        .expect("valid");
        assert_eq!(m.event, "starting");
        assert_eq!(m.instance, "");
    }

    #[test]
    fn garbage_is_refused() {
        let too_big = vec![b' '; MAX_MESSAGE + 1];
        let cases: [&[u8]; 14] = [
            b"",
            b"\x00\xff\xfe binary",
            b"not json",
            b"[1,2,3]",
            br#"{"v":3,"event":"starting","job":"www","monotonic_us":1}"#,
            br#"{"v":2,"event":"starting","job":"www"}"#,
            br#"{"v":1,"event":"starting","job":"www","monotonic_us":1}"#,
            br#"{"v":2,"event":"starting","job":"www","monotonic_us":-1}"#,
            br#"{"v":1,"event":"exploded","job":"www"}"#,
            br#"{"v":1,"event":"starting","job":""}"#,
            br#"{"v":1,"event":"starting"}"#,
            br#"{"v":1,"event":"starting","job":"www","extra":1}"#,
            br#"{"v":1,"event":"starting","job":"w\nw"}"#,
            &too_big,
        ];
        for bytes in cases {
            assert!(
                HookMessage::decode(bytes).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bytes)
            );
        }
        let ok = br#"{"v":2,"event":"starting","job":"network-interface","instance":"eth0","monotonic_us":7}"#;
        assert_eq!(
            HookMessage::decode(ok).expect("valid").event.unit(),
            "network-interface (eth0)"
        );
    }

    #[test]
    fn a_version_1_message_of_an_older_hook_is_still_read() {
        let old = br#"{"v":1,"event":"stopping","job":"www","instance":"","result":"ok"}"#;
        let decoded = HookMessage::decode(old).expect("version 1 is read");
        assert_eq!(decoded.monotonic_us, None);
        assert_eq!(decoded.event.kind, JobEventKind::Stopping);
        assert_eq!(decoded.event.result.as_deref(), Some("ok"));
    }

    fn message(event: &str, monotonic_us: Option<u64>) -> HookEvent {
        let kind = JobEventKind::parse(event).expect("a job event");
        HookEvent {
            event: JobEvent {
                kind,
                job: "www".into(),
                instance: String::new(),
                result: (kind == JobEventKind::Stopping).then(|| "ok".to_owned()),
                process: None,
                exit_status: None,
                exit_signal: None,
            },
            monotonic_us,
        }
    }

    fn kinds(released: &[(JobEvent, Micros)]) -> Vec<&'static str> {
        released.iter().map(|(e, _)| e.kind.as_str()).collect()
    }

    #[test]
    fn messages_go_on_in_the_order_the_hooks_stamped_them() {
        let mut reorder = Reorder::new();
        // As observed: the `starting` of a respawn arrives 1 ms before the `stopping` it follows.
        reorder.push(message("starting", Some(10_300)), 10_900, 1_000_900);
        reorder.push(message("stopping", Some(10_200)), 11_900, 1_001_900);
        assert_eq!(reorder.next_due(), Some(10_200 + REORDER_WINDOW_US));
        assert!(reorder.release(10_200 + REORDER_WINDOW_US - 1).is_empty());
        let released = reorder.release(10_300 + REORDER_WINDOW_US);
        assert_eq!(kinds(&released), ["stopping", "starting"]);
        // Dated when each hook ran, on the realtime clock.
        assert_eq!(released[0].1, 1_000_200);
        assert_eq!(released[1].1, 1_000_300);
        assert_eq!(reorder.next_due(), None);
    }

    #[test]
    fn only_what_is_due_goes_on_and_odd_stamps_are_bounded() {
        let mut reorder = Reorder::new();
        // Version 1: ordered by receipt. A stamp ahead of the daemon's clock counts as receipt.
        reorder.push(message("starting", None), 1_000, 5_000);
        reorder.push(message("stopping", Some(u64::MAX)), 2_000, 6_000);
        reorder.push(message("started", Some(0)), 3_000, 7_000);
        let released = reorder.release(1_000 + REORDER_WINDOW_US);
        assert_eq!(kinds(&released), ["starting"]);
        assert_eq!(released[0].1, 5_000);
        let released = reorder.release(3_000 + REORDER_WINDOW_US);
        assert_eq!(kinds(&released), ["stopping", "started"]);
        assert_eq!(released[0].1, 6_000);

        // A flood: nothing is held beyond the bound, the oldest going on first.
        for i in 0..(MAX_HELD as u64 + 10) {
            reorder.push(message("started", Some(100 + i)), 100 + i, 0);
        }
        let released = reorder.release(1);
        assert_eq!(released.len(), 10);
        assert_eq!(reorder.drain().len(), MAX_HELD);
    }

    #[tokio::test]
    async fn the_socket_is_private_and_replaces_a_stale_one() {
        let dir = std::env::temp_dir().join(format!("cw-hook-test-{}", std::process::id()));
        let path = dir.join("sub").join("hook.sock");
        let socket = HookSocket::bind(&path).expect("binds");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            HookSocket::bind(&path).is_err(),
            "a live socket is not taken over"
        );
        let sender = UnixDatagram::unbound().expect("socket");
        sender.send_to(b"hello", &path).expect("sends");
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        assert_eq!(socket.recv(&mut buf).await.expect("receives"), 5);
        drop(socket);
        assert!(!path.exists(), "removed on drop");
        // A socket file left behind by a daemon that died is replaced.
        drop(UnixDatagram::bind(&path).expect("binds a stale socket"));
        assert!(path.exists());
        let again = HookSocket::bind(&path).expect("replaces a stale socket");
        drop(again);
        assert!(!path.exists(), "removed on drop");
        std::fs::write(&path, b"x").expect("writes");
        assert!(
            HookSocket::bind(&path).is_err(),
            "a plain file is not replaced"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
