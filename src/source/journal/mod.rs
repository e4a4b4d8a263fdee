//! History from the journal: what systemd wrote about each unit, read back as transitions.
//!
//! crashwatch hears systemd live, so on its own everything before its start is lost: a unit in
//! the middle of a crash loop looks healthy after crashwatch is upgraded or restarted, until
//! `threshold` more restarts come. journald already keeps what PID 1 said about every unit,
//! tagged with the MESSAGE_IDs systemd documents in its catalog
//! (`/usr/lib/systemd/catalog/systemd.catalog`; the names are those of `sd-messages.h`). So at
//! start-up crashwatch reads the recent lifecycle messages ([`history`]) and sends them down the
//! same channel as the live source, marked as history, so the engine rebuilds each unit's window
//! from them; and `crashwatch replay` runs the same parser and the same detector over a
//! `journalctl -o json` export, for post-mortems.
//!
//! The journal holds messages, not states, so [`Parser`] keeps a little per unit and applies the
//! rules the live tracker applies too, from their one home (`source::systemd::verdict`):
//!
//! - a new `INVOCATION_ID` is a new run; its start message (or the first message of the run, when
//!   the last run crashed) gives Starting, preceded by a Restart when the last run crashed,
//!   whoever started it: automatic when systemd scheduled the restart, external otherwise;
//! - a crash is a failure nobody asked for ("Unit failed", with `UNIT_RESULT`), or a run that
//!   systemd scheduled an automatic restart for ("Scheduled restart job", with `N_RESTARTS`):
//!   under `Restart=always` a clean exit is a crash too. A failure after a stop job began is a
//!   stop, not a crash;
//! - a clean exit ("Unit succeeded") is judged by what follows: a scheduled restart, or a stop or
//!   restart job finishing (systemd runs none on a unit that is already inactive, so the unit was
//!   waiting to restart) make it a crash; a new start makes it a plain stop. Left unjudged at the
//!   end of the input, it is left out;
//! - a failure after the restart was scheduled, with no new run, is systemd giving up (start
//!   limit hit), as the live tracker's `auto-restart` → `failed`.
//!
//! `UNIT=` is believed only from PID 1: `_PID` is a trusted field that journald sets and no
//! client can, so a local user cannot fake a crash loop by logging a lifecycle MESSAGE_ID.
//! Times are the sender's (`_SOURCE_REALTIME_TIMESTAMP`), else journald's
//! (`__REALTIME_TIMESTAMP`): a busy journald may receive a message late, exactly during a loop.
//!
//! The parser is in [`parser`], the start-up read in [`history`]. [`context`] reads, for each
//! crash, the last lines the failed run wrote.
//!
//! History only seeds windows. It is never counted: the `*_total` counters of a restarted
//! crashwatch start at zero and count what it hears live, and entries at or after the live
//! snapshot are ignored because the snapshot covers them.

pub mod context;
pub mod evidence;
pub mod history;
pub mod parser;

pub use history::{history, HistorySettings};

/// Whether there is a journal to read: a directory was named, or journald runs here (it creates
/// /run/systemd/journal; without it the system journal holds nothing recent).
pub fn journal_present(directory: Option<&std::path::Path>) -> bool {
    directory.is_some() || std::path::Path::new("/run/systemd/journal").exists()
}
pub use parser::{read_line_capped, Parser, MAX_LINE};
