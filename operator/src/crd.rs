//! The `RelayChannel` custom resource (`relay.dev/v1alpha1`): what a platform team declares.
//! `cargo run -p operator --bin crdgen > crds/relaychannel.yaml` prints its CRD.
// Every printer column repeats `type_ = "string"`, which this lint mistakes for a repeated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Durations: a number and a unit (`30s`, `15m`, `24h`); `0` or `0s` means no age limit.
const DURATION: &str = r"^[0-9]+(ms|s|m|h)?$";
/// Sizes: a number with an optional binary or decimal suffix (`512Mi`, `1Gi`, `10G`), `-1` for none.
const SIZE: &str = r"^(-1|[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?)$";

/// A channel and every sub-channel under it (`chat` governs `chat` and `chat.<room>`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "relay.dev",
    version = "v1alpha1",
    kind = "RelayChannel",
    namespaced,
    shortname = "rch",
    status = "RelayChannelStatus",
    printcolumn(name = "Delivery", type_ = "string", json_path = ".spec.delivery"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(name = "Messages", type_ = "integer", json_path = ".status.stream.messages"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.stream.replicas", priority = "1"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.stream.leader", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[kube(validation = Rule::new("self.spec.delivery != 'queue' || !has(self.spec.stream) || self.spec.stream.enabled").message("queue delivery needs the JetStream stream: spec.stream.enabled cannot be false"))]
#[kube(validation = Rule::new("self.metadata.name.size() <= 200").message("a RelayChannel name is at most 200 characters: it prefixes NATS subjects and stream names"))]
#[serde(rename_all = "camelCase")]
pub struct RelayChannelSpec {
    /// Who gets a message: every stream (broadcast), each user once (perUser), or one subscriber (queue).
    #[serde(default)]
    pub delivery: Delivery,
    /// What a late subscriber can catch up on (kept in Redis).
    #[serde(default)]
    pub history: HistorySpec,
    /// A NATS JetStream stream beside Redis history: on by default; `enabled: false` goes without.
    /// With it, a publish is acknowledged once Redis history has it and the stream has stored it
    /// (a JetStream ack per publish: in docs/benchmarks.md about 15% fewer publishes per second on
    /// one core, and the stream's storage); queue delivery needs it for at-least-once. Without it,
    /// once Redis history has it and the NATS server took it; subscribers catch up from Redis
    /// history either way, so broadcast and perUser channels lose nothing they use.
    /// Every declaration under one top-level name shares one stream (`RELAY_<top-level name>`): a
    /// nested declaration (`chat.vip` under `chat`) leaves this out and inherits it; if it sets it,
    /// it must match the tree's (its shallowest declaration's), or it is not Ready (`Unsupported`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamSpec>,
    /// Who may publish and subscribe.
    #[serde(default)]
    pub access: AccessSpec,
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Queue delivery: how long a subscriber may hold a message unacked, and how many at once.
    #[serde(default)]
    pub queue: QueueSpec,
    /// Who is here: members counted across replicas (Presence, PresenceStats), and Join/Leave
    /// events on Subscribe streams.
    #[serde(default)]
    pub presence: PresenceSpec,
    /// Delete removes the stream and the history with the resource; Retain keeps them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Delivery {
    #[default]
    Broadcast,
    PerUser,
    Queue,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistorySpec {
    /// Messages kept per channel (approximately: trimmed in whole blocks).
    #[serde(default = "default_history_messages")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_messages: i64,
    /// How long messages are kept, e.g. 24h; under a second counts as one second.
    #[serde(default = "default_history_age")]
    #[schemars(regex(pattern = DURATION))]
    pub max_age: String,
}

fn default_history_messages() -> i64 {
    1000
}
fn default_history_age() -> String {
    "24h".into()
}

impl Default for HistorySpec {
    fn default() -> Self {
        Self { max_messages: default_history_messages(), max_age: default_history_age() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamSpec {
    /// false: no JetStream stream for the tree. Turning it off deletes the tree's stream and the
    /// messages in it (Redis history stays); while a declaration in the tree has `deletionPolicy:
    /// Retain` it is refused (`ChangeRefused`) until the stream is removed by hand, and while one
    /// uses queue delivery the stream stays and this declaration is not Ready (`Unsupported`).
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// How long JetStream keeps messages; under a second counts as one second; 0 for no limit.
    #[serde(default = "default_stream_age")]
    #[schemars(regex(pattern = DURATION))]
    pub max_age: String,
    /// -1 (or 0) for no limit.
    #[serde(default = "default_stream_messages")]
    #[schemars(range(min = -1))]
    pub max_messages: i64,
    /// e.g. 1Gi; -1 for no limit.
    #[serde(default = "default_stream_bytes")]
    #[schemars(regex(pattern = SIZE))]
    pub max_bytes: String,
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,
    /// Cannot change once the stream exists (JetStream refuses it).
    #[serde(default)]
    pub storage: Storage,
}

fn default_stream_age() -> String {
    "168h".into()
}
fn default_stream_messages() -> i64 {
    1_000_000
}
fn default_stream_bytes() -> String {
    "1Gi".into()
}
fn default_replicas() -> i32 {
    1
}
fn enabled() -> bool {
    true
}

impl Default for StreamSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            max_age: default_stream_age(),
            max_messages: default_stream_messages(),
            max_bytes: default_stream_bytes(),
            replicas: default_replicas(),
            storage: Storage::File,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

/// Access rules. `owner`: the caller's user id is the channel's last token (`inbox.<userid>`);
/// `users`: the ids listed in `publishUsers` / `subscribeUsers`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.publish != 'users' || size(self.publishUsers) > 0").message("access.publish is 'users': list them in access.publishUsers"))]
#[x_kube(validation = Rule::new("self.subscribe != 'users' || size(self.subscribeUsers) > 0").message("access.subscribe is 'users': list them in access.subscribeUsers"))]
pub struct AccessSpec {
    #[serde(default)]
    pub publish: AccessRule,
    #[serde(default)]
    pub publish_users: Vec<String>,
    #[serde(default)]
    pub subscribe: AccessRule,
    #[serde(default)]
    pub subscribe_users: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AccessRule {
    #[default]
    Authenticated,
    Owner,
    Users,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest message text in bytes.
    #[serde(default = "default_max_message_bytes")]
    #[schemars(range(min = 1, max = 1_048_576))]
    pub max_message_bytes: i32,
    /// Per user, on each relay replica, shared by the channel and its sub-channels; 0 for no limit.
    #[serde(default = "default_rate")]
    #[schemars(range(min = 0, max = 100_000))]
    pub publish_per_second_per_user: i32,
    /// Allow ephemeral publishes: delivered to the streams open at that moment, never stored, no
    /// seq (typing indicators, cursors). Refused with PERMISSION_DENIED otherwise.
    #[serde(default)]
    pub allow_ephemeral: bool,
    /// Ephemeral publishes per user, on each relay replica, shared by the channel and its
    /// sub-channels; 0 for no limit.
    #[serde(default = "default_ephemeral_rate")]
    #[schemars(range(min = 0, max = 100_000))]
    pub ephemeral_per_second_per_user: i32,
}

fn default_max_message_bytes() -> i32 {
    4096
}
fn default_rate() -> i32 {
    20
}
fn default_ephemeral_rate() -> i32 {
    10
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_message_bytes: default_max_message_bytes(),
            publish_per_second_per_user: default_rate(),
            allow_ephemeral: false,
            ephemeral_per_second_per_user: default_ephemeral_rate(),
        }
    }
}

/// Presence lives in Redis under the channel's hash tag: one entry per open Subscribe stream,
/// refreshed by its relay before `ttl` runs out. A stream that ends counts a few seconds longer, so
/// that a reconnect (to any replica) is not a leave and a join.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.joinLeave || self.enabled").message("presence.joinLeave needs presence.enabled"))]
pub struct PresenceSpec {
    /// Count who is subscribed (Presence and PresenceStats answer; otherwise FAILED_PRECONDITION).
    #[serde(default)]
    pub enabled: bool,
    /// Send Join and Leave events on Subscribe streams, once per user.
    #[serde(default)]
    pub join_leave: bool,
    /// How long a stream's entry lives without a refresh, e.g. 60s (5s to 1h): how long the members
    /// of a relay that died stay listed. Relays refresh every third of it.
    #[serde(default = "default_presence_ttl")]
    #[schemars(regex(pattern = DURATION))]
    pub ttl: String,
}

fn default_presence_ttl() -> String {
    "60s".into()
}

impl Default for PresenceSpec {
    fn default() -> Self {
        Self { enabled: false, join_leave: false, ttl: default_presence_ttl() }
    }
}

/// Queue delivery is at least once: a message counts as delivered when a subscriber acks it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// How long a subscriber may hold a message unacked before it is delivered again (to it or to
    /// another subscriber), e.g. 30s.
    #[serde(default = "default_ack_wait")]
    #[schemars(regex(pattern = DURATION))]
    pub ack_wait: String,
    /// Unacked messages one stream may hold; it receives more as it acks.
    #[serde(default = "default_max_unacked")]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_unacked_per_stream: i32,
}

fn default_ack_wait() -> String {
    "30s".into()
}
fn default_max_unacked() -> i32 {
    16
}

impl Default for QueueSpec {
    fn default() -> Self {
        Self { ack_wait: default_ack_wait(), max_unacked_per_stream: default_max_unacked() }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
}

/// What the operator last saw and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayChannelStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    pub name: String,
    pub messages: i64,
    pub bytes: i64,
    pub last_seq: i64,
    /// Copies JetStream keeps (the spec's `replicas`, as the stream has it).
    #[serde(default)]
    pub replicas: i32,
    /// The NATS server leading the stream's replica group (on a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The servers holding a copy, leader first; a `(behind)` or `(offline)` mark on one that is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<String>,
}
