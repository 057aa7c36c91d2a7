//! Subscribe: history after each channel's cursor, then live messages, on one stream.
//!
//! Everything that can be refused is checked before the stream opens (token, channel ids, cursors,
//! access, the per-user stream cap), and the live subscriptions are in place before history is
//! read. That order is what makes the handoff gapless: a message is written to Redis before it is
//! published on NATS, so one published before the live subscription existed is already in history,
//! and one published after reaches the subscription. Messages seen both ways are dropped by `seq`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use relay_channel::{ChannelId, Delivery, WireMessage, names};
use tokio::sync::broadcast;
use tonic::Request;

use crate::Relay;
use crate::auth::User;
use crate::error::{Error, Result};
use crate::hub::Topic;
use crate::order::{Sequencer, Step};
use crate::proto::{Heartbeat, Recovery, SubscribeRequest, SubscribeResponse, subscribe_response::Event};
use crate::store::After;

pub use super::outbox::ResponseStream;
use super::outbox::{Closed, Outbox};

/// Channels one stream may carry.
const MAX_CHANNELS: usize = 64;
/// History is sent in pages of this many messages.
const HISTORY_PAGE: usize = 500;

/// One channel of a stream, checked and subscribed.
struct Joined {
    channel: ChannelId,
    cursor: Option<After>,
    max_age: Duration,
    live: Live,
}

/// Where a channel's live messages come from.
enum Live {
    /// Broadcast: the replica's shared topic, already ordered by seq.
    Hub(Arc<Topic>, broadcast::Receiver<Arc<WireMessage>>),
    /// perUser and queue: this stream's own NATS queue subscription; it sees a share of the messages.
    Queue(async_nats::Subscriber),
    /// queue, when the operator made a stream and a durable consumer: this stream pulls its share
    /// and acks each message once it is written; what a dead stream held is redelivered elsewhere.
    JetStream(Box<async_nats::jetstream::consumer::pull::Stream>),
}

/// Messages one queue stream pulls ahead: small, so work spreads across subscribers.
const QUEUE_PULL_BATCH: usize = 4;

pub async fn subscribe(relay: Arc<Relay>, req: Request<SubscribeRequest>) -> Result<ResponseStream> {
    if relay.shutdown.is_cancelled() {
        return Err(Error::ShuttingDown);
    }
    let user = relay.verifier.verify_metadata(req.metadata()).await?;
    let req = req.into_inner();
    if req.channels.is_empty() {
        return Err(Error::InvalidArgument("subscribe to at least one channel".into()));
    }
    if req.channels.len() > MAX_CHANNELS {
        return Err(Error::InvalidArgument(format!("at most {MAX_CHANNELS} channels per stream")));
    }
    let slot = relay.stream_slots.acquire(&user.id)?;
    let mut seen = HashSet::new();
    let mut joined = Vec::with_capacity(req.channels.len());
    for sub in &req.channels {
        let channel = super::channel_id(&sub.channelid)?;
        if !seen.insert(channel.clone()) {
            return Err(Error::InvalidArgument(format!("channel {channel} is listed twice")));
        }
        let cursor = super::cursor(sub.cursor.as_ref())?;
        joined.push(join(&relay, &user, channel, cursor).await?);
    }
    if joined.iter().any(|j| matches!(j.live, Live::Queue(_))) {
        crate::hub::confirm_subscriptions(&relay.nats).await?;
    }

    let (outbox, stream) = Outbox::new(relay.config.stream_buffer);
    let streams = crate::metrics::streams();
    streams.inc();
    for j in joined {
        let (relay, outbox) = (relay.clone(), outbox.clone());
        tokio::spawn(async move {
            let channel = j.channel.clone();
            if let Err(e) = run_channel(&relay, j, &outbox).await {
                tracing::debug!(%channel, error = %e, "stream ended");
                outbox.end(e.into());
            }
        });
    }
    let heartbeat = relay.config.heartbeat;
    tokio::spawn(async move {
        let _slot = slot;
        watch(&relay, &outbox, heartbeat).await;
        streams.dec();
    });
    Ok(stream)
}

/// Checks access to one channel and starts its live subscription.
async fn join(relay: &Relay, user: &User, channel: ChannelId, cursor: Option<After>) -> Result<Joined> {
    let governed = relay.settings.get(&channel).await?;
    let settings = &governed.settings;
    if !settings.access.subscribe.allows(&user.id, &channel) {
        return Err(Error::PermissionDenied(format!("user {} may not subscribe to {channel}", user.id)));
    }
    let subject = names::subject(channel.as_str());
    let queue_subscribe = |group: String| async {
        relay.nats.queue_subscribe(subject.clone(), group).await.map_err(|e| Error::unavailable("nats subscribe", e))
    };
    let live = match settings.delivery {
        Delivery::Broadcast => {
            let topic = relay.hub.topic(channel.as_str()).await?;
            let rx = topic.watch();
            Live::Hub(topic, rx)
        }
        Delivery::PerUser => Live::Queue(queue_subscribe(names::user_queue_group(&user.id)).await?),
        // The durable consumer filters on the declared channel itself; its sub-channels use a
        // core NATS queue group.
        Delivery::Queue => match (&settings.stream, &settings.queue_consumer) {
            (Some(stream), Some(consumer)) if governed.declared_by == channel.as_str() => {
                Live::JetStream(Box::new(pull(relay, stream, consumer).await?))
            }
            _ => Live::Queue(queue_subscribe(names::QUEUE_GROUP.to_owned()).await?),
        },
    };
    Ok(Joined { channel, cursor, max_age: Duration::from_secs(settings.history.max_age_secs), live })
}

/// A pull stream on the channel's durable queue consumer.
async fn pull(relay: &Relay, stream: &str, consumer: &str) -> Result<async_nats::jetstream::consumer::pull::Stream> {
    let consumer: async_nats::jetstream::consumer::PullConsumer = relay
        .jetstream
        .get_consumer_from_stream(consumer, stream)
        .await
        .map_err(|e| Error::unavailable("jetstream consumer", e))?;
    consumer
        .stream()
        .max_messages_per_batch(QUEUE_PULL_BATCH)
        .messages()
        .await
        .map_err(|e| Error::unavailable("jetstream pull", e))
}

/// Heartbeats on an idle stream, and the end of the stream on shutdown.
async fn watch(relay: &Relay, outbox: &Outbox, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = outbox.done() => return,
            _ = relay.shutdown.cancelled() => {
                outbox.end(Error::ShuttingDown.into());
                return;
            }
            _ = tick.tick() => {
                if !outbox.take_busy() {
                    let beat = SubscribeResponse { event: Some(Event::Heartbeat(Heartbeat { ts: crate::now_nanos() })) };
                    if outbox.offer(beat).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// One channel of a stream: recovery marker, history, then live messages until the stream ends.
async fn run_channel(relay: &Relay, j: Joined, outbox: &Outbox) -> Result<()> {
    let ch = j.channel.as_str();
    let bounds = relay.store.bounds(ch).await?;
    let last = match j.cursor {
        None => {
            emit(outbox, recovery(ch, true)).await?;
            bounds.last_seq
        }
        Some(after) => send_history(relay, ch, after, &bounds, j.max_age, outbox).await?,
    };
    match j.live {
        Live::Hub(_topic, mut rx) => {
            let mut seq = Sequencer::starting_after(last);
            loop {
                let msg = tokio::select! {
                    _ = outbox.done() => return Ok(()),
                    msg = rx.recv() => msg,
                };
                let msg = match msg {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return Err(Error::ResourceExhausted(format!(
                            "slow consumer: {n} messages of {ch} were not taken in time; resubscribe from your last seq"
                        )));
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(Error::unavailable("hub", "topic closed")),
                };
                // The hub delivers in order; a gap here is the moment between this stream's
                // history read and the hub's first message, or what the hub had to skip.
                match seq.step(msg.seq) {
                    Step::Duplicate => continue,
                    Step::Next => {}
                    Step::Gap { after } => {
                        for m in relay.store.between(ch, after, msg.seq).await? {
                            offer(outbox, m)?;
                        }
                    }
                }
                seq.delivered(msg.seq);
                offer(outbox, (*msg).clone())?;
            }
        }
        Live::JetStream(mut messages) => loop {
            let msg = tokio::select! {
                _ = outbox.done() => return Ok(()),
                msg = messages.next() => msg.ok_or_else(|| Error::unavailable("jetstream", "consumer closed"))?,
            };
            let msg = msg.map_err(|e| Error::unavailable("jetstream", e))?;
            // The durable consumer is the work queue: its backlog is delivered too, so nothing is
            // filtered against history here (queue workers subscribe without a cursor).
            match WireMessage::from_json(&msg.payload) {
                Ok(m) => outbox
                    .offer_acked(message(m), Some(msg))
                    .map_err(|Closed| Error::ResourceExhausted("slow consumer".into()))?,
                Err(_) => {
                    tracing::warn!(channel = %ch, "acking a JetStream message that is not a relay message");
                    let _ = msg.ack().await;
                }
            }
        },
        Live::Queue(mut sub) => loop {
            let msg = tokio::select! {
                _ = outbox.done() => return Ok(()),
                msg = sub.next() => msg.ok_or_else(|| Error::unavailable("nats", "subscription closed"))?,
            };
            let Ok(m) = WireMessage::from_json(&msg.payload) else { continue };
            // A share of the messages comes here, in any order: gaps are normal; drop only what
            // history already covered.
            if m.seq > last {
                offer(outbox, m)?;
            }
        },
    }
}

/// Sends the recovery marker and the history after `after`; returns the seq the live path
/// continues after.
async fn send_history(
    relay: &Relay,
    ch: &str,
    after: After,
    bounds: &crate::store::Bounds,
    max_age: Duration,
    outbox: &Outbox,
) -> Result<u64> {
    // A seq cursor beyond the channel's last seq comes from before a loss of Redis data: its
    // position means nothing now, so say so and send all there is.
    let (after, beyond) = match after {
        After::Seq(s) if s > bounds.last_seq => (After::Seq(0), true),
        other => (other, false),
    };
    let mut page = relay.store.after(ch, after, HISTORY_PAGE, Some(max_age)).await?;
    let recovered = !beyond
        && match after {
            // Contiguous: the first message is the one right after the cursor, or nothing is newer.
            After::Seq(s) => page.messages.first().map_or(s >= bounds.last_seq, |m| m.seq == s + 1),
            // Nothing is newer than the cursor, or nothing was ever trimmed, or all that was trimmed
            // is older than the oldest message kept and so older than the cursor.
            After::Ts(t) => t >= bounds.last_ts || bounds.oldest.as_ref().is_some_and(|o| o.seq == 1 || t >= o.ts),
        };
    emit(outbox, recovery(ch, recovered)).await?;
    let mut last = 0;
    loop {
        for m in page.messages.drain(..) {
            last = m.seq;
            emit(outbox, message(m)).await?;
        }
        if !page.more {
            // Every message up to `bounds.last_seq` was in Redis before this read: it was sent,
            // or it is older than the cursor, or retention dropped it. Live goes on after it.
            return Ok(last.max(bounds.last_seq));
        }
        page = relay.store.after(ch, After::Seq(last), HISTORY_PAGE, Some(max_age)).await?;
    }
}

fn recovery(ch: &str, recovered: bool) -> SubscribeResponse {
    SubscribeResponse { event: Some(Event::Recovery(Recovery { channelid: ch.to_owned(), recovered })) }
}

fn message(m: WireMessage) -> SubscribeResponse {
    SubscribeResponse { event: Some(Event::Message(m.into())) }
}

async fn emit(outbox: &Outbox, event: SubscribeResponse) -> Result<()> {
    outbox.send(event).await.map_err(|Closed| Error::ResourceExhausted("stream closed".into()))
}

fn offer(outbox: &Outbox, m: WireMessage) -> Result<()> {
    outbox.offer(message(m)).map_err(|Closed| Error::ResourceExhausted("slow consumer".into()))
}

/// Caps the Subscribe streams one user holds on this replica.
pub struct StreamSlots {
    max: usize,
    counts: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// One held stream; released on drop.
pub struct Slot {
    user: String,
    counts: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl StreamSlots {
    pub fn new(max: usize) -> Self {
        Self { max, counts: Default::default() }
    }

    pub fn acquire(&self, user: &str) -> Result<Slot> {
        let mut counts = self.counts.lock().expect("slots lock");
        let n = counts.entry(user.to_owned()).or_default();
        if *n >= self.max {
            return Err(Error::ResourceExhausted(format!(
                "too many streams: user {user} already holds {} on this relay; close one or subscribe to several channels on one stream",
                self.max
            )));
        }
        *n += 1;
        Ok(Slot { user: user.to_owned(), counts: self.counts.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("slots lock");
        if let Some(n) = counts.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user);
            }
        }
    }
}
