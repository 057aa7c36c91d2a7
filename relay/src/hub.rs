//! Broadcast fan-out: one NATS subscription per channel per replica, however many streams of the
//! replica watch the channel, and an in-memory broadcast to those streams.
//!
//! The hub also puts messages in `seq` order. Two replicas may publish `seq` n and n+1 and reach
//! NATS in the other order, and core NATS may drop messages to a slow client or while reconnecting.
//! Every message is in Redis before it is on NATS, so when the hub sees a gap it reads the missing
//! ones from history and delivers them first ([`Sequencer`]); after a NATS reconnect it reads
//! whatever was published meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use futures::StreamExt;
use relay_channel::{WireMessage, names};
use tokio::sync::{Mutex, broadcast};
use tokio::task::AbortHandle;

use crate::error::{Error, Result};
use crate::store::{After, Store};

/// What the live path does with an incoming `seq`.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Already delivered (or older): drop it.
    Duplicate,
    /// The next one: deliver it.
    Next,
    /// Messages `after < seq < this` are missing: fetch them from history first.
    Gap { after: u64 },
}

/// Tracks the last delivered `seq` of one channel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sequencer {
    pub last: Option<u64>,
}

impl Sequencer {
    pub fn starting_after(seq: u64) -> Self {
        Self { last: Some(seq) }
    }

    pub fn step(&self, seq: u64) -> Step {
        match self.last {
            None => Step::Next,
            Some(last) if seq <= last => Step::Duplicate,
            Some(last) if seq == last + 1 => Step::Next,
            Some(last) => Step::Gap { after: last },
        }
    }

    pub fn delivered(&mut self, seq: u64) {
        self.last = Some(self.last.map_or(seq, |l| l.max(seq)));
    }

    /// Orders `msg` after what was delivered: returns what to deliver now (repaired gap first),
    /// or an empty list for a duplicate.
    pub async fn order(&mut self, store: &Store, msg: WireMessage) -> Result<Vec<WireMessage>> {
        let mut out = match self.step(msg.seq) {
            Step::Duplicate => return Ok(Vec::new()),
            Step::Next => Vec::with_capacity(1),
            Step::Gap { after } => store.between(&msg.channelid, after, msg.seq).await?,
        };
        out.push(msg);
        for m in &out {
            self.delivered(m.seq);
        }
        Ok(out)
    }
}

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

pub struct Hub {
    nats: async_nats::Client,
    store: Store,
    capacity: usize,
    reconnected: broadcast::Sender<()>,
    topics: Mutex<HashMap<String, Weak<Topic>>>,
}

impl Hub {
    /// `capacity`: messages buffered per watcher before it counts as lagging (a slow consumer).
    pub fn new(nats: async_nats::Client, store: Store, capacity: usize, reconnected: broadcast::Sender<()>) -> Self {
        Self { nats, store, capacity, reconnected, topics: Mutex::new(HashMap::new()) }
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
        self.nats.flush().await.map_err(|e| Error::unavailable("nats flush", e))?;
        let (tx, _) = broadcast::channel(self.capacity);
        let task =
            tokio::spawn(pump(channel.to_owned(), sub, tx.clone(), self.store.clone(), self.reconnected.subscribe()));
        let topic = Arc::new(Topic { tx, task: task.abort_handle() });
        topics.insert(channel.to_owned(), Arc::downgrade(&topic));
        crate::metrics::topics().set(topics.len() as i64);
        Ok(topic)
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
    let mut seq = Sequencer::default();
    loop {
        let batch = tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { break };
                let Ok(m) = WireMessage::from_json(&msg.payload) else {
                    tracing::warn!(%channel, "dropping a NATS message that is not a relay message");
                    continue;
                };
                match seq.order(&store, m.clone()).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        // Watchers see the gap themselves and repair it or end their stream.
                        tracing::warn!(%channel, error = %e, "could not repair a gap from history");
                        seq.delivered(m.seq);
                        vec![m]
                    }
                }
            }
            _ = reconnected.recv() => {
                let Some(last) = seq.last else { continue };
                match store.after(&channel, After::Seq(last), 10_000, None).await {
                    Ok(page) => { for m in &page.messages { seq.delivered(m.seq) } page.messages }
                    Err(e) => { tracing::warn!(%channel, error = %e, "catching up after a NATS reconnect"); continue }
                }
            }
        };
        for m in batch {
            // No watcher is fine: the topic is about to be dropped.
            let _ = tx.send(Arc::new(m));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequencer_steps() {
        let mut s = Sequencer::default();
        assert_eq!(s.step(5), Step::Next, "the first message sets the baseline");
        s.delivered(5);
        assert_eq!(s.step(5), Step::Duplicate);
        assert_eq!(s.step(3), Step::Duplicate);
        assert_eq!(s.step(6), Step::Next);
        assert_eq!(s.step(9), Step::Gap { after: 5 });
        s.delivered(9);
        assert_eq!(s.last, Some(9));
        s.delivered(7);
        assert_eq!(s.last, Some(9), "never goes back");
        assert_eq!(Sequencer::starting_after(0).step(1), Step::Next);
    }
}
