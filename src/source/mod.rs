//! Sources: each owns its connection to an init system, its resync and its reconnects, and only
//! emits [`Transition`](crate::event::Transition)s. Nothing downstream knows D-Bus.

pub mod systemd;
