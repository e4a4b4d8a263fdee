//! What every D-Bus source needs the same way: a reader that keeps the connection drained, calls
//! bounded in time, the owner of the name it listens to, and signal bodies decoded with failures
//! counted.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::mpsc;
use zbus::message::Type as MessageType;
use zbus::{Connection, Message, MessageStream};

use crate::internal_events::SignalDecodeError;

/// The bus daemon's own name, interface and object.
pub(crate) const DBUS_NAME: &str = "org.freedesktop.DBus";
/// The standard properties interface.
pub(crate) const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";
/// Signals held between the stream reader and the tracker. Large enough for systemd's bursts
/// (it pauses at 1024 queued messages of its own); beyond it the source resyncs.
pub(crate) const QUEUE_CAPACITY: usize = 65_536;
/// How long one bus call may take before it counts as failed.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The queue a connection's signals are drained into, what did not fit, and the task draining.
pub(crate) struct Drained {
    pub queue: mpsc::Receiver<Message>,
    pub dropped: Arc<AtomicU64>,
    pub reader: tokio::task::JoinHandle<()>,
}

/// Starts draining `conn` into a queue of [`QUEUE_CAPACITY`] signals. Call it before adding
/// match rules, so that no signal falls between the two.
pub(crate) fn drain(conn: &Connection) -> Drained {
    let stream = MessageStream::from(conn);
    let (tx, queue) = mpsc::channel(QUEUE_CAPACITY);
    let dropped = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(read_signals(stream, tx, dropped.clone()));
    Drained {
        queue,
        dropped,
        reader,
    }
}

/// How a source says that one of its bus calls failed or timed out, so the helpers here return
/// the source's own error.
pub(crate) trait CallError: Sized {
    /// `call` was answered with an error, or could not be sent.
    fn failed(call: &'static str, source: zbus::Error) -> Self;
    /// `call` took longer than [`CALL_TIMEOUT`].
    fn timed_out(call: &'static str) -> Self;
    /// The failure, when it was an error reply of the bus or the peer.
    fn fdo(&self) -> Option<&zbus::fdo::Error>;
}

/// Runs `call`, giving up after [`CALL_TIMEOUT`].
pub(crate) async fn timed<T, E: CallError>(
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(E::timed_out(what)))
}

/// Calls `method` of `interface` at `path` (of `destination`, or of the peer on a peer-to-peer
/// connection), bounded by [`CALL_TIMEOUT`]; `what` names the call in errors.
pub(crate) async fn call<B, E: CallError>(
    conn: &Connection,
    destination: Option<&str>,
    path: &str,
    interface: &str,
    method: &str,
    body: &B,
    what: &'static str,
) -> Result<Message, E>
where
    B: serde::Serialize + zbus::DynamicType,
{
    timed(what, async {
        conn.call_method(destination, path, Some(interface), method, body)
            .await
            .map_err(|source| E::failed(what, source))
    })
    .await
}

/// Calls a method of the bus itself.
pub(crate) async fn call_bus<B, E: CallError>(
    conn: &Connection,
    method: &'static str,
    body: &B,
) -> Result<Message, E>
where
    B: serde::Serialize + zbus::DynamicType,
{
    call(
        conn,
        Some(DBUS_NAME),
        "/org/freedesktop/DBus",
        DBUS_NAME,
        method,
        body,
        method,
    )
    .await
}

/// Asks the bus for `rules`' signals, then for the current owner of `name`: `None` when nobody
/// owns it. Signals from anyone else claiming to be `name` are not to be believed.
pub(crate) async fn watch_name<E: CallError>(
    conn: &Connection,
    rules: &[&str],
    name: &str,
) -> Result<Option<String>, E> {
    for rule in rules {
        call_bus::<_, E>(conn, "AddMatch", &(rule,)).await?;
    }
    match call_bus::<_, E>(conn, "GetNameOwner", &(name,)).await {
        Ok(reply) => reply
            .body()
            .deserialize::<String>()
            .map(Some)
            .map_err(|source| E::failed("GetNameOwner", source)),
        Err(e) if matches!(e.fdo(), Some(zbus::fdo::Error::NameHasNoOwner(_))) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a `NameOwnerChanged` signal of the bus says about `name`: `Some(new owner)`, empty when
/// `name` left the bus; `None` when it is about another name (or malformed, which is counted).
pub(crate) fn owner_change(msg: &Message, source: &'static str, name: &str) -> Option<String> {
    let body = msg.body();
    let (changed, _old, new) =
        decode::<(&str, &str, &str)>(&body, source, "NameOwnerChanged").ok()?;
    (changed == name).then(|| new.to_owned())
}

/// Moves signals from the connection into `queue`, never waiting on the consumer: a stream that
/// is not read stalls every call on the connection. Signals that do not fit are counted in
/// `dropped`, for the source to notice and resync. Ends when the connection or the queue closes.
pub async fn read_signals(
    mut stream: MessageStream,
    queue: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
) {
    while let Some(item) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
        let Ok(msg) = item else { break };
        if msg.message_type() != MessageType::Signal {
            continue;
        }
        match queue.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
}

/// Decodes a signal's body as `T`; a body of another shape is counted as a decode error of
/// `source`'s and yields `Err(())`.
pub(crate) fn decode<'m, T>(
    body: &'m zbus::message::Body,
    source: &'static str,
    member: &str,
) -> Result<T, ()>
where
    T: serde::Deserialize<'m> + zbus::Type,
{
    body.deserialize::<T>().map_err(|e| {
        SignalDecodeError {
            source,
            member,
            detail: &e.to_string(),
        }
        .emit()
    })
}
