//! systemd's readiness and watchdog protocol (`sd_notify`), spoken directly: one datagram of
//! `KEY=VALUE` lines to the socket named in `$NOTIFY_SOCKET`. A few lines here spare a C library.
//!
//! Under `Type=notify` systemd counts crashwatch started only once it is subscribed and has its
//! snapshot, so units ordered after it see a watcher that is already listening. With
//! `WatchdogSec=` it expects a ping at least that often; the pings come from a task on the same
//! runtime as the event path, so a stalled runtime stops them and systemd restarts crashwatch.
//! Outside systemd nothing is sent and no timer runs: an idle crashwatch wakes for nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names, or `None` when crashwatch does not run under a
    /// service manager that asked for notifications.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_str()?;
        let address = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).ok()?
        } else {
            SocketAddr::from_pathname(path).ok()?
        };
        let socket = UnixDatagram::unbound().ok()?;
        Some(Notifier { socket, address })
    }

    /// Sends `state`, e.g. `READY=1\nSTATUS=Watching 12 units`. Failures are ignored: the
    /// service manager going away must not take crashwatch with it.
    pub fn send(&self, state: &str) {
        let _ = self.socket.send_to_addr(state.as_bytes(), &self.address);
    }

    /// How often to ping the watchdog: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled advises,
    /// when the watchdog is on and meant for this process.
    pub fn watchdog_interval() -> Option<Duration> {
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.parse::<u32>().ok()? != std::process::id() {
                return None;
            }
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("crashwatch-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).expect("binding a test socket");
        let notifier = Notifier {
            socket: UnixDatagram::unbound().expect("socket"),
            address: SocketAddr::from_pathname(&path).expect("address"),
        };
        notifier.send("READY=1\nSTATUS=Watching 3 units");
        let mut buf = [0u8; 128];
        let n = receiver.recv(&mut buf).expect("receiving");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=Watching 3 units");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
