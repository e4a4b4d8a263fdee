//! The server's listening sockets: bound to the configured addresses, or handed over by systemd's
//! socket activation (`--web.systemd-socket`, as in exporter-toolkit).
//!
//! Socket activation follows sd_listen_fds(3): `$LISTEN_PID` must be this process and
//! `$LISTEN_FDS` says how many sockets start at file descriptor 3. Read by hand: the protocol is
//! two environment variables and a check that each descriptor is a listening TCP socket. The
//! descriptors are made close-on-exec so that an action's command does not inherit them.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};

use tokio::net::TcpListener;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Binds every address. Separate from serving so that a busy port fails at start-up.
pub async fn bind(addresses: &[SocketAddr]) -> Result<Vec<TcpListener>, (String, String)> {
    let mut listeners = Vec::with_capacity(addresses.len());
    for address in addresses {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| (address.to_string(), e.to_string()))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The listening sockets systemd passed to this process. The error says what is missing.
pub fn systemd_sockets() -> Result<Vec<TcpListener>, String> {
    sockets_from(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::process::id(),
    )
}

fn sockets_from(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    own_pid: u32,
) -> Result<Vec<TcpListener>, String> {
    let count = descriptor_count(listen_pid, listen_fds, own_pid)?;
    let mut listeners = Vec::with_capacity(count);
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count as RawFd {
        check_listening_tcp(fd)?;
        // SAFETY: fcntl on a descriptor systemd handed to this process, checked above.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: the descriptor is an open listening TCP socket that nothing else owns: systemd
        // passed it for this process to serve, and each is taken once.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("socket activation: file descriptor {fd}: {e}"))?;
        listeners.push(
            TcpListener::from_std(listener)
                .map_err(|e| format!("socket activation: file descriptor {fd}: {e}"))?,
        );
    }
    Ok(listeners)
}

/// How many descriptors `$LISTEN_PID` and `$LISTEN_FDS` pass to `own_pid`.
fn descriptor_count(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    own_pid: u32,
) -> Result<usize, String> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Err(
            "socket activation: $LISTEN_PID and $LISTEN_FDS are not set (start crashwatch from a \
             systemd .socket unit, or drop --web.systemd-socket)"
                .to_owned(),
        );
    };
    if pid.trim().parse::<u32>().ok() != Some(own_pid) {
        return Err(format!(
            "socket activation: $LISTEN_PID is {pid}, not this process ({own_pid})"
        ));
    }
    match fds.trim().parse::<usize>() {
        Ok(0) => Err("socket activation: $LISTEN_FDS is 0: systemd passed no socket".to_owned()),
        Ok(n) if n <= 64 => Ok(n),
        _ => Err(format!(
            "socket activation: $LISTEN_FDS is {fds:?}, not a number of sockets"
        )),
    }
}

fn check_listening_tcp(fd: RawFd) -> Result<(), String> {
    let option = |name: libc::c_int| -> Result<libc::c_int, String> {
        let mut value: libc::c_int = 0;
        let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `length` bytes into `value`.
        let result = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut length,
            )
        };
        if result == 0 {
            Ok(value)
        } else {
            Err(format!(
                "socket activation: file descriptor {fd} is not a socket: {}",
                std::io::Error::last_os_error()
            ))
        }
    };
    let listening = option(libc::SO_ACCEPTCONN)? != 0;
    let stream = option(libc::SO_TYPE)? == libc::SOCK_STREAM;
    let domain = option(libc::SO_DOMAIN)?;
    if !(listening && stream && (domain == libc::AF_INET || domain == libc::AF_INET6)) {
        return Err(format!(
            "socket activation: file descriptor {fd} is not a listening TCP socket \
             (ListenStream= an address or port in the .socket unit)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_read_as_sd_listen_fds_reads_it() {
        assert_eq!(descriptor_count(Some("42"), Some("2"), 42), Ok(2));
        assert_eq!(descriptor_count(Some(" 42\n"), Some("1"), 42), Ok(1));
        for (pid, fds, expected) in [
            (None, Some("1"), "are not set"),
            (Some("42"), None, "are not set"),
            (
                Some("41"),
                Some("1"),
                "$LISTEN_PID is 41, not this process (42)",
            ),
            (Some("x"), Some("1"), "not this process"),
            (Some("42"), Some("0"), "systemd passed no socket"),
            (Some("42"), Some("many"), "not a number of sockets"),
        ] {
            let message = descriptor_count(pid, fds, 42).expect_err(expected);
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn a_descriptor_that_is_no_listening_tcp_socket_is_refused() {
        let message = check_listening_tcp(0).expect_err("stdin is no socket here");
        assert!(message.contains("file descriptor 0"), "{message}");
        let bound = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        use std::os::fd::AsRawFd;
        let message = check_listening_tcp(bound.as_raw_fd()).expect_err("udp");
        assert!(message.contains("not a listening TCP socket"), "{message}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
        assert_eq!(check_listening_tcp(listener.as_raw_fd()), Ok(()));
    }
}
