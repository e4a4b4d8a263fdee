//! The Upstart source: hears job instances change over D-Bus, and job events from the job hook,
//! and emits the same transitions as the systemd source.
//!
//! Upstart can be reached three ways, all speaking the same objects and signals: as
//! `com.ubuntu.Upstart` on the system bus, peer-to-peer on its private socket
//! `unix:abstract=/com/ubuntu/upstart` (root only, and there before dbus-daemon), or peer-to-peer
//! at a session init's `$UPSTART_SESSION`. On the bus, match rules ask for the manager's
//! `EventEmitted` and `Restarted`, the Job and Instance signals, and Upstart changing hands; only
//! signals from the current owner of `com.ubuntu.Upstart` are believed. Peer-to-peer there is no
//! bus: Upstart sends every signal to every connection, and every signal is Upstart's. The match
//! rules use `sender` and `interface` only: `path_namespace` needs dbus 1.5, and Ubuntu 12.04
//! ships 1.4.
//!
//! Upstart's signals are fire-and-forget and it keeps no restart counter, so the source takes a
//! snapshot (`GetAllJobs`, then `GetAllInstances` of each job, then each instance's goal, state
//! and processes) when it connects, after every reconnect, after `Restarted` (Upstart re-executed
//! itself) and when its queue overflowed. The [`tracker`] compares snapshots: a main process that
//! changed while no start was heard is a crash and a restart that nobody heard.
//!
//! A snapshot can only say that a main pid changed, one crash at least. So after a reconnect the
//! source reads the kernel log ([`kmsg`]) for the gap, from the last signal heard before the
//! connection went (Upstart logs a process's end before it sends the signals about it, and sends
//! signals in order, so every end after that signal went unheard) to the snapshot after the
//! reconnect, and the tracker counts each main process end logged there. A log that cannot be
//! read is counted and the source goes on with the snapshot alone.
//!
//! The job hook ([`hook`]) is a second way in that needs no D-Bus at all: with
//! `address = "none"` it is the only one. Its events go to the same tracker, which lets them
//! drive the lifecycle only while no instance signals flow (see [`tracker`]), so a host that
//! runs both counts everything once.
//!
//! As in the systemd source, one task does nothing but move messages from the connection into a
//! bounded queue (zbus stalls the connection when a stream is not read); an overflow is counted
//! and answered with a resync. When the connection goes away the source marks itself down and
//! reconnects with capped backoff, while the hook keeps listening.

pub mod hook;
pub mod joblog;
pub mod kmsg;
pub mod names;
pub mod tracker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zbus::message::Sequence;
use zbus::{Connection, Message, Variant};

use crate::event::{SourceEvent, SourceKind, Transition, UnitState};
use crate::glob::UnitFilter;
use crate::internal_events::{
    BusConnectError, BusDisconnected, HookDecodeError, KernelLogUnreadable, SignalFromStranger,
    SignalsDropped, SnapshotCallError,
};
use crate::source::bus::{self, call, decode, CALL_TIMEOUT, DBUS_NAME, PROPERTIES_IFACE};
use crate::time::{monotonic_micros, now_micros};
use hook::{HookMessage, HookSocket, Reorder, MAX_MESSAGE};
use kmsg::MainProcessEnd;
use tracker::{InstanceSnapshot, JobEvent, Tracker};

const SOURCE: &str = "upstart";
const UPSTART_NAME: &str = "com.ubuntu.Upstart";
const MANAGER_PATH: &str = "/com/ubuntu/Upstart";
const MANAGER_IFACE: &str = "com.ubuntu.Upstart0_6";
const JOB_IFACE: &str = "com.ubuntu.Upstart0_6.Job";
const INSTANCE_IFACE: &str = "com.ubuntu.Upstart0_6.Instance";

/// The signals crashwatch needs on a bus, each as a match rule so the bus filters for it.
const MATCH_RULES: [&str; 4] = [
    "type='signal',sender='com.ubuntu.Upstart',interface='com.ubuntu.Upstart0_6',path='/com/ubuntu/Upstart'",
    "type='signal',sender='com.ubuntu.Upstart',interface='com.ubuntu.Upstart0_6.Job'",
    "type='signal',sender='com.ubuntu.Upstart',interface='com.ubuntu.Upstart0_6.Instance'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='com.ubuntu.Upstart'",
];

/// Jobs read at once during a snapshot; dbus-daemon refuses more than 128 unanswered calls.
const SNAPSHOT_CONCURRENCY: usize = 16;

/// The first wait before reconnecting; it doubles up to the configured cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Where to reach Upstart over D-Bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstartAddress {
    /// `com.ubuntu.Upstart` on the system bus (`$DBUS_SYSTEM_BUS_ADDRESS`, or the default).
    System,
    /// A session init, peer-to-peer at `$UPSTART_SESSION`.
    Session,
    /// Peer-to-peer at this D-Bus address, e.g. `unix:abstract=/com/ubuntu/upstart`.
    Peer(String),
    /// No D-Bus: the job hook only.
    None,
}

impl UpstartAddress {
    /// Reads `system`, `session`, `none`, or a D-Bus address for a peer-to-peer connection.
    pub fn parse(text: &str) -> Result<UpstartAddress, String> {
        match text.trim() {
            "system" => Ok(UpstartAddress::System),
            "session" => Ok(UpstartAddress::Session),
            "none" => Ok(UpstartAddress::None),
            other => other
                .parse::<zbus::Address>()
                .map(|_| UpstartAddress::Peer(other.to_owned()))
                .map_err(|e| {
                    format!(
                        "{other:?} is not system, session, none or a D-Bus address \
                         (e.g. unix:abstract=/com/ubuntu/upstart): {e}"
                    )
                }),
        }
    }

    /// Where that is, for messages.
    fn describe(&self) -> String {
        match self {
            UpstartAddress::System => match std::env::var("DBUS_SYSTEM_BUS_ADDRESS") {
                Ok(address) => format!("the system bus at {address}"),
                Err(_) => "the system bus at unix:path=/run/dbus/system_bus_socket".to_owned(),
            },
            UpstartAddress::Session => match std::env::var("UPSTART_SESSION") {
                Ok(address) => format!("the session init at {address}"),
                Err(_) => "the session init ($UPSTART_SESSION is not set)".to_owned(),
            },
            UpstartAddress::Peer(address) => address.clone(),
            UpstartAddress::None => "nowhere (job hook only)".to_owned(),
        }
    }
}

/// What can stop the Upstart source from starting.
#[derive(Debug, thiserror::Error)]
pub enum UpstartError {
    /// The bus or socket could not be reached.
    #[error("cannot connect to Upstart on {address}: {source}")]
    Connect {
        /// Where.
        address: String,
        /// The underlying error.
        source: zbus::Error,
    },
    /// The bus answered but nobody owns `com.ubuntu.Upstart` on it.
    #[error("no Upstart on {address}: com.ubuntu.Upstart has no owner")]
    NoUpstart {
        /// Where.
        address: String,
    },
    /// `address = "session"` outside a session.
    #[error("no session init to connect to: $UPSTART_SESSION is not set")]
    NoSession,
    /// A call Upstart must answer failed.
    #[error("Upstart did not answer {call}: {source}")]
    Call {
        /// Which call.
        call: &'static str,
        /// The underlying error.
        source: zbus::Error,
    },
    /// A call took longer than the call timeout (10 s).
    #[error("Upstart did not answer {call} within {}s", CALL_TIMEOUT.as_secs())]
    Timeout {
        /// Which call.
        call: &'static str,
    },
    /// The job hook's socket could not be set up.
    #[error("cannot listen for the job hook on {}: {source}", path.display())]
    Hook {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl bus::CallError for UpstartError {
    fn failed(call: &'static str, source: zbus::Error) -> Self {
        UpstartError::Call { call, source }
    }

    fn timed_out(call: &'static str) -> Self {
        UpstartError::Timeout { call }
    }

    fn fdo(&self) -> Option<&zbus::fdo::Error> {
        match self {
            UpstartError::Call {
                source: zbus::Error::FDO(e),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

/// Settings of the Upstart source.
#[derive(Clone, Debug)]
pub struct UpstartSettings {
    /// Where to reach Upstart over D-Bus.
    pub address: UpstartAddress,
    /// Where the job hook's socket is; `None`: no hook.
    pub hook_socket: Option<PathBuf>,
    /// Which units (`job` or `job (instance)`) to watch.
    pub filter: UnitFilter,
    /// The longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// The kernel log to count a gap's main process ends from (`/dev/kmsg`, or a file of
    /// records in its format); `None`: a gap is inferred from the snapshot alone.
    pub kernel_log: Option<PathBuf>,
}

/// The Upstart source. Create it with [`UpstartSource::connect`], then [`UpstartSource::run`] it.
pub struct UpstartSource {
    settings: UpstartSettings,
    link: Option<Link>,
    tracker: Tracker,
    hook: Option<HookSocket>,
    /// Hook messages held until those stamped before them have had time to arrive.
    reorder: Reorder,
    /// Per unit, the receive position of the snapshot reply that last described it (positions
    /// belong to one connection and are cleared with it).
    snapshot_positions: HashMap<String, Sequence>,
    /// The units of the snapshot taken by `connect`, for `run` to announce.
    present: Vec<SourceEvent>,
    /// When the last signal was taken from the connection (or it was opened), on the
    /// monotonic clock.
    last_heard: u64,
    /// Since when (monotonic) signals went unheard, while the connection is gone.
    gap_from: Option<u64>,
}

/// Whose signals are believed on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Peer {
    /// Peer-to-peer: there is nobody else.
    Direct,
    /// On a bus: the current owner of `com.ubuntu.Upstart`, if any.
    Bus(Option<String>),
}

/// One live connection: the connection, the queue its reader fills, and who Upstart is on it.
struct Link {
    conn: Connection,
    queue: mpsc::Receiver<Message>,
    dropped: Arc<AtomicU64>,
    peer: Peer,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What woke the source up.
enum Wake {
    Signal(Option<Message>),
    Hook(std::io::Result<usize>),
    /// Held hook messages are due.
    Release,
    Retry,
}

impl UpstartSource {
    /// Connects, takes the initial snapshot and binds the hook socket. Fails with one clear error
    /// when Upstart cannot be reached or the socket cannot be bound; after this, nothing is fatal.
    pub async fn connect(settings: UpstartSettings) -> Result<UpstartSource, UpstartError> {
        gauge!("crashwatch_source_up", "source" => SOURCE).set(0.0);
        let mut source = UpstartSource {
            settings,
            link: None,
            tracker: Tracker::new(),
            hook: None,
            reorder: Reorder::new(),
            snapshot_positions: HashMap::new(),
            present: Vec::new(),
            last_heard: monotonic_micros(),
            gap_from: None,
        };
        if source.settings.address != UpstartAddress::None {
            let link = Link::open(&source.settings.address).await?;
            for (snapshot, position) in link.snapshot(&source.settings.filter).await? {
                source
                    .snapshot_positions
                    .insert(snapshot.unit.clone(), position);
                source.present.push(presence(&snapshot));
                source.tracker.baseline(snapshot);
            }
            source.tracker.set_live(true);
            source.link = Some(link);
        }
        if let Some(path) = &source.settings.hook_socket {
            let socket = HookSocket::bind(path).map_err(|e| UpstartError::Hook {
                path: path.clone(),
                source: e,
            })?;
            source.hook = Some(socket);
        }
        gauge!("crashwatch_source_up", "source" => SOURCE).set(1.0);
        tracing::info!(
            address = %source.settings.address.describe(),
            hook = ?source.hook.as_ref().map(|h| h.path().display().to_string()),
            "Listening to Upstart."
        );
        Ok(source)
    }

    /// How many units the source follows.
    pub fn watched_units(&self) -> usize {
        self.tracker.len()
    }

    /// Reads signals and hook messages and sends transitions until `shutdown` is cancelled,
    /// reconnecting whenever the connection goes away.
    pub async fn run(mut self, out: mpsc::Sender<SourceEvent>, shutdown: CancellationToken) {
        for event in std::mem::take(&mut self.present) {
            if out.send(event).await.is_err() {
                return;
            }
        }
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        let mut backoff = FIRST_BACKOFF;
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let release_at = self.reorder.next_due().map(|due| {
                let wait = Duration::from_micros(due.saturating_sub(monotonic_micros()));
                tokio::time::Instant::now() + wait
            });
            let wake = tokio::select! {
                _ = shutdown.cancelled() => {
                    // What the hook said last is not held back from the record.
                    for (event, at) in self.reorder.drain() {
                        for t in self.tracker.event(&event, at) {
                            let _ = out.try_send(t.into());
                        }
                    }
                    return;
                }
                msg = next_signal(&mut self.link) => Wake::Signal(msg),
                received = next_datagram(self.hook.as_ref(), &mut buf) => Wake::Hook(received),
                _ = sleep_until(release_at) => Wake::Release,
                _ = sleep_until(retry_at) => Wake::Retry,
            };
            match wake {
                Wake::Signal(Some(msg)) => {
                    self.last_heard = monotonic_micros();
                    counter!("crashwatch_events_total", "source" => SOURCE).increment(1);
                    let mut resync = self.handle(&msg, &out).await;
                    let dropped = self
                        .link
                        .as_ref()
                        .map_or(0, |l| l.dropped.swap(0, Ordering::Relaxed));
                    if dropped > 0 {
                        SignalsDropped {
                            source: SOURCE,
                            count: dropped,
                        }
                        .emit();
                        resync = true;
                    }
                    if resync {
                        if let Err(error) = self.resync(&out).await {
                            self.lose(&error.to_string());
                            retry_at = Some(tokio::time::Instant::now() + backoff);
                        }
                    }
                }
                Wake::Signal(None) => {
                    self.lose("the connection closed");
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                }
                Wake::Hook(Ok(n)) => self.hook_message(&buf[..n]),
                Wake::Release => {
                    for (event, at) in self.reorder.release(monotonic_micros()) {
                        let transitions = self.tracker.event(&event, at);
                        send(&out, transitions).await;
                    }
                }
                Wake::Hook(Err(error)) => {
                    HookDecodeError {
                        reason: &format!("receive failed: {error}"),
                    }
                    .emit();
                    // Whatever broke the socket, do not spin on it.
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                Wake::Retry => match self.reopen(&out).await {
                    Ok(()) => {
                        retry_at = None;
                        backoff = FIRST_BACKOFF;
                        gauge!("crashwatch_source_up", "source" => SOURCE).set(1.0);
                        tracing::info!(
                            units = self.tracker.len(),
                            "Reconnected to Upstart and resynced."
                        );
                    }
                    Err(error) => {
                        self.link = None;
                        BusConnectError {
                            source: SOURCE,
                            error: &error.to_string(),
                        }
                        .emit();
                        backoff = (backoff * 2).min(self.settings.max_backoff);
                        retry_at = Some(tokio::time::Instant::now() + backoff);
                    }
                },
            }
        }
    }

    /// The connection is gone: hook events take over until it is back.
    fn lose(&mut self, reason: &str) {
        BusDisconnected {
            source: SOURCE,
            reason,
        }
        .emit();
        gauge!("crashwatch_source_up", "source" => SOURCE).set(0.0);
        self.link = None;
        self.tracker.set_live(false);
        self.gap_from.get_or_insert(self.last_heard);
    }

    /// Reconnects and reconciles the tracker with a fresh snapshot.
    async fn reopen(&mut self, out: &mpsc::Sender<SourceEvent>) -> Result<(), UpstartError> {
        self.snapshot_positions.clear();
        self.link = Some(Link::open(&self.settings.address).await?);
        self.resync(out).await
    }

    /// Reconciles every watched instance against a fresh snapshot, then trusts signals again.
    async fn resync(&mut self, out: &mpsc::Sender<SourceEvent>) -> Result<(), UpstartError> {
        let Some(link) = &self.link else {
            return Ok(());
        };
        let mut snapshot = Vec::new();
        self.snapshot_positions.clear();
        let mut present = Vec::new();
        // Signals from here on reach the queue: what ends later is heard, or the snapshot shows.
        let gap_to = monotonic_micros();
        for (instance, position) in link.snapshot(&self.settings.filter).await? {
            self.snapshot_positions
                .insert(instance.unit.clone(), position);
            present.push(presence(&instance));
            snapshot.push(instance);
        }
        for event in present {
            if out.send(event).await.is_err() {
                return Ok(());
            }
        }
        let ends = match self.gap_from.take() {
            Some(from) => self.gap_ends(from, gap_to).await,
            None => Vec::new(),
        };
        self.last_heard = gap_to;
        let transitions = self.tracker.reconcile(snapshot, &ends, now_micros());
        self.tracker.set_live(true);
        send(out, transitions).await;
        Ok(())
    }

    /// The main process ends the kernel log holds for `from..=to` (monotonic), dated on the
    /// realtime clock. Empty when no log is configured or it cannot be read (counted and said).
    async fn gap_ends(&self, from: u64, to: u64) -> Vec<MainProcessEnd> {
        let Some(path) = self.settings.kernel_log.clone() else {
            return Vec::new();
        };
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || kmsg::read_window(&path, from, to)).await
        };
        let ends = match read
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            Ok(ends) => ends,
            Err(error) => {
                KernelLogUnreadable {
                    path: &path,
                    error: &error,
                }
                .emit();
                return Vec::new();
            }
        };
        let (monotonic, realtime) = (monotonic_micros(), now_micros());
        ends.into_iter()
            .map(|mut end| {
                end.at = realtime.saturating_sub(monotonic.saturating_sub(end.at));
                end
            })
            .collect()
    }

    /// Takes one datagram from the job hook: held, to be applied in the order of the hooks'
    /// stamps once [`hook::REORDER_WINDOW_US`] has passed.
    fn hook_message(&mut self, bytes: &[u8]) {
        counter!("crashwatch_events_total", "source" => SOURCE).increment(1);
        match HookMessage::decode(bytes) {
            Ok(message) => {
                if self.settings.filter.allows(&message.event.unit()) {
                    self.reorder.push(message, monotonic_micros(), now_micros());
                }
            }
            Err(error) => HookDecodeError {
                reason: &error.to_string(),
            }
            .emit(),
        }
    }

    /// Applies one signal. Returns whether the source must resync.
    async fn handle(&mut self, msg: &Message, out: &mpsc::Sender<SourceEvent>) -> bool {
        let Some(link) = &mut self.link else {
            return false;
        };
        let header = msg.header();
        let member = header.member().map(|m| m.as_str()).unwrap_or("");
        let interface = header.interface().map(|i| i.as_str()).unwrap_or("");
        let sender = header.sender().map(|s| s.as_str()).unwrap_or("");
        let path = header.path().map(|p| p.as_str()).unwrap_or("");

        if let Peer::Bus(owner) = &mut link.peer {
            if sender == DBUS_NAME {
                // The bus's own NameAcquired and NameLost are about our connection.
                if member != "NameOwnerChanged" {
                    return false;
                }
                let Some(new) = bus::owner_change(msg, SOURCE, UPSTART_NAME) else {
                    return false;
                };
                if new.is_empty() {
                    *owner = None;
                    self.tracker.set_live(false);
                    self.gap_from.get_or_insert(self.last_heard);
                    gauge!("crashwatch_source_up", "source" => SOURCE).set(0.0);
                    tracing::warn!("Upstart left the bus; waiting for it to come back.");
                    return false;
                }
                if owner.as_deref() == Some(new.as_str()) {
                    return false;
                }
                *owner = Some(new.clone());
                gauge!("crashwatch_source_up", "source" => SOURCE).set(1.0);
                tracing::info!(
                    owner = new.as_str(),
                    "Upstart changed hands on the bus; resyncing."
                );
                return true;
            }
            if owner.as_deref() != Some(sender) {
                SignalFromStranger {
                    source: SOURCE,
                    sender,
                }
                .emit();
                return false;
            }
        }

        let now = now_micros();
        let body = msg.body();
        let filter = &self.settings.filter;
        let positions = &mut self.snapshot_positions;
        // A signal received before the snapshot reply that last described its unit is older
        // than what the tracker knows: applied now it would replay a run and count it twice.
        let mut current = |unit: Option<String>| -> Option<String> {
            let unit = unit.filter(|u| filter.allows(u))?;
            if let Some(&position) = positions.get(&unit) {
                if msg.recv_position() < position {
                    return None;
                }
                positions.remove(&unit);
            }
            Some(unit)
        };
        let mut read_pid = None;
        let instance_unit = names::unit_from_instance_path(path);
        let mut unloaded = None;
        let transitions = match (interface, member) {
            (INSTANCE_IFACE, "StateChanged") => {
                match (
                    decode::<&str>(&body, SOURCE, member),
                    current(instance_unit),
                ) {
                    (Ok(state), Some(unit)) => {
                        if state == "running" {
                            read_pid = Some(unit.clone());
                        }
                        self.tracker.state_changed(&unit, state, now)
                    }
                    _ => Vec::new(),
                }
            }
            (INSTANCE_IFACE, "GoalChanged") => {
                if let (Ok(goal), Some(unit)) = (
                    decode::<&str>(&body, SOURCE, member),
                    current(instance_unit),
                ) {
                    self.tracker.goal_changed(&unit, goal);
                }
                Vec::new()
            }
            (INSTANCE_IFACE, "Failed") => {
                match (decode::<i32>(&body, SOURCE, member), current(instance_unit)) {
                    (Ok(status), Some(unit)) => self.tracker.failed(&unit, status, now),
                    _ => Vec::new(),
                }
            }
            (JOB_IFACE, "InstanceAdded" | "InstanceRemoved") => {
                let unit = decode::<zbus::ObjectPath<'_>>(&body, SOURCE, member)
                    .ok()
                    .and_then(|p| names::unit_from_instance_path(p.as_str()));
                match current(unit) {
                    Some(unit) if member == "InstanceAdded" => {
                        self.tracker.instance_added(&unit);
                        Vec::new()
                    }
                    Some(unit) => {
                        let transitions = self.tracker.instance_removed(&unit, now);
                        unloaded = Some(SourceEvent::Unloaded { unit, at: now });
                        transitions
                    }
                    None => Vec::new(),
                }
            }
            (MANAGER_IFACE, "EventEmitted") => {
                match decode::<(&str, Vec<&str>)>(&body, SOURCE, member) {
                    Ok((name, env)) => match JobEvent::from_env(name, &env) {
                        Some(event) if current(Some(event.unit())).is_some() => {
                            self.tracker.event(&event, now)
                        }
                        _ => Vec::new(),
                    },
                    Err(()) => Vec::new(),
                }
            }
            (MANAGER_IFACE, "Restarted") => {
                // Upstart re-executed itself; what it sent meanwhile may be lost.
                tracing::info!("Upstart re-executed itself; resyncing.");
                return true;
            }
            _ => Vec::new(),
        };
        send(out, transitions).await;
        if let Some(event) = unloaded {
            let _ = out.send(event).await;
        }
        // Signals carry no pid. Reading it as each run reaches running lets the next snapshot
        // tell a respawn it did not hear from the last one it did.
        if let (Some(unit), Some(link)) = (read_pid, &self.link) {
            if let Some(pid) = read_main_pid(&link.conn, link.destination(), path).await {
                self.tracker.main_pid(&unit, pid);
            }
        }
        false
    }
}

/// The main pid of an instance, or `None` if it has none or did not answer (it may be gone
/// already; the next snapshot will tell).
async fn read_main_pid(
    conn: &Connection,
    destination: Option<&'static str>,
    path: &str,
) -> Option<u32> {
    let reply = call::<_, UpstartError>(
        conn,
        destination,
        path,
        PROPERTIES_IFACE,
        "Get",
        &(INSTANCE_IFACE, "processes"),
        "Get processes",
    )
    .await
    .ok()?;
    let body = reply.body();
    let value: Variant<'_> = body.deserialize().ok()?;
    main_pid_of(unwrap_variant(&value))
}

impl Link {
    async fn open(address: &UpstartAddress) -> Result<Link, UpstartError> {
        let where_ = address.describe();
        let (builder, bus) = match address {
            UpstartAddress::System => (zbus::connection::Builder::system(), true),
            UpstartAddress::Session => {
                let session =
                    std::env::var("UPSTART_SESSION").map_err(|_| UpstartError::NoSession)?;
                (
                    zbus::connection::Builder::address(session.as_str()).p2p(),
                    false,
                )
            }
            UpstartAddress::Peer(peer) => (
                zbus::connection::Builder::address(peer.as_str()).p2p(),
                false,
            ),
            UpstartAddress::None => {
                return Err(UpstartError::Connect {
                    address: where_,
                    source: zbus::Error::Address("no D-Bus address configured".to_owned()),
                })
            }
        };
        let conn = bus::timed("connect", async {
            builder
                .method_timeout(CALL_TIMEOUT)
                .build()
                .await
                .map_err(|source| UpstartError::Connect {
                    address: where_.clone(),
                    source,
                })
        })
        .await?;
        let bus::Drained {
            queue,
            dropped,
            reader,
        } = bus::drain(&conn);
        let mut link = Link {
            conn,
            queue,
            dropped,
            peer: Peer::Direct,
            reader,
        };
        if !bus {
            return Ok(link);
        }
        let Some(owner) = bus::watch_name(&link.conn, &MATCH_RULES, UPSTART_NAME).await? else {
            return Err(UpstartError::NoUpstart { address: where_ });
        };
        link.peer = Peer::Bus(Some(owner));
        Ok(link)
    }

    /// Upstart's name on this connection: its bus name, or none peer-to-peer.
    fn destination(&self) -> Option<&'static str> {
        match self.peer {
            Peer::Direct => None,
            Peer::Bus(_) => Some(UPSTART_NAME),
        }
    }

    /// Reads every watched instance: all jobs, their instances, each instance's properties,
    /// `SNAPSHOT_CONCURRENCY` jobs at a time. A job that fails to answer is counted and skipped
    /// (it may have been removed meanwhile); a manager that fails to answer fails the snapshot.
    async fn snapshot(
        &self,
        filter: &UnitFilter,
    ) -> Result<Vec<(InstanceSnapshot, Sequence)>, UpstartError> {
        let destination = self.destination();
        let reply = call(
            &self.conn,
            destination,
            MANAGER_PATH,
            MANAGER_IFACE,
            "GetAllJobs",
            &(),
            "GetAllJobs",
        )
        .await?;
        let jobs: Vec<String> = reply
            .body()
            .deserialize::<Vec<zbus::ObjectPath<'_>>>()
            .map_err(|source| UpstartError::Call {
                call: "GetAllJobs",
                source,
            })?
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect();

        let mut snapshots = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut pending = jobs.into_iter();
        loop {
            while tasks.len() < SNAPSHOT_CONCURRENCY {
                let Some(job) = pending.next() else { break };
                let conn = self.conn.clone();
                let filter = filter.clone();
                tasks.spawn(async move {
                    let result = read_job(&conn, destination, &job, &filter).await;
                    (job, result)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let Ok((job, result)) = joined else {
                continue;
            };
            match result {
                Ok(found) => snapshots.extend(found),
                Err(error) => SnapshotCallError {
                    source: SOURCE,
                    unit: &job,
                    error: &error.to_string(),
                }
                .emit(),
            }
        }
        Ok(snapshots)
    }
}

/// Reads the instances of one job, each with the receive position of the reply that described
/// it. Unit names come from the object paths, as for signals, so a unit is named the same however
/// it is heard of.
async fn read_job(
    conn: &Connection,
    destination: Option<&'static str>,
    job: &str,
    filter: &UnitFilter,
) -> Result<Vec<(InstanceSnapshot, Sequence)>, UpstartError> {
    let reply = call(
        conn,
        destination,
        job,
        JOB_IFACE,
        "GetAllInstances",
        &(),
        "GetAllInstances",
    )
    .await?;
    let instances: Vec<String> = reply
        .body()
        .deserialize::<Vec<zbus::ObjectPath<'_>>>()
        .map_err(|source| UpstartError::Call {
            call: "GetAllInstances",
            source,
        })?
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    let mut found = Vec::new();
    for path in instances {
        let Some(unit) = names::unit_from_instance_path(&path) else {
            continue;
        };
        if !filter.allows(&unit) {
            continue;
        }
        let reply = call(
            conn,
            destination,
            &path,
            PROPERTIES_IFACE,
            "GetAll",
            &(INSTANCE_IFACE,),
            "GetAll",
        )
        .await?;
        let body = reply.body();
        let props: HashMap<&str, Variant<'_>> =
            body.deserialize().map_err(|source| UpstartError::Call {
                call: "GetAll",
                source,
            })?;
        found.push((
            InstanceSnapshot {
                unit,
                goal: string_prop(&props, "goal"),
                state: string_prop(&props, "state"),
                main_pid: main_pid(&props),
            },
            reply.recv_position(),
        ));
    }
    Ok(found)
}

fn string_prop(props: &HashMap<&str, Variant<'_>>, name: &str) -> String {
    match props.get(name).map(unwrap_variant) {
        Some(Variant::Str(s)) => s.as_str().to_owned(),
        _ => String::new(),
    }
}

/// The pid of the `main` entry of `processes` (`a(si)`).
fn main_pid(props: &HashMap<&str, Variant<'_>>) -> Option<u32> {
    main_pid_of(unwrap_variant(props.get("processes")?))
}

fn main_pid_of(processes: &Variant<'_>) -> Option<u32> {
    let Variant::Array(processes) = processes else {
        return None;
    };
    processes.inner().iter().find_map(|entry| match entry {
        Variant::Structure(s) => match s.fields() {
            [Variant::Str(name), Variant::I32(pid)] if name.as_str() == "main" => {
                u32::try_from(*pid).ok()
            }
            _ => None,
        },
        _ => None,
    })
}

/// A variant inside a variant is legal D-Bus; look through it.
fn unwrap_variant<'a, 'v>(value: &'a Variant<'v>) -> &'a Variant<'v> {
    match value {
        Variant::Variant(inner) => inner.as_ref(),
        other => other,
    }
}

/// What a snapshot says of an instance, for the unit table.
fn presence(snapshot: &InstanceSnapshot) -> SourceEvent {
    SourceEvent::Present {
        unit: snapshot.unit.clone(),
        source: SourceKind::Upstart,
        state: UnitState::new(snapshot.goal.as_str(), snapshot.state.as_str()),
    }
}

async fn send(out: &mpsc::Sender<SourceEvent>, transitions: Vec<Transition>) {
    for t in transitions {
        if out.send(t.into()).await.is_err() {
            break;
        }
    }
}

/// The next queued signal; `None` once the connection closed; never, without a connection.
async fn next_signal(link: &mut Option<Link>) -> Option<Message> {
    match link {
        Some(link) => link.queue.recv().await,
        None => std::future::pending().await,
    }
}

/// The next datagram on the hook socket; never, without one.
async fn next_datagram(hook: Option<&HookSocket>, buf: &mut [u8]) -> std::io::Result<usize> {
    match hook {
        Some(hook) => hook.recv(buf).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read() {
        assert_eq!(UpstartAddress::parse("system"), Ok(UpstartAddress::System));
        assert_eq!(
            UpstartAddress::parse("session"),
            Ok(UpstartAddress::Session)
        );
        assert_eq!(UpstartAddress::parse("none"), Ok(UpstartAddress::None));
        assert_eq!(
            UpstartAddress::parse("unix:abstract=/com/ubuntu/upstart"),
            Ok(UpstartAddress::Peer(
                "unix:abstract=/com/ubuntu/upstart".to_owned()
            ))
        );
        assert!(UpstartAddress::parse("bogus").is_err());
    }
}
