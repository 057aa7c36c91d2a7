//! Publish: verify -> authorize -> validate -> rate-limit -> Redis (assigns ts/seq) -> NATS -> reply.
//! A publish answered OK is in history and on NATS (acked by JetStream where a stream captures it).

use std::time::Instant;

use relay_channel::names;
use tonic::Request;

use crate::Relay;
use crate::error::{Error, Result};
use crate::proto::{PublishRequest, PublishResponse};
use crate::store::Append;

/// The longest idempotency key accepted, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 128;

pub async fn publish(relay: &Relay, req: Request<PublishRequest>) -> Result<PublishResponse> {
    let started = Instant::now();
    let user = relay.verifier.verify_metadata(req.metadata()).await?;
    let req = req.into_inner();
    let channel = super::channel_id(&req.channelid)?;
    let governed = relay.settings.get(&channel).await?;
    let settings = &governed.settings;
    if !settings.access.publish.allows(&user.id, &channel) {
        return Err(Error::PermissionDenied(format!("user {} may not publish to {channel}", user.id)));
    }
    validate(&req, settings.limits.max_message_bytes)?;
    if !relay.rate.allow(channel.as_str(), &user.id, settings.limits.publish_per_second_per_user, Instant::now()) {
        return Err(Error::ResourceExhausted(format!(
            "rate limit: at most {} publishes per second per user on {}",
            settings.limits.publish_per_second_per_user, governed.declared_by
        )));
    }

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
        })
        .await?;
    // A replayed publish is sent to NATS again: the first attempt may have died before it did.
    // Subscribers drop the copy by seq; JetStream drops it by message id.
    let message = appended.message;
    let subject = names::subject(channel.as_str());
    let payload = bytes::Bytes::from(message.to_json());
    if settings.stream.is_some() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", message.id.as_str());
        relay
            .jetstream
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| Error::unavailable("jetstream publish", e))?
            .await
            .map_err(|e| Error::unavailable("jetstream ack", e))?;
    } else {
        relay.nats.publish(subject, payload).await.map_err(|e| Error::unavailable("nats publish", e))?;
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
