//! The message on the NATS wire and in Redis history: JSON with the seed's field names, so any NATS
//! client can read it.

use serde::{Deserialize, Serialize};

/// One stored message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage {
    pub channelid: String,
    pub userid: String,
    /// The sender's display name (PocketBase `name`) when it was published; may be empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    pub text: String,
    /// Unix nanoseconds, strictly increasing within a channel.
    pub ts: i64,
    /// Position in the channel, strictly increasing.
    pub seq: u64,
    pub id: String,
    /// The channel's epoch (a new one whenever its history was lost); `seq` counts within it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
}

impl WireMessage {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of strings and integers always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// What travels on a channel's live subject ([`crate::names::live_subject`]): events delivered to
/// the streams open at that moment and never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum LiveEvent {
    /// A user's first stream on the channel opened.
    Join { channelid: String, userid: String, username: String },
    /// A user's last stream on the channel ended (or its entry expired).
    Leave { channelid: String, userid: String, username: String },
    /// An ephemeral message: `seq` is 0 and `epoch` empty, it is in no history.
    Ephemeral(WireMessage),
}

impl LiveEvent {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of strings and integers always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub fn channel(&self) -> &str {
        match self {
            LiveEvent::Join { channelid, .. } | LiveEvent::Leave { channelid, .. } => channelid,
            LiveEvent::Ephemeral(m) => &m.channelid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_seed_field_names() {
        let m = WireMessage {
            channelid: "chat".into(),
            userid: "u1".into(),
            username: String::new(),
            text: "hi".into(),
            ts: 1_700_000_000_000_000_001,
            seq: 7,
            id: "x".into(),
            epoch: String::new(),
        };
        let json = String::from_utf8(m.to_json()).unwrap();
        assert_eq!(json, r#"{"channelid":"chat","userid":"u1","text":"hi","ts":1700000000000000001,"seq":7,"id":"x"}"#);
        assert_eq!(WireMessage::from_json(json.as_bytes()).unwrap(), m);
        let named = WireMessage { username: "Alice".into(), ..m };
        assert!(String::from_utf8(named.to_json()).unwrap().contains(r#""username":"Alice""#));
        let with_epoch = WireMessage { epoch: "e1".into(), ..named };
        let json = with_epoch.to_json();
        assert!(String::from_utf8(json.clone()).unwrap().contains(r#""epoch":"e1""#));
        assert_eq!(WireMessage::from_json(&json).unwrap(), with_epoch);
    }

    #[test]
    fn live_events_are_tagged() {
        let join = LiveEvent::Join { channelid: "c".into(), userid: "u".into(), username: "U".into() };
        let json = String::from_utf8(join.to_json()).unwrap();
        assert_eq!(json, r#"{"kind":"join","channelid":"c","userid":"u","username":"U"}"#);
        assert_eq!(LiveEvent::from_json(json.as_bytes()).unwrap(), join);
        let m = WireMessage {
            channelid: "c".into(),
            userid: "u".into(),
            username: String::new(),
            text: "typing".into(),
            ts: 1,
            seq: 0,
            id: "x".into(),
            epoch: String::new(),
        };
        let eph = LiveEvent::Ephemeral(m);
        assert!(String::from_utf8(eph.to_json()).unwrap().starts_with(r#"{"kind":"ephemeral","channelid":"c""#));
        assert_eq!(LiveEvent::from_json(&eph.to_json()).unwrap(), eph);
        assert_eq!(eph.channel(), "c");
        assert!(LiveEvent::from_json(br#"{"kind":"nope"}"#).is_err());
    }
}
