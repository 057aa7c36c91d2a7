//! Pure planning: `RelayChannel` spec -> desired JetStream stream, queue consumer and Redis
//! settings; desired vs observed -> one action each. No I/O here, so every rule is table-tested.

use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use relay_channel::{ChannelSettings, names};

use crate::crd::{self, RelayChannelSpec, StreamSpec};

/// How long JetStream remembers message ids to drop a retried publish (shortened to the stream's
/// `maxAge` when that is shorter: JetStream refuses a window longer than the age).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A spec the operator cannot turn into backend state (the schema catches most of these first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {value:?} is not a duration like 30s, 15m or 24h")]
    Duration { field: &'static str, value: String },
    #[error("{field}: {value:?} is not a size like 512Mi or 1Gi")]
    Size { field: &'static str, value: String },
    #[error("{field}: {value:?} is outside {range}")]
    Range { field: &'static str, value: String, range: String },
    #[error("the name {0:?} is not a channel id: {1}")]
    Name(String, relay_channel::InvalidChannelId),
    /// A nested declaration asks for stream settings its tree's stream does not have.
    #[error(
        "spec.stream differs from that of {leader}, which sets the stream of every channel under {root} \
         ({stream}): remove spec.stream from this RelayChannel (it then inherits it) or make it match {leader}'s"
    )]
    StreamMismatch { leader: String, root: String, stream: String },
    /// The tree's stream is asked to go while a declaration in the tree uses queue delivery.
    #[error(
        "spec.stream.enabled is false, but {queue} uses queue delivery, which needs the stream of every channel \
         under {root}: the stream stays until no declaration under {root} uses queue delivery"
    )]
    StreamNeeded { queue: String, root: String },
}

impl SpecError {
    /// The Ready condition's reason for this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            SpecError::StreamMismatch { .. } | SpecError::StreamNeeded { .. } => "Unsupported",
            _ => "InvalidSpec",
        }
    }
}

/// A `RelayChannel` as planning sees it: the one that owns its name (see
/// [`crate::reconcile::declared`]).
#[derive(Debug, Clone)]
pub struct Declared<'a> {
    /// Its name: the channel it governs (and the sub-channels no deeper declaration takes).
    pub name: &'a str,
    /// `<namespace>/<name>`.
    pub owner: String,
    pub spec: &'a RelayChannelSpec,
}

/// The declaration whose stream spec is its tree's: the shallowest one under the top-level name
/// (then the first by name and owner), so the answer does not depend on the order they came in.
pub fn leader<'a, 'b>(root: &str, declared: &'b [Declared<'a>]) -> Option<&'b Declared<'a>> {
    declared
        .iter()
        .filter(|d| names::root(d.name) == root)
        .min_by(|a, b| (depth(a.name), a.name, &a.owner).cmp(&(depth(b.name), b.name, &b.owner)))
}

fn depth(name: &str) -> usize {
    name.matches('.').count()
}

/// The declaration among `declared` that governs `channel`: the longest declared prefix.
pub fn governing<'a, 'b>(channel: &str, declared: &'b [Declared<'a>]) -> Option<&'b Declared<'a>> {
    relay_channel::ChannelId::parse(channel)
        .ok()?
        .governing_candidates()
        .find_map(|c| declared.iter().find(|d| d.name == c))
}

/// Everything the backends should hold for one `RelayChannel`.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The name of the channel's tree's stream (shared with every declaration under the same
    /// top-level name).
    pub stream_name: String,
    /// Its configuration; None when the tree goes without one (`spec.stream.enabled: false`).
    pub stream: Option<stream::Config>,
    /// Whether a declaration of the tree sets the stream's limits. When none does, an existing
    /// stream keeps the limits it has: a leader going away must not shrink them (and trim messages).
    pub stream_explicit: bool,
    pub queue_consumer: Option<consumer::pull::Config>,
    pub settings: ChannelSettings,
    /// A declaration of the tree has `deletionPolicy: Retain`: a stream turned off is not deleted.
    pub retain: bool,
}

/// Maps a spec to backend state; `declared` is every RelayChannel (any namespace), itself included,
/// for the tree's stream.
pub fn desired(name: &str, spec: &RelayChannelSpec, declared: &[Declared]) -> Result<Desired, SpecError> {
    relay_channel::ChannelId::parse(name).map_err(|e| SpecError::Name(name.to_owned(), e))?;
    let root = names::root(name);
    let own = spec.stream.clone();
    let stream_explicit =
        own.is_some() || declared.iter().any(|d| names::root(d.name) == root && d.spec.stream.is_some());
    // The shallowest declaration that sets the stream leads it (one that leaves it out inherits).
    let explicit: Vec<Declared> = declared.iter().filter(|d| d.spec.stream.is_some()).cloned().collect();
    let (leader_name, leader_stream) = match leader(root, &explicit) {
        Some(l) => (l.name.to_owned(), l.spec.stream.clone().unwrap_or_default()),
        None => (name.to_owned(), own.clone().unwrap_or_default()),
    };
    if let Some(own) = &own
        && *own != leader_stream
    {
        return Err(SpecError::StreamMismatch {
            leader: leader_name,
            root: root.to_owned(),
            stream: names::stream_name(root),
        });
    }
    let in_tree = |d: &&Declared| names::root(d.name) == root;
    // Queue delivery rests on the tree's stream: while a declaration uses it, the stream stays, and
    // the one that asks for it to go is refused.
    let queue = (spec.delivery == crd::Delivery::Queue)
        .then_some(name)
        .or_else(|| declared.iter().filter(in_tree).find(|d| d.spec.delivery == crd::Delivery::Queue).map(|d| d.name));
    if let (Some(queue), Some(own)) = (queue, &own)
        && !own.enabled
    {
        return Err(SpecError::StreamNeeded { queue: queue.to_owned(), root: root.to_owned() });
    }
    let enabled = leader_stream.enabled || queue.is_some();
    let stream = if enabled { Some(tree_stream(root, &leader_stream)?) } else { None };
    let subject = names::subject(name);
    let ack_wait = duration("queue.ackWait", &spec.queue.ack_wait)?.max(Duration::from_secs(1));
    let queue_consumer = (spec.delivery == crd::Delivery::Queue).then(|| consumer::pull::Config {
        durable_name: Some(names::queue_consumer(name)),
        description: Some(format!("queue delivery of {name}")),
        filter_subject: subject.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending: 10_000,
        ..Default::default()
    });
    let rule = |r: crd::AccessRule, users: &[String]| match r {
        crd::AccessRule::Authenticated => relay_channel::AccessRule::Authenticated,
        crd::AccessRule::Owner => relay_channel::AccessRule::Owner,
        crd::AccessRule::Users => relay_channel::AccessRule::Users(users.to_vec()),
    };
    let settings = ChannelSettings {
        delivery: match spec.delivery {
            crd::Delivery::Broadcast => relay_channel::Delivery::Broadcast,
            crd::Delivery::PerUser => relay_channel::Delivery::PerUser,
            crd::Delivery::Queue => relay_channel::Delivery::Queue,
        },
        history: relay_channel::HistorySettings {
            max_messages: spec.history.max_messages.max(1) as u64,
            max_age_secs: whole_seconds(duration("history.maxAge", &spec.history.max_age)?),
        },
        access: relay_channel::Access {
            publish: rule(spec.access.publish, &spec.access.publish_users),
            subscribe: rule(spec.access.subscribe, &spec.access.subscribe_users),
        },
        limits: relay_channel::Limits {
            max_message_bytes: spec.limits.max_message_bytes.max(1) as u32,
            publish_per_second_per_user: spec.limits.publish_per_second_per_user.max(0) as u32,
            allow_ephemeral: spec.limits.allow_ephemeral,
            ephemeral_per_second_per_user: spec.limits.ephemeral_per_second_per_user.max(0) as u32,
        },
        presence: relay_channel::PresenceSettings {
            enabled: spec.presence.enabled,
            join_leave: spec.presence.join_leave && spec.presence.enabled,
            ttl_secs: presence_ttl(&spec.presence.ttl)?,
        },
        queue: relay_channel::QueueSettings {
            ack_wait_secs: ack_wait.as_secs(),
            max_unacked_per_stream: spec.queue.max_unacked_per_stream.max(1) as u32,
        },
        stream: stream.as_ref().map(|s| s.name.clone()),
        queue_consumer: queue_consumer.as_ref().and_then(|c| c.durable_name.clone()),
        owner: None,
        not_ready: None,
    };
    Ok(Desired {
        stream_name: names::stream_name(root),
        stream,
        stream_explicit,
        queue_consumer,
        settings,
        retain: spec.deletion_policy == crd::DeletionPolicy::Retain
            || declared.iter().filter(in_tree).any(|d| d.spec.deletion_policy == crd::DeletionPolicy::Retain),
    })
}

/// Presence entries live 5 s to an hour: shorter would cost a refresh every second or two per
/// stream, longer would list the members of a dead relay for over an hour.
const PRESENCE_TTL: std::ops::RangeInclusive<u64> = 5..=3600;

fn presence_ttl(raw: &str) -> Result<u64, SpecError> {
    let secs = whole_seconds(duration("presence.ttl", raw)?);
    if !PRESENCE_TTL.contains(&secs) {
        return Err(SpecError::Range {
            field: "presence.ttl",
            value: raw.to_owned(),
            range: format!("{}s to {}s", PRESENCE_TTL.start(), PRESENCE_TTL.end()),
        });
    }
    Ok(secs)
}

/// The stream of the tree under `root`: every channel under it, with the leader's limits.
pub fn tree_stream(root: &str, spec: &StreamSpec) -> Result<stream::Config, SpecError> {
    let subject = names::subject(root);
    let max_age = Duration::from_secs(whole_seconds(duration("stream.maxAge", &spec.max_age)?));
    Ok(stream::Config {
        name: names::stream_name(root),
        subjects: vec![subject.clone(), format!("{subject}.>")],
        max_age,
        // JetStream stores "no limit" as -1.
        max_messages: if spec.max_messages <= 0 { -1 } else { spec.max_messages },
        // JetStream stores "no limit" as -1: 0 is written that way, or every pass would update it.
        max_bytes: match size("stream.maxBytes", &spec.max_bytes)? {
            0 => -1,
            n => n,
        },
        num_replicas: spec.replicas.max(1) as usize,
        storage: match spec.storage {
            crd::Storage::File => stream::StorageType::File,
            crd::Storage::Memory => stream::StorageType::Memory,
        },
        // Relays set Nats-Msg-Id: a retried publish inside this window is stored once.
        duplicate_window: if max_age.is_zero() { DUPLICATE_WINDOW } else { DUPLICATE_WINDOW.min(max_age) },
        description: Some(format!("Relay channels under {root} (managed by the relay operator)")),
        ..Default::default()
    })
}

/// Seconds, a part of a second counting as a whole one (so `500ms` is not "no limit").
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// What to do with the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAction {
    Create,
    Update,
    Keep,
    /// A change JetStream cannot make in place: the stream is left as it is.
    Blocked(String),
}

/// Compares the fields the operator owns; other fields (set by JetStream) are ignored.
pub fn plan_stream(desired: &stream::Config, observed: Option<&stream::Config>) -> StreamAction {
    let Some(o) = observed else { return StreamAction::Create };
    if o.storage != desired.storage {
        return StreamAction::Blocked(format!(
            "stream {} uses {:?} storage and the spec asks for {:?}; JetStream cannot change storage in place \
             (recreate the RelayChannel to change it)",
            o.name, o.storage, desired.storage
        ));
    }
    let same = o.subjects == desired.subjects
        && o.max_age == desired.max_age
        && o.max_messages == desired.max_messages
        && o.max_bytes == desired.max_bytes
        && o.num_replicas == desired.num_replicas
        && o.duplicate_window == desired.duplicate_window;
    if same { StreamAction::Keep } else { StreamAction::Update }
}

/// What to do with the queue consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerAction {
    Create,
    Update,
    Keep,
    Delete,
    None,
}

pub fn plan_consumer(desired: Option<&consumer::pull::Config>, observed: Option<&consumer::Config>) -> ConsumerAction {
    match (desired, observed) {
        (None, None) => ConsumerAction::None,
        (None, Some(_)) => ConsumerAction::Delete,
        (Some(_), None) => ConsumerAction::Create,
        (Some(d), Some(o)) => {
            let same = o.filter_subject == d.filter_subject
                && o.ack_wait == d.ack_wait
                && o.max_ack_pending == d.max_ack_pending
                && o.ack_policy == d.ack_policy;
            if same { ConsumerAction::Keep } else { ConsumerAction::Update }
        }
    }
}

/// Parses `30s`, `15m`, `24h`, `250ms`, or a bare number of seconds.
pub fn duration(field: &'static str, raw: &str) -> Result<Duration, SpecError> {
    relay_channel::duration::parse(raw).map_err(|_| SpecError::Duration { field, value: raw.to_owned() })
}

/// Parses `512Mi`, `1Gi`, `10G`, a bare number of bytes, or `-1` (no limit).
pub fn size(field: &'static str, raw: &str) -> Result<i64, SpecError> {
    let err = || SpecError::Size { field, value: raw.to_owned() };
    if raw == "-1" {
        return Ok(-1);
    }
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (num, unit) = raw.split_at(split);
    let n: i64 = num.parse().map_err(|_| err())?;
    let mult: i64 = match unit {
        "" => 1,
        "K" => 1000,
        "M" => 1000_i64.pow(2),
        "G" => 1000_i64.pow(3),
        "T" => 1000_i64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::*;

    #[test]
    fn durations_and_sizes() {
        let d: &[(&str, Option<u64>)] = &[
            ("24h", Some(86400)),
            ("15m", Some(900)),
            ("30s", Some(30)),
            ("30", Some(30)),
            ("0", Some(0)),
            ("1d", None),
            ("", None),
            ("h", None),
        ];
        for (raw, want) in d {
            assert_eq!(duration("f", raw).ok().map(|d| d.as_secs()), *want, "{raw}");
        }
        let s: &[(&str, Option<i64>)] = &[
            ("1Gi", Some(1 << 30)),
            ("512Mi", Some(512 << 20)),
            ("10G", Some(10_000_000_000)),
            ("4096", Some(4096)),
            ("-1", Some(-1)),
            ("1Pi", None),
            ("-5", None),
            ("99999999999Ti", None),
        ];
        for (raw, want) in s {
            assert_eq!(size("f", raw).ok(), *want, "{raw}");
        }
    }

    fn spec(json: serde_json::Value) -> RelayChannelSpec {
        serde_json::from_value(json).unwrap()
    }

    fn alone(name: &str, spec: &RelayChannelSpec) -> Result<Desired, SpecError> {
        desired(name, spec, &[Declared { name, owner: format!("ns/{name}"), spec }])
    }

    #[test]
    fn spec_maps_to_stream_consumer_and_settings() {
        let mut spec = spec(serde_json::json!({}));
        let d = alone("chat", &spec).unwrap();
        assert_eq!(d.stream.as_ref().unwrap().name, "RELAY_chat");
        assert_eq!(d.stream.as_ref().unwrap().subjects, ["events.chat", "events.chat.>"]);
        assert_eq!(d.stream.as_ref().unwrap().max_age, Duration::from_secs(168 * 3600));
        assert_eq!(d.stream.as_ref().unwrap().max_bytes, 1 << 30);
        assert_eq!(d.stream.as_ref().unwrap().max_messages, 1_000_000);
        assert_eq!(d.stream.as_ref().unwrap().duplicate_window, DUPLICATE_WINDOW);
        assert_eq!(d.queue_consumer, None);
        assert_eq!(d.settings.history.max_age_secs, 86400);
        assert_eq!(d.settings, ChannelSettings { stream: Some("RELAY_chat".into()), ..Default::default() });

        spec.delivery = Delivery::Queue;
        spec.access.publish = AccessRule::Users;
        spec.access.publish_users = vec!["svc".into()];
        spec.access.subscribe = AccessRule::Owner;
        spec.stream = Some(StreamSpec { storage: Storage::Memory, ..Default::default() });
        let d = alone("jobs", &spec).unwrap();
        assert_eq!(d.stream.as_ref().unwrap().storage, stream::StorageType::Memory);
        let c = d.queue_consumer.unwrap();
        assert_eq!((c.durable_name.as_deref(), c.filter_subject.as_str()), (Some("relay-queue"), "events.jobs"));
        assert_eq!(d.settings.delivery, relay_channel::Delivery::Queue);
        assert_eq!(d.settings.queue_consumer.as_deref(), Some("relay-queue"));
        assert_eq!(d.settings.access.publish, relay_channel::AccessRule::Users(vec!["svc".into()]));
        assert_eq!(d.settings.access.subscribe, relay_channel::AccessRule::Owner);

        spec.history.max_age = "soon".into();
        assert!(matches!(alone("x", &spec), Err(SpecError::Duration { field: "history.maxAge", .. })));
    }

    #[test]
    fn presence_and_ephemeral_settings() {
        let d = alone("chat", &spec(serde_json::json!({}))).unwrap();
        assert_eq!(d.settings.presence, relay_channel::PresenceSettings::default());
        assert!(!d.settings.limits.allow_ephemeral);
        let s = spec(serde_json::json!({
            "presence": {"enabled": true, "joinLeave": true, "ttl": "30s"},
            "limits": {"allowEphemeral": true, "ephemeralPerSecondPerUser": 3},
        }));
        let d = alone("chat", &s).unwrap();
        let want = relay_channel::PresenceSettings { enabled: true, join_leave: true, ttl_secs: 30 };
        assert_eq!(d.settings.presence, want);
        assert!(d.settings.limits.allow_ephemeral);
        assert_eq!(d.settings.limits.ephemeral_per_second_per_user, 3);
        // joinLeave without enabled (the schema refuses it too) means nothing.
        let s = spec(serde_json::json!({"presence": {"joinLeave": true}}));
        assert!(!alone("chat", &s).unwrap().settings.presence.join_leave);
        for (ttl, ok) in [("1s", false), ("5s", true), ("1h", true), ("2h", false), ("soon", false)] {
            let s = spec(serde_json::json!({"presence": {"enabled": true, "ttl": ttl}}));
            let d = alone("chat", &s);
            assert_eq!(d.is_ok(), ok, "{ttl}: {d:?}");
            if let Err(e) = d {
                assert_eq!(e.reason(), "InvalidSpec");
                assert!(e.to_string().contains("presence.ttl"), "{e}");
            }
        }
    }

    #[test]
    fn short_and_odd_limits_become_what_jetstream_takes() {
        let s = spec(serde_json::json!({
            "history": {"maxAge": "500ms"},
            "stream": {"maxAge": "1m", "maxMessages": 0},
        }));
        let d = alone("fast", &s).unwrap();
        assert_eq!(d.settings.history.max_age_secs, 1, "under a second is one second, not 'forever'");
        assert_eq!(d.stream.as_ref().unwrap().max_age, Duration::from_secs(60));
        assert_eq!(d.stream.as_ref().unwrap().duplicate_window, Duration::from_secs(60), "never longer than maxAge");
        assert_eq!(
            d.stream.as_ref().unwrap().max_messages,
            -1,
            "0 is stored as JetStream stores it, so no update loop"
        );
        let zero_bytes = alone("z", &spec(serde_json::json!({"stream": {"maxBytes": "0Gi"}}))).unwrap();
        assert_eq!(zero_bytes.stream.as_ref().unwrap().max_bytes, -1);
        let forever = alone("keep", &spec(serde_json::json!({"stream": {"maxAge": "0"}}))).unwrap();
        assert_eq!(forever.stream.as_ref().unwrap().duplicate_window, DUPLICATE_WINDOW);
    }

    #[test]
    fn nested_declarations_share_their_trees_stream_and_keep_their_own_rules() {
        let room = spec(serde_json::json!({"stream": {"maxAge": "24h"}}));
        let vip = spec(
            serde_json::json!({"access": {"publish": "users", "publishUsers": ["vip-admin"]}, "delivery": "queue"}),
        );
        let all = [
            Declared { name: "room.vip", owner: "b/room.vip".into(), spec: &vip },
            Declared { name: "room", owner: "a/room".into(), spec: &room },
        ];
        assert_eq!(leader("room", &all).unwrap().name, "room", "the shallowest leads, whatever the order");
        let d = desired("room.vip", &vip, &all).unwrap();
        assert_eq!(d.stream.as_ref().unwrap().name, "RELAY_room");
        assert_eq!(d.stream.as_ref().unwrap().subjects, ["events.room", "events.room.>"]);
        assert_eq!(d.stream.as_ref().unwrap().max_age, Duration::from_secs(86400), "the leader's stream settings");
        assert_eq!(d.settings.access.publish, relay_channel::AccessRule::Users(vec!["vip-admin".into()]));
        let c = d.queue_consumer.unwrap();
        assert_eq!(c.filter_subject, "events.room.vip");
        assert_eq!(c.durable_name.as_deref(), Some(relay_channel::names::queue_consumer("room.vip").as_str()));
        assert_eq!(desired("room", &room, &all).unwrap().stream, d.stream, "one stream for the tree");
        // A nested declaration that asks for another stream is refused, naming whom to change.
        let odd = spec(serde_json::json!({"stream": {"maxAge": "1h"}}));
        let with_odd = [Declared { name: "room.odd", owner: "c/room.odd".into(), spec: &odd }, all[1].clone()];
        let e = desired("room.odd", &odd, &with_odd).unwrap_err();
        assert_eq!(e.reason(), "Unsupported");
        assert!(e.to_string().contains("room") && e.to_string().contains("RELAY_room"), "{e}");
        assert_eq!(governing("room.vip.x", &all).unwrap().name, "room.vip");
        assert_eq!(governing("room.x", &all).unwrap().name, "room");
        assert!(governing("other", &all).is_none());
    }

    #[test]
    fn a_tree_can_go_without_a_stream_unless_queue_delivery_needs_it() {
        let off = spec(serde_json::json!({"stream": {"enabled": false}}));
        let d = alone("feed", &off).unwrap();
        assert!(d.stream.is_none() && d.settings.stream.is_none(), "no stream, and relays publish without one");
        assert_eq!((d.stream_name.as_str(), d.retain), ("RELAY_feed", false), "named, to remove an old one");
        // A nested declaration inherits it; one with Retain keeps the tree's stream from deletion.
        let plain = spec(serde_json::json!({}));
        let retained = spec(serde_json::json!({"deletionPolicy": "Retain"}));
        let tree = [
            Declared { name: "feed", owner: "a/feed".into(), spec: &off },
            Declared { name: "feed.news", owner: "a/feed.news".into(), spec: &retained },
        ];
        let news = desired("feed.news", &retained, &tree).unwrap();
        assert!(news.settings.stream.is_none());
        assert!(news.retain && desired("feed", &off, &tree).unwrap().retain, "Retain anywhere in the tree");
        // Queue delivery in the tree: the stream stays for everyone, and the declaration that asks
        // for it to go is refused, naming the one that needs it.
        let queue = spec(serde_json::json!({"delivery": "queue"}));
        let tree = [
            Declared { name: "feed", owner: "a/feed".into(), spec: &off },
            Declared { name: "feed.news", owner: "a/feed.news".into(), spec: &plain },
            Declared { name: "feed.jobs", owner: "a/feed.jobs".into(), spec: &queue },
        ];
        let e = desired("feed", &off, &tree).unwrap_err();
        assert_eq!(e.reason(), "Unsupported");
        assert!(e.to_string().contains("feed.jobs uses queue delivery"), "{e}");
        assert!(desired("feed.news", &plain, &tree).unwrap().settings.stream.is_some());
        assert!(desired("feed.jobs", &queue, &tree).unwrap().queue_consumer.is_some());
        // On by default.
        assert!(alone("feed", &plain).unwrap().settings.stream.is_some());
    }

    #[test]
    fn stream_plans() {
        let want = alone("chat", &spec(serde_json::json!({}))).unwrap().stream.unwrap();
        let mut changed = want.clone();
        changed.max_messages = 5;
        let mut other_storage = want.clone();
        other_storage.storage = stream::StorageType::Memory;
        let mut jetstream_defaults = want.clone();
        jetstream_defaults.first_sequence = Some(1);
        let table: &[(Option<&stream::Config>, StreamAction)] = &[
            (None, StreamAction::Create),
            (Some(&want), StreamAction::Keep),
            (Some(&jetstream_defaults), StreamAction::Keep),
            (Some(&changed), StreamAction::Update),
        ];
        for (observed, action) in table {
            assert_eq!(plan_stream(&want, *observed), *action);
        }
        assert!(matches!(plan_stream(&want, Some(&other_storage)), StreamAction::Blocked(m) if m.contains("storage")));
    }

    #[test]
    fn consumer_plans() {
        let mut spec = spec(serde_json::json!({"delivery": "queue"}));
        let want = alone("jobs", &spec).unwrap().queue_consumer.unwrap();
        let as_observed = |c: &consumer::pull::Config| consumer::IntoConsumerConfig::into_consumer_config(c.clone());
        let mut slower = want.clone();
        slower.ack_wait = Duration::from_secs(1);
        let (slower, observed_want) = (as_observed(&slower), as_observed(&want));
        assert_eq!(plan_consumer(Some(&want), None), ConsumerAction::Create);
        assert_eq!(plan_consumer(Some(&want), Some(&observed_want)), ConsumerAction::Keep);
        assert_eq!(plan_consumer(Some(&want), Some(&slower)), ConsumerAction::Update);
        spec.delivery = Delivery::Broadcast;
        assert_eq!(
            plan_consumer(alone("jobs", &spec).unwrap().queue_consumer.as_ref(), Some(&observed_want)),
            ConsumerAction::Delete
        );
        assert_eq!(plan_consumer(None, None), ConsumerAction::None);
    }
}
