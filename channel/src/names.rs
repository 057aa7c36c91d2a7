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

/// The JetStream stream of a `RelayChannel`: `RELAY_<name>`, with `.` (not allowed in stream
/// names) written as `_`.
pub fn stream_name(channel: &str) -> String {
    format!("RELAY_{}", channel.replace('.', "_"))
}

/// Redis stream holding a channel's history; entry ids are `<seq>-0`.
pub fn history_key(channel: &str) -> String {
    format!("relay:{{{channel}}}:history")
}

/// Redis hash with a channel's counters: last `seq` and last `ts`.
pub fn meta_key(channel: &str) -> String {
    format!("relay:{{{channel}}}:meta")
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
        assert_eq!(stream_name("chat.eu"), "RELAY_chat_eu");
        assert_eq!(history_key("chat"), "relay:{chat}:history");
        assert_eq!(settings_key("chat"), "relay:{chat}:config");
        assert_eq!(meta_key("chat"), "relay:{chat}:meta");
        assert_eq!(idempotency_key("chat", "u1", "k"), "relay:{chat}:idem:u1:k");
    }
}
