//! The status API's documents, built from the engine's unit table at request time.
//!
//! `GET /api/units` lists every watched unit: its state, its window, whether it is crash-looping,
//! its last crash and last transition. `GET /api/units/{unit}` gives one unit the same way, its
//! last crash with the crashed run's last lines (`context`). `GET /api/units/{unit}/events` gives one unit's recent
//! transitions (at most [`RECENT_TRANSITIONS`](crate::engine::units::RECENT_TRANSITIONS)). Times are
//! given twice: microseconds since the epoch for programs, RFC 3339 for people. [`table`] reads
//! the units document as the rows `crashwatch status` prints and the landing page shows.

pub mod table;

use serde_json::{json, Value};

use crate::engine::units::{UnitRecord, UnitTable};
use crate::event::Micros;
use crate::time::format_timestamp;

/// The document of `GET /api/units`: every unit, by name.
pub fn units_document(table: &UnitTable) -> Value {
    let units: Vec<Value> = table
        .iter()
        .map(|(name, record)| unit_summary(name, record))
        .collect();
    let looping = table.iter().filter(|(_, r)| r.crashlooping).count();
    let gave_up = table.iter().filter(|(_, r)| r.gave_up_at.is_some()).count();
    json!({
        "units": units,
        "crashlooping": looping,
        "gave_up": gave_up,
        "generated_at": format_timestamp(crate::time::now_micros()),
    })
}

fn unit_summary(name: &str, record: &UnitRecord) -> Value {
    let (state, substate) = match &record.state {
        Some((active, sub)) => (Some(&**active), Some(&**sub)),
        None => (None, None),
    };
    json!({
        "unit": name,
        "source": record.source,
        "state": state,
        "substate": substate,
        "active": record.active,
        "crashlooping": record.crashlooping,
        "gave_up": record.gave_up_at.is_some(),
        "gave_up_at": record.gave_up_at.map(format_timestamp),
        "restarts_in_window": record.restarts_in_window,
        "threshold": record.policy.threshold,
        "window_seconds": record.policy.window.as_secs_f64(),
        "starts_total": record.starts,
        "restarts_total": record.restarts,
        "crashloops_total": record.crashloops,
        "last_crash": record.last_crash.as_ref().map(|crash| {
            let mut value = json!(crash);
            with_time(&mut value, crash.timestamp_us);
            value
        }),
        "last_transition": record.last_transition.map(|(at, kind)| json!({
            "timestamp_us": at,
            "time": format_timestamp(at),
            "transition": kind,
        })),
        "unloaded": record.unloaded_at.is_some(),
    })
}

fn with_time(value: &mut Value, at: Micros) {
    if let Some(map) = value.as_object_mut() {
        map.insert("time".to_owned(), json!(format_timestamp(at)));
    }
}

/// The document of `GET /api/units/{unit}`: the unit's summary, its last crash with what the
/// crashed run wrote last (`context`); `None` for a unit that is not watched.
pub fn unit_document(table: &UnitTable, unit: &str) -> Option<Value> {
    let record = table.get(unit)?;
    let mut document = unit_summary(unit, record);
    if let (Some(crash), Some(value)) = (&record.last_crash, document.get_mut("last_crash")) {
        if let Some(map) = value.as_object_mut() {
            let context = crash.context.as_ref();
            map.insert(
                "context".to_owned(),
                json!({
                    "status": context.map(|c| c.status),
                    "lines": context.map(|c| &c.lines[..]).unwrap_or_default(),
                    "run_seconds": crash.run_seconds,
                    "source": context.map_or("journal", |c| c.source),
                    "reason": context.and_then(|c| c.reason.as_deref()),
                    "core_dump": context.and_then(|c| c.core_dump.as_ref()),
                    "oom_kill": context.and_then(|c| c.oom_kill.as_ref()),
                }),
            );
            map.insert("exit_shell_status".to_owned(), json!(crash.shell_status()));
        }
    }
    document["generated_at"] = json!(format_timestamp(crate::time::now_micros()));
    Some(document)
}

/// The document of `GET /api/units/{unit}/events`: the unit's recent transitions, oldest first;
/// `None` for a unit that is not watched.
pub fn events_document(table: &UnitTable, unit: &str) -> Option<Value> {
    let record = table.get(unit)?;
    let events: Vec<Value> = record
        .recent()
        .map(|t| {
            let mut value = json!(t);
            with_time(&mut value, t.timestamp_us);
            value
        })
        .collect();
    Some(json!({
        "unit": unit,
        "source": record.source,
        "events": events,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::detect::Policy;
    use crate::event::{Event, SourceKind, Transition, TransitionKind, UnitState};

    /// A table of units that each crashed once, with the given loop flag and restarts in window.
    pub(crate) fn table_with(units: &[(&str, bool, u32)]) -> UnitTable {
        let mut table = UnitTable::new();
        for &(unit, looping, in_window) in units {
            table.register(unit, SourceKind::Systemd, Policy::default());
            let mut crash = Transition::new(
                unit,
                SourceKind::Systemd,
                1_700_000_000_000_000,
                TransitionKind::Failed,
                UnitState::new("active", "running"),
                UnitState::new("activating", "auto-restart"),
            );
            crash.crash = Some("exit-code".into());
            crash.exit = Some(crate::event::ExitCause {
                code: crate::event::ExitCode::Exited,
                status: 1,
            });
            table.record(&Event::Transition {
                transition: crash,
                restarts: 0,
            });
            table.show_window(unit, in_window, looping);
        }
        table
    }

    #[test]
    fn the_units_document_says_what_an_operator_asks_first() {
        let table = table_with(&[("a.service", false, 1), ("b.service", true, 4)]);
        let document = units_document(&table);
        assert_eq!(document["crashlooping"], 1);
        let b = &document["units"][1];
        assert_eq!(b["unit"], "b.service");
        assert_eq!(b["crashlooping"], true);
        assert_eq!(b["restarts_in_window"], 4);
        assert_eq!(b["state"], "activating");
        assert_eq!(b["substate"], "auto-restart");
        assert_eq!(b["last_crash"]["reason"], "exit-code");
        assert_eq!(b["last_crash"]["exit_code"], "exited");
        assert_eq!(b["last_crash"]["exit_status"], 1);
        assert_eq!(b["last_crash"]["time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(b["last_transition"]["transition"], "failed");
        assert_eq!(b["threshold"], Policy::default().threshold);
    }

    #[test]
    fn a_units_document_shows_its_last_crash_with_the_runs_last_lines() {
        let mut table = table_with(&[("a.service", true, 3)]);
        let document = unit_document(&table, "a.service").expect("watched");
        assert_eq!(document["unit"], "a.service");
        assert_eq!(document["crashlooping"], true);
        // Until the engine has asked, the context has no status.
        assert_eq!(document["last_crash"]["context"]["status"], Value::Null);
        assert_eq!(document["last_crash"]["context"]["source"], "journal");
        assert_eq!(document["last_crash"]["exit_shell_status"], 1);
        let context = crate::event::CrashContext::found(vec!["config error".into()]);
        let ended = table
            .get("a.service")
            .unwrap()
            .last_crash
            .as_ref()
            .unwrap()
            .timestamp_us;
        assert!(table.attach_context("a.service", None, ended, context));
        let document = unit_document(&table, "a.service").expect("watched");
        let context = &document["last_crash"]["context"];
        assert_eq!(context["status"], "ok");
        assert_eq!(context["lines"][0], "config error");
        assert!(unit_document(&table, "nope.service").is_none());
        // The list stays small: no lines in it.
        let list = units_document(&table);
        assert!(list["units"][0]["last_crash"].get("context").is_none());
    }

    #[test]
    fn events_are_given_for_watched_units_only() {
        let table = table_with(&[("a.service", false, 0)]);
        let document = events_document(&table, "a.service").unwrap();
        assert_eq!(document["events"].as_array().unwrap().len(), 1);
        assert_eq!(document["events"][0]["transition"], "failed");
        assert_eq!(document["events"][0]["crash_reason"], "exit-code");
        assert!(events_document(&table, "nope.service").is_none());
    }
}
