//! The job hook: `crashwatch upstart-hook`, run by Upstart on every job event, hands the event
//! to the running daemon over a local socket and exits.
//!
//! Upstart runs one process per job instance at a time and blocks the `starting` and `stopping`
//! events until the hook job is running, so the hook must be cheap and must never wait: it
//! sends one datagram and exits. The daemon does the thinking.
//!
//! Wire format, version 1: one UTF-8 JSON object per datagram on a Unix datagram socket, at most
//! [`MAX_MESSAGE`] bytes:
//!
//! ```json
//! {"v":1,"event":"stopping","job":"www","instance":"","result":"failed","process":"main","exit_status":"1"}
//! ```
//!
//! `v` (1), `event` (`starting`, `started`, `stopping` or `stopped`) and `job` (not empty) are
//! required; `instance` defaults to empty; `result`, `process`, `exit_status` and `exit_signal`
//! are Upstart's `$RESULT`, `$PROCESS`, `$EXIT_STATUS` and `$EXIT_SIGNAL`, copied as strings and
//! left out when unset. Unknown fields, another version, control characters in a name, binary or
//! oversized datagrams are refused whole: a datagram is a message or garbage, nothing in between.
//! A datagram socket keeps messages whole without framing, and the file mode (0600) of the socket
//! lets only its owner (the daemon's user) and root send.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::tracker::{JobEvent, JobEventKind};

/// Where the daemon listens and the hook sends, unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/crashwatch/hook.sock";

/// The largest datagram accepted. Upstart's environment values are short; a job or instance name
/// longer than this is not one Upstart made.
pub const MAX_MESSAGE: usize = 4096;

/// The version of the wire format this build speaks.
pub const WIRE_VERSION: u32 = 1;

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
}

/// Why a datagram was refused, or why the hook could not send. Each is a short fixed phrase so it
/// can be logged without echoing what a stranger sent.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Larger than [`MAX_MESSAGE`].
    #[error("message larger than {MAX_MESSAGE} bytes")]
    Oversized,
    /// Not UTF-8 JSON of the expected shape.
    #[error("not a version {WIRE_VERSION} hook message: {0}")]
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
    /// Builds the message from Upstart's environment as the hook job sees it. `UPSTART_EVENTS`
    /// names the events that started the hook; the first job event among them is the one sent.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<HookMessage, HookError> {
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

    /// Reads and checks a datagram.
    pub fn decode(bytes: &[u8]) -> Result<JobEvent, HookError> {
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
        if message.v != WIRE_VERSION {
            return Err(HookError::Version(message.v));
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
        Ok(JobEvent {
            kind,
            job: message.job,
            instance: message.instance,
            result: message.result,
            process: message.process,
            exit_status: message.exit_status,
            exit_signal: message.exit_signal,
        })
    }
}

/// Runs the hook: reads the environment, sends one datagram to `socket`, returns. Never waits
/// longer than a short send timeout.
pub fn send_from_env(socket: &Path) -> Result<(), HookError> {
    let var = |key: &str| std::env::var_os(key).map(|v| v.to_string_lossy().into_owned());
    let bytes = HookMessage::from_env(var)?.encode()?;
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
        let message = HookMessage::from_env(env(&[
            ("JOB", "www"),
            ("INSTANCE", ""),
            ("UPSTART_EVENTS", "stopping"),
            ("RESULT", "failed"),
            ("PROCESS", "main"),
            ("EXIT_SIGNAL", "SEGV"),
        ]))
        .expect("valid environment");
        let bytes = message.encode().expect("encodes");
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            r#"{"v":1,"event":"stopping","job":"www","instance":"","result":"failed","process":"main","exit_signal":"SEGV"}"#
        );
        let event = HookMessage::decode(&bytes).expect("decodes");
        assert_eq!(event.kind, JobEventKind::Stopping);
        assert_eq!(event.unit(), "www");
        assert_eq!(event.exit_signal.as_deref(), Some("SEGV"));
        assert_eq!(event.exit_status, None);
    }

    #[test]
    fn the_environment_must_come_from_a_job_event() {
        assert!(HookMessage::from_env(env(&[("UPSTART_EVENTS", "starting")])).is_err());
        assert!(
            HookMessage::from_env(env(&[("JOB", "www"), ("UPSTART_EVENTS", "startup")])).is_err()
        );
        let m = HookMessage::from_env(env(&[
            ("JOB", "www"),
            ("UPSTART_EVENTS", "runlevel starting"),
        ]))
        .expect("valid");
        assert_eq!(m.event, "starting");
        assert_eq!(m.instance, "");
    }

    #[test]
    fn garbage_is_refused() {
        let too_big = vec![b' '; MAX_MESSAGE + 1];
        let cases: [&[u8]; 11] = [
            b"",
            b"\x00\xff\xfe binary",
            b"not json",
            b"[1,2,3]",
            br#"{"v":2,"event":"starting","job":"www"}"#,
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
        let ok = br#"{"v":1,"event":"starting","job":"network-interface","instance":"eth0"}"#;
        assert_eq!(
            HookMessage::decode(ok).expect("valid").unit(),
            "network-interface (eth0)"
        );
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
