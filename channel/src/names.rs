//! Names derived from a channel id. Every Redis key of a channel carries the hash tag `{<channel>}`
//! so that all of them land in one Redis Cluster slot and one Lua script may touch them together.

/// The hard-coded group of the seed: every channel's subject lives under it.
pub const GROUP: &str = "events";

/// NATS subject a channel's messages are published on: `events.<channelid>`.
pub fn subject(channel: &str) -> String {
    format!("{GROUP}.{channel}")
}

/// The NATS queue group of a user in `perUser` delivery: `events.<userid>`.
pub fn user_queue_group(userid: &str) -> String {
    format!("{GROUP}.{userid}")
}

/// The NATS queue group of `queue` delivery: `events`.
pub const QUEUE_GROUP: &str = GROUP;

/// Subject on which the operator announces that a channel's settings changed (payload: the name).
pub const SETTINGS_CHANGED_SUBJECT: &str = "relay.settings.changed";

/// The first token of a channel id: every declaration under it shares one JetStream stream
/// (JetStream refuses streams whose subjects overlap, and `chat` and `chat.vip` would).
pub fn root(channel: &str) -> &str {
    channel.split('.').next().unwrap_or(channel)
}

/// The JetStream stream holding a channel's messages: `RELAY_<root>`, capturing `events.<root>` and
/// `events.<root>.>`.
pub fn stream_name(channel: &str) -> String {
    format!("RELAY_{}", root(channel))
}

/// The durable consumer of queue delivery for a channel: `relay-queue` for a top-level channel (the
/// name it always had), `relay-queue-<hash>` below it (consumer names may not hold `.`, and a
/// hash keeps `a.b_c` and `a_b.c` apart). The operator makes it for a declared queue channel, the
/// first relay that needs it for a sub-channel; both derive the same name.
pub fn queue_consumer(channel: &str) -> String {
    if !channel.contains('.') {
        return "relay-queue".to_owned();
    }
    // FNV-1a: stable across builds and platforms (every relay and the operator agree on it).
    let hash = channel.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("relay-queue-{hash:016x}")
}

/// NATS subject of a channel's live-only events (Join, Leave, ephemeral messages): beside the
/// channel's messages but outside `events.>`, so no JetStream stream captures them.
pub fn live_subject(channel: &str) -> String {
    format!("relay.live.{channel}")
}

/// Redis keys of a channel's presence (all under its hash tag): `exp`, a sorted set of stream ids
/// scored by when their entry expires (ms); `conn`, a hash stream id -> user id; `users`, a hash
/// user id -> streams open; `info`, a hash user id -> JSON (name, since).
pub fn presence_key(channel: &str, part: &str) -> String {
    format!("relay:{{{channel}}}:presence:{part}")
}

/// Redis stream holding a channel's history; entry ids are `<seq>-0`.
pub fn history_key(channel: &str) -> String {
    format!("relay:{{{channel}}}:history")
}

/// Redis hash with a channel's counters: last `seq` and last `ts`.
pub fn meta_key(channel: &str) -> String {
    format!("relay:{{{channel}}}:meta")
}

/// Redis sorted set (score = member = seq) of a channel's messages appended while relays wait for
/// Redis replicas (`--redis-wait-replicas`) and not yet covered by a durable mark.
pub fn pending_key(channel: &str) -> String {
    format!("relay:{{{channel}}}:pending")
}

/// Redis string with the JSON [`crate::ChannelSettings`] of a declared channel.
pub fn settings_key(channel: &str) -> String {
    format!("relay:{{{channel}}}:config")
}

/// Prefix of the Redis keys remembering idempotency keys of a channel.
pub fn idempotency_key(channel: &str, userid: &str, key: &str) -> String {
    format!("relay:{{{channel}}}:idem:{userid}:{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        assert_eq!(subject("chat.room1"), "events.chat.room1");
        assert_eq!(user_queue_group("bob"), "events.bob");
        assert_eq!(stream_name("chat.eu"), "RELAY_chat", "one stream per top-level name");
        assert_eq!(stream_name("chat"), "RELAY_chat");
        assert_eq!(root("chat.eu.x"), "chat");
        assert_eq!(queue_consumer("jobs"), "relay-queue");
        assert_eq!(queue_consumer("jobs.eu"), queue_consumer("jobs.eu"));
        assert_ne!(queue_consumer("a.b_c"), queue_consumer("a_b.c"));
        assert_eq!(queue_consumer("jobs.eu").len(), "relay-queue-".len() + 16);
        assert_eq!(history_key("chat"), "relay:{chat}:history");
        assert_eq!(settings_key("chat"), "relay:{chat}:config");
        assert_eq!(meta_key("chat"), "relay:{chat}:meta");
        assert_eq!(idempotency_key("chat", "u1", "k"), "relay:{chat}:idem:u1:k");
        assert_eq!(live_subject("chat.x"), "relay.live.chat.x");
        assert_eq!(presence_key("chat", "exp"), "relay:{chat}:presence:exp");
    }
}
