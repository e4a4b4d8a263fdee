//! The commands of the `crashwatch` binary other than the daemon itself: each a thin user of the
//! library that reads, prints and exits.

pub mod man;
pub mod status;
