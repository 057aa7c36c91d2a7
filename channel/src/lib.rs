//! What the relay and the operator agree on, in one place:
//!
//! - [`id`]: the channel id grammar (no wildcards, ever);
//! - [`duration`]: durations as flags and specs write them;
//! - [`names`]: NATS subjects, JetStream stream names and Redis keys derived from a channel id;
//! - [`settings`]: the per-channel settings the operator writes to `relay:{<channel>}:config`;
//! - [`wire`]: the message as it travels on NATS and sits in Redis (JSON, the seed's field names).
#![forbid(unsafe_code)]

pub mod duration;
pub mod id;
pub mod names;
pub mod settings;
pub mod wire;

pub use id::{ChannelId, InvalidChannelId};
pub use settings::{
    Access, AccessRule, ChannelSettings, Delivery, HistorySettings, Limits, PresenceSettings, QueueSettings,
};
pub use wire::{LiveEvent, WireMessage};
