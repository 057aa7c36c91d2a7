//! Queue delivery, at least once: a stream's lane on a channel's durable JetStream consumer.
//!
//! A lane pulls only as many messages as it has room for (the channel's `maxUnackedPerStream`
//! minus what its subscriber holds unacked), so nothing waits in a buffer long enough to be handed
//! to a second worker by the consumer's ack wait. A message is acked to JetStream when the
//! subscriber acks it ([`Lane::ack`], the `Ack` RPC), not when it is written to the socket; when the
//! stream ends, what it still holds is given back at once (NAK) so another worker gets it without
//! waiting for the ack wait; when the relay dies, the ack wait hands it on. Redeliveries carry the
//! number of earlier deliveries.
//!
//! The declared channel uses the operator's consumer (`relay-queue`); a sub-channel of a queue
//! channel gets a durable consumer of its own, made by the first relay that needs it and removed by
//! JetStream after a week without pulls. Their number per stream is capped, so junk sub-channel
//! names cannot fill JetStream with consumers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::message::{AckKind, Acker};
use futures::StreamExt;
use relay_channel::{ChannelSettings, WireMessage, names};
use tokio::sync::Notify;

use crate::bus::bounded;
use crate::error::{Error, Result};

/// How long one pull request stays open at the server when nothing comes.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Consumers relays may make per stream for sub-channels.
const MAX_SUBCHANNEL_CONSUMERS: usize = 256;
/// How long JetStream keeps a sub-channel's consumer without pulls.
const SUBCHANNEL_CONSUMER_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Pull failures in a row before the stream ends with UNAVAILABLE.
const MAX_PULL_FAILURES: u32 = 10;

/// One stream's lane on one queue channel.
pub struct Lane {
    consumer: PullConsumer,
    max_unacked: usize,
    /// Delivered, not acked yet: (epoch, seq) -> the JetStream message's acker.
    pending: Mutex<HashMap<(String, u64), Acker>>,
    room: Notify,
}

/// A message pulled from the lane, for the stream to send.
pub struct Pulled {
    pub message: WireMessage,
    /// Earlier deliveries of it.
    pub redelivered: u32,
}

impl Lane {
    /// The lane of `channel`, declared by `settings` (its stream and consumer).
    pub async fn open(
        js: &async_nats::jetstream::Context,
        channel: &str,
        declared_by: &str,
        settings: &ChannelSettings,
    ) -> Result<Self> {
        let Some(stream) = settings.stream.as_deref() else {
            return Err(Error::unavailable("queue", format!("channel {declared_by} has no JetStream stream yet")));
        };
        let consumer = if channel == declared_by {
            let name = settings.queue_consumer.clone().unwrap_or_else(|| names::queue_consumer(channel));
            bounded("jetstream consumer", js.get_consumer_from_stream(&name, stream)).await?
        } else {
            subchannel_consumer(js, stream, channel, settings).await?
        };
        Ok(Self {
            consumer,
            max_unacked: settings.queue.max_unacked_per_stream.max(1) as usize,
            pending: Mutex::default(),
            room: Notify::new(),
        })
    }

    /// Pulls while there is room and hands each message to `send` (which must not block); returns
    /// when `send` refuses (the stream is gone) or pulling keeps failing.
    pub async fn run<F, Fut>(&self, mut send: F) -> Result<()>
    where
        F: FnMut(Pulled) -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut failures = 0u32;
        loop {
            let room = self.max_unacked.saturating_sub(self.pending.lock().expect("lane lock").len());
            if room == 0 {
                self.room.notified().await;
                continue;
            }
            let batch = self.consumer.batch().max_messages(room).expires(PULL_EXPIRES).messages();
            let mut batch = match bounded("jetstream pull", batch).await {
                Ok(b) => b,
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_PULL_FAILURES {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "pulling from a queue consumer; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                    continue;
                }
            };
            failures = 0;
            while let Some(msg) = batch.next().await {
                let Ok(msg) = msg else { break };
                let redelivered =
                    msg.info().map_or(0, |i| i.delivered.saturating_sub(1).clamp(0, u32::MAX as i64) as u32);
                let (msg, acker) = msg.split();
                let Ok(message) = WireMessage::from_json(&msg.payload) else {
                    // Not ours: it can never be delivered, so it must not come back forever.
                    crate::metrics::dropped("not_a_relay_message");
                    let _ = bounded("jetstream term", acker.ack_with(AckKind::Term)).await;
                    continue;
                };
                crate::telemetry::delivery_span(msg.headers.as_ref(), &message.channelid, message.seq)
                    .in_scope(|| tracing::debug!(redelivered, "delivering to a queue worker"));
                self.pending.lock().expect("lane lock").insert((message.epoch.clone(), message.seq), acker);
                if redelivered > 0 {
                    crate::metrics::redelivered();
                }
                if !send(Pulled { message, redelivered }).await {
                    return Ok(());
                }
            }
        }
    }

    /// Acks `seqs` of `epoch` (empty: any epoch) to JetStream; returns how many were waiting.
    /// A message whose ack fails stays pending, so the client may ack it again.
    pub async fn ack(&self, epoch: &str, seqs: &[u64]) -> Result<u32> {
        let mut acked = 0;
        for &seq in seqs {
            let Some(key) = self.pending_key(epoch, seq) else { continue };
            let acker = self.pending.lock().expect("lane lock").remove(&key);
            let Some(acker) = acker else { continue };
            if let Err(e) = bounded("jetstream ack", acker.double_ack()).await {
                self.pending.lock().expect("lane lock").insert(key, acker);
                return Err(e);
            }
            acked += 1;
            self.room.notify_one();
        }
        Ok(acked)
    }

    fn pending_key(&self, epoch: &str, seq: u64) -> Option<(String, u64)> {
        let pending = self.pending.lock().expect("lane lock");
        if !epoch.is_empty() {
            let key = (epoch.to_owned(), seq);
            return pending.contains_key(&key).then_some(key);
        }
        // Without an epoch, the oldest epoch holding the seq.
        pending.keys().filter(|(_, s)| *s == seq).min().cloned()
    }

    /// Gives back what the stream still holds, so it is delivered again at once.
    pub async fn release(&self) {
        let held: Vec<Acker> = self.pending.lock().expect("lane lock").drain().map(|(_, a)| a).collect();
        for acker in held {
            let _ = bounded("jetstream nak", acker.ack_with(AckKind::Nak(None))).await;
        }
    }
}

/// The durable consumer of a sub-channel of a queue channel, made when missing.
async fn subchannel_consumer(
    js: &async_nats::jetstream::Context,
    stream: &str,
    channel: &str,
    settings: &ChannelSettings,
) -> Result<PullConsumer> {
    let name = names::queue_consumer(channel);
    let mut stream = bounded("jetstream stream", js.get_stream(stream)).await?;
    if let Ok(c) = bounded("jetstream consumer", stream.get_consumer::<consumer::pull::Config>(&name)).await {
        return Ok(c);
    }
    let count = bounded("jetstream stream info", stream.info()).await?.state.consumer_count;
    if count >= MAX_SUBCHANNEL_CONSUMERS {
        return Err(Error::ResourceExhausted(format!(
            "stream {} already has {count} queue consumers; sub-channels of a queue channel are capped at {MAX_SUBCHANNEL_CONSUMERS}",
            stream.cached_info().config.name
        )));
    }
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("queue delivery of {channel} (made by a relay)")),
        filter_subject: names::subject(channel),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(settings.queue.ack_wait_secs.max(1)),
        max_ack_pending: 10_000,
        inactive_threshold: SUBCHANNEL_CONSUMER_IDLE,
        ..Default::default()
    };
    bounded("jetstream create consumer", stream.get_or_create_consumer(&name, config)).await
}
