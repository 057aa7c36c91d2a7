//! Live-only events of a channel (Join, Leave, ephemeral messages): one NATS subscription to the
//! channel's live subject per replica, however many of its streams watch, fanned out in memory.
//! Nothing here is stored or replayed: a stream gets the events that arrive while it is open.
//!
//! Joins and leaves are coalesced: each topic passes [`BURST`] of them per second one by one and
//! folds the rest of that second into one [`Item::Changed`] with counts, so a reconnect storm or a
//! crowd arriving costs every stream one event per second, not one per user.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use relay_channel::{LiveEvent, names};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::bus::Bus;
use crate::error::Result;

/// Joins and leaves passed one by one per window; the rest are counted.
pub const BURST: u32 = 32;
/// The coalescing window.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Events buffered per watcher; one that falls further behind loses the oldest (they are live-only).
const BUFFER: usize = 256;

/// What a topic hands its watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Event(LiveEvent),
    /// Joins and leaves not passed one by one in the last window.
    Changed {
        joined: u32,
        left: u32,
    },
}

/// One channel's live subscription; unsubscribed with its last watcher.
pub struct Topic {
    tx: broadcast::Sender<Arc<Item>>,
    task: AbortHandle,
}

impl Topic {
    pub fn watch(&self) -> broadcast::Receiver<Arc<Item>> {
        self.tx.subscribe()
    }
}

impl Drop for Topic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The replica's live topics.
pub struct Live {
    bus: Bus,
    topics: crate::topics::Topics<Topic>,
}

impl Live {
    pub fn new(bus: Bus) -> Self {
        Self { bus, topics: Default::default() }
    }

    /// The channel's topic, subscribing first if this replica has none.
    pub async fn topic(&self, channel: &str) -> Result<Arc<Topic>> {
        self.topics
            .get_or_make(channel, || async {
                let sub = self.bus.subscribe(names::live_subject(channel), None).await?;
                let (tx, _) = broadcast::channel(BUFFER);
                let task = tokio::spawn(pump(channel.to_owned(), sub, tx.clone()));
                Ok(Arc::new(Topic { tx, task: task.abort_handle() }))
            })
            .await
    }
}

/// Moves a channel's live events from NATS to its watchers, coalescing joins and leaves.
async fn pump(channel: String, mut sub: async_nats::Subscriber, tx: broadcast::Sender<Arc<Item>>) {
    let mut window = Coalescer::new(Instant::now());
    loop {
        let flush_at = window.flush_at();
        let due = async {
            match flush_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let item = tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { break };
                let Ok(event) = LiveEvent::from_json(&msg.payload) else {
                    crate::metrics::dropped("not_a_relay_message");
                    continue;
                };
                if event.channel() != channel {
                    crate::metrics::dropped("wrong_channel");
                    continue;
                }
                window.take(event, Instant::now())
            }
            _ = due => window.flush(Instant::now()),
        };
        if let Some(item) = item {
            // No watcher is fine: the topic is about to be dropped.
            let _ = tx.send(Arc::new(item));
        }
    }
}

/// Passes the first [`BURST`] joins and leaves of each [`WINDOW`], counts the rest.
struct Coalescer {
    started: Instant,
    passed: u32,
    joined: u32,
    left: u32,
}

impl Coalescer {
    fn new(now: Instant) -> Self {
        Self { started: now, passed: 0, joined: 0, left: 0 }
    }

    /// When the counts held must go out.
    fn flush_at(&self) -> Option<Instant> {
        (self.joined + self.left > 0).then_some(self.started + WINDOW)
    }

    /// The counts held, if any; a new window starts.
    fn flush(&mut self, now: Instant) -> Option<Item> {
        let held = (self.joined + self.left > 0).then_some(Item::Changed { joined: self.joined, left: self.left });
        if held.is_some() {
            crate::metrics::live_event("coalesced");
        }
        *self = Self::new(now);
        held
    }

    /// What to send for `event` now, if anything.
    fn take(&mut self, event: LiveEvent, now: Instant) -> Option<Item> {
        let kind = match &event {
            LiveEvent::Join { .. } => "join",
            LiveEvent::Leave { .. } => "leave",
            LiveEvent::Ephemeral(_) => {
                crate::metrics::live_event("ephemeral");
                return Some(Item::Event(event));
            }
        };
        crate::metrics::live_event(kind);
        if now >= self.started + WINDOW && self.joined + self.left == 0 {
            *self = Self::new(now);
        }
        if self.passed < BURST {
            self.passed += 1;
            return Some(Item::Event(event));
        }
        match kind {
            "join" => self.joined += 1,
            _ => self.left += 1,
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(u: &str) -> LiveEvent {
        LiveEvent::Join { channelid: "c".into(), userid: u.into(), username: String::new() }
    }
    fn leave(u: &str) -> LiveEvent {
        LiveEvent::Leave { channelid: "c".into(), userid: u.into(), username: String::new() }
    }

    #[test]
    fn a_burst_passes_then_is_counted_then_a_new_window_passes_again() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(t0);
        let passed = (0..BURST).filter(|i| c.take(join(&i.to_string()), t0).is_some()).count();
        assert_eq!(passed, BURST as usize);
        assert_eq!(c.flush_at(), None);
        assert_eq!(c.take(join("x"), t0), None);
        assert_eq!(c.take(leave("y"), t0), None);
        assert_eq!(c.take(leave("z"), t0), None);
        assert_eq!(c.flush_at(), Some(t0 + WINDOW));
        // Ephemeral messages are never held.
        let m = relay_channel::WireMessage {
            channelid: "c".into(),
            userid: "u".into(),
            username: String::new(),
            text: "typing".into(),
            ts: 1,
            seq: 0,
            id: "i".into(),
            epoch: String::new(),
        };
        assert!(matches!(c.take(LiveEvent::Ephemeral(m), t0), Some(Item::Event(_))));
        let t1 = t0 + WINDOW;
        assert_eq!(c.flush(t1), Some(Item::Changed { joined: 1, left: 2 }));
        assert_eq!(c.flush_at(), None);
        assert!(c.take(join("again"), t1).is_some(), "a new window passes events again");
        assert_eq!(c.flush(t1 + WINDOW), None);
    }

    #[test]
    fn a_quiet_channel_starts_a_new_window_on_its_next_event() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(t0);
        for i in 0..BURST {
            c.take(join(&i.to_string()), t0);
        }
        assert!(c.take(join("late"), t0 + WINDOW * 3).is_some());
    }
}
