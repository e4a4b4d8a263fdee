//! What every D-Bus source needs the same way: a reader that keeps the connection drained, and
//! signal bodies decoded with failures counted.

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

/// Runs `call`, giving up with `timed_out()` after [`CALL_TIMEOUT`].
pub(crate) async fn timed<T, E>(
    call: impl std::future::Future<Output = Result<T, E>>,
    timed_out: impl FnOnce() -> E,
) -> Result<T, E> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
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
