//! Per-channel settings: what the operator derives from a `RelayChannel` and writes as JSON to
//! `relay:{<channel>}:config`, and what relays read (cached) on every publish and subscribe.

use serde::{Deserialize, Serialize};

use crate::ChannelId;

/// Everything a relay needs to know about a declared channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ChannelSettings {
    pub delivery: Delivery,
    pub history: HistorySettings,
    pub access: Access,
    pub limits: Limits,
    /// Queue delivery: acks and redelivery.
    pub queue: QueueSettings,
    /// Who is here: presence, join/leave events.
    pub presence: PresenceSettings,
    /// The JetStream stream capturing this channel's subjects, when the operator made one: publishes
    /// then wait for its ack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The durable pull consumer that `queue` delivery of the declared channel reads from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_consumer: Option<String>,
    /// `<namespace>/<name>` of the `RelayChannel` these settings come from: two resources of one
    /// name in different namespaces would otherwise fight over one channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Set while the declaration exists but is not in force (its Ready reason): relays refuse the
    /// channel rather than serve it under its parent's rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        Self {
            delivery: Delivery::Broadcast,
            history: HistorySettings::default(),
            access: Access::default(),
            limits: Limits::default(),
            queue: QueueSettings::default(),
            presence: PresenceSettings::default(),
            stream: None,
            queue_consumer: None,
            owner: None,
            not_ready: None,
        }
    }
}

/// Who gets a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Delivery {
    /// Every open Subscribe stream gets every message.
    #[default]
    Broadcast,
    /// Each subscribed user gets a message once, on one of their streams (queue group `events.<user>`).
    PerUser,
    /// Each message goes to exactly one subscriber (queue group `events`).
    Queue,
}

/// What a late subscriber can catch up on, kept in Redis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HistorySettings {
    pub max_messages: u64,
    /// Seconds; 0 keeps messages until `max_messages` pushes them out.
    pub max_age_secs: u64,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self { max_messages: 1000, max_age_secs: 24 * 3600 }
    }
}

/// Queue delivery through the channel's durable JetStream consumer: at least once, with client acks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueueSettings {
    /// Seconds a subscriber may hold a message unacked before it is delivered again.
    pub ack_wait_secs: u64,
    /// Unacked messages one stream may hold; it pulls more only as it acks.
    pub max_unacked_per_stream: u32,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self { ack_wait_secs: 30, max_unacked_per_stream: 16 }
    }
}

/// Presence: which users have a Subscribe stream open on the channel, kept in Redis across replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PresenceSettings {
    /// Streams are counted (Presence, PresenceStats).
    pub enabled: bool,
    /// Streams get Join and Leave events (once per user).
    pub join_leave: bool,
    /// Seconds a stream's entry lives without a refresh: how long the members of a replica that
    /// died stay listed.
    pub ttl_secs: u64,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        Self { enabled: false, join_leave: false, ttl_secs: 60 }
    }
}

/// Who may publish and who may subscribe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Access {
    pub publish: AccessRule,
    pub subscribe: AccessRule,
}

/// One access rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AccessRule {
    /// Any verified user.
    #[default]
    Authenticated,
    /// Only the user whose id is the channel's last token (`inbox.<userid>`).
    Owner,
    /// Only these user ids.
    Users(Vec<String>),
}

impl AccessRule {
    /// Whether `userid` may act on `channel` under this rule.
    pub fn allows(&self, userid: &str, channel: &ChannelId) -> bool {
        match self {
            AccessRule::Authenticated => true,
            AccessRule::Owner => channel.last_token() == userid,
            AccessRule::Users(ids) => ids.iter().any(|id| id == userid),
        }
    }
}

/// Limits on what publishers may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Limits {
    pub max_message_bytes: u32,
    /// Per user and channel, on each relay replica; 0 turns the limit off.
    pub publish_per_second_per_user: u32,
    /// Ephemeral publishes (delivered live, never stored) are allowed.
    pub allow_ephemeral: bool,
    /// Ephemeral publishes per user and channel, on each relay replica; 0 turns the limit off.
    pub ephemeral_per_second_per_user: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4096,
            publish_per_second_per_user: 20,
            allow_ephemeral: false,
            ephemeral_per_second_per_user: 10,
        }
    }
}

impl ChannelSettings {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("settings always serialize")
    }

    pub fn from_json(raw: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelId {
        ChannelId::parse(s).unwrap()
    }

    #[test]
    fn access_rules() {
        let table: &[(AccessRule, &str, &str, bool)] = &[
            (AccessRule::Authenticated, "bob", "chat", true),
            (AccessRule::Owner, "bob", "inbox.bob", true),
            (AccessRule::Owner, "alice", "inbox.bob", false),
            (AccessRule::Owner, "inbox", "inbox", true),
            (AccessRule::Users(vec!["a".into(), "b".into()]), "b", "ops", true),
            (AccessRule::Users(vec!["a".into()]), "b", "ops", false),
            (AccessRule::Users(vec![]), "b", "ops", false),
        ];
        for (rule, user, channel, want) in table {
            assert_eq!(rule.allows(user, &ch(channel)), *want, "{rule:?} {user} {channel}");
        }
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let s = ChannelSettings {
            delivery: Delivery::PerUser,
            access: Access { publish: AccessRule::Users(vec!["svc".into()]), subscribe: AccessRule::Owner },
            stream: Some("RELAY_inbox".into()),
            ..Default::default()
        };
        let json = s.to_json();
        assert!(json.contains(r#""delivery":"perUser""#), "{json}");
        assert!(json.contains(r#""publish":{"users":["svc"]}"#), "{json}");
        assert_eq!(ChannelSettings::from_json(&json).unwrap(), s);
        // Missing fields take defaults, so older writers stay readable.
        let partial = ChannelSettings::from_json(r#"{"delivery":"queue"}"#).unwrap();
        assert_eq!(partial.delivery, Delivery::Queue);
        assert_eq!(partial.limits, Limits::default());
    }
}
