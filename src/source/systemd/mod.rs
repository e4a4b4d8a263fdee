//! The systemd source: hears unit changes over D-Bus as they happen and emits transitions.
//!
//! It owns its connection. On connect it adds match rules for the unit PropertiesChanged signals
//! and the Manager signals, calls `Subscribe()` (without a subscriber systemd sends no unit
//! signals at all), then takes a snapshot so that what happened before is not counted. Signals
//! that arrive during the snapshot wait in a queue and are applied after it; the [`tracker`] is
//! idempotent on absolute values, so a change seen both ways counts once.
//!
//! The start-up snapshot is `ListUnits` plus `NRestarts` and `InvocationID` of only the units it
//! shows neither `active` nor `inactive/dead`, or with a job: those are where a crash, a restart
//! or a stop is under way or has just happened. A unit up or down with no job is taken from the
//! listing, and its first signal completes it (see the [`tracker`]); on a node of thousands of
//! running services that is a few messages instead of four per unit, and a start in
//! milliseconds. After a gap (reconnect, a queue that overflowed, systemd changing hands, a new
//! filter) every watched unit is read, since only its NRestarts and InvocationID say what
//! happened to it meanwhile.
//!
//! zbus stalls the whole connection when a message stream is not read, so one task does nothing
//! but move messages from the stream into a bounded queue. If that queue ever overflows the
//! signals are dropped, counted, and the source resyncs from a fresh snapshot so counts stay
//! exact. When the bus goes away the source marks itself down, reconnects with capped backoff,
//! subscribes again and reconciles against a snapshot: restarts that happened while it was away
//! are counted from `NRestarts` and `InvocationID`.
//!
//! Only signals from the current owner of `org.freedesktop.systemd1` are believed: a signal sent
//! directly to crashwatch passes its match rules whatever the sender.

pub mod props;
pub mod tracker;
pub mod verdict;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use zbus::message::Sequence;
use zbus::{Connection, Message, Variant};

use crate::event::{Micros, SourceEvent, SourceKind, Transition, UnitState};
use crate::glob::UnitFilter;
use crate::internal_events::{
    BusConnectError, BusDisconnected, SignalDecodeError, SignalFromStranger, SignalsDropped,
    SnapshotCallError,
};
use crate::source::bus::{self, call, decode, CALL_TIMEOUT, DBUS_NAME, PROPERTIES_IFACE};
use crate::time::{monotonic_micros, now_micros};
use tracker::{Listing, RunStamps, ServiceProps, Snapshot, Tracker};

const SOURCE: &str = "systemd";
const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";

/// The signals crashwatch needs, each as a match rule so the bus filters for it.
const MATCH_RULES: [&str; 3] = [
    "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',path_namespace='/org/freedesktop/systemd1/unit'",
    "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.systemd1.Manager',path='/org/freedesktop/systemd1'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='org.freedesktop.systemd1'",
];

/// Calls in flight during a snapshot; dbus-daemon refuses more than 128 unanswered per connection.
const SNAPSHOT_CONCURRENCY: usize = 32;

/// What can stop the systemd source from starting.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// The bus could not be reached.
    #[error("cannot connect to the system bus{}: {source}", address_hint())]
    Connect {
        /// The underlying error.
        source: zbus::Error,
    },
    /// The bus answered but nobody owns `org.freedesktop.systemd1` on it.
    #[error(
        "no systemd on the system bus{}: org.freedesktop.systemd1 has no owner",
        address_hint()
    )]
    NoSystemd,
    /// A call systemd must answer failed.
    #[error("systemd did not answer {call}: {source}")]
    Call {
        /// Which call.
        call: &'static str,
        /// The underlying error.
        source: zbus::Error,
    },
    /// A call took longer than [`CALL_TIMEOUT`].
    #[error("systemd did not answer {call} within {}s", CALL_TIMEOUT.as_secs())]
    Timeout {
        /// Which call.
        call: &'static str,
    },
}

impl bus::CallError for SystemdError {
    fn failed(call: &'static str, source: zbus::Error) -> Self {
        SystemdError::Call { call, source }
    }

    fn timed_out(call: &'static str) -> Self {
        SystemdError::Timeout { call }
    }

    fn fdo(&self) -> Option<&zbus::fdo::Error> {
        match self {
            SystemdError::Call {
                source: zbus::Error::FDO(e),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

fn address_hint() -> String {
    match std::env::var("DBUS_SYSTEM_BUS_ADDRESS") {
        Ok(address) => format!(" at {address}"),
        Err(_) => " at unix:path=/run/dbus/system_bus_socket".to_owned(),
    }
}

/// Settings of the systemd source.
#[derive(Clone, Debug)]
pub struct SystemdSettings {
    /// Which units to watch.
    pub filter: UnitFilter,
    /// Later filters, from configuration reloads: units no longer watched are forgotten and a
    /// resync picks up those newly watched.
    pub filter_updates: Option<watch::Receiver<UnitFilter>>,
    /// The longest wait between reconnect attempts.
    pub max_backoff: Duration,
}

/// The systemd source. Create it with [`SystemdSource::connect`], then [`SystemdSource::run`] it.
pub struct SystemdSource {
    settings: SystemdSettings,
    link: Link,
    tracker: Tracker,
    /// Per unit, the receive position of the snapshot reply that last described it. A signal
    /// received before that reply is older than what the tracker knows and is dropped: applied
    /// after the snapshot it would bring back a previous run and count it twice.
    snapshot_positions: HashMap<String, Sequence>,
    /// The units of the snapshot taken by `connect`, for `run` to announce.
    present: Vec<SourceEvent>,
}

/// One live connection: the bus, the queue its reader fills, and who systemd is on it.
struct Link {
    conn: Connection,
    queue: mpsc::Receiver<Message>,
    dropped: Arc<AtomicU64>,
    owner: String,
    reloading: bool,
    /// Service properties waiting for the Unit signal that systemd sends right after them.
    pending_service: HashMap<String, ServiceProps>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Which units a snapshot reads one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Depth {
    /// Only the units listed neither `active` nor `inactive/dead`, or with a job; the rest are
    /// taken from the listing.
    Unsettled,
    /// Every unit: after a gap only each one's NRestarts and InvocationID say what happened.
    Every,
}

/// What a snapshot found of one unit.
enum Found {
    /// Read one by one, with its stamps.
    Read(Snapshot, RunStamps),
    /// Taken from the listing: `active` or `inactive/dead`, no job.
    Listed(Listing),
}

impl Found {
    fn name(&self) -> &str {
        match self {
            Found::Read(snapshot, _) => &snapshot.name,
            Found::Listed(listing) => &listing.name,
        }
    }

    /// What the snapshot says of the unit, for the unit table.
    fn presence(&self) -> SourceEvent {
        let (active, sub) = match self {
            Found::Read(s, _) => (&s.active_state, &s.sub_state),
            Found::Listed(l) => (&l.active_state, &l.sub_state),
        };
        SourceEvent::Present {
            unit: self.name().to_owned(),
            source: SourceKind::Systemd,
            state: UnitState::new(active.as_str(), sub.as_str()),
        }
    }
}

impl SystemdSource {
    /// Connects, subscribes and takes the initial snapshot. Fails with one clear error when the
    /// bus cannot be reached or has no systemd; after this, nothing is fatal.
    pub async fn connect(settings: SystemdSettings) -> Result<SystemdSource, SystemdError> {
        gauge!("crashwatch_source_up", "source" => SOURCE).set(0.0);
        counter!("crashwatch_events_total", "source" => SOURCE).absolute(0);
        let link = Link::open().await?;
        let mut tracker = Tracker::new();
        let mut snapshot_positions = HashMap::new();
        let mut present = Vec::new();
        for (found, position) in link.snapshot(&settings.filter, Depth::Unsettled).await? {
            snapshot_positions.insert(found.name().to_owned(), position);
            present.push(found.presence());
            match found {
                Found::Read(snapshot, _) => tracker.baseline(snapshot),
                Found::Listed(listing) => tracker.listed(listing),
            }
        }
        gauge!("crashwatch_source_up", "source" => SOURCE).set(1.0);
        Ok(SystemdSource {
            settings,
            link,
            tracker,
            snapshot_positions,
            present,
        })
    }

    /// How many units the source follows.
    pub fn watched_units(&self) -> usize {
        self.tracker.len()
    }

    /// Reads signals and sends transitions until `shutdown` is cancelled, reconnecting whenever
    /// the bus goes away.
    pub async fn run(mut self, out: mpsc::Sender<SourceEvent>, shutdown: CancellationToken) {
        for event in std::mem::take(&mut self.present) {
            if out.send(event).await.is_err() {
                return;
            }
        }
        loop {
            let lost = tokio::select! {
                _ = shutdown.cancelled() => return,
                lost = self.pump(&out) => lost,
            };
            BusDisconnected {
                source: SOURCE,
                reason: &lost,
            }
            .emit();
            gauge!("crashwatch_source_up", "source" => SOURCE).set(0.0);
            let mut backoff = Duration::from_millis(100);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match self.reopen(&out).await {
                    Ok(()) => break,
                    Err(error) => {
                        BusConnectError {
                            source: SOURCE,
                            error: &error.to_string(),
                        }
                        .emit();
                        backoff = (backoff * 2).min(self.settings.max_backoff);
                    }
                }
            }
            gauge!("crashwatch_source_up", "source" => SOURCE).set(1.0);
            tracing::info!(
                units = self.tracker.len(),
                "Reconnected to the system bus and resynced."
            );
        }
    }

    /// Reconnects and reconciles the tracker with a fresh snapshot.
    async fn reopen(&mut self, out: &mpsc::Sender<SourceEvent>) -> Result<(), SystemdError> {
        let link = Link::open().await?;
        self.link = link;
        self.resync(out).await
    }

    /// Reconciles every watched unit against a fresh snapshot.
    async fn resync(&mut self, out: &mpsc::Sender<SourceEvent>) -> Result<(), SystemdError> {
        let now = now_micros();
        // Positions belong to one connection; a reopened link starts a new sequence.
        self.snapshot_positions.clear();
        self.link.pending_service.clear();
        for (found, position) in self
            .link
            .snapshot(&self.settings.filter, Depth::Every)
            .await?
        {
            self.snapshot_positions
                .insert(found.name().to_owned(), position);
            if out.send(found.presence()).await.is_err() {
                break;
            }
            let transitions = match found {
                Found::Read(snapshot, stamps) => {
                    self.tracker.reconcile_stamped(snapshot, stamps, now)
                }
                // Only the start-up snapshot takes units from the listing.
                Found::Listed(_) => Vec::new(),
            };
            for t in transitions {
                if out.send(t.into()).await.is_err() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Handles signals until the connection is lost; returns why.
    async fn pump(&mut self, out: &mpsc::Sender<SourceEvent>) -> String {
        loop {
            // An end waiting for its meaning is settled when its wait is over and nothing came.
            let settle_in = self
                .tracker
                .next_deadline()
                .map(|deadline| Duration::from_micros(deadline.saturating_sub(now_micros())));
            let received = tokio::select! {
                biased;
                msg = self.link.queue.recv() => Ok(Some(msg)),
                filter = next_filter(&mut self.settings.filter_updates) => Err(filter),
                () = sleep_or_never(settle_in) => Ok(None),
            };
            let received = match received {
                Ok(received) => received,
                Err(filter) => {
                    self.tracker.retain(|unit| filter.allows(unit));
                    self.settings.filter = filter;
                    if let Err(error) = self.resync(out).await {
                        return error.to_string();
                    }
                    continue;
                }
            };
            let Some(msg) = received else {
                for t in self.tracker.settle_due(now_micros()) {
                    if out.send(t.into()).await.is_err() {
                        return "the engine stopped".to_owned();
                    }
                }
                continue;
            };
            let Some(msg) = msg else {
                return "the connection closed".to_owned();
            };
            counter!("crashwatch_events_total", "source" => SOURCE).increment(1);
            let resync = self.handle(&msg, out).await;
            let dropped = self.link.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                SignalsDropped {
                    source: SOURCE,
                    count: dropped,
                }
                .emit();
            }
            if resync || dropped > 0 {
                if let Err(error) = self.resync(out).await {
                    return error.to_string();
                }
            }
        }
    }

    /// Applies one signal. Returns whether the source must resync (systemd changed hands).
    async fn handle(&mut self, msg: &Message, out: &mpsc::Sender<SourceEvent>) -> bool {
        let header = msg.header();
        let member = header.member().map(|m| m.as_str()).unwrap_or("");
        let interface = header.interface().map(|i| i.as_str()).unwrap_or("");
        let sender = header.sender().map(|s| s.as_str()).unwrap_or("");

        if sender == DBUS_NAME {
            // The bus's own NameAcquired and NameLost are about our connection: nothing to do.
            if member == "NameOwnerChanged" {
                return self.owner_changed(msg).await;
            }
            return false;
        }
        if sender != self.link.owner {
            SignalFromStranger {
                source: SOURCE,
                sender,
            }
            .emit();
            return false;
        }
        let path = header.path().map(|p| p.as_str()).unwrap_or("");
        let now = now_micros();
        let body = msg.body();
        let mut unloaded = None;
        let mut settled = Vec::new();
        let transitions = match (interface, member) {
            (PROPERTIES_IFACE, "PropertiesChanged") => self.properties_changed(msg, path, now),
            (MANAGER_IFACE, "JobNew") => {
                if let Ok((_, _, unit)) =
                    decode::<(u32, zbus::ObjectPath<'_>, &str)>(&body, SOURCE, member)
                {
                    self.tracker.job_new(unit);
                }
                Vec::new()
            }
            (MANAGER_IFACE, "JobRemoved") => {
                match decode::<(u32, zbus::ObjectPath<'_>, &str, &str)>(&body, SOURCE, member) {
                    Ok((_, _, unit, result)) if self.settings.filter.allows(unit) => {
                        self.tracker.job_removed(unit, result, now)
                    }
                    _ => Vec::new(),
                }
            }
            (MANAGER_IFACE, "Reloading") => {
                if let Ok(active) = decode::<bool>(&body, SOURCE, member) {
                    self.link.reloading = active;
                }
                Vec::new()
            }
            (MANAGER_IFACE, "UnitRemoved") => {
                // daemon-reload removes and re-adds every unit; their state survives it.
                if let Ok((unit, _)) = decode::<(&str, zbus::ObjectPath<'_>)>(&body, SOURCE, member)
                {
                    if !self.link.reloading {
                        self.link.pending_service.remove(unit);
                        self.snapshot_positions.remove(unit);
                    }
                    let removed = (!self.link.reloading)
                        .then(|| self.tracker.remove(unit))
                        .flatten();
                    if let Some(last) = removed {
                        settled = last;
                        unloaded = Some(SourceEvent::Unloaded {
                            unit: unit.to_owned(),
                            at: now,
                        });
                    }
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        let events = settled
            .into_iter()
            .chain(transitions)
            .map(SourceEvent::from);
        for event in events.chain(unloaded) {
            if out.send(event).await.is_err() {
                break;
            }
        }
        false
    }

    fn properties_changed(&mut self, msg: &Message, path: &str, now: Micros) -> Vec<Transition> {
        let Some(name) = props::unit_name(path) else {
            return Vec::new();
        };
        if !self.settings.filter.allows(&name) {
            return Vec::new();
        }
        if let Some(&position) = self.snapshot_positions.get(&name) {
            if msg.recv_position() < position {
                return Vec::new();
            }
            self.snapshot_positions.remove(&name);
        }
        let body = msg.body();
        let Ok(props::PropertiesChanged {
            interface: iface,
            changed,
        }) = body
            .deserialize::<props::PropertiesChanged<'_>>()
            .map_err(|e| {
                SignalDecodeError {
                    source: SOURCE,
                    member: "PropertiesChanged",
                    detail: &e.to_string(),
                }
                .emit()
            })
        else {
            return Vec::new();
        };
        let mut wrong = Vec::new();
        let transitions = match iface {
            SERVICE_IFACE => {
                let service = props::service_props(&changed, &mut wrong);
                self.link
                    .pending_service
                    .entry(name)
                    .or_default()
                    .merge(service);
                Vec::new()
            }
            UNIT_IFACE => {
                let unit = props::unit_props(&changed, &mut wrong);
                let service = self.link.pending_service.remove(&name);
                let stamps = if self.tracker.awaits_reading(&name) {
                    props::run_stamps(&changed, &mut wrong)
                } else {
                    RunStamps::default()
                };
                self.tracker
                    .apply_stamped(&name, service, Some(unit), stamps, now)
            }
            _ => Vec::new(),
        };
        for w in wrong {
            SignalDecodeError {
                source: SOURCE,
                member: "PropertiesChanged",
                detail: &format!("property {} has the wrong type", w.property),
            }
            .emit();
        }
        transitions
    }

    /// Follows systemd changing hands on the bus (re-exec, restart): subscriptions belong to the
    /// old owner, so subscribe again and resync.
    async fn owner_changed(&mut self, msg: &Message) -> bool {
        let Some(new) = bus::owner_change(msg, SOURCE, SYSTEMD_NAME) else {
            return false;
        };
        if new.is_empty() {
            gauge!("crashwatch_source_up", "source" => SOURCE).set(0.0);
            tracing::warn!("systemd left the bus; waiting for it to come back.");
            return false;
        }
        if new == self.link.owner {
            return false;
        }
        self.link.owner = new.clone();
        if let Err(error) = subscribe(&self.link.conn).await {
            tracing::warn!(%error, "Could not subscribe to the new systemd.");
        }
        gauge!("crashwatch_source_up", "source" => SOURCE).set(1.0);
        tracing::info!(
            owner = new.as_str(),
            "systemd changed hands on the bus; resyncing."
        );
        true
    }
}

impl Link {
    async fn open() -> Result<Link, SystemdError> {
        let conn = bus::timed("connect", async {
            zbus::connection::Builder::system()
                .method_timeout(CALL_TIMEOUT)
                .build()
                .await
                .map_err(|source| SystemdError::Connect { source })
        })
        .await?;
        let bus::Drained {
            queue,
            dropped,
            reader,
        } = bus::drain(&conn);
        let Some(owner) = bus::watch_name(&conn, &MATCH_RULES, SYSTEMD_NAME).await? else {
            return Err(SystemdError::NoSystemd);
        };
        subscribe(&conn).await?;
        Ok(Link {
            conn,
            queue,
            dropped,
            owner,
            reloading: false,
            pending_service: HashMap::new(),
            reader,
        })
    }

    /// Lists the watched units and reads those `depth` asks for, `SNAPSHOT_CONCURRENCY` calls at
    /// a time. Each unit comes with the receive position of the reply that carried its state (and
    /// InvocationID): the listing's, or its own reading's.
    async fn snapshot(
        &self,
        filter: &UnitFilter,
        depth: Depth,
    ) -> Result<Vec<(Found, Sequence)>, SystemdError> {
        type ListedUnit<'a> = (
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            zbus::ObjectPath<'a>,
            u32,
            &'a str,
            zbus::ObjectPath<'a>,
        );
        let reply = call(
            &self.conn,
            Some(SYSTEMD_NAME),
            MANAGER_PATH,
            MANAGER_IFACE,
            "ListUnits",
            &(),
            "ListUnits",
        )
        .await?;
        // systemd's monotonic timestamps are CLOCK_MONOTONIC too; taken after the reply, so a
        // unit that entered `active` or left `inactive` before the listing is never taken for a
        // later run.
        let listed_at = monotonic_micros();
        let listing_position = reply.recv_position();
        let body = reply.body();
        let listed: Vec<ListedUnit<'_>> =
            body.deserialize().map_err(|source| SystemdError::Call {
                call: "ListUnits",
                source,
            })?;
        let mut found = Vec::with_capacity(listed.len());
        let mut names = Vec::new();
        for (name, _, _, active_state, sub_state, _, _, job_id, _, _) in listed {
            if !filter.allows(name) {
                continue;
            }
            let settled =
                active_state == "active" || (active_state, sub_state) == ("inactive", "dead");
            if depth == Depth::Unsettled && settled && job_id == 0 {
                let listing = Listing {
                    name: name.to_owned(),
                    active_state: active_state.to_owned(),
                    sub_state: sub_state.to_owned(),
                    listed_at,
                };
                found.push((Found::Listed(listing), listing_position));
            } else {
                names.push(name.to_owned());
            }
        }

        let mut tasks = tokio::task::JoinSet::new();
        let mut pending = names.into_iter();
        loop {
            while tasks.len() < SNAPSHOT_CONCURRENCY {
                let Some(name) = pending.next() else { break };
                let conn = self.conn.clone();
                tasks.spawn(async move {
                    let reading = read_unit(&conn, &name).await;
                    (name, reading)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let Ok((name, reading)) = joined else {
                continue;
            };
            match reading {
                Ok((snapshot, stamps, position)) => {
                    found.push((Found::Read(snapshot, stamps), position))
                }
                Err(error) => SnapshotCallError {
                    source: SOURCE,
                    unit: &name,
                    error: &error.to_string(),
                }
                .emit(),
            }
        }
        Ok(found)
    }
}

/// Reads one unit: NRestarts first, then its state and InvocationID in one `GetAll`, so state
/// and run are consistent with each other and the reply's position marks what is older.
/// NRestarts may lag the state by a signal; it is absolute, so the next signal corrects it.
async fn read_unit(
    conn: &Connection,
    unit: &str,
) -> Result<(Snapshot, RunStamps, Sequence), SystemdError> {
    let path = props::unit_path(unit);
    let n_restarts = if unit.ends_with(".service") {
        let reply = call(
            conn,
            Some(SYSTEMD_NAME),
            &path,
            PROPERTIES_IFACE,
            "Get",
            &(SERVICE_IFACE, "NRestarts"),
            "Get NRestarts",
        )
        .await?;
        let body = reply.body();
        match body.deserialize::<Variant<'_>>() {
            Ok(Variant::U32(n)) => Some(n),
            _ => None,
        }
    } else {
        None
    };
    let reply = call(
        conn,
        Some(SYSTEMD_NAME),
        &path,
        PROPERTIES_IFACE,
        "GetAll",
        &(UNIT_IFACE,),
        "GetAll Unit",
    )
    .await?;
    let body = reply.body();
    let map: HashMap<&str, Variant<'_>> =
        body.deserialize().map_err(|source| SystemdError::Call {
            call: "GetAll Unit",
            source,
        })?;
    let unit_props = props::unit_props(&map, &mut Vec::new());
    let stamps = props::run_stamps(&map, &mut Vec::new());
    let snapshot = Snapshot {
        name: unit.to_owned(),
        active_state: unit_props.active_state.unwrap_or_default(),
        sub_state: unit_props.sub_state.unwrap_or_default(),
        invocation_id: unit_props.invocation_id.unwrap_or_default(),
        n_restarts,
    };
    Ok((snapshot, stamps, reply.recv_position()))
}

async fn subscribe(conn: &Connection) -> Result<(), SystemdError> {
    match call(
        conn,
        Some(SYSTEMD_NAME),
        MANAGER_PATH,
        MANAGER_IFACE,
        "Subscribe",
        &(),
        "Subscribe",
    )
    .await
    {
        Ok(_) => Ok(()),
        // A subscription can outlive daemon-reexec; asking again is then refused, harmlessly.
        Err(SystemdError::Call {
            source: zbus::Error::MethodError(name, _, _),
            ..
        }) if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => Ok(()),
        Err(e) => Err(e),
    }
}

/// The next filter from a reload; never, without reloads.
async fn next_filter(updates: &mut Option<watch::Receiver<UnitFilter>>) -> UnitFilter {
    if let Some(receiver) = updates {
        if receiver.changed().await.is_ok() {
            return receiver.borrow_and_update().clone();
        }
        // The sender is gone: no more reloads.
        *updates = None;
    }
    std::future::pending().await
}

/// Sleeps for `duration`, or forever when there is none.
async fn sleep_or_never(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}
