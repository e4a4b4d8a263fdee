//! Sources: each owns its connection to an init system, its resync and its reconnects, and only
//! emits [`Transition`](crate::event::Transition)s. Nothing downstream knows D-Bus.

pub mod bus;
pub mod context;
pub mod journal;
pub mod mask;
pub mod systemd;
pub mod upstart;

use std::time::Duration;

use crate::event::SourceKind;

/// Which init system to watch (`--source`, `[source] kind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceChoice {
    /// systemd on the system bus.
    #[default]
    Systemd,
    /// Upstart, over D-Bus and/or its job hook.
    Upstart,
    /// systemd if `org.freedesktop.systemd1` has an owner on the system bus, else Upstart.
    Auto,
}

impl SourceChoice {
    /// Reads `systemd`, `upstart` or `auto`.
    pub fn parse(text: &str) -> Result<SourceChoice, String> {
        match text.trim() {
            "systemd" => Ok(SourceChoice::Systemd),
            "upstart" => Ok(SourceChoice::Upstart),
            "auto" => Ok(SourceChoice::Auto),
            other => Err(format!("{other:?} is not systemd, upstart or auto")),
        }
    }
}

/// Decides `auto`: systemd when `org.freedesktop.systemd1` has an owner on the system bus. No
/// reachable bus, or no answer within a few seconds, means Upstart, whose private socket needs
/// no bus.
pub async fn detect() -> SourceKind {
    let probe = async {
        let conn = zbus::connection::Builder::system().build().await.ok()?;
        let reply = conn
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "NameHasOwner",
                &("org.freedesktop.systemd1",),
            )
            .await
            .ok()?;
        reply.body().deserialize::<bool>().ok()
    };
    match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Some(true)) => SourceKind::Systemd,
        _ => SourceKind::Upstart,
    }
}
