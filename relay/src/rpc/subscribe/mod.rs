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
mod live;
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
    delivery: Delivery,
    resume: Option<Resume>,
    max_age: Duration,
    live: Live,
    /// Join/Leave and ephemeral events, where the channel has them.
    side: Option<live::Side>,
    /// Counted in the channel's presence until dropped (the stream's end).
    _presence: Option<crate::presence::Entry>,
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
    let caller = relay.authenticate(&req).await?;
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
    let held: Vec<(ChannelId, Delivery)> = joined.iter().map(|j| (j.channel.clone(), j.delivery)).collect();

    let (outbox, response) = Outbox::new(relay.config.stream_buffer as usize);
    let started = StreamStarted { stream_id: stream.id.clone(), token_expires: caller.expires };
    outbox.offer(event(Event::Started(started))).map_err(|Closed| Error::ResourceExhausted("stream closed".into()))?;
    let streams = crate::metrics::streams();
    streams.inc();
    for j in joined {
        let (relay, outbox) = (relay.clone(), outbox.clone());
        // Boxed: what the task holds for the stream's life is then a pointer, not a copy.
        let j = Box::new(j);
        tokio::spawn(async move {
            let channel = j.channel.clone();
            if let Err(e) = run_channel(&relay, j, &outbox).await {
                tracing::debug!(%channel, error = %e, "stream ended");
                outbox.end(e.into());
            }
        });
    }
    tokio::spawn(async move {
        watch(&relay, &outbox, &stream, &held).await;
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
    // Watching the live events before entering presence: the stream sees its own user's join.
    let side = if settings.presence.join_leave || settings.limits.allow_ephemeral {
        let topic = relay.live.topic(channel.as_str()).await?;
        let rx = topic.watch();
        Some(live::Side { _topic: topic, rx, join_leave: settings.presence.join_leave })
    } else {
        None
    };
    let presence =
        settings.presence.enabled.then(|| relay.presence.enter(channel.as_str(), &settings.presence, &stream.id, user));
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
    let max_age = Duration::from_secs(settings.history.max_age_secs);
    Ok(Joined { channel, delivery: settings.delivery, resume, max_age, live, side, _presence: presence })
}

/// How soon a check that could not be made (PocketBase or Redis unreachable) is tried again.
const RECHECK_RETRY: Duration = Duration::from_secs(5);

/// Keeps a stream honest while it lasts: heartbeats on an idle stream, its end on shutdown, its
/// token verified again at the earlier of its `exp` and `--auth-cache-ttl` (a refreshed token
/// moves that), and its access checked again whenever a channel's settings change, after every
/// NATS reconnect (announcements may have been missed) and every `--auth-cache-ttl`. A stream whose
/// user may no longer read ends with UNAUTHENTICATED, PERMISSION_DENIED or NOT_FOUND, saying why;
/// an outage of PocketBase or Redis does not end it (the check is tried again).
///
/// One timer serves every deadline (heartbeat, token check, access check): the task lives as long as
/// the stream, and each timer it holds costs an idle stream memory.
async fn watch(relay: &Relay, outbox: &Outbox, stream: &Stream, held: &[(ChannelId, Delivery)]) {
    use tokio::time::Instant;
    let start = Instant::now();
    let mut beat_at = start + relay.config.heartbeat;
    // Access is checked every --auth-cache-ttl, and soon after anything that may have changed it.
    let mut recheck_at = start + relay.config.auth_cache_ttl;
    let mut access_check: Option<Instant> = None;
    let mut token_check = next_token_check(relay, stream);
    let mut changes = relay.settings.changes();
    let mut reconnected = relay.reconnected.subscribe();
    let done = outbox.done();
    let shutdown = relay.shutdown.cancelled();
    let timer = tokio::time::sleep_until(start);
    tokio::pin!(done, shutdown, timer);
    loop {
        let next = [beat_at, recheck_at, token_check].into_iter().chain(access_check).min().unwrap_or(beat_at);
        timer.as_mut().reset(next);
        let ended = tokio::select! {
            _ = &mut done => return,
            _ = &mut shutdown => Some(Error::ShuttingDown),
            _ = stream.refreshed.notified() => {
                token_check = next_token_check(relay, stream);
                None
            }
            change = changes.recv() => {
                // Every announcement (or a lagged receiver) may concern one of these channels.
                let _ = change;
                access_check = Some(Instant::now());
                None
            }
            Ok(()) | Err(tokio_broadcast::error::RecvError::Lagged(_)) = reconnected.recv() => {
                access_check = Some(Instant::now());
                None
            }
            _ = &mut timer => {
                let now = Instant::now();
                if now >= beat_at {
                    beat_at = now + relay.config.heartbeat;
                    if !outbox.take_busy() {
                        let beat = event(Event::Heartbeat(Heartbeat { ts: crate::now_nanos() }));
                        if outbox.offer_quietly(beat).is_err() {
                            return;
                        }
                    }
                }
                if now >= recheck_at {
                    recheck_at = now + relay.config.auth_cache_ttl;
                    access_check.get_or_insert(now);
                }
                let mut ended = None;
                if now >= token_check {
                    ended = Box::pin(check_token(relay, stream, &mut token_check)).await;
                }
                if ended.is_none() && access_check.is_some_and(|at| now >= at) {
                    ended = Box::pin(check_access(relay, stream, held, &mut access_check)).await;
                }
                ended
            }
        };
        if let Some(e) = ended {
            outbox.end(e.into());
            return;
        }
    }
}

/// Verifies the stream's token again: the error that ends the stream, or None (and the next check).
async fn check_token(relay: &Relay, stream: &Stream, next: &mut tokio::time::Instant) -> Option<Error> {
    match relay.verifier.verify(&stream.token(), None).await {
        Ok(user) if user.id == stream.user => {
            *next = next_token_check(relay, stream);
            None
        }
        Ok(_) => Some(Error::Unauthenticated("the stream's token now names another user".into())),
        Err(Error::Unauthenticated(why)) => Some(Error::Unauthenticated(format!(
            "stream ended: {why} (refresh the token with RefreshToken before it expires)"
        ))),
        Err(_) => {
            *next = tokio::time::Instant::now() + RECHECK_RETRY;
            None
        }
    }
}

/// Checks the stream's access again: the error that ends the stream, or None (and clears or
/// postpones the check).
async fn check_access(
    relay: &Relay,
    stream: &Stream,
    held: &[(ChannelId, Delivery)],
    check: &mut Option<tokio::time::Instant>,
) -> Option<Error> {
    match still_allowed(relay, &stream.user, held).await {
        Ok(()) => {
            *check = None;
            None
        }
        Err(e @ (Error::PermissionDenied(_) | Error::NotFound(_) | Error::Retry(_))) => Some(e),
        Err(_) => {
            *check = Some(tokio::time::Instant::now() + RECHECK_RETRY);
            None
        }
    }
}

/// When the stream's token must be checked again: at the earlier of its expiry and the auth TTL.
pub(crate) fn next_token_check(relay: &Relay, stream: &Stream) -> tokio::time::Instant {
    let left = Duration::from_secs((stream.expires() - crate::now_nanos() / 1_000_000_000).max(0) as u64);
    tokio::time::Instant::now() + relay.config.auth_cache_ttl.min(left)
}

/// Whether `user` may still read every channel of the stream as it was joined.
async fn still_allowed(relay: &Relay, user: &str, held: &[(ChannelId, Delivery)]) -> Result<()> {
    for (channel, delivery) in held {
        let governed = relay.settings.get(channel).await.map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("stream ended: channel {channel} is no longer declared")),
            other => other,
        })?;
        if !governed.settings.access.subscribe.allows(user, channel) {
            return Err(Error::PermissionDenied(format!(
                "stream ended: user {user} may no longer subscribe to {channel}"
            )));
        }
        if governed.settings.delivery != *delivery {
            return Err(Error::Retry(format!("stream ended: the delivery of {channel} changed; subscribe again")));
        }
    }
    Ok(())
}

/// One channel of a stream: recovery marker, history, then live messages (and live-only events)
/// until the stream ends; its presence entry departs then.
async fn run_channel(relay: &Relay, mut j: Box<Joined>, outbox: &Outbox) -> Result<()> {
    match j.side.take() {
        None => run_messages(relay, j, outbox).await,
        Some(side) => {
            let ch = j.channel.clone();
            tokio::select! {
                r = run_messages(relay, j, outbox) => r,
                r = live::run(ch.as_str(), side, outbox) => r,
            }
        }
    }
}

/// A channel's messages: recovery marker, history, then live ones. What runs once or rarely
/// (the history read, a repair, a queue lane, a recheck in `watch`) is boxed: a task is as large as
/// the largest state of its future, for as long as it lives, and an idle stream should pay only
/// for its wait (the spawned task went from 6.5 KiB to 1.2 KiB; `Joined` is passed boxed for the
/// same reason).
async fn run_messages(relay: &Relay, j: Box<Joined>, outbox: &Outbox) -> Result<()> {
    let ch = j.channel.as_str();
    match j.live {
        Live::Hub(_topic, rx) => {
            let (epoch, last) = Box::pin(history::send(relay, ch, j.resume.as_ref(), j.max_age, outbox)).await?;
            broadcast::run(relay, ch, epoch, last, rx, outbox).await
        }
        Live::Share(sub) => {
            let (epoch, last) = Box::pin(history::send(relay, ch, j.resume.as_ref(), j.max_age, outbox)).await?;
            Box::pin(share::run(relay, ch, &epoch, last, sub, outbox)).await
        }
        Live::Lane(l) => Box::pin(run_lane(ch, &l, outbox)).await,
    }
}

/// A queue channel's messages: its lane's, whatever the cursor (the consumer's backlog is the
/// work queue).
async fn run_lane(ch: &str, l: &Lane, outbox: &Outbox) -> Result<()> {
    emit(outbox, recovery(ch, true, "", "")).await?;
    let result = tokio::select! {
        _ = outbox.done() => Ok(()),
        r = lane::run(l, outbox) => r,
    };
    l.release().await;
    result
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
