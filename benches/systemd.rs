//! The systemd source's per-signal work, without a bus: decoding `PropertiesChanged` bodies and
//! feeding the tracker.
//!
//! The signals are systemd 252's shape (see `common/signals.rs`): about a kilobyte each, the full
//! property set every time, seven Service+Unit pairs per crash-restart cycle. Each stage is timed
//! alone and then all together, so a regression points at its stage:
//!
//! - `signal/body`: zbus deserialising the whole body into `(s, a{sv}, as)` borrowed from the
//!   message, as a generic subscriber does (the bus ceiling in `scripts/bench.sh` decodes so);
//! - `signal/kept`: the source's decoding, which keeps only the properties its readers use;
//! - `signal/props`: that plus the property readers and the unit name from the path;
//! - `tracker/apply`: decoded pairs into the tracker (transitions out);
//! - `source/signal -> transitions`: everything the source does with one signal after the bus.
//!
//!     cargo bench --bench systemd [-- FILTER]

mod common;

use std::collections::HashMap;

use crashwatch::internals::props;
use crashwatch::internals::{ServiceProps, Snapshot, Tracker};
use zbus::{Message, Variant};

use common::{bench, decode_changes, signals, Args};

const UNITS: usize = 100;
const CYCLES: usize = 20;

type Body<'m> = (&'m str, HashMap<&'m str, Variant<'m>>, Vec<&'m str>);

fn main() {
    let args = Args::parse();
    let mut sim = signals::Sim::new("bench-", UNITS, common::now_us());
    let baseline: Vec<Snapshot> = sim
        .units
        .iter()
        .map(|u| Snapshot {
            name: u.name.clone(),
            active_state: "active".into(),
            sub_state: "running".into(),
            invocation_id: u.invocation().to_vec(),
            n_restarts: Some(0),
        })
        .collect();
    let mut signals = Vec::new();
    for c in 0..CYCLES as u64 {
        signals.extend(sim.cycle(common::now_us() + c * 1_000_000, 240_000));
    }
    let messages: Vec<Message> = signals
        .iter()
        .map(|s| s.message(Some(":1.1")).expect("building a signal"))
        .collect();
    let size = |service: bool| {
        let sizes: Vec<usize> = signals
            .iter()
            .zip(&messages)
            .filter(|(s, _)| s.service == service)
            .map(|(_, m)| m.data().len())
            .collect();
        sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64
    };
    println!(
        "# {} signals ({UNITS} units x {CYCLES} cycles x 14); mean size: Service {:.0} B, Unit {:.0} B",
        messages.len(),
        size(true),
        size(false)
    );
    let ops = messages.len() as u64;

    bench(
        &args,
        "signal/body",
        "signal",
        ops,
        || (),
        |()| {
            let mut n = 0usize;
            for msg in &messages {
                let body = msg.body();
                let decoded: Body<'_> = body.deserialize().expect("a PropertiesChanged body");
                n += decoded.1.len();
            }
            n
        },
    );

    bench(
        &args,
        "signal/kept",
        "signal",
        ops,
        || (),
        |()| {
            let mut n = 0usize;
            for msg in &messages {
                let body = msg.body();
                let kept: props::PropertiesChanged<'_> = body.deserialize().expect("a body");
                n += kept.changed.len();
            }
            n
        },
    );

    bench(
        &args,
        "signal/props",
        "signal",
        ops,
        || (),
        |()| {
            let mut n = 0usize;
            let mut wrong = Vec::new();
            for msg in &messages {
                let header = msg.header();
                let path = header.path().map(|p| p.as_str()).unwrap_or("");
                let Some(name) = props::unit_name(path) else {
                    continue;
                };
                let body = msg.body();
                let props::PropertiesChanged {
                    interface: iface,
                    changed,
                } = body.deserialize().expect("a body");
                if iface == signals::SERVICE_IFACE {
                    n += usize::from(
                        props::service_props(&changed, &mut wrong)
                            .n_restarts
                            .is_some(),
                    );
                } else {
                    n += usize::from(props::unit_props(&changed, &mut wrong).job_id.is_some());
                }
                n += name.len();
            }
            n
        },
    );

    let changes = decode_changes(&signals);
    let fresh_tracker = || {
        let mut tracker = Tracker::new();
        for s in &baseline {
            tracker.baseline(s.clone());
        }
        tracker
    };
    bench(
        &args,
        "tracker/apply",
        "pair",
        changes.len() as u64,
        || {
            let owned: Vec<_> = changes
                .iter()
                .map(|c| (c.unit.clone(), c.service.clone(), c.unit_props.clone()))
                .collect();
            (fresh_tracker(), owned)
        },
        |(mut tracker, owned)| {
            let mut n = 0usize;
            for (unit, service, props) in owned {
                n += tracker.apply(&unit, service, Some(props), 0).len();
            }
            (tracker, n)
        },
    );

    // What `SystemdSource::properties_changed` does per signal, Service halves waiting in a map
    // for the Unit half that follows.
    bench(
        &args,
        "source/signal -> transitions",
        "signal",
        ops,
        fresh_tracker,
        |mut tracker| {
            let mut pending: HashMap<String, ServiceProps> = HashMap::new();
            let mut wrong = Vec::new();
            let mut n = 0usize;
            for msg in &messages {
                let header = msg.header();
                let path = header.path().map(|p| p.as_str()).unwrap_or("");
                let Some(name) = props::unit_name(path) else {
                    continue;
                };
                let body = msg.body();
                let props::PropertiesChanged {
                    interface: iface,
                    changed,
                } = body.deserialize().expect("a body");
                if iface == signals::SERVICE_IFACE {
                    let service = props::service_props(&changed, &mut wrong);
                    pending.entry(name).or_default().merge(service);
                } else {
                    let unit = props::unit_props(&changed, &mut wrong);
                    let service = pending.remove(&name);
                    n += tracker.apply(&name, service, Some(unit), 0).len();
                }
            }
            (tracker, n)
        },
    );
}
