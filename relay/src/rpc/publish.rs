//! Publish: verify -> authorize -> validate -> rate-limit -> Redis (assigns ts/seq) -> NATS -> reply.
//! A publish answered OK is in history and on NATS: acked by JetStream where a stream captures it,
//! confirmed by the NATS server otherwise. A publish that fails after its Redis append answers
//! UNAVAILABLE ("retry with the same idempotency key") and is published again in the background.
//! With `--redis-wait-replicas`, "in history" means on that many Redis replicas too: one whose
//! replicas do not confirm in time answers UNAVAILABLE and is not announced until a later durable
//! mark or a retry confirms it, and then before the messages after it.

use std::time::Instant;

use tonic::Request;
use tracing::Instrument;

use relay_channel::WireMessage;

use crate::error::{Error, Result};
use crate::proto::{PublishRequest, PublishResponse};
use crate::store::Append;
use crate::{Relay, republish};

/// The longest idempotency key accepted, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 128;
/// How long a channel that no `RelayChannel` names exactly (a sub-channel, or an undeclared one)
/// keeps its Redis keys without a publish, when its history keeps messages for less.
const IDLE_TTL: u64 = 7 * 24 * 3600;

pub async fn publish(relay: &Relay, req: Request<PublishRequest>) -> Result<PublishResponse> {
    let started = Instant::now();
    let user = relay.authenticate(&req).await?.user;
    // Traced once the caller is known: an unauthenticated call makes no span.
    let span = crate::telemetry::call_span("relay.publish", crate::telemetry::parent(req.metadata()).as_ref());
    let message = publish_as(relay, user, req.into_inner()).instrument(span).await?;
    crate::metrics::observe_publish(started.elapsed());
    Ok(PublishResponse { message: Some(message.into()) })
}

/// Publishes for a verified user: what Publish and each message of PublishStream do.
pub async fn publish_as(relay: &Relay, user: crate::auth::User, req: PublishRequest) -> Result<WireMessage> {
    let channel = super::channel_id(&req.channelid)?;
    let governed = relay.settings.get(&channel).await?;
    let settings = &governed.settings;
    if !settings.access.publish.allows(&user.id, &channel) {
        return Err(Error::PermissionDenied(format!("user {} may not publish to {channel}", user.id)));
    }
    validate(&req, settings.limits.max_message_bytes)?;
    if req.ephemeral {
        return publish_ephemeral(relay, &governed, user, channel, req.text).await;
    }
    if !relay.rate.allow(&governed.declared_by, &user.id, settings.limits.publish_per_second_per_user) {
        return Err(Error::ResourceExhausted(format!(
            "rate limit: at most {} publishes per second per user on {}",
            settings.limits.publish_per_second_per_user, governed.declared_by
        )));
    }

    // Nothing is stored for a NATS that is not there, or that could never carry the message.
    relay.bus.ensure_connected()?;
    let id = uuid::Uuid::now_v7().to_string();
    let mut message = WireMessage {
        channelid: channel.to_string(),
        userid: user.id,
        username: user.name,
        text: req.text,
        ts: 0,
        seq: 0,
        id,
        epoch: String::new(),
    };
    fits_the_bus(&message, relay.bus.max_payload())?;
    let key = (!req.idempotency_key.is_empty()).then_some(req.idempotency_key);
    let limits = (settings.history.max_messages, settings.history.max_age_secs);
    let idle_ttl_secs = (!governed.declared || governed.declared_by != channel.as_str()).then_some(IDLE_TTL);
    let jetstream = settings.stream.is_some();

    // From the append on, the work runs to its end even if the client goes away: a message in
    // history is published (or handed to the republisher), never left stored but unannounced.
    let store = relay.store.clone();
    let bus = relay.bus.clone();
    let republisher = relay.republish.clone();
    let done = tokio::spawn(
        async move {
        let appended = store
            .append(Append {
                channel: &message.channelid,
                userid: &message.userid,
                username: &message.username,
                text: &message.text,
                id: &message.id,
                idempotency_key: key.as_deref(),
                max_messages: limits.0,
                max_age_secs: limits.1,
                idle_ttl_secs,
            })
            .instrument(crate::trace_span!("append", otel.name = "redis.append"))
            .await?;
        // A replayed publish is sent to NATS again: the first attempt may have died before it did.
        // Subscribers drop the copy by seq; JetStream drops it by message id.
        message = appended.message;
        // Earlier messages that this append's durable mark vouched for go first (even when this
        // one is not confirmed: the batch's WAIT covered them).
        if let Some(covered) = &appended.covered {
            let announced =
                covered.announce_once(|| republisher.publish_in_order(&bus, &covered.messages, jetstream)).await;
            if !announced && appended.replicated {
                // Behind them in the republisher (which does not keep order among the batch's own).
                let seq = message.seq;
                republisher.push(message, jetstream);
                return Err(Error::Retry(format!(
                    "stored as seq {seq} but not yet delivered (message bus unavailable); retry with the same idempotency key"
                )));
            }
        }
        if !appended.replicated {
            crate::metrics::backend_error("history store");
            // Not announced: a failover could still take it back. Announced by the first batch
            // whose durable mark covers it (`store::covered`), or by the retry, which finds it stored.
            return Err(Error::Retry(format!(
                "stored as seq {} but not yet on enough Redis replicas (it may still be delivered); retry with the same idempotency key",
                message.seq
            )));
        }
        let published = republish::publish(&bus, &message, jetstream)
            .instrument(crate::trace_span!("publish", otel.name = "nats.publish", seq = message.seq))
            .await;
        if let Err(e) = published {
            tracing::debug!(channel = %message.channelid, seq = message.seq, error = %e, "stored but not published; publishing again in the background");
            crate::metrics::backend_error("message bus");
            let seq = message.seq;
            republisher.push(message, jetstream);
            return Err(Error::Retry(format!(
                "stored as seq {seq} but not yet delivered (message bus unavailable); retry with the same idempotency key"
            )));
        }
        Ok(message)
    }
        .instrument(tracing::Span::current()),
    );
    done.await.map_err(|e| Error::unavailable("relay", e))?
}

/// An ephemeral publish: to the streams open now, on the channel's live subject; never stored.
/// Answered once the NATS server has it.
async fn publish_ephemeral(
    relay: &Relay,
    governed: &crate::settings::Governed,
    user: crate::auth::User,
    channel: relay_channel::ChannelId,
    text: String,
) -> Result<WireMessage> {
    let limits = &governed.settings.limits;
    if !limits.allow_ephemeral {
        return Err(Error::PermissionDenied(format!(
            "channel {channel} does not take ephemeral messages (RelayChannel {} spec.limits.allowEphemeral)",
            governed.declared_by
        )));
    }
    // Its own allowance: typing indicators do not eat into the user's publishes, nor the reverse.
    let allowance = format!("{} ephemeral", governed.declared_by);
    if !relay.rate.allow(&allowance, &user.id, limits.ephemeral_per_second_per_user) {
        return Err(Error::ResourceExhausted(format!(
            "rate limit: at most {} ephemeral publishes per second per user on {}",
            limits.ephemeral_per_second_per_user, governed.declared_by
        )));
    }
    let message = WireMessage {
        channelid: channel.to_string(),
        userid: user.id,
        username: user.name,
        text,
        ts: crate::now_nanos(),
        seq: 0,
        id: uuid::Uuid::now_v7().to_string(),
        epoch: String::new(),
    };
    fits_the_bus(&message, relay.bus.max_payload())?;
    let payload = relay_channel::LiveEvent::Ephemeral(message.clone()).to_json();
    relay.bus.publish_confirmed(relay_channel::names::live_subject(channel.as_str()), None, payload.into()).await?;
    Ok(message)
}

/// Room left for NATS headers (`Nats-Msg-Id`, and `traceparent` and a `tracestate` of at most
/// 256 bytes while traces are on), which count against the server's limit too.
const HEADER_ROOM: usize = 512;

/// Refuses a message whose encoding, with the widest seq, ts and epoch the store can give it and
/// its headers, is more than the NATS server takes in one message.
fn fits_the_bus(message: &WireMessage, max_payload: usize) -> Result<()> {
    if surely_fits(message, max_payload) {
        return Ok(());
    }
    let widest = WireMessage { ts: i64::MAX, seq: u64::MAX, epoch: "f".repeat(32), ..message.clone() };
    let size = widest.to_json().len() + HEADER_ROOM;
    if size > max_payload {
        return Err(Error::InvalidArgument(format!(
            "message encodes to {size} bytes (text, ids and escapes); the message bus takes at most {max_payload}"
        )));
    }
    Ok(())
}

/// Whether a message fits the bus without encoding it to find out (the common case, checked on
/// every publish): every character escapes to at most six bytes, and the rest of the encoding
/// (field names, quotes, the widest numbers, a 32-character epoch) takes well under 512.
fn surely_fits(message: &WireMessage, max_payload: usize) -> bool {
    let fields = [&message.channelid, &message.userid, &message.username, &message.text, &message.id];
    fields.iter().map(|f| f.len() * 6).sum::<usize>() + 512 + HEADER_ROOM <= max_payload
}

/// Checks what the client sent against the channel's limits.
fn validate(req: &PublishRequest, max_bytes: u32) -> Result<()> {
    if req.text.is_empty() {
        return Err(Error::InvalidArgument("text is empty".into()));
    }
    if req.text.len() > max_bytes as usize {
        return Err(Error::InvalidArgument(format!(
            "text is {} bytes; this channel allows at most {max_bytes}",
            req.text.len()
        )));
    }
    if req.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(Error::InvalidArgument(format!("idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} bytes")));
    }
    if req.idempotency_key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::InvalidArgument("idempotency_key may not hold spaces or control characters".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str, key: &str) -> PublishRequest {
        PublishRequest { channelid: "c".into(), text: text.into(), idempotency_key: key.into(), ephemeral: false }
    }

    #[test]
    fn validation() {
        assert!(validate(&req("hi", ""), 10).is_ok());
        assert!(validate(&req(&"x".repeat(10), "k-1"), 10).is_ok());
        for bad in [req("", ""), req(&"x".repeat(11), ""), req("hi", "a b"), req("hi", &"k".repeat(129))] {
            assert!(matches!(validate(&bad, 10), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
        // Bytes, not characters: "é" is two bytes.
        assert!(validate(&req("éé", ""), 3).is_err());
    }

    proptest::proptest! {
        /// The shortcut never lets through what the exact check would refuse.
        #[test]
        fn the_shortcut_agrees_with_the_encoding(
            channelid in "\\PC{0,40}", userid in "\\PC{0,20}", username in ".{0,30}",
            text in ".{0,300}", id in "[0-9a-f-]{0,36}", max_payload in 600usize..4000,
        ) {
            let message = WireMessage { channelid, userid, username, text, ts: 0, seq: 0, id, epoch: String::new() };
            let widest = WireMessage { ts: i64::MAX, seq: u64::MAX, epoch: "f".repeat(32), ..message.clone() };
            if surely_fits(&message, max_payload) {
                proptest::prop_assert!(widest.to_json().len() + HEADER_ROOM <= max_payload);
            }
        }
    }

    #[test]
    fn a_message_that_escapes_past_the_bus_limit_is_refused_before_it_is_stored() {
        let message = |text: &str| WireMessage {
            channelid: "room".into(),
            userid: "u".into(),
            username: "U".into(),
            text: text.into(),
            ts: 0,
            seq: 0,
            id: uuid::Uuid::now_v7().to_string(),
            epoch: String::new(),
        };
        let limit = 1024 * 1024;
        assert!(fits_the_bus(&message(&"x".repeat(limit / 2)), limit).is_ok());
        // Within a 1 MiB text limit, but control characters encode as six bytes each.
        let escaped = "\u{1}".repeat(limit / 4);
        assert!(matches!(fits_the_bus(&message(&escaped), limit), Err(Error::InvalidArgument(_))));
        assert!(matches!(fits_the_bus(&message(&"x".repeat(limit)), limit), Err(Error::InvalidArgument(_))));
    }
}
