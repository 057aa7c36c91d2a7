//! Publish: verify -> authorize -> validate -> rate-limit -> Redis (assigns ts/seq) -> NATS -> reply.
//! A publish answered OK is in history and on NATS: acked by JetStream where a stream captures it,
//! confirmed by the NATS server otherwise. A publish that fails after its Redis append answers
//! UNAVAILABLE ("retry with the same idempotency key") and is published again in the background.

use std::time::Instant;

use tonic::Request;

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
    let req = req.into_inner();
    let channel = super::channel_id(&req.channelid)?;
    let governed = relay.settings.get(&channel).await?;
    let settings = &governed.settings;
    if !settings.access.publish.allows(&user.id, &channel) {
        return Err(Error::PermissionDenied(format!("user {} may not publish to {channel}", user.id)));
    }
    validate(&req, settings.limits.max_message_bytes)?;
    if !relay.rate.allow(&governed.declared_by, &user.id, settings.limits.publish_per_second_per_user) {
        return Err(Error::ResourceExhausted(format!(
            "rate limit: at most {} publishes per second per user on {}",
            settings.limits.publish_per_second_per_user, governed.declared_by
        )));
    }

    // Nothing is stored for a NATS that is not there.
    relay.bus.ensure_connected()?;
    let id = uuid::Uuid::now_v7().to_string();
    let appended = relay
        .store
        .append(Append {
            channel: channel.as_str(),
            userid: &user.id,
            username: &user.name,
            text: &req.text,
            id: &id,
            idempotency_key: (!req.idempotency_key.is_empty()).then_some(req.idempotency_key.as_str()),
            max_messages: settings.history.max_messages,
            max_age_secs: settings.history.max_age_secs,
            idle_ttl_secs: (!governed.declared || governed.declared_by != channel.as_str()).then_some(IDLE_TTL),
        })
        .await?;
    // A replayed publish is sent to NATS again: the first attempt may have died before it did.
    // Subscribers drop the copy by seq; JetStream drops it by message id.
    let message = appended.message;
    let jetstream = settings.stream.is_some();
    if let Err(e) = republish::publish(&relay.bus, &message, jetstream).await {
        tracing::debug!(channel = %channel, seq = message.seq, error = %e, "stored but not published; publishing again in the background");
        let seq = message.seq;
        relay.republish.push(message, jetstream);
        return Err(Error::Retry(format!(
            "stored as seq {seq} but not yet delivered (message bus unavailable); retry with the same idempotency key"
        )));
    }
    crate::metrics::observe_publish(started.elapsed());
    Ok(PublishResponse { message: Some(message.into()) })
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
        PublishRequest { channelid: "c".into(), text: text.into(), idempotency_key: key.into() }
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
}
