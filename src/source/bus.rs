//! What every D-Bus source needs the same way: a reader that keeps the connection drained, and
//! signal bodies decoded with failures counted.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_core::Stream;
use tokio::sync::mpsc;
use zbus::message::Type as MessageType;
use zbus::{Message, MessageStream};

use crate::event::Micros;
use crate::internal_events::SignalDecodeError;

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

/// Now, in µs since the epoch: the fallback when the init system gives no timestamp.
pub fn now_micros() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as Micros)
        .unwrap_or(0)
}
