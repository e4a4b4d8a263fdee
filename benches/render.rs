//! `/metrics` rendering at 100, 1,000 and 10,000 units.
//!
//! A scrape costs crashwatch one rendering of the unit table (plus crashwatch's few own metrics
//! through the `metrics` exporter) and no D-Bus traffic, so this is the whole CPU cost of a scrape
//! apart from the HTTP exchange. Units get their series through the same calls the detector
//! task makes, in two shapes: `running`, started once (2 series under the default series budget,
//! what most units of a node have), and `looping`, which also crashed, restarted and began a
//! crash loop (its full set, 13 series, the worst case per unit).
//!
//!     cargo bench --bench render [-- FILTER]

mod common;

use crashwatch::internals::Policy;
use crashwatch::internals::UnitTable;
use crashwatch::internals::{Event, LoopEvent, SourceKind, Transition, TransitionKind, UnitState};

use common::{bench, Args};

fn main() {
    let args = Args::parse();
    for looping in [false, true] {
        for units in [100usize, 1_000, 10_000] {
            let shape = if looping { "looping" } else { "running" };
            let name = format!("render/{units} {shape} units");
            if !args.wants(&name) {
                continue;
            }
            let table = populated(units, looping);
            let bytes = render(&table).len();
            let name = format!("{name} ({} KiB)", bytes / 1024);
            bench(&args, &name, "render", 1, || (), |()| render(&table));
        }
    }
}

fn render(table: &UnitTable) -> String {
    let mut out = String::new();
    table.render_prometheus(&mut out);
    out
}

fn transition(unit: &str, kind: TransitionKind, at: u64) -> Transition {
    Transition::new(
        unit,
        SourceKind::Systemd,
        at,
        kind,
        UnitState::new("activating", "auto-restart"),
        UnitState::new("active", "running"),
    )
}

/// A table holding `units` units, each having started (and, when `looping`, crashed, restarted
/// and begun a crash loop).
fn populated(units: usize, looping: bool) -> UnitTable {
    let mut table = UnitTable::new();
    for n in 0..units {
        let unit = format!("bench-{n}.service");
        table.register(&unit, SourceKind::Systemd, Policy::default());
        let mut history = vec![
            transition(&unit, TransitionKind::Starting, 500),
            transition(&unit, TransitionKind::Started, 600),
        ];
        if looping {
            let mut crash = transition(&unit, TransitionKind::Failed, 1_000);
            crash.crash = Some("exit-code".into());
            history.extend([
                crash,
                transition(&unit, TransitionKind::Restart, 2_000),
                transition(&unit, TransitionKind::Starting, 2_000),
                transition(&unit, TransitionKind::Started, 2_100),
            ]);
        }
        for t in history {
            table.record(&Event::Transition {
                transition: t,
                restarts: 1,
            });
        }
        if looping {
            table.record(&Event::Loop(LoopEvent {
                unit: unit.clone(),
                source: SourceKind::Systemd,
                timestamp: 2_000,
                ended: None,
                restarts_in_window: 3,
                threshold: 3,
                window_seconds: 300.0,
            }));
        }
    }
    table
}
