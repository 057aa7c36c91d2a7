//! Subscribe: history after each channel's cursor, then live messages, on one stream.
//!
//! Everything that can be refused is checked before the stream opens (token, channel ids, cursors,
//! access, the per-user stream cap), and the live subscriptions are in place before history is
//! read. That order is what makes the handoff gapless: a message is written to Redis before it is
//! published on NATS, so one published before the live subscription existed is already in history,
//! and one published after reaches the subscription. Messages seen both ways are dropped by `seq`.
//!
//! Per channel, by delivery mode: [`broadcast`] (the replica's shared topic, ordered and repaired),
//! [`share`] (perUser and core-queue: this stream's share of a queue group, de-duplicated) and
//! [`lane`] (queue channels with a JetStream consumer: pulled as acked). [`history`] sends what
//! comes before live messages; [`outbox`](super::outbox) is the stream's bounded queue.

mod broadcast;
mod history;
mod lane;
mod share;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use relay_channel::{ChannelId, Delivery, WireMessage, names};
use tokio::sync::broadcast as tokio_broadcast;
use tonic::Request;

use crate::Relay;
use crate::auth::User;
use crate::error::{Error, Result};
use crate::hub::Topic;
use crate::order::Marker;
use crate::proto::{
    Heartbeat, Recovery, StreamStarted, SubscribeRequest, SubscribeResponse, subscribe_response::Event,
};
use crate::queue::Lane;
use crate::streams::Stream;

use super::Resume;
pub use super::outbox::ResponseStream;
use super::outbox::{Closed, Outbox};

/// Channels one stream may carry.
const MAX_CHANNELS: usize = 64;

/// One channel of a stream, checked and subscribed.
struct Joined {
    channel: ChannelId,
    resume: Option<Resume>,
    max_age: Duration,
    live: Live,
}

/// Where a channel's live messages come from.
enum Live {
    /// Broadcast: the replica's shared topic, already ordered by seq.
    Hub(Arc<Topic>, tokio_broadcast::Receiver<crate::hub::Item>),
    /// perUser, and queue without a JetStream stream: this stream's own NATS queue subscription; it
    /// sees a share of the messages.
    Share(async_nats::Subscriber),
    /// queue with the operator's stream: this stream's lane on the channel's durable consumer.
    Lane(Arc<Lane>),
}

pub async fn subscribe(relay: Arc<Relay>, req: Request<SubscribeRequest>) -> Result<ResponseStream> {
    if relay.shutdown.is_cancelled() {
        return Err(Error::ShuttingDown);
    }
    let caller = relay.verifier.caller(req.metadata()).await?;
    let req = req.into_inner();
    if req.channels.is_empty() {
        return Err(Error::InvalidArgument("subscribe to at least one channel".into()));
    }
    if req.channels.len() > MAX_CHANNELS {
        return Err(Error::InvalidArgument(format!("at most {MAX_CHANNELS} channels per stream")));
    }
    let mut seen = HashSet::new();
    let mut wanted = Vec::with_capacity(req.channels.len());
    for sub in &req.channels {
        let channel = super::channel_id(&sub.channelid)?;
        if !seen.insert(channel.clone()) {
            return Err(Error::InvalidArgument(format!("channel {channel} is listed twice")));
        }
        wanted.push((channel, super::cursor(sub.cursor.as_ref())?));
    }
    let stream = relay.streams.open(&caller.user.id, &caller.token, caller.expires)?;
    let mut joined = Vec::with_capacity(wanted.len());
    for (channel, resume) in wanted {
        joined.push(join(&relay, &caller.user, &stream, channel, resume).await?);
    }

    let (outbox, response) = Outbox::new(relay.config.stream_buffer);
    let started = StreamStarted { stream_id: stream.id.clone(), token_expires: caller.expires };
    outbox.offer(event(Event::Started(started))).map_err(|Closed| Error::ResourceExhausted("stream closed".into()))?;
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
        watch(&relay, &outbox, heartbeat).await;
        // The stream stays registered (for Ack and RefreshToken) until here.
        drop(stream);
        streams.dec();
    });
    Ok(response)
}

/// Checks access to one channel and starts its live subscription.
async fn join(
    relay: &Relay,
    user: &User,
    stream: &Stream,
    channel: ChannelId,
    resume: Option<Resume>,
) -> Result<Joined> {
    let governed = relay.settings.get(&channel).await?;
    let settings = &governed.settings;
    if !settings.access.subscribe.allows(&user.id, &channel) {
        return Err(Error::PermissionDenied(format!("user {} may not subscribe to {channel}", user.id)));
    }
    let subject = names::subject(channel.as_str());
    let live = match settings.delivery {
        Delivery::Broadcast => {
            let topic = relay.hub.topic(channel.as_str()).await?;
            let rx = topic.watch();
            Live::Hub(topic, rx)
        }
        Delivery::PerUser => Live::Share(relay.bus.subscribe(subject, Some(names::user_queue_group(&user.id))).await?),
        Delivery::Queue if settings.stream.is_some() => {
            let lane = Arc::new(Lane::open(&relay.jetstream, channel.as_str(), &governed.declared_by, settings).await?);
            stream.add_lane(channel.as_str(), lane.clone());
            Live::Lane(lane)
        }
        // A queue channel without JetStream (undeclared, in development): at most once.
        Delivery::Queue => Live::Share(relay.bus.subscribe(subject, Some(names::QUEUE_GROUP.to_owned())).await?),
    };
    Ok(Joined { channel, resume, max_age: Duration::from_secs(settings.history.max_age_secs), live })
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
                    let beat = event(Event::Heartbeat(Heartbeat { ts: crate::now_nanos() }));
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
    match j.live {
        Live::Hub(_topic, rx) => {
            let (epoch, last) = history::send(relay, ch, j.resume.as_ref(), j.max_age, outbox).await?;
            broadcast::run(relay, ch, epoch, last, rx, outbox).await
        }
        Live::Share(sub) => {
            let (epoch, last) = history::send(relay, ch, j.resume.as_ref(), j.max_age, outbox).await?;
            share::run(relay, ch, &epoch, last, sub, outbox).await
        }
        Live::Lane(l) => {
            // The consumer's backlog is the work queue: it is delivered whatever the cursor.
            emit(outbox, recovery(ch, true, "", "")).await?;
            let result = tokio::select! {
                _ = outbox.done() => Ok(()),
                r = lane::run(&l, outbox) => r,
            };
            l.release().await;
            result
        }
    }
}

fn event(e: Event) -> SubscribeResponse {
    SubscribeResponse { event: Some(e) }
}

fn recovery(ch: &str, recovered: bool, epoch: &str, reason: &str) -> SubscribeResponse {
    event(Event::Recovery(Recovery {
        channelid: ch.to_owned(),
        recovered,
        epoch: epoch.to_owned(),
        reason: reason.to_owned(),
    }))
}

fn marker(ch: &str, m: &Marker) -> SubscribeResponse {
    recovery(ch, false, &m.epoch, m.reason)
}

fn message(m: WireMessage) -> SubscribeResponse {
    event(Event::Message(m.into()))
}

/// Queues an event, waiting for room (history, which the server produces at the client's pace).
async fn emit(outbox: &Outbox, event: SubscribeResponse) -> Result<()> {
    outbox.send(event).await.map_err(|Closed| Error::ResourceExhausted("stream closed".into()))
}

/// Queues a live event without waiting: a full queue ends the stream as a slow consumer.
fn offer(outbox: &Outbox, event: SubscribeResponse) -> Result<()> {
    outbox.offer(event).map_err(|Closed| Error::ResourceExhausted("slow consumer".into()))
}
