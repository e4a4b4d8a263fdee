//! Where events go: Prometheus (pulled), StatsD (pushed), the JSON-lines event record and the
//! actions.
//!
//! StatsD and the event record consume the engine's [`Event`](crate::event::Event)s through the
//! engine's [`EventSink`]; they do I/O, so each runs on a thread of its own behind a bounded
//! queue: the engine hands an event over with a `try_send` and a sink that is slow or dead costs
//! a counted drop, never a stalled event path. Prometheus consumes no events: its per-unit series
//! are rendered at scrape time from the unit table the engine keeps, and crashwatch's own
//! counters (errors, drops) go through the `metrics` facade ([`prometheus`]).
//! Queued events are boxed: a bounded std channel allocates (and touches) all of its slots up
//! front, and 16,384 inline events of ~270 bytes were 4.4 MB of resident memory per sink before
//! anything happened; boxed they are 16 bytes a slot. The actions ([`actions`]) run on a thread
//! of their own too, but are handed only loop starts and ends, with what they need to know.

pub mod actions;
pub mod events;
pub mod prometheus;
pub mod statsd;

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use crate::engine::EventSink;
use crate::event::Event;
use crate::internal_events::SinkDropped;

/// Events a threaded sink may hold before it drops new ones.
pub const QUEUE_CAPACITY: usize = 16_384;

/// The sending side of a sink that runs on its own thread.
pub struct ThreadedSink {
    name: &'static str,
    queue: Option<SyncSender<Box<Event>>>,
    thread: Option<JoinHandle<()>>,
}

impl ThreadedSink {
    /// Starts `body` on a thread named after the sink; it receives events until the queue closes.
    pub fn spawn(
        name: &'static str,
        body: impl FnOnce(Receiver<Box<Event>>) + Send + 'static,
    ) -> std::io::Result<ThreadedSink> {
        let (queue, events) = sync_channel(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name(format!("crashwatch-{name}"))
            .spawn(move || body(events))?;
        Ok(ThreadedSink {
            name,
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Hands an event over without waiting; a full queue drops it and counts the drop.
    pub fn send(&self, event: &Event) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(Box::new(event.clone())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => SinkDropped {
                sink: self.name,
                reason: "queue full",
            }
            .emit(),
            Err(TrySendError::Disconnected(_)) => SinkDropped {
                sink: self.name,
                reason: "sink stopped",
            }
            .emit(),
        }
    }

    /// Closes the queue and waits for the sink to write out what it holds.
    pub fn finish(mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl EventSink for ThreadedSink {
    fn send(&self, event: &Event) {
        ThreadedSink::send(self, event);
    }

    fn finish(self: Box<Self>) {
        ThreadedSink::finish(*self);
    }
}
