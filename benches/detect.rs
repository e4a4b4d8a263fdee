//! The detector and the transition pipeline, in process, one core.
//!
//! `detector/*` times [`Detector::observe`] (and `advance`) alone. `pipeline/*` times what the
//! daemon does with each signal after the bus: the tracker turns decoded property pairs into
//! transitions and the detector task (`engine::run`, the daemon's own code) feeds the detector
//! and the sinks, on one current-thread runtime as in the daemon. The figure to compare with the
//! bus's ~50,000 signals/s is `pipeline/signals`: if one core handles many times that, the daemon
//! is never the bottleneck. Allocations per operation come from the counting allocator.
//!
//!     cargo bench --bench detect [-- FILTER]

mod common;

use std::time::Duration;

use crashwatch::internals::ChangeTracking;
use crashwatch::internals::Tracker;
use crashwatch::internals::{events, statsd as statsd_sink, ThreadedSink};
use crashwatch::internals::{run_engine, Settings, Sinks};
use crashwatch::internals::{Detector, Observation, Policy};
use crashwatch::internals::{SourceEvent, Transition};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use common::{bench, decode_changes, signals::Sim, Args, Change};

/// Units in the pipeline benches: enough that per-unit maps are not all in cache.
const UNITS: usize = 1_000;
/// Crash-restart cycles of every unit per run.
const CYCLES: usize = 20;

fn main() {
    let args = Args::parse();
    detector(&args);
    pipeline(&args);
}

fn names(count: usize) -> Vec<String> {
    (0..count).map(|n| format!("bench-{n}.service")).collect()
}

fn detector(args: &Args) {
    let units = names(UNITS);
    // Every unit crashes, restarts and comes up once per cycle, 1 ms of simulated time apart.
    let script: Vec<(usize, Observation)> = (0..CYCLES * UNITS)
        .flat_map(|i| {
            let unit = i % UNITS;
            [
                (unit, Observation::Crashed),
                (unit, Observation::Restart),
                (unit, Observation::Up),
            ]
        })
        .collect();
    let ops = script.len() as u64;
    bench(
        args,
        "detector/observe (5 min window, all loop)",
        "obs",
        ops,
        || Detector::new(Policy::default(), Vec::new()),
        |mut detector| {
            let mut updates = 0usize;
            for (i, (unit, observation)) in script.iter().enumerate() {
                let at = 1_000_000 + i as u64 * 1_000;
                updates += usize::from(detector.observe(&units[*unit], *observation, at).is_some());
            }
            (detector, updates)
        },
    );
    // A short window, so restarts leave it and loops end: exercises the deadline set too.
    let short = Policy {
        threshold: 3,
        window: Duration::from_millis(50),
    };
    bench(
        args,
        "detector/observe+advance (50 ms window)",
        "obs",
        ops,
        || Detector::new(short, Vec::new()),
        |mut detector| {
            let mut updates = 0usize;
            for (i, (unit, observation)) in script.iter().enumerate() {
                let at = 1_000_000 + i as u64 * 1_000;
                updates += usize::from(detector.observe(&units[*unit], *observation, at).is_some());
                if i % 64 == 0 {
                    updates += detector.advance(at).len();
                }
            }
            (detector, updates)
        },
    );
}

/// The decoded pairs of `CYCLES` crash-restart cycles of `UNITS` units.
fn changes() -> Vec<Change> {
    let mut sim = Sim::new("bench-", UNITS, common::now_us());
    let mut signals = Vec::new();
    for c in 0..CYCLES as u64 {
        signals.extend(sim.cycle(common::now_us() + c * 1_000_000, 240_000));
    }
    decode_changes(&signals)
}

/// The transitions the tracker makes of `changes`, after a baseline of every unit.
fn transitions(changes: &[Change]) -> Vec<Transition> {
    let mut tracker = baselined_tracker();
    let mut out = Vec::new();
    for c in changes {
        out.extend(tracker.apply(&c.unit, c.service.clone(), Some(c.unit_props.clone()), 0));
    }
    out
}

/// A tracker that already knows every unit as running, as after the start-up snapshot.
fn baselined_tracker() -> Tracker {
    let mut tracker = Tracker::new();
    let sim = Sim::new("bench-", UNITS, common::now_us());
    for u in &sim.units {
        tracker.baseline(crashwatch::internals::Snapshot {
            name: u.name.clone(),
            active_state: "active".into(),
            sub_state: "running".into(),
            invocation_id: u.invocation().to_vec(),
            n_restarts: Some(0),
        });
    }
    tracker
}

struct Pipeline {
    runtime: tokio::runtime::Runtime,
    /// Wrapped as the daemon wraps it, so every update pays what it pays in the daemon.
    recorder: ChangeTracking<PrometheusRecorder>,
    handle: PrometheusHandle,
    sinks: Sinks,
}

fn fresh(all_sinks: bool) -> Pipeline {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let recorder = ChangeTracking::new(recorder);
    let mut sinks = Sinks::default();
    if all_sinks {
        let target = events::EventsTarget::File("/dev/null".into());
        let out = events::open(&target, None, Default::default()).expect("opening /dev/null");
        sinks.events = Some(Box::new(
            ThreadedSink::spawn("events", move |events| events::run(out, events))
                .expect("a sink thread"),
        ));
        // A socket nobody reads: datagrams are built and sent, then dropped by the kernel.
        let hole = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
        let address = hole.local_addr().expect("its address");
        let client = statsd_sink::Client::connect(
            &address.to_string(),
            "crashwatch",
            statsd_sink::Naming::Plain,
        )
        .expect("a StatsD client");
        sinks.statsd = Some(Box::new(
            ThreadedSink::spawn("statsd", move |events| {
                let _hole = hole;
                statsd_sink::run(client, events)
            })
            .expect("a sink thread"),
        ));
    }
    Pipeline {
        runtime,
        recorder,
        handle,
        sinks,
    }
}

/// Runs the daemon's detector task over what `produce` sends, to the end, and returns the
/// metrics it left (to read the sinks' drop counter from).
fn drive(
    p: Pipeline,
    produce: impl FnOnce(
        mpsc::Sender<SourceEvent>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
) -> String {
    let Pipeline {
        runtime,
        recorder,
        handle,
        sinks,
    } = p;
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async {
                    let (tx, rx) = mpsc::channel(65_536);
                    let producer = tokio::task::spawn_local(produce(tx));
                    let detector = Detector::new(Policy::default(), Vec::new());
                    let settings = Settings {
                        max_units: 100_000,
                        fold_instances: false,
                        unloaded_retention: Duration::from_secs(900),
                        crash_context_record: false,
                    };
                    let units = crashwatch::internals::SharedUnits::new();
                    // No reloads here: the sender is dropped at once.
                    let (_, reconfigure) = mpsc::channel(1);
                    run_engine(
                        rx,
                        reconfigure,
                        detector,
                        units,
                        sinks,
                        settings,
                        CancellationToken::new(),
                    )
                    .await;
                    let _ = producer.await;
                })
                .await
        })
    });
    handle.render()
}

fn dropped(rendered: &str) -> f64 {
    rendered
        .lines()
        .filter(|l| l.starts_with("crashwatch_sink_events_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn pipeline(args: &Args) {
    if !args.wants_group("pipeline/") {
        return;
    }
    let changes = changes();
    let ready = transitions(&changes);
    let signals = changes.len() as u64 * 2;
    println!(
        "# pipeline input: {UNITS} units x {CYCLES} crash-restart cycles = {signals} signals, {} transitions",
        ready.len()
    );
    bench(
        args,
        "pipeline/transitions -> detector+prometheus",
        "transition",
        ready.len() as u64,
        || (fresh(false), ready.clone()),
        |(p, ready)| {
            drive(p, |tx| {
                Box::pin(async move {
                    for t in ready {
                        if tx.send(t.into()).await.is_err() {
                            break;
                        }
                    }
                })
            })
        },
    );
    for (name, all) in [
        ("pipeline/signals -> tracker+detector+prometheus", false),
        ("pipeline/signals -> ... + statsd + events (threads)", true),
    ] {
        let drops = std::cell::RefCell::new(Vec::new());
        let report = bench(
            args,
            name,
            "signal",
            signals,
            || {
                // The source hands the tracker owned values it decoded; the decode itself is
                // benched in `systemd`, so the copies are made here, untimed.
                let owned: Vec<_> = changes
                    .iter()
                    .map(|c| (c.unit.clone(), c.service.clone(), c.unit_props.clone()))
                    .collect();
                (fresh(all), baselined_tracker(), owned)
            },
            |(p, mut tracker, owned)| {
                let rendered = drive(p, move |tx| {
                    Box::pin(async move {
                        for (unit, service, props) in owned {
                            for t in tracker.apply(&unit, service, Some(props), 0) {
                                if tx.send(t.into()).await.is_err() {
                                    return;
                                }
                            }
                        }
                    })
                });
                drops.borrow_mut().push(dropped(&rendered));
            },
        );
        if all && report.is_some() {
            // At full speed the threaded sinks fall behind the detector; their queues then drop
            // and count (they never block the event path), which this figure has to be read with.
            let drops = drops.borrow();
            println!(
                "# sink events dropped per run of the line above: {:.0} [{:.0} .. {:.0}], for {} transitions, each queued to both sinks",
                common::median(&drops) + 0.0,
                drops.iter().copied().fold(f64::INFINITY, f64::min) + 0.0,
                drops.iter().copied().fold(0.0, f64::max),
                ready.len(),
            );
        }
    }
}
