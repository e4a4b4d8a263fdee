//! Integration tests of the `crashwatch` binary, one test binary for all areas.
//!
//! Every test that needs systemd starts its own sandboxed systemd (see `support/`), so the tests
//! are independent and run in parallel. Tests whose prerequisites are missing (root, namespaces,
//! promtool) print why and return early, except under `CI=true`, where that is a failure.
//!
//! Run everything with `scripts/test.sh`; set `CRASHWATCH_TEST_KEEP=1` to keep the sandbox
//! directories (systemd log, unit files, event records) for a post-mortem.

#[macro_use]
mod support;

// The area modules live in tests/integration/ (a directory, not tests/*.rs files, which cargo
// would build as separate test binaries).
#[path = "integration/actions.rs"]
mod actions;
#[path = "integration/architecture.rs"]
mod architecture;
#[path = "integration/churn.rs"]
mod churn;
#[path = "integration/cli.rs"]
mod cli;
#[path = "integration/crash_context.rs"]
mod crash_context;
#[path = "integration/end_to_end.rs"]
mod end_to_end;
#[path = "integration/events.rs"]
mod events;
#[path = "integration/exposition.rs"]
mod exposition;
#[path = "integration/fleet.rs"]
mod fleet;
#[path = "integration/harness_selftest.rs"]
mod harness_selftest;
#[path = "integration/journal.rs"]
mod journal;
#[path = "integration/landing.rs"]
mod landing;
#[path = "integration/packaging.rs"]
mod packaging;
#[path = "integration/reliability.rs"]
mod reliability;
#[path = "integration/reload.rs"]
mod reload;
#[path = "integration/statsd.rs"]
mod statsd;
#[path = "integration/status.rs"]
mod status;
#[path = "integration/systemd_loops.rs"]
mod systemd_loops;
#[path = "integration/upstart.rs"]
mod upstart;
#[path = "integration/web.rs"]
mod web;
