//! Messages stored in Redis whose NATS publish failed: the client was told UNAVAILABLE (and may
//! retry with its idempotency key), and this replica keeps publishing them in the background until
//! NATS takes them, so that subscribers whose delivery has no history repair (perUser, queue) get
//! them too. Bounded: when the queue is full, the oldest waiting message is given up (broadcast
//! streams still repair it from history, and a retry by the client publishes it again).
//!
//! JetStream drops copies by `Nats-Msg-Id` within the stream's duplicate window, core subscribers
//! by seq, so publishing a message twice is harmless.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::sync::Mutex;
use std::time::Duration;

use relay_channel::{WireMessage, names};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::bus::{Bus, Outgoing, bounded};
use crate::error::Result;

/// Messages waiting at most.
const CAPACITY: usize = 10_000;
/// How long a message is tried for before it is given up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// One message to publish again, and whether its channel has a JetStream stream.
struct Pending {
    message: WireMessage,
    jetstream: bool,
    since: Instant,
    /// Not tried again before this (NATS refused it while others went through).
    retry_at: Instant,
}

/// How long a message NATS refused waits before it is tried again; the others go on meanwhile.
const REFUSED_RETRY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Republisher {
    queue: Mutex<VecDeque<Pending>>,
    wake: Notify,
}

impl Republisher {
    /// Queues a message whose publish failed.
    pub fn push(&self, message: WireMessage, jetstream: bool) {
        let mut queue = self.queue.lock().expect("republish lock");
        if queue.len() >= CAPACITY {
            queue.pop_front();
            crate::metrics::dropped("republish_queue_full");
        }
        let now = Instant::now();
        queue.push_back(Pending { message, jetstream, since: now, retry_at: now });
        drop(queue);
        self.wake.notify_one();
    }

    /// Publishes what waits, oldest first, pausing while NATS is away.
    pub async fn run(&self, bus: Bus) {
        // Messages passed over in a row because they are not due: a whole round of them means
        // nothing is due, and the loop waits a little rather than spin.
        let mut passed = 0;
        loop {
            let (next, waiting) = {
                let mut queue = self.queue.lock().expect("republish lock");
                (queue.pop_front(), queue.len())
            };
            let Some(mut p) = next else {
                passed = 0;
                self.wake.notified().await;
                continue;
            };
            if p.since.elapsed() > GIVE_UP_AFTER {
                crate::metrics::dropped("republish_gave_up");
                continue;
            }
            if p.retry_at > Instant::now() {
                self.queue.lock().expect("republish lock").push_back(p);
                passed += 1;
                if passed > waiting {
                    passed = 0;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
            passed = 0;
            if let Err(e) = publish(&bus, &p.message, p.jetstream).await {
                tracing::debug!(channel = %p.message.channelid, seq = p.message.seq, error = %e, "republishing; will retry");
                if bus.connected() {
                    // NATS there but refusing this one (its stream gone, say): the others go ahead
                    // of it rather than wait behind it.
                    p.retry_at = Instant::now() + REFUSED_RETRY;
                    self.queue.lock().expect("republish lock").push_back(p);
                } else {
                    // NATS away: everything waits, oldest first.
                    self.queue.lock().expect("republish lock").push_front(p);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Publishes messages in order, all sent before any confirmation is awaited. Returns whether
    /// they all went out; if not, they all wait here, in order (copies are harmless).
    pub async fn publish_in_order(&self, bus: &Bus, messages: &[WireMessage], jetstream: bool) -> bool {
        match publish_all(bus, messages, jetstream).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, n = messages.len(), "publishing again in the background");
                for m in messages {
                    self.push(m.clone(), jetstream);
                }
                false
            }
        }
    }
}

/// Publishes a stored message: through JetStream (waiting for its ack) or core NATS (waiting for
/// the server to confirm), with deadlines.
pub async fn publish(bus: &Bus, message: &WireMessage, jetstream: bool) -> Result<()> {
    publish_all(bus, std::slice::from_ref(message), jetstream).await
}

/// Publishes messages in order on the one connection, then waits for JetStream's acks (or the
/// server's confirmation) of all of them, each step with a deadline.
async fn publish_all(bus: &Bus, messages: &[WireMessage], jetstream: bool) -> Result<()> {
    bus.ensure_connected()?;
    let generation = bus.generation();
    // The trace context, while traces are on: the delivering relays continue the trace.
    let traced = crate::telemetry::headers();
    let outgoing = messages
        .iter()
        .map(|m| {
            let mut headers = traced.clone();
            if jetstream {
                headers.get_or_insert_default().insert("Nats-Msg-Id", m.id.as_str());
            }
            Outgoing { subject: names::subject(&m.channelid), headers, payload: bytes::Bytes::from(m.to_json()) }
        })
        .collect();
    let acks = bus.send(outgoing, jetstream).await?;
    for ack in acks {
        bounded("jetstream ack", ack.into_future()).await?;
    }
    if jetstream { Ok(()) } else { bus.confirm_since(generation).await }
}
