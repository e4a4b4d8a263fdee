//! Every runtime failure or drop, as a named event that is counted and logged at a bounded rate.
//!
//! After start-up nothing is fatal: a bad signal, a lost bus or a dead StatsD server is counted in
//! `crashwatch_errors_total{component,error_type}` and logged, but a flood of one failure must not
//! flood the log, so each kind prints its first occurrence and then at most one line per
//! [`LOG_INTERVAL`] saying how many were suppressed. Call sites stay one line: `X { .. }.emit()`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::counter;

/// How often one kind of failure may reach the log.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

struct Limit {
    last: Instant,
    suppressed: u64,
}

static LIMITS: Mutex<Option<HashMap<&'static str, Limit>>> = Mutex::new(None);

/// Whether a log line of kind `key` may be written now; returns how many were held back before it.
fn may_log(key: &'static str) -> Option<u64> {
    let mut guard = LIMITS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let limits = guard.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    match limits.get_mut(key) {
        None => {
            limits.insert(
                key,
                Limit {
                    last: now,
                    suppressed: 0,
                },
            );
            Some(0)
        }
        Some(limit) if now.duration_since(limit.last) >= LOG_INTERVAL => {
            let suppressed = limit.suppressed;
            limit.last = now;
            limit.suppressed = 0;
            Some(suppressed)
        }
        Some(limit) => {
            limit.suppressed += 1;
            None
        }
    }
}

/// Logs a warning at most once per [`LOG_INTERVAL`] for the call site's `key`.
macro_rules! warn_limited {
    ($key:expr, $($arg:tt)+) => {
        if let Some(suppressed) = may_log($key) {
            if suppressed > 0 {
                tracing::warn!(suppressed, $($arg)+);
            } else {
                tracing::warn!($($arg)+);
            }
        }
    };
}

fn count(component: &'static str, error_type: &'static str) {
    counter!("crashwatch_errors_total", "component" => component, "error_type" => error_type)
        .increment(1);
}

/// The bus connection closed under the source; it reconnects and resyncs.
pub struct BusDisconnected<'a> {
    /// The source's name.
    pub source: &'static str,
    /// Why, as far as known.
    pub reason: &'a str,
}

impl BusDisconnected<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        count(self.source, "bus_disconnected");
        warn_limited!(
            "bus_disconnected",
            source = self.source,
            reason = self.reason,
            "Lost the bus; reconnecting."
        );
    }
}

/// A reconnect attempt failed; the next one waits longer.
pub struct BusConnectError<'a> {
    /// The source's name.
    pub source: &'static str,
    /// The error, as text.
    pub error: &'a str,
}

impl BusConnectError<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        count(self.source, "bus_connect_failed");
        warn_limited!(
            "bus_connect_failed",
            source = self.source,
            error = self.error,
            "Could not reach the bus; retrying."
        );
    }
}

/// A signal whose body could not be decoded (wrong signature, wrong property type).
pub struct SignalDecodeError<'a> {
    /// The source's name.
    pub source: &'static str,
    /// Which signal.
    pub member: &'a str,
    /// What was wrong.
    pub detail: &'a str,
}

impl SignalDecodeError<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        count(self.source, "signal_decode_failed");
        warn_limited!(
            "signal_decode_failed",
            source = self.source,
            member = self.member,
            detail = self.detail,
            "Ignored a malformed signal."
        );
    }
}

/// A signal from a sender that is not the init system we watch.
pub struct SignalFromStranger<'a> {
    /// The source's name.
    pub source: &'static str,
    /// The sender's unique name.
    pub sender: &'a str,
}

impl SignalFromStranger<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        count(self.source, "signal_from_stranger");
        warn_limited!(
            "signal_from_stranger",
            source = self.source,
            sender = self.sender,
            "Ignored a signal from a sender that is not the init system."
        );
    }
}

/// A call during a snapshot failed; the unit is skipped until its next signal.
pub struct SnapshotCallError<'a> {
    /// The source's name.
    pub source: &'static str,
    /// Which unit.
    pub unit: &'a str,
    /// The error, as text.
    pub error: &'a str,
}

impl SnapshotCallError<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        count(self.source, "snapshot_call_failed");
        warn_limited!(
            "snapshot_call_failed",
            source = self.source,
            unit = self.unit,
            error = self.error,
            "A snapshot call failed."
        );
    }
}

/// Signals arrived faster than the source could take them; the source resyncs from a snapshot.
pub struct SignalsDropped {
    /// The source's name.
    pub source: &'static str,
    /// How many.
    pub count: u64,
}

impl SignalsDropped {
    /// Counts and logs it.
    pub fn emit(self) {
        counter!("crashwatch_signals_dropped_total", "source" => self.source).increment(self.count);
        count(self.source, "signals_dropped");
        warn_limited!(
            "signals_dropped",
            source = self.source,
            count = self.count,
            "Fell behind the bus; resyncing from a snapshot."
        );
    }
}

/// A sink could not keep up or could not write; the event was dropped for that sink only.
pub struct SinkDropped<'a> {
    /// The sink's name.
    pub sink: &'static str,
    /// Why.
    pub reason: &'a str,
}

impl SinkDropped<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        counter!("crashwatch_sink_events_dropped_total", "sink" => self.sink).increment(1);
        count(self.sink, "event_dropped");
        warn_limited!(
            "sink_dropped",
            sink = self.sink,
            reason = self.reason,
            "A sink dropped an event."
        );
    }
}

/// A sink failed to deliver (write error, send error).
pub struct SinkWriteError<'a> {
    /// The sink's name.
    pub sink: &'static str,
    /// The error, as text.
    pub error: &'a str,
}

impl SinkWriteError<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        count(self.sink, "write_failed");
        warn_limited!(
            "sink_write_failed",
            sink = self.sink,
            error = self.error,
            "A sink failed to write."
        );
    }
}

/// A datagram could not be sent to StatsD: nothing listens on the server's port (the kernel
/// reports the refusal on a later send, as `ECONNREFUSED`), the network is unreachable, or the
/// socket's buffer is full. The datagram is lost; sending goes on.
pub struct StatsdSendError<'a> {
    /// The server.
    pub address: std::net::SocketAddr,
    /// Why.
    pub error: &'a std::io::Error,
}

impl StatsdSendError<'_> {
    /// Creates the counter at zero, so that the first failure is an increase.
    pub fn register() {
        counter!("crashwatch_errors_total", "component" => "statsd", "error_type" => "send_failed")
            .absolute(0);
    }

    /// Counts and logs it.
    pub fn emit(self) {
        count("statsd", "send_failed");
        warn_limited!(
            "statsd_send_failed",
            address = %self.address,
            error = %self.error,
            "Could not send to StatsD; the datagram is lost."
        );
    }
}

/// The event record's file could not be rotated (a rename failed): records go on into the live
/// file, past its size cap, and the rotation is tried again before the next record.
pub struct EventsRotateError<'a> {
    /// The record's path.
    pub path: &'a str,
    /// The error, as text.
    pub error: &'a str,
}

impl EventsRotateError<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        count("events", "rotate_failed");
        warn_limited!(
            "events_rotate_failed",
            path = self.path,
            error = self.error,
            "Could not rotate the event record; writing on past its size cap."
        );
    }
}

/// A unit beyond the configured cap was seen; it is counted but gets no series of its own.
pub struct UnitOverflow<'a> {
    /// The unit's name.
    pub unit: &'a str,
    /// The cap in force.
    pub max_units: usize,
}

impl UnitOverflow<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        counter!("crashwatch_units_overflow_total").increment(1);
        warn_limited!(
            "unit_overflow",
            unit = self.unit,
            max_units = self.max_units,
            "Too many units; not exporting series for this one."
        );
    }
}

/// What went wrong with an HTTP connection or request: the `error_type` of
/// `crashwatch_errors_total{component="http"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpFailure {
    /// The TLS handshake failed: no or a refused client certificate, no common version or
    /// suite, or plain HTTP sent to the TLS port.
    TlsHandshake,
    /// Missing or wrong basic authentication (answered 401).
    Unauthorized,
    /// The TLS handshake, a request head or the taking of an answer did not end in time.
    Timeout,
    /// A method other than GET or HEAD (answered 405).
    MethodNotAllowed,
    /// A request head over the size cap (answered 431).
    RequestTooLarge,
    /// A request that is not HTTP/1.x, or one cut off before its head ended.
    BadRequest,
    /// More requests than the web configuration's `rate_limit` (answered 429).
    RateLimited,
    /// A connection dropped to make room for a newer one.
    TooManyConnections,
    /// The connection broke (reset by the client, say).
    ConnectionError,
    /// Accepting a connection failed (out of file descriptors, say).
    AcceptFailed,
}

impl HttpFailure {
    /// The `error_type` label.
    pub fn label(self) -> &'static str {
        match self {
            HttpFailure::TlsHandshake => "tls_handshake",
            HttpFailure::Unauthorized => "unauthorized",
            HttpFailure::Timeout => "timeout",
            HttpFailure::MethodNotAllowed => "method_not_allowed",
            HttpFailure::RequestTooLarge => "request_too_large",
            HttpFailure::BadRequest => "bad_request",
            HttpFailure::RateLimited => "rate_limited",
            HttpFailure::TooManyConnections => "too_many_connections",
            HttpFailure::ConnectionError => "connection_error",
            HttpFailure::AcceptFailed => "accept_failed",
        }
    }

    /// The key its log lines are rate-limited under.
    fn log_key(self) -> &'static str {
        match self {
            HttpFailure::TlsHandshake => "http_tls_handshake",
            HttpFailure::Unauthorized => "http_unauthorized",
            HttpFailure::Timeout => "http_timeout",
            HttpFailure::MethodNotAllowed => "http_method_not_allowed",
            HttpFailure::RequestTooLarge => "http_request_too_large",
            HttpFailure::BadRequest => "http_bad_request",
            HttpFailure::RateLimited => "http_rate_limited",
            HttpFailure::TooManyConnections => "http_too_many_connections",
            HttpFailure::ConnectionError => "http_connection_error",
            HttpFailure::AcceptFailed => "http_accept_failed",
        }
    }
}

/// An HTTP client was refused or dropped, or failed to finish its request.
pub struct HttpRequestError<'a> {
    /// What went wrong.
    pub failure: HttpFailure,
    /// The detail, for the log: never a credential.
    pub reason: &'a str,
}

impl HttpRequestError<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        count("http", self.failure.label());
        warn_limited!(
            self.failure.log_key(),
            error_type = self.failure.label(),
            reason = self.reason,
            "Refused an HTTP request or dropped a connection."
        );
    }
}

/// The web configuration file (or a certificate, key or CA file it names) changed and no longer
/// checks out; the server goes on with the last good configuration.
pub struct WebConfigReloadError<'a> {
    /// Why, as one line naming the file.
    pub error: &'a str,
}

impl WebConfigReloadError<'_> {
    /// Counts and logs it. Once per change of the files, so not rate-limited.
    pub fn emit(self) {
        count("http", "web_config_reload_failed");
        tracing::error!(
            error = self.error,
            "Refused the changed web configuration; the last good one stays."
        );
    }
}

/// Reading the journal at start-up failed; crashwatch goes on without history.
pub struct JournalReadError<'a> {
    /// Why.
    pub error: &'a str,
}

impl JournalReadError<'_> {
    /// Counts and logs it. Once per start, so not rate-limited.
    pub fn emit(self) {
        count("journal", "history_read_failed");
        tracing::warn!(
            error = self.error,
            "Could not read history from the journal; crash-loop windows start empty."
        );
    }
}

/// A reloaded configuration did not check out; the running one stays.
pub struct ConfigReloadError<'a> {
    /// Why, as one line naming the file.
    pub error: &'a str,
}

impl ConfigReloadError<'_> {
    /// Counts and logs it. Only on a reload someone asked for, so not rate-limited.
    pub fn emit(self) {
        count("config", "reload_failed");
        tracing::error!(
            error = self.error,
            "Refused the new configuration; the running one stays."
        );
    }
}

/// A datagram on the Upstart job hook's socket was not a hook message (wrong format, wrong
/// version, oversized, binary); it is dropped.
pub struct HookDecodeError<'a> {
    /// What was wrong, as a fixed phrase (never the datagram's content).
    pub reason: &'a str,
}

impl HookDecodeError<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        count("upstart", "hook_decode_failed");
        warn_limited!(
            "hook_decode_failed",
            reason = self.reason,
            "Dropped a malformed message on the job hook socket."
        );
    }
}

/// The kernel log could not be read after a gap in the Upstart connection (not there, no
/// permission: reading `/dev/kmsg` needs root or `CAP_SYSLOG`); the gap is inferred from the
/// snapshot alone, one crash at least where a main pid changed.
pub struct KernelLogUnreadable<'a> {
    /// The log's path.
    pub path: &'a std::path::Path,
    /// Why.
    pub error: &'a str,
}

impl KernelLogUnreadable<'_> {
    /// Counts it every time, and logs it the first time only: the cause (a setting, a
    /// permission) does not change while crashwatch runs.
    pub fn emit(self) {
        static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        count("upstart", "kernel_log_unreadable");
        if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                path = %self.path.display(),
                error = self.error,
                "Cannot read the kernel log; runs that end while Upstart is out of reach are \
                 counted from its snapshots alone, one at least where the main pid changed."
            );
        }
    }
}

/// An action did not get through: its command exited non-zero, overran its timeout or could not
/// start, or its receiver refused the request or could not be reached in any attempt.
pub struct ActionFailed<'a> {
    /// `command`, `webhook` or `alertmanager`.
    pub kind: &'static str,
    /// `loop_started`, `loop_ended` or `refresh`.
    pub event: &'static str,
    /// The `error_type` label: `command_failed`, `command_timeout`, `command_spawn_failed`,
    /// `http_rejected` or `http_failed`.
    pub error_type: &'static str,
    /// The unit the action was for; empty for an Alertmanager refresh.
    pub unit: &'a str,
    /// What happened: the exit status, the HTTP status and reason, the connection error.
    pub detail: &'a str,
}

impl ActionFailed<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        counter!("crashwatch_actions_total", "kind" => self.kind, "event" => self.event, "result" => "failed")
            .increment(1);
        count("actions", self.error_type);
        warn_limited!(
            self.error_type,
            kind = self.kind,
            event = self.event,
            unit = self.unit,
            detail = self.detail,
            "An action failed."
        );
    }
}

/// Looking up what a crashed run wrote failed: journalctl could not run, failed or overran its
/// time limit. The crash shows its context as unavailable.
pub struct ContextLookupError<'a> {
    /// The unit the lookup was for.
    pub unit: &'a str,
    /// Why.
    pub error: &'a str,
}

impl ContextLookupError<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        counter!("crashwatch_crash_context_lookups_total", "result" => "failed").increment(1);
        count("context", "lookup_failed");
        warn_limited!(
            "context_lookup_failed",
            unit = self.unit,
            error = self.error,
            "Could not read what a crashed run wrote from the journal."
        );
    }
}

/// A crash's context was not looked up: too many lookups were already waiting.
pub struct ContextRequestDropped<'a> {
    /// The unit the lookup was for.
    pub unit: &'a str,
}

impl ContextRequestDropped<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        counter!("crashwatch_crash_context_lookups_total", "result" => "dropped").increment(1);
        count("context", "dropped");
        warn_limited!(
            "context_request_dropped",
            unit = self.unit,
            "Too many crash context lookups are waiting; this crash gets none."
        );
    }
}

/// An action was given up before it ran: crashwatch was stopping and the grace ran out, or too
/// many deliveries were already waiting.
pub struct ActionDropped<'a> {
    /// `command`, `webhook` or `alertmanager`.
    pub kind: &'static str,
    /// `loop_started` or `loop_ended`.
    pub event: &'static str,
    /// Why.
    pub reason: &'a str,
}

impl ActionDropped<'_> {
    /// Counts and logs it.
    pub fn emit(self) {
        counter!("crashwatch_actions_total", "kind" => self.kind, "event" => self.event, "result" => "dropped")
            .increment(1);
        count("actions", "dropped");
        warn_limited!(
            "action_dropped",
            kind = self.kind,
            event = self.event,
            reason = self.reason,
            "An action was given up."
        );
    }
}
