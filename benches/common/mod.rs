//! The timing harness shared by the benches, small on purpose.
//!
//! A bench here is a closure run over a fixed batch of operations, several times; each run gives
//! one time per operation, and the report is the median of the runs with their spread (min and
//! max), so one noisy run on a shared two-core machine shows as spread instead of moving the
//! figure. A counting global allocator reports allocations per operation, which is the number
//! that predicts throughput on a busy node better than a single time does. Criterion would add
//! statistics we do not need and a long dependency tree to every `cargo clippy --all-targets`.
//!
//! Usage: `cargo bench --bench NAME [-- FILTER]`; `BENCH_RUNS` sets the number of runs (default
//! 7, plus one warm-up run that is not reported).

// Each bench binary uses a different part of this module.
#![allow(dead_code)]

pub mod signals;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counts allocations and allocated bytes, then defers to the system allocator.
pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method defers to `System` with the caller's arguments unchanged; the counters are
// plain atomics and never affect what is returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A growing Vec or String reallocates; that is an allocation as far as cost goes.
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and bytes allocated so far by the whole process.
pub fn allocations() -> (u64, u64) {
    (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED_BYTES.load(Ordering::Relaxed),
    )
}

/// What the command line asked for: an optional name filter. `cargo bench` passes `--bench`,
/// which is not a filter.
pub struct Args {
    filter: Option<String>,
    runs: usize,
}

impl Args {
    /// Reads the filter from the command line and the run count from `BENCH_RUNS`.
    pub fn parse() -> Args {
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        let runs = std::env::var("BENCH_RUNS")
            .ok()
            .and_then(|r| r.parse().ok())
            .filter(|&r: &usize| r > 0)
            .unwrap_or(7);
        Args { filter, runs }
    }

    /// Whether the bench called `name` should run.
    pub fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    /// Whether some bench whose name starts with `group` may run, so a costly setup shared by a
    /// group is skipped only when none of it is wanted.
    pub fn wants_group(&self, group: &str) -> bool {
        self.filter
            .as_deref()
            .is_none_or(|f| group.contains(f) || f.starts_with(group))
    }
}

/// The result of one bench: per-operation times of every run, and allocations per operation.
pub struct Report {
    /// Nanoseconds per operation, one entry per run.
    pub ns_per_op: Vec<f64>,
    /// Allocations per operation (the median run's).
    pub allocs_per_op: f64,
    /// Bytes allocated per operation (the median run's).
    pub bytes_per_op: f64,
}

impl Report {
    /// The median time per operation, in nanoseconds.
    pub fn median_ns(&self) -> f64 {
        median(&self.ns_per_op)
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs `run` once to warm up and then `args.runs` times, each time on a fresh input from
/// `setup` (not timed), and prints one line: median time per operation, the spread over runs,
/// operations per second, allocations and bytes per operation. `ops` is how many operations one
/// call of `run` performs; `unit` names the operation in the report.
pub fn bench<S, R>(
    args: &Args,
    name: &str,
    unit: &str,
    ops: u64,
    mut setup: impl FnMut() -> S,
    mut run: impl FnMut(S) -> R,
) -> Option<Report> {
    if !args.wants(name) {
        return None;
    }
    std::hint::black_box(run(setup()));
    let mut samples = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let input = setup();
        let (a0, b0) = allocations();
        let start = Instant::now();
        let out = run(input);
        let elapsed = start.elapsed();
        let (a1, b1) = allocations();
        // Dropping the output is not part of the operation's cost.
        std::hint::black_box(out);
        samples.push((
            elapsed.as_nanos() as f64 / ops as f64,
            (a1 - a0) as f64 / ops as f64,
            (b1 - b0) as f64 / ops as f64,
        ));
    }
    let ns: Vec<f64> = samples.iter().map(|s| s.0).collect();
    let mid = median(&ns);
    let (_, allocs, bytes) = samples
        .iter()
        .copied()
        .min_by(|x, y| (x.0 - mid).abs().total_cmp(&(y.0 - mid).abs()))
        .unwrap_or((0.0, 0.0, 0.0));
    let report = Report {
        ns_per_op: ns,
        allocs_per_op: allocs,
        bytes_per_op: bytes,
    };
    print_line(name, unit, &report);
    Some(report)
}

fn print_line(name: &str, unit: &str, r: &Report) {
    let min = r.ns_per_op.iter().copied().fold(f64::INFINITY, f64::min);
    let max = r.ns_per_op.iter().copied().fold(0.0, f64::max);
    let mid = r.median_ns();
    println!(
        "{name:<44} {:>10}/{unit} [{} .. {}]  {:>12.0} {unit}/s  {:>7.2} allocs/{unit}  {:>9.0} B/{unit}",
        duration(mid),
        duration(min),
        duration(max),
        1e9 / mid,
        r.allocs_per_op,
        r.bytes_per_op,
    );
}

/// A time in nanoseconds, printed with a unit that keeps three or four digits.
pub fn duration(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// One change of a unit as the systemd source hands it to the tracker: the Service properties
/// systemd sent first (if any) and the Unit properties that complete the pair.
pub struct Change {
    /// The unit's name.
    pub unit: String,
    /// The Service half.
    pub service: Option<crashwatch::internals::ServiceProps>,
    /// The Unit half.
    pub unit_props: crashwatch::internals::UnitProps,
}

/// Decodes signals the way the systemd source does (body, then the property readers), pairing
/// each Service half with the Unit half that follows it.
pub fn decode_changes(signals: &[signals::Signal]) -> Vec<Change> {
    use crashwatch::internals::props;
    use std::collections::HashMap;
    let mut pending = HashMap::new();
    let mut out = Vec::new();
    for signal in signals {
        let msg = signal.message(Some(":1.1")).expect("building a signal");
        let body = msg.body();
        let props::PropertiesChanged {
            interface: iface,
            changed,
        } = body.deserialize().expect("decoding a signal");
        let unit = props::unit_name(&signal.path).expect("a unit path");
        let mut wrong = Vec::new();
        if iface == signals::SERVICE_IFACE {
            pending.insert(unit, props::service_props(&changed, &mut wrong));
        } else {
            let service = pending.remove(&unit);
            out.push(Change {
                unit,
                service,
                unit_props: props::unit_props(&changed, &mut wrong),
            });
        }
        assert!(wrong.is_empty(), "{wrong:?}");
    }
    out
}

/// Microseconds since the epoch, now.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
