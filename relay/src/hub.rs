//! Broadcast fan-out: one NATS subscription per channel per replica, however many streams of the
//! replica watch the channel, and an in-memory broadcast to those streams, in `seq` order
//! ([`crate::order`]).
//!
//! An early message waits up to [`REORDER_WAIT`] for the ones before it, then the hub reads the gap
//! from history. Waiting first matters: with many concurrent publishers reordering is the rule, and
//! a Redis read per reordered message capped a channel's delivery at about 3-4 thousand messages
//! per second (measured with `loadgen --scenario throughput`). After a NATS reconnect each topic
//! reads whatever was published meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use futures::StreamExt;
use relay_channel::{WireMessage, names};
use tokio::sync::{Mutex, broadcast};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::order::{REORDER_WAIT, Reorder};
use crate::store::{After, Store};

/// One channel's shared subscription; dropped (and unsubscribed) with its last watcher.
pub struct Topic {
    tx: broadcast::Sender<Arc<WireMessage>>,
    task: AbortHandle,
}

impl Topic {
    pub fn watch(&self) -> broadcast::Receiver<Arc<WireMessage>> {
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

pub struct Hub {
    nats: async_nats::Client,
    store: Store,
    reconnected: broadcast::Sender<()>,
    topics: Mutex<HashMap<String, Weak<Topic>>>,
}

impl Hub {
    pub fn new(nats: async_nats::Client, store: Store, reconnected: broadcast::Sender<()>) -> Self {
        Self { nats, store, reconnected, topics: Mutex::new(HashMap::new()) }
    }

    /// The channel's topic, subscribing on NATS first if this replica has none. When this returns,
    /// the NATS server has the subscription: anything published from now on reaches the topic.
    pub async fn topic(&self, channel: &str) -> Result<Arc<Topic>> {
        let mut topics = self.topics.lock().await;
        if let Some(t) = topics.get(channel).and_then(Weak::upgrade) {
            return Ok(t);
        }
        topics.retain(|_, t| t.strong_count() > 0);
        let sub =
            self.nats.subscribe(names::subject(channel)).await.map_err(|e| Error::unavailable("nats subscribe", e))?;
        confirm_subscriptions(&self.nats).await?;
        let (tx, _) = broadcast::channel(TOPIC_BUFFER);
        let task =
            tokio::spawn(pump(channel.to_owned(), sub, tx.clone(), self.store.clone(), self.reconnected.subscribe()));
        let topic = Arc::new(Topic { tx, task: task.abort_handle() });
        topics.insert(channel.to_owned(), Arc::downgrade(&topic));
        crate::metrics::topics().set(topics.len() as i64);
        Ok(topic)
    }
}

/// How long a subscription may take to reach the NATS server before the call fails UNAVAILABLE
/// (while NATS is unreachable the client would otherwise wait for it indefinitely).
const SUBSCRIBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until the NATS server has every subscription made so far (a PING/PONG round trip).
pub async fn confirm_subscriptions(nats: &async_nats::Client) -> Result<()> {
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, nats.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::unavailable("nats flush", e)),
        Err(_) => Err(Error::unavailable("nats", format!("no answer within {SUBSCRIBE_TIMEOUT:?}"))),
    }
}

/// Moves one channel's messages from NATS to its watchers, in order.
async fn pump(
    channel: String,
    mut sub: async_nats::Subscriber,
    tx: broadcast::Sender<Arc<WireMessage>>,
    store: Store,
    mut reconnected: broadcast::Receiver<()>,
) {
    let mut order = Reorder::default();
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
                    tracing::warn!(%channel, "dropping a NATS message that is not a relay message");
                    continue;
                };
                let mut batch = order.push(m);
                if order.overfull() {
                    batch.extend(repair(&channel, &store, &mut order).await);
                }
                batch
            }
            _ = expired => repair(&channel, &store, &mut order).await,
            _ = reconnected.recv() => {
                let Some(last) = order.seq.last else { continue };
                match store.after(&channel, After::Seq(last), 10_000, None).await {
                    Ok(page) => order.fill(page.messages),
                    Err(e) => {
                        tracing::warn!(%channel, error = %e, "catching up after a NATS reconnect");
                        continue;
                    }
                }
            }
        };
        // A gap that persists keeps its deadline; a new gap gets a fresh one.
        deadline = match order.gap() {
            None => None,
            Some(_) if batch.is_empty() => deadline.or_else(|| Some(Instant::now() + REORDER_WAIT)),
            Some(_) => Some(Instant::now() + REORDER_WAIT),
        };
        for m in batch {
            // No watcher is fine: the topic is about to be dropped.
            let _ = tx.send(Arc::new(m));
        }
    }
}

/// Reads the gap before the waiting messages from history.
async fn repair(channel: &str, store: &Store, order: &mut Reorder) -> Vec<WireMessage> {
    let Some((after, before)) = order.gap() else { return Vec::new() };
    match store.between(channel, after, before).await {
        Ok(found) => order.fill(found),
        Err(e) => {
            // Deliver what waits; watchers see the gap themselves and repair it or end their stream.
            tracing::warn!(%channel, error = %e, "could not repair a gap from history");
            order.fill(Vec::new())
        }
    }
}
