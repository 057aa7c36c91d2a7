//! Pure planning: `RelayChannel` spec -> desired JetStream stream, queue consumer and Redis
//! settings; desired vs observed -> one action each. No I/O here, so every rule is table-tested.

use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use relay_channel::{ChannelSettings, names};

use crate::crd::{self, RelayChannelSpec};

/// The durable consumer that `queue` delivery reads from.
pub const QUEUE_CONSUMER: &str = "relay-queue";

/// A spec the operator cannot turn into backend state (the schema catches most of these first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {value:?} is not a duration like 30s, 15m or 24h")]
    Duration { field: &'static str, value: String },
    #[error("{field}: {value:?} is not a size like 512Mi or 1Gi")]
    Size { field: &'static str, value: String },
    #[error("the name {0:?} is not a channel id: {1}")]
    Name(String, relay_channel::InvalidChannelId),
}

/// Everything the backends should hold for one `RelayChannel`.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub stream: stream::Config,
    pub queue_consumer: Option<consumer::pull::Config>,
    pub settings: ChannelSettings,
}

/// Maps a spec to backend state.
pub fn desired(name: &str, spec: &RelayChannelSpec) -> Result<Desired, SpecError> {
    relay_channel::ChannelId::parse(name).map_err(|e| SpecError::Name(name.to_owned(), e))?;
    let stream_name = names::stream_name(name);
    let subject = names::subject(name);
    let stream = stream::Config {
        name: stream_name.clone(),
        subjects: vec![subject.clone(), format!("{subject}.>")],
        max_age: duration("stream.maxAge", &spec.stream.max_age)?,
        max_messages: spec.stream.max_messages,
        max_bytes: size("stream.maxBytes", &spec.stream.max_bytes)?,
        num_replicas: spec.stream.replicas as usize,
        storage: match spec.stream.storage {
            crd::Storage::File => stream::StorageType::File,
            crd::Storage::Memory => stream::StorageType::Memory,
        },
        // Relays set Nats-Msg-Id: a retried publish inside this window is stored once.
        duplicate_window: Duration::from_secs(120),
        description: Some(format!("Relay channel {name} (managed by the relay operator)")),
        ..Default::default()
    };
    let ack_wait = duration("queue.ackWait", &spec.queue.ack_wait)?.max(Duration::from_secs(1));
    let queue_consumer = (spec.delivery == crd::Delivery::Queue).then(|| consumer::pull::Config {
        durable_name: Some(QUEUE_CONSUMER.to_owned()),
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
            max_messages: spec.history.max_messages,
            max_age_secs: duration("history.maxAge", &spec.history.max_age)?.as_secs(),
        },
        access: relay_channel::Access {
            publish: rule(spec.access.publish, &spec.access.publish_users),
            subscribe: rule(spec.access.subscribe, &spec.access.subscribe_users),
        },
        limits: relay_channel::Limits {
            max_message_bytes: spec.limits.max_message_bytes,
            publish_per_second_per_user: spec.limits.publish_per_second_per_user,
        },
        queue: relay_channel::QueueSettings {
            ack_wait_secs: ack_wait.as_secs(),
            max_unacked_per_stream: spec.queue.max_unacked_per_stream,
        },
        stream: Some(stream_name),
        queue_consumer: queue_consumer.as_ref().and(Some(QUEUE_CONSUMER.to_owned())),
        owner: None,
    };
    Ok(Desired { stream, queue_consumer, settings })
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

    #[test]
    fn spec_maps_to_stream_consumer_and_settings() {
        let mut spec: RelayChannelSpec = serde_json::from_str("{}").unwrap();
        let d = desired("chat", &spec).unwrap();
        assert_eq!(d.stream.name, "RELAY_chat");
        assert_eq!(d.stream.subjects, ["events.chat", "events.chat.>"]);
        assert_eq!(d.stream.max_age, Duration::from_secs(168 * 3600));
        assert_eq!(d.stream.max_bytes, 1 << 30);
        assert_eq!(d.stream.max_messages, 1_000_000);
        assert_eq!(d.queue_consumer, None);
        assert_eq!(d.settings.stream.as_deref(), Some("RELAY_chat"));
        assert_eq!(d.settings.history.max_age_secs, 86400);
        assert_eq!(d.settings, ChannelSettings { stream: Some("RELAY_chat".into()), ..Default::default() });

        spec.delivery = Delivery::Queue;
        spec.access.publish = AccessRule::Users;
        spec.access.publish_users = vec!["svc".into()];
        spec.access.subscribe = AccessRule::Owner;
        spec.stream.storage = Storage::Memory;
        let d = desired("jobs.eu", &spec).unwrap();
        assert_eq!(d.stream.name, "RELAY_jobs_eu");
        assert_eq!(d.stream.storage, stream::StorageType::Memory);
        let c = d.queue_consumer.unwrap();
        assert_eq!((c.durable_name.as_deref(), c.filter_subject.as_str()), (Some(QUEUE_CONSUMER), "events.jobs.eu"));
        assert_eq!(d.settings.delivery, relay_channel::Delivery::Queue);
        assert_eq!(d.settings.queue_consumer.as_deref(), Some(QUEUE_CONSUMER));
        assert_eq!(d.settings.access.publish, relay_channel::AccessRule::Users(vec!["svc".into()]));
        assert_eq!(d.settings.access.subscribe, relay_channel::AccessRule::Owner);

        spec.history.max_age = "soon".into();
        assert!(matches!(desired("x", &spec), Err(SpecError::Duration { field: "history.maxAge", .. })));
    }

    #[test]
    fn stream_plans() {
        let spec: RelayChannelSpec = serde_json::from_str("{}").unwrap();
        let want = desired("chat", &spec).unwrap().stream;
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
        let mut spec: RelayChannelSpec = serde_json::from_str(r#"{"delivery":"queue"}"#).unwrap();
        let want = desired("jobs", &spec).unwrap().queue_consumer.unwrap();
        let as_observed = |c: &consumer::pull::Config| consumer::IntoConsumerConfig::into_consumer_config(c.clone());
        let mut slower = want.clone();
        slower.ack_wait = Duration::from_secs(1);
        let (slower, observed_want) = (as_observed(&slower), as_observed(&want));
        assert_eq!(plan_consumer(Some(&want), None), ConsumerAction::Create);
        assert_eq!(plan_consumer(Some(&want), Some(&observed_want)), ConsumerAction::Keep);
        assert_eq!(plan_consumer(Some(&want), Some(&slower)), ConsumerAction::Update);
        spec.delivery = Delivery::Broadcast;
        assert_eq!(
            plan_consumer(desired("jobs", &spec).unwrap().queue_consumer.as_ref(), Some(&observed_want)),
            ConsumerAction::Delete
        );
        assert_eq!(plan_consumer(None, None), ConsumerAction::None);
    }
}
