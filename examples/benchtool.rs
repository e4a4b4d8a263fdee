//! The measuring side of `scripts/bench.sh`: a fake systemd, a bare bus subscriber, a scraper
//! that reads CPU time from /proc, a StatsD listener that stamps arrivals, and the arithmetic.
//!
//! It is one binary with subcommands so the script builds a single helper, and it is Rust rather
//! than shell or Python because the figures need microsecond clocks, nanosecond CPU accounting and
//! the very same zbus decoding crashwatch does (a subscriber that decoded less would make the
//! "bus ceiling" look higher than it is).
//!
//! - `fake-systemd`: owns `org.freedesktop.systemd1` on a private bus, answers the calls
//!   crashwatch makes at start-up (Subscribe, ListUnits, Get) and, when asked over the bus
//!   (`org.crashwatch.Bench.Blast`), sends crash-restart cycles of systemd-shaped
//!   `PropertiesChanged` signals as fast as the bus takes them. crashwatch believes only the owner
//!   of that name, so the sender has to be "systemd".
//! - `subscribe`: the bus ceiling, a zbus subscriber with crashwatch's match rule that decodes
//!   every body as crashwatch does and counts.
//! - `blast`: asks the fake systemd to send, then (with `--metrics`) waits until crashwatch's
//!   /metrics shows every signal handled.
//! - `scrape`: GETs a URL N times and reports latency, bytes and the CPU time the scrapes cost
//!   each given process.
//! - `statsd-listen`, `latency`: detection latency from StatsD arrival times and the event record.
//! - `churn`: starts short-lived transient units through systemd's own `StartTransientUnit`
//!   call, several in flight, and samples a process's RSS as the count grows.
//! - `proc`: CPU, wake-ups and RSS of processes over an interval; `metric`: reads one value.
//! - `start-up`: runs a crashwatch and times it from exec until its /metrics lists the units.
//!
//!     cargo run --release --example benchtool -- --help

// Shared with the benches; this binary uses only the sending side of it.
#[allow(dead_code)]
#[path = "../benches/common/signals.rs"]
mod signals;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use zbus::message::Type as MessageType;
use zbus::{Connection, Message, MessageStream, ObjectPath, Variant};

const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
const BENCH_PATH: &str = "/org/crashwatch/Bench";
const BENCH_IFACE: &str = "org.crashwatch.Bench";
/// crashwatch's own match rule for unit property changes.
const UNIT_RULE: &str = "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',path_namespace='/org/freedesktop/systemd1/unit'";

#[derive(Parser)]
#[command(about = "Measuring helpers for scripts/bench.sh")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Own org.freedesktop.systemd1 on ADDRESS and play systemd for crashwatch.
    FakeSystemd {
        #[arg(long)]
        address: String,
        /// Services to list, named `{prefix}{n}.service`.
        #[arg(long, default_value_t = 100)]
        units: usize,
        #[arg(long, default_value = "bench-")]
        prefix: String,
    },
    /// Count (and fully decode) unit PropertiesChanged signals until COUNT arrived or 3 s of quiet.
    Subscribe {
        #[arg(long)]
        address: String,
        #[arg(long)]
        count: u64,
    },
    /// Ask the fake systemd for CYCLES crash-restart cycles of every unit; with --metrics, wait
    /// until crashwatch has handled them all.
    Blast {
        #[arg(long)]
        address: String,
        #[arg(long)]
        cycles: u32,
        /// crashwatch's listen address (host:port).
        #[arg(long)]
        metrics: Option<String>,
        /// A receiver whose CPU time over the blast to report.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// GET URL COUNT times; report latency, bytes and CPU per GET of each PID.
    Scrape {
        #[arg(long)]
        url: String,
        #[arg(long)]
        count: u32,
        /// Processes whose CPU time to account, comma-separated.
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
        /// Before each GET, open a connection to the same port and close it unused: crashwatch
        /// counts that in crashwatch_errors_total, so every scrape finds a metric changed.
        #[arg(long)]
        poke: bool,
    },
    /// Receive StatsD datagrams; write `arrival_us<TAB>datagram` lines to OUT. Prints the port.
    StatsdListen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Detection latency of the units named UNITS* from the event record and the StatsD arrival
    /// log (and, with --stamps, where the time went).
    Latency {
        #[arg(long)]
        events: PathBuf,
        #[arg(long)]
        statsd: PathBuf,
        /// Output of `stamp` for the same units.
        #[arg(long)]
        stamps: Option<PathBuf>,
        /// The units measured: every unit whose name starts with this, one loop each.
        #[arg(long)]
        units: String,
    },
    /// Stamp the arrival of the PropertiesChanged signals of units named UNITS* on ADDRESS;
    /// write them to OUT.
    Stamp {
        #[arg(long)]
        address: String,
        #[arg(long)]
        units: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Start COUNT transient services `{prefix}N.service` running /bin/true on ADDRESS, at most
    /// IN_FLIGHT start jobs at a time; systemd unloads each when it has exited. With --pid,
    /// print that process's RSS as the count of started units passes each of --sample-at.
    Churn {
        #[arg(long)]
        address: String,
        #[arg(long)]
        count: u64,
        /// Start jobs in flight (called for, JobRemoved not yet received).
        #[arg(long, default_value_t = 32)]
        in_flight: usize,
        #[arg(long, default_value = "churn-")]
        prefix: String,
        /// The process whose RSS to sample.
        #[arg(long)]
        pid: Option<u32>,
        /// Counts of started units at which to sample, comma-separated.
        #[arg(long, value_delimiter = ',')]
        sample_at: Vec<u64>,
        /// A /metrics URL whose `crashwatch_units` to read at each sample.
        #[arg(long)]
        metrics: Option<String>,
    },
    /// CPU time, wake-ups and RSS of PIDS over SECONDS.
    Proc {
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Print a TCP port on 127.0.0.1 that is free now (crashwatch takes no port 0).
    FreePort,
    /// The sum of metric NAME at URL over series carrying every LABEL (k=v); 0 when none.
    Metric {
        #[arg(long)]
        url: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        label: Vec<String>,
        /// Only series whose label K starts with V (K=V).
        #[arg(long)]
        label_prefix: Option<String>,
        /// Print the number of matching series instead of their sum.
        #[arg(long)]
        series: bool,
    },
    /// Run COMMAND (a crashwatch listening on URL's port) and GET URL until it lists UNITS series
    /// of crashwatch_unit_crashlooping (every unit has one) whose unit label starts with PREFIX;
    /// report the time from exec and the process's CPU time until then, then stop it.
    StartUp {
        #[arg(long)]
        url: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        units: usize,
        /// The crashwatch command line, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::FakeSystemd {
            address,
            units,
            prefix,
        } => runtime()?.block_on(fake_systemd(&address, units, &prefix)),
        Cmd::Subscribe { address, count } => runtime()?.block_on(subscribe(&address, count)),
        Cmd::Blast {
            address,
            cycles,
            metrics,
            pid,
        } => runtime()?.block_on(blast(&address, cycles, metrics.as_deref(), pid)),
        Cmd::Scrape {
            url,
            count,
            pids,
            poke,
        } => scrape(&url, count, &pids, poke),
        Cmd::StatsdListen { out } => statsd_listen(&out),
        Cmd::Latency {
            events,
            statsd,
            stamps,
            units,
        } => latency(&events, &statsd, stamps.as_ref(), &units),
        Cmd::Stamp {
            address,
            units,
            out,
        } => runtime()?.block_on(stamp(&address, &units, &out)),
        Cmd::Churn {
            address,
            count,
            in_flight,
            prefix,
            pid,
            sample_at,
            metrics,
        } => runtime()?.block_on(churn(
            &address,
            count,
            in_flight.max(1),
            &prefix,
            pid,
            &sample_at,
            metrics.as_deref(),
        )),
        Cmd::Proc { pids, seconds } => proc_report(&pids, seconds),
        Cmd::FreePort => {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", probe.local_addr()?.port());
            Ok(())
        }
        Cmd::Metric {
            url,
            name,
            label,
            label_prefix,
            series,
        } => {
            let text = http_get(&url)?.body;
            let (sum, count) = match label_prefix {
                Some(prefix) => metric_prefixed(&text, &name, &prefix),
                None => metric(&text, &name, &label),
            };
            if series {
                println!("{count}");
            } else {
                println!("{sum}");
            }
            Ok(())
        }
        Cmd::StartUp {
            url,
            prefix,
            units,
            command,
        } => start_up(&url, &prefix, units, &command),
    }
}

// ------------------------------------------------------------------------------- start-up

/// Starts `command` and polls `url` every 2 ms until the units are listed: the first answers
/// come only once crashwatch has its snapshot, so the polls cost it little. Prints
/// `ready_ms=... cpu_ms=...`; the CPU time is read at that moment, from schedstat.
fn start_up(url: &str, prefix: &str, units: usize, command: &[String]) -> Result<()> {
    let (program, args) = command.split_first().context("no command to start")?;
    let started = Instant::now();
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let pid = child.id();
    let outcome = loop {
        if let Ok(response) = http_get(url) {
            if metric_prefixed(&response.body, "crashwatch_unit_crashlooping", prefix).1 >= units {
                break Ok((started.elapsed(), cpu_ns(pid)));
            }
        }
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!(
                "{program} exited ({status}) before it was ready"
            ));
        }
        if started.elapsed() > Duration::from_secs(120) {
            break Err(anyhow::anyhow!(
                "{program} did not list {units} units within 120 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // SIGTERM, as a service manager stops it; it exits at once.
    // SAFETY: kill(2) on the pid of a child not yet waited for, so not reused.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    let (ready, cpu) = outcome?;
    println!(
        "ready_ms={:.1} cpu_ms={:.1}",
        ready.as_secs_f64() * 1e3,
        cpu as f64 / 1e6
    );
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn connect(address: &str) -> Result<Connection> {
    zbus::connection::Builder::address(address)
        .build()
        .await
        .with_context(|| format!("connecting to {address}"))
}

async fn next(stream: &mut MessageStream) -> Option<zbus::Result<Message>> {
    use futures_core::Stream;
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

// ------------------------------------------------------------------------------- fake systemd

type ListedUnit = (
    String,
    String,
    String,
    String,
    String,
    String,
    ObjectPath<'static>,
    u32,
    String,
    ObjectPath<'static>,
);

async fn fake_systemd(address: &str, units: usize, prefix: &str) -> Result<()> {
    let conn = connect(address).await?;
    let mut stream = MessageStream::from(&conn);
    conn.request_name(SYSTEMD_NAME)
        .await
        .context("owning org.freedesktop.systemd1")?;
    let mut sim = signals::Sim::new(prefix, units, now_us());
    // Simulated time runs ahead of the clock by whole cycles, one second apart, so crashwatch's
    // windows see realistic spacing whatever the send rate.
    let mut clock = now_us();
    println!("ready units={units}");
    std::io::stdout().flush()?;
    while let Some(msg) = next(&mut stream).await {
        let msg = msg?;
        if msg.message_type() != MessageType::MethodCall {
            continue;
        }
        let header = msg.header();
        let member = header.member().map(|m| m.as_str()).unwrap_or("");
        let path = header.path().map(|p| p.as_str()).unwrap_or("");
        let iface = header.interface().map(|i| i.as_str()).unwrap_or("");
        match member {
            "Subscribe" | "Unsubscribe" if iface == MANAGER_IFACE => {
                conn.reply(&header, &()).await?
            }
            "ListUnits" if iface == MANAGER_IFACE => {
                let listed: Vec<ListedUnit> = sim
                    .units
                    .iter()
                    .map(|u| {
                        (
                            u.name.clone(),
                            "bench unit".to_owned(),
                            "loaded".to_owned(),
                            "active".to_owned(),
                            "running".to_owned(),
                            String::new(),
                            ObjectPath::from_string_unchecked(u.path.clone()),
                            0,
                            String::new(),
                            ObjectPath::from_static_str_unchecked("/"),
                        )
                    })
                    .collect();
                conn.reply(&header, &(listed,)).await?;
            }
            "Get" => {
                let body = msg.body();
                let (_iface, property): (&str, &str) = body.deserialize()?;
                let unit = sim.units.iter().find(|u| u.path == path);
                let value = match (unit, property) {
                    (Some(u), "InvocationID") => Some(Variant::from(u.invocation().to_vec())),
                    (Some(u), "NRestarts") => Some(Variant::from(u.n_restarts())),
                    _ => None,
                };
                match value {
                    Some(v) => conn.reply(&header, &(v,)).await?,
                    None => {
                        conn.reply_error(
                            &header,
                            "org.freedesktop.DBus.Error.UnknownProperty",
                            &(format!("no {property} on {path}"),),
                        )
                        .await?
                    }
                }
            }
            "Blast" if path == BENCH_PATH && iface == BENCH_IFACE => {
                let body = msg.body();
                let cycles: u32 = body.deserialize()?;
                // Build everything first: the measurement is the bus and the receiver, not zbus
                // serialising on the sender's side.
                let mut messages = Vec::new();
                for _ in 0..cycles {
                    clock = clock.max(now_us()) + 1_000_000;
                    for signal in sim.cycle(clock, 240_000) {
                        messages.push(signal.message(None)?);
                    }
                }
                let bytes: usize = messages.iter().map(|m| m.data().len()).sum();
                let start = now_us();
                for m in &messages {
                    conn.send(m).await?;
                }
                let end = now_us();
                let sent = messages.len() as u64;
                conn.reply(&header, &(start, end, sent, bytes as u64, units as u32))
                    .await?;
            }
            // The start-up snapshot reads a unit's state and run in one call.
            "GetAll" => {
                let unit = sim.units.iter().find(|u| u.path == path);
                let mut map: HashMap<&str, Variant<'_>> = HashMap::new();
                if let Some(u) = unit {
                    map.insert("Id", Variant::from(u.name.as_str()));
                    map.insert("ActiveState", Variant::from("active"));
                    map.insert("SubState", Variant::from("running"));
                    map.insert("InvocationID", Variant::from(u.invocation().to_vec()));
                }
                conn.reply(&header, &(map,)).await?
            }
            _ => {
                conn.reply_error(
                    &header,
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    &(format!("fake systemd does not implement {member}"),),
                )
                .await?
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------- subscriber

/// Asks the bus for the signals `rule` matches.
async fn add_match(conn: &Connection, rule: &str) -> Result<()> {
    conn.call_method(
        Some("org.freedesktop.DBus"),
        "/org/freedesktop/DBus",
        Some("org.freedesktop.DBus"),
        "AddMatch",
        &(rule,),
    )
    .await?;
    Ok(())
}

async fn subscribe(address: &str, count: u64) -> Result<()> {
    let conn = connect(address).await?;
    let mut stream = MessageStream::from(&conn);
    add_match(&conn, UNIT_RULE).await?;
    println!(
        "ready cpu_ms={:.1}",
        cpu_ns(std::process::id()) as f64 / 1e6
    );
    std::io::stdout().flush()?;
    let (mut received, mut properties, mut first, mut last) = (0u64, 0usize, 0u64, 0u64);
    while received < count {
        let item = tokio::time::timeout(Duration::from_secs(3), next(&mut stream)).await;
        let Ok(Some(Ok(msg))) = item else { break };
        if msg.message_type() != MessageType::Signal {
            continue;
        }
        let header = msg.header();
        if header.member().map(|m| m.as_str()) != Some("PropertiesChanged") {
            continue;
        }
        // The same decoding crashwatch does, so the ceiling includes zbus's share.
        let body = msg.body();
        let decoded: (&str, HashMap<&str, Variant<'_>>, Vec<&str>) = body.deserialize()?;
        properties += decoded.1.len();
        received += 1;
        last = now_us();
        if first == 0 {
            first = last;
        }
    }
    println!(
        "received={received} first_us={first} last_us={last} properties={properties} cpu_ms={:.1}",
        cpu_ns(std::process::id()) as f64 / 1e6
    );
    Ok(())
}

// ------------------------------------------------------------------------------- blast

async fn blast(
    address: &str,
    cycles: u32,
    metrics_at: Option<&str>,
    pid: Option<u32>,
) -> Result<()> {
    let url = metrics_at.map(|m| format!("http://{m}/metrics"));
    let read = |url: &Option<String>| -> Result<Option<Counters>> {
        match url {
            Some(url) => Ok(Some(Counters::read(&http_get(url)?.body))),
            None => Ok(None),
        }
    };
    let before = read(&url)?;
    let cpu_before = pid.map(cpu_ns);
    let conn = connect(address).await?;
    let reply = conn
        .call_method(
            Some(SYSTEMD_NAME),
            BENCH_PATH,
            Some(BENCH_IFACE),
            "Blast",
            &(cycles,),
        )
        .await?;
    let (start, end, sent, bytes, units): (u64, u64, u64, u64, u32) = reply.body().deserialize()?;
    print!(
        "sent={sent} bytes={bytes} start_us={start} send_end_us={end} units={units} cycles={cycles}"
    );
    let (Some(url), Some(before)) = (url, before) else {
        println!();
        return Ok(());
    };
    // Each cycle of each unit is four transitions (failed with a crash, restart, starting,
    // started) and one restart; crashwatch must show all of them.
    let expect_transitions = 4 * u64::from(cycles) * u64::from(units);
    // When crashwatch has handled the last signal its CPU time stops moving. Watching that from
    // /proc marks the end without disturbing it: polling /metrics during the run would make it
    // render the exposition over and over and measure the poller instead. /metrics is read only
    // once it has been quiet, to confirm that everything was handled.
    let quiet = Duration::from_millis(100);
    let mut last_progress = Instant::now();
    let mut seen = before.clone();
    let done_us = loop {
        let mut cpu_seen = pid.map_or(0, cpu_ns);
        let mut changed_at = now_us();
        let mut still = Instant::now();
        while still.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let cpu = pid.map_or(0, cpu_ns);
            if cpu != cpu_seen {
                cpu_seen = cpu;
                changed_at = now_us();
                still = Instant::now();
            }
        }
        let now = Counters::read(&http_get(&url)?.body);
        let handled = now.events - before.events;
        let transitions = now.transitions - before.transitions;
        let restarts = now.restarts - before.restarts;
        if handled >= sent as f64
            && transitions >= expect_transitions as f64
            && restarts >= (u64::from(cycles) * u64::from(units)) as f64
        {
            break changed_at;
        }
        if now != seen {
            seen = now;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(3) {
            break 0;
        }
    };
    let cpu = match (pid, cpu_before) {
        (Some(pid), Some(before)) => (cpu_ns(pid) - before) as f64 / 1e6,
        _ => f64::NAN,
    };
    let after = Counters::read(&http_get(&url)?.body);
    println!(
        " done_us={done_us} cpu_ms={cpu:.1} handled={} transitions={} expected_transitions={expect_transitions} restarts={} expected_restarts={} dropped={}",
        after.events - before.events,
        after.transitions - before.transitions,
        after.restarts - before.restarts,
        u64::from(cycles) * u64::from(units),
        after.dropped - before.dropped,
    );
    Ok(())
}

/// crashwatch's own counters that say how much it handled.
#[derive(Clone, Debug, PartialEq)]
struct Counters {
    events: f64,
    transitions: f64,
    restarts: f64,
    dropped: f64,
}

impl Counters {
    fn read(text: &str) -> Counters {
        let sum = |name: &str| metric(text, name, &[]).0;
        Counters {
            events: sum("crashwatch_events_total"),
            transitions: sum("crashwatch_unit_transitions_total"),
            restarts: sum("crashwatch_unit_restarts_total"),
            dropped: sum("crashwatch_signals_dropped_total"),
        }
    }
}

// ------------------------------------------------------------------------------- churn

/// Starts `count` transient services the way `systemd-run` does, minus a process per unit: one
/// connection and at most `in_flight` units between the StartTransientUnit call and their start
/// job's `JobRemoved`, so the rate is systemd's rather than fork and exec's.
///
/// The bound is on jobs, not on unanswered calls. systemd answers the call as soon as the job is
/// queued and runs its job queue only when the bus is quiet, and every queued job tracks its
/// caller with one NameOwnerChanged match rule on systemd's own bus connection: callers that
/// kept a fixed number of calls unanswered would pile up jobs until dbus-daemon refused
/// systemd's 513th match rule and systemd dropped its bus connection ("Got disconnect on API
/// bus", systemd 252 with dbus-daemon's system-bus limits).
async fn churn(
    address: &str,
    count: u64,
    in_flight: usize,
    prefix: &str,
    pid: Option<u32>,
    sample_at: &[u64],
    metrics_url: Option<&str>,
) -> Result<()> {
    let conn = connect(address).await?;
    let mut stream = MessageStream::from(&conn);
    add_match(&conn, "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.systemd1.Manager',member='JobRemoved'").await?;
    conn.call_method(
        Some(SYSTEMD_NAME),
        "/org/freedesktop/systemd1",
        Some(MANAGER_IFACE),
        "Subscribe",
        &(),
    )
    .await?;
    let mut samples: Vec<u64> = sample_at.to_vec();
    samples.sort_unstable();
    samples.reverse(); // the next sample last, to pop
    let mut calls = tokio::task::JoinSet::new();
    // Units asked for; calls refused; start jobs finished, and of those, done.
    let (mut asked, mut refused, mut finished, mut done) = (0u64, 0u64, 0u64, 0u64);
    let mut first_error = None;
    let start = now_us();
    while finished + refused < count {
        while asked < count && asked - finished - refused < in_flight as u64 {
            let conn = conn.clone();
            let unit = format!("{prefix}{asked}.service");
            calls.spawn(async move { start_transient(&conn, &unit).await });
            asked += 1;
        }
        tokio::select! {
            Some(answer) = calls.join_next() => {
                if let Err(e) = answer? {
                    refused += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
            msg = tokio::time::timeout(Duration::from_secs(30), next(&mut stream)) => {
                let msg = msg
                    .map_err(|_| anyhow::anyhow!("no JobRemoved for 30 s ({finished} of {count} units finished)"))?
                    .context("the bus closed")??;
                if msg.message_type() != MessageType::Signal
                    || msg.header().member().map(|m| m.as_str()) != Some("JobRemoved")
                {
                    continue;
                }
                let body = msg.body();
                let (_id, _job, unit, result): (u32, ObjectPath<'_>, &str, &str) = body.deserialize()?;
                if !unit.starts_with(prefix) {
                    continue;
                }
                finished += 1;
                if result == "done" {
                    done += 1;
                }
                sample(&mut samples, finished, pid, metrics_url)?;
            }
        }
    }
    let end = now_us();
    if done == 0 {
        bail!(
            "systemd started none of {count} transient units: {}",
            first_error.unwrap_or_default()
        );
    }
    println!(
        "started={done} finished={finished} refused={refused} start_us={start} end_us={end} rate={:.0}{}",
        done as f64 / ((end - start) as f64 / 1e6),
        first_error.map_or(String::new(), |e| format!(" first_error={e:?}"))
    );
    Ok(())
}

/// Prints RSS (and crashwatch_units) once `started` reaches the next count asked for.
fn sample(
    samples: &mut Vec<u64>,
    started: u64,
    pid: Option<u32>,
    metrics_url: Option<&str>,
) -> Result<()> {
    while samples.last().is_some_and(|&at| started >= at) {
        let at = samples.pop().unwrap_or(started);
        let units = match metrics_url {
            Some(url) => metric(&http_get(url)?.body, "crashwatch_units", &[]).0,
            None => f64::NAN,
        };
        println!(
            "sample at={at} rss_kib={} units={units}",
            pid.map_or(0, rss_kib)
        );
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// `StartTransientUnit(name, mode, properties a(sv), aux a(sa(sv)))` for a service whose only
/// property is `ExecStart=/bin/true` (signature `a(sasb)`: path, argv, ignore failure), as
/// `systemd-run /bin/true` sends it.
async fn start_transient(conn: &Connection, unit: &str) -> zbus::Result<()> {
    let exec_start = Variant::from(vec![("/bin/true", vec!["/bin/true"], false)]);
    let properties = vec![("ExecStart", exec_start)];
    let aux: Vec<(&str, Vec<(&str, Variant<'_>)>)> = Vec::new();
    conn.call_method(
        Some(SYSTEMD_NAME),
        "/org/freedesktop/systemd1",
        Some(MANAGER_IFACE),
        "StartTransientUnit",
        &(unit, "fail", properties, aux),
    )
    .await?;
    Ok(())
}

// ------------------------------------------------------------------------------- HTTP, metrics

struct Response {
    body: String,
}

/// A plain HTTP/1.1 GET with no compression, on a connection of its own, as the same request
/// for both exporters.
fn http_get(url: &str) -> Result<Response> {
    Scraper::new(url)?.get()
}

/// An HTTP/1.1 client that keeps its connection between GETs and reads each answer through
/// one large buffer, as Prometheus scrapes a target. It reconnects when the server closes.
struct Scraper {
    host: String,
    path: String,
    connection: Option<BufReader<TcpStream>>,
}

impl Scraper {
    fn new(url: &str) -> Result<Scraper> {
        let rest = url
            .strip_prefix("http://")
            .context("only http:// URLs are supported")?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Ok(Scraper {
            host: host.to_owned(),
            path: path.to_owned(),
            connection: None,
        })
    }

    /// One GET; on a kept connection the server may have closed meanwhile, so a failure there
    /// is retried once on a new one.
    fn get(&mut self) -> Result<Response> {
        if self.connection.is_some() {
            if let Ok(response) = self.get_once() {
                return Ok(response);
            }
            self.connection = None;
        }
        self.get_once()
    }

    fn get_once(&mut self) -> Result<Response> {
        if self.connection.is_none() {
            let stream = TcpStream::connect(&self.host)
                .with_context(|| format!("connecting to {}", self.host))?;
            stream.set_read_timeout(Some(Duration::from_secs(60)))?;
            stream.set_nodelay(true)?;
            self.connection = Some(BufReader::with_capacity(256 * 1024, stream));
        }
        let reader = self.connection.as_mut().expect("connected above");
        write!(
            reader.get_mut(),
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
            self.path,
            self.host
        )?;
        let mut status = String::new();
        reader.read_line(&mut status)?;
        if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
            bail!("{}{}: {}", self.host, self.path, status.trim_end());
        }
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!("connection closed in the answer's head");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().to_ascii_lowercase();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.parse::<usize>()?),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => close = value == "close",
                _ => {}
            }
        }
        let mut body = Vec::with_capacity(length.unwrap_or(1 << 20));
        if chunked {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size)?;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                    .context("bad chunk size")?;
                if size == 0 {
                    let mut end = String::new();
                    reader.read_line(&mut end)?;
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                reader.read_exact(&mut body[start..])?;
                let mut crlf = [0u8; 2];
                reader.read_exact(&mut crlf)?;
            }
        } else if let Some(length) = length {
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        } else {
            reader.read_to_end(&mut body)?;
            close = true;
        }
        if close {
            self.connection = None;
        }
        Ok(Response {
            body: String::from_utf8(body)?,
        })
    }
}

/// Sum and count of the samples of `name` whose labels include every `k=v` of `labels`. Label
/// values are compared as written (unit names here need no escapes).
fn metric(text: &str, name: &str, labels: &[String]) -> (f64, usize) {
    let wanted: Vec<String> = labels
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    let mut sum = 0.0;
    let mut count = 0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_set, value) = match rest.chars().next() {
            Some('{') => match rest.rfind('}') {
                Some(end) => (&rest[1..end], rest[end + 1..].trim()),
                None => continue,
            },
            Some(' ') => ("", rest.trim()),
            _ => continue,
        };
        let pairs: Vec<&str> = label_set.split(',').collect();
        if !wanted.iter().all(|w| pairs.contains(&w.as_str())) {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum += v;
            count += 1;
        }
    }
    (sum, count)
}

/// Like [`metric`], for series whose label `k` starts with `v` (`k=v`).
fn metric_prefixed(text: &str, name: &str, prefix: &str) -> (f64, usize) {
    let Some((k, v)) = prefix.split_once('=') else {
        return (0.0, 0);
    };
    let wanted = format!("{k}=\"{v}");
    let mut sum = 0.0;
    let mut count = 0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !rest.starts_with('{') || !rest.contains(&wanted) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            sum += v;
            count += 1;
        }
    }
    (sum, count)
}

// ------------------------------------------------------------------------------- /proc

/// On-CPU nanoseconds of every thread of `pid` (`/proc/PID/task/*/schedstat`, first field):
/// nanosecond resolution where utime+stime count 10 ms ticks.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// utime+stime of `pid` in clock ticks (`/proc/PID/stat` fields 14 and 15), including exited
/// threads; a cross-check of [`cpu_ns`].
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// Context switches of every thread of `pid`: each is the thread going to sleep or being
/// preempted, so for an idle process their rate is its wake-up rate.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn clock_tick_ms() -> f64 {
    // USER_HZ is 100 on every Linux architecture that matters here.
    10.0
}

fn scrape(url: &str, count: u32, pids: &[u32], poke: bool) -> Result<()> {
    let host = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .context("only http:// URLs are supported")?
        .to_owned();
    // One untimed scrape, so first-use costs (connection set-up in the exporter, page faults of a
    // fresh buffer) are not in the figures.
    let mut scraper = Scraper::new(url)?;
    let warm = scraper.get()?;
    let bytes = warm.body.len();
    let cpu0: Vec<u64> = pids.iter().map(|&p| cpu_ns(p)).collect();
    let ticks0: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let mut latencies = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if poke {
            // A request that is not HTTP, on a connection of its own: crashwatch counts it
            // (`error_type="bad_request"`), so /metrics has changed before the scrape.
            let mut stream = TcpStream::connect(&host)?;
            stream.write_all(b"NOT HTTP\r\n\r\n")?;
            let _ = stream.read_to_end(&mut Vec::new());
        }
        let start = Instant::now();
        let r = scraper.get()?;
        latencies.push(start.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(r.body.len());
    }
    let cpu1: Vec<u64> = pids.iter().map(|&p| cpu_ns(p)).collect();
    let ticks1: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let per: Vec<f64> = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(a, b)| (b - a) as f64 / 1e6 / f64::from(count))
        .collect();
    let ticks: f64 = ticks0
        .iter()
        .zip(&ticks1)
        .map(|(a, b)| (b - a) as f64)
        .sum::<f64>()
        * clock_tick_ms()
        / f64::from(count);
    let sorted = sorted(latencies);
    println!(
        "scrapes={count} bytes={bytes} lat_median_ms={:.4} lat_p90_ms={:.4} lat_mean_ms={:.4} cpu_ms={:.4} cpu_ticks_ms={ticks:.2} cpu_by_pid_ms={}",
        percentile(&sorted, 50.0),
        percentile(&sorted, 90.0),
        sorted.iter().sum::<f64>() / sorted.len().max(1) as f64,
        per.iter().sum::<f64>(),
        per.iter()
            .map(|v| format!("{v:.4}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    Ok(())
}

fn proc_report(pids: &[u32], seconds: f64) -> Result<()> {
    let cpu0: Vec<u64> = pids.iter().map(|&p| cpu_ns(p)).collect();
    let sw0: Vec<u64> = pids.iter().map(|&p| switches(p)).collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    for (i, &pid) in pids.iter().enumerate() {
        let cpu = (cpu_ns(pid) - cpu0[i]) as f64 / 1e6;
        let sw = (switches(pid) - sw0[i]) as f64;
        println!(
            "pid={pid} cpu_ms_per_s={:.4} wakeups_per_s={:.2} rss_kib={} threads={}",
            cpu / seconds,
            sw / seconds,
            rss_kib(pid),
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| d.count())
                .unwrap_or(0)
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------- latency

fn statsd_listen(out: &PathBuf) -> Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    println!("port={}", sock.local_addr()?.port());
    std::io::stdout().flush()?;
    let mut file = std::fs::File::create(out)?;
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = sock.recv(&mut buf)?;
        let at = now_us();
        let text = String::from_utf8_lossy(&buf[..n]).replace('\n', "\\n");
        // One write per datagram, unbuffered: the script reads the file while this runs.
        file.write_all(format!("{at}\t{text}\n").as_bytes())?;
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency(
    events: &PathBuf,
    statsd: &PathBuf,
    stamps: Option<&PathBuf>,
    prefix: &str,
) -> Result<()> {
    // Every unit whose name starts with `prefix` is one crash loop; datagrams and records pair up
    // in order within each unit, so units are kept apart by their StatsD name.
    let clean_prefix = crashwatch::internals::statsd::sanitize(prefix);
    #[derive(Default)]
    struct Unit {
        crash_arrivals: Vec<u64>,
        loop_arrivals: Vec<u64>,
        /// Crash timestamps (systemd's ExecMainExitTimestamp) and whether inferred.
        crashes: Vec<(u64, bool)>,
        /// Per loop start: its own timestamp (the restart that completed the loop) and the last
        /// crash before it.
        loops: Vec<(u64, u64)>,
    }
    let mut units: HashMap<String, Unit> = HashMap::new();
    for line in BufReader::new(std::fs::File::open(statsd)?).lines() {
        let line = line?;
        let Some((at, text)) = line.split_once('\t') else {
            continue;
        };
        let at: u64 = at.parse()?;
        for stat in text.split("\\n") {
            // PREFIX.unit.NAME.METRIC:VALUE|TYPE, NAME free of dots.
            let Some((_, rest)) = stat.split_once(".unit.") else {
                continue;
            };
            let Some((name, metric)) = rest.split_once('.') else {
                continue;
            };
            if !name.starts_with(&clean_prefix) {
                continue;
            }
            let unit = units.entry(name.to_owned()).or_default();
            if metric.starts_with("crashes:") {
                unit.crash_arrivals.push(at);
            } else if metric == "crashlooping:1|g" {
                unit.loop_arrivals.push(at);
            }
        }
    }
    for line in BufReader::new(std::fs::File::open(events)?).lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        let Some(name) = v["unit"].as_str().filter(|u| u.starts_with(prefix)) else {
            continue;
        };
        let unit = units
            .entry(crashwatch::internals::statsd::sanitize(name))
            .or_default();
        let ts = v["timestamp_us"].as_u64().unwrap_or(0);
        match v["event"].as_str() {
            Some("transition") if v["crash"] == true => {
                unit.crashes.push((ts, v["inferred"] == true));
            }
            Some("crashloop_started") => {
                let last_crash = unit.crashes.iter().rev().find(|c| !c.1).map_or(0, |c| c.0);
                unit.loops.push((ts, last_crash));
            }
            _ => {}
        }
    }
    let (mut crash_pairs, mut flag_pairs, mut crash_flag_pairs) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut mismatched = Vec::new();
    for (name, unit) in &units {
        // Inferred crashes carry the restart's time, not an exit time: they keep the pairing
        // aligned but are not samples.
        crash_pairs.extend(
            unit.crash_arrivals
                .iter()
                .copied()
                .zip(unit.crashes.iter().copied())
                .filter(|(_, (_, inferred))| !inferred)
                .map(|(arrival, (at, _))| (arrival, at)),
        );
        flag_pairs.extend(
            unit.loop_arrivals
                .iter()
                .copied()
                .zip(unit.loops.iter().map(|l| l.0)),
        );
        crash_flag_pairs.extend(
            unit.loop_arrivals
                .iter()
                .copied()
                .zip(unit.loops.iter().map(|l| l.1)),
        );
        if unit.crash_arrivals.len() != unit.crashes.len()
            || unit.loop_arrivals.len() != unit.loops.len()
        {
            mismatched.push(format!(
                "{name}:{}/{}:{}/{}",
                unit.crash_arrivals.len(),
                unit.crashes.len(),
                unit.loop_arrivals.len(),
                unit.loops.len()
            ));
        }
    }
    show_lag("crash_to_crash_datagram", &crash_pairs);
    show_lag("restart_to_flag_datagram", &flag_pairs);
    show_lag("crash_to_flag_datagram", &crash_flag_pairs);
    if let Some(stamps) = stamps {
        // Where the time goes: when a subscriber next to crashwatch received systemd's signal
        // carrying that timestamp splits each figure into systemd and the bus, then crashwatch
        // and its StatsD thread. Timestamps in µs are unique enough to be keys.
        let mut exits: HashMap<u64, u64> = HashMap::new();
        let mut starts: HashMap<u64, u64> = HashMap::new();
        for line in BufReader::new(std::fs::File::open(stamps)?).lines() {
            let line = line?;
            let mut fields = line.split(' ');
            let (Some(at), Some(kind), Some(value)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (at, value): (u64, u64) = (at.parse()?, value.parse()?);
            let first = match kind {
                "exit" => exits.entry(value),
                "inactive_exit" => starts.entry(value),
                _ => continue,
            };
            first.or_insert(at);
        }
        let split = |pairs: &[(u64, u64)], seen: &HashMap<u64, u64>| {
            let mut bus = Vec::new();
            let mut own = Vec::new();
            for (arrival, at) in pairs {
                if let Some(&heard) = seen.get(at) {
                    bus.push((heard, *at));
                    own.push((*arrival, heard));
                }
            }
            (bus, own)
        };
        let (bus, own) = split(&crash_pairs, &exits);
        show_lag("crash_to_bus", &bus);
        show_lag("bus_to_crash_datagram", &own);
        let (bus, own) = split(&flag_pairs, &starts);
        show_lag("restart_to_bus", &bus);
        show_lag("bus_to_flag_datagram", &own);
    }
    if !mismatched.is_empty() {
        // unit:crash datagrams/crash records:loop datagrams/loop records
        println!("mismatch {}", mismatched.join(" "));
    }
    Ok(())
}

/// Prints the distribution of `later - earlier` over `(later, earlier)` pairs of µs timestamps.
fn show_lag(name: &str, pairs: &[(u64, u64)]) {
    let v = sorted(
        pairs
            .iter()
            .map(|&(later, earlier)| (later as f64 - earlier as f64) / 1e3)
            .collect(),
    );
    println!(
        "{name} n={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        v.len(),
        percentile(&v, 50.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

/// Stamps the arrival of every PropertiesChanged of the units named PREFIX* with the systemd
/// timestamps the latency figures start from, as `arrival_us exit|inactive_exit value` lines.
async fn stamp(address: &str, prefix: &str, out: &PathBuf) -> Result<()> {
    let conn = connect(address).await?;
    let mut stream = MessageStream::from(&conn);
    // Object paths escape names byte by byte, so a name prefix is a path prefix.
    let path_prefix = signals::unit_path(prefix);
    add_match(&conn, UNIT_RULE).await?;
    let mut file = std::fs::File::create(out)?;
    println!("ready");
    std::io::stdout().flush()?;
    while let Some(msg) = next(&mut stream).await {
        let msg = msg?;
        let at = now_us();
        if msg.message_type() != MessageType::Signal {
            continue;
        }
        let header = msg.header();
        if !header
            .path()
            .is_some_and(|p| p.as_str().starts_with(&path_prefix))
        {
            continue;
        }
        let body = msg.body();
        let Ok((_, changed, _)) =
            body.deserialize::<(&str, HashMap<&str, Variant<'_>>, Vec<&str>)>()
        else {
            continue;
        };
        for (property, kind) in [
            ("ExecMainExitTimestamp", "exit"),
            ("InactiveExitTimestamp", "inactive_exit"),
        ] {
            if let Some(Variant::U64(value)) = changed.get(property) {
                if *value > 0 {
                    file.write_all(format!("{at} {kind} {value}\n").as_bytes())?;
                }
            }
        }
    }
    Ok(())
}
