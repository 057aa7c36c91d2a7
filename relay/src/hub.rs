//! Broadcast fan-out: one NATS subscription per channel per replica, however many streams of the
//! replica watch the channel, and an in-memory broadcast to those streams, in `seq` order
//! ([`crate::order`]).
//!
//! An early message waits up to [`REORDER_WAIT`] for the ones before it, then the hub reads the gap
//! from history. Waiting first matters: with many concurrent publishers reordering is the rule, and
//! a Redis read per reordered message capped a channel's delivery at about 3-4 thousand messages
//! per second (measured with `loadgen --scenario throughput`). After a NATS reconnect each topic
//! confirms that the server has its subscription again, then reads whatever was published meanwhile.
//! What cannot be recovered reaches the streams as a [`Marker`](crate::order::Marker).
//!
//! No lock is held across I/O: the map of topics is a plain mutex held for lookups only; creating a
//! channel's topic (subscribe, confirm, read its position) holds only that channel's slot.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use relay_channel::{WireMessage, names};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::bus::Bus;
use crate::error::Result;
use crate::order::{self, Out, REORDER_WAIT, Reorder};
use crate::store::{After, Read, Store};

/// What a topic broadcasts: messages in order and markers.
pub type Item = Arc<Out>;

/// One channel's shared subscription; dropped (and unsubscribed) with its last watcher.
pub struct Topic {
    tx: broadcast::Sender<Item>,
    task: AbortHandle,
    /// Where the hub picked the channel up: streams start after their own history read.
    pub start: (String, u64),
}

impl Topic {
    pub fn watch(&self) -> broadcast::Receiver<Item> {
        self.tx.subscribe()
    }
}

impl Drop for Topic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Messages a topic buffers for each watcher before the watcher counts as lagging (and its stream
/// ends as a slow consumer). Watchers only move messages into their stream's own queue, so they
/// lag only when starved of CPU; the buffer is allocated up front for every topic, so it stays
/// modest (at 4096, a thousand channels cost 200 MB: measured with `loadgen --scenario channels`).
const TOPIC_BUFFER: usize = 1024;
/// Pages read after a NATS reconnect, at most: what the outage produced beyond that is marked.
const CATCH_UP_PAGES: usize = 64;

pub struct Hub {
    bus: Bus,
    store: Store,
    reconnected: broadcast::Sender<()>,
    topics: crate::topics::Topics<Topic>,
}

impl Hub {
    pub fn new(bus: Bus, store: Store, reconnected: broadcast::Sender<()>) -> Self {
        Self { bus, store, reconnected, topics: Default::default() }
    }

    /// The channel's topic, subscribing on NATS first if this replica has none. When this returns,
    /// the NATS server has the subscription: anything published from now on reaches the topic.
    pub async fn topic(&self, channel: &str) -> Result<Arc<Topic>> {
        let topic = self.topics.get_or_make(channel, || self.subscribe(channel)).await?;
        crate::metrics::topics().set(self.topics.len() as i64);
        Ok(topic)
    }

    async fn subscribe(&self, channel: &str) -> Result<Arc<Topic>> {
        let sub = self.bus.subscribe(names::subject(channel), None).await?;
        // The position after subscribing: everything after it reaches the subscription.
        let page = self.store.read(channel, Read::Latest, 0, Duration::ZERO).await?;
        let start = (page.epoch.clone(), page.last_seq);
        let (tx, _) = broadcast::channel(TOPIC_BUFFER);
        let pump = Pump {
            channel: channel.to_owned(),
            store: self.store.clone(),
            bus: self.bus.clone(),
            tx: tx.clone(),
            order: Reorder::starting_at(&page.epoch, page.last_seq),
        };
        let task = tokio::spawn(pump.run(sub, self.reconnected.subscribe()));
        Ok(Arc::new(Topic { tx, task: task.abort_handle(), start }))
    }
}

/// Moves one channel's messages from NATS to its watchers, in order.
struct Pump {
    channel: String,
    store: Store,
    bus: Bus,
    tx: broadcast::Sender<Item>,
    order: Reorder,
}

impl Pump {
    async fn run(mut self, mut sub: async_nats::Subscriber, mut reconnected: broadcast::Receiver<()>) {
        // When the oldest wait for a gap runs out.
        let mut deadline: Option<Instant> = None;
        loop {
            let expired = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let batch = tokio::select! {
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    let Ok(m) = WireMessage::from_json(&msg.payload) else {
                        crate::metrics::dropped("not_a_relay_message");
                        tracing::warn!(channel = %self.channel, "dropping a NATS message that is not a relay message");
                        continue;
                    };
                    if m.channelid != self.channel {
                        crate::metrics::dropped("wrong_channel");
                        continue;
                    }
                    // One span per message and relay (not per stream), in the publisher's trace.
                    crate::telemetry::delivery_span(msg.headers.as_ref(), &m.channelid, m.seq)
                        .in_scope(|| tracing::debug!(streams = self.tx.receiver_count(), "delivering"));
                    let mut batch = self.order.push(m);
                    if self.order.overfull() {
                        batch.extend(self.repair().await);
                    }
                    batch
                }
                _ = expired => self.repair().await,
                r = reconnected.recv() => match r {
                    Err(broadcast::error::RecvError::Closed) => break,
                    _ => self.catch_up().await,
                },
            };
            // A gap that persists keeps its deadline; a new gap gets a fresh one.
            deadline = match self.order.gap() {
                None => None,
                Some(_) if batch.is_empty() => deadline.or_else(|| Some(Instant::now() + REORDER_WAIT)),
                Some(_) => Some(Instant::now() + REORDER_WAIT),
            };
            for out in batch {
                if let Out::Marker(m) = &out {
                    crate::metrics::marker(m.reason);
                    tracing::warn!(channel = %self.channel, epoch = %m.epoch, reason = m.reason, "marking a gap");
                }
                // No watcher is fine: the topic is about to be dropped.
                let _ = self.tx.send(Arc::new(out));
            }
        }
    }

    /// Reads the gap before the waiting messages from history.
    async fn repair(&mut self) -> Vec<Out> {
        let Some((after, before)) = self.order.gap() else { return Vec::new() };
        let page = match self.store.between(&self.channel, after, before).await {
            Ok(page) if self.newer_epoch(&page, after) => self.epoch_start().await,
            page => page,
        };
        match page {
            Ok(page) => self.order.fill(&page.epoch, page.messages, page.more),
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = %e, "could not repair a gap from history");
                self.order.skip_gap(order::reason::UNREADABLE)
            }
        }
    }

    /// Whether a page read after `after` is of an epoch newer than the hub's: its own messages up
    /// to `after` were skipped, and must be read from its start.
    fn newer_epoch(&self, page: &crate::store::Page, after: u64) -> bool {
        after > 0 && page.epoch.as_str() > self.order.position().0
    }

    /// The first page of the channel's current epoch.
    async fn epoch_start(&self) -> Result<crate::store::Page> {
        self.store.read(&self.channel, Read::After(After::Seq(0)), crate::store::MAX_REPAIR, Duration::ZERO).await
    }

    /// After a NATS reconnect: once the server has the subscription again, reads what was
    /// published while it did not.
    async fn catch_up(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        // The client re-sends its subscriptions before anything queued after the reconnect.
        if let Err(e) = self.bus.confirm().await {
            tracing::warn!(channel = %self.channel, error = %e, "catching up after a NATS reconnect");
        }
        for _ in 0..CATCH_UP_PAGES {
            let (_, last) = self.order.position();
            let after = last.unwrap_or(0);
            let page = match self
                .store
                .read(&self.channel, Read::After(After::Seq(after)), crate::store::MAX_REPAIR, Duration::ZERO)
                .await
            {
                Ok(page) if self.newer_epoch(&page, after) => self.epoch_start().await,
                page => page,
            };
            match page {
                Ok(page) => {
                    let more = page.more;
                    out.extend(self.order.fill(&page.epoch, page.messages, more));
                    if !more {
                        return out;
                    }
                }
                Err(e) => {
                    tracing::warn!(channel = %self.channel, error = %e, "catching up after a NATS reconnect");
                    break;
                }
            }
        }
        out.extend(self.order.give_up(order::reason::UNREADABLE));
        out
    }
}
