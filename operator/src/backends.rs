//! The effects: make NATS JetStream and Redis match a [`Desired`] state, read back what is there,
//! and clean up. Each call is idempotent; "not found" while deleting is success.
//!
//! A declaration's settings are written before anything else, marked not in force, so relays
//! refuse its channel rather than serve it under a parent's rules while its stream is made; they
//! are marked in force once everything is in place. A refusal that retrying cannot fix (a spec
//! JetStream will not take) leaves them marked with its reason. The settings each declaration
//! should have are remembered, so [`crate::watch`] can tell at once when Redis lost or changed
//! them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, consumer, context, stream};
use futures::StreamExt;
use redis::AsyncCommands;
use relay_channel::{ChannelSettings, names};
use relay_connect::redis::Conn;
use tokio::sync::broadcast;

use crate::crd::StreamStatus;
use crate::plan::{self, ConsumerAction, Declared, Desired, StreamAction};

/// A backend failed or refused.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// NATS is unreachable or failed: retried with backoff.
    #[error("nats: {0}")]
    Nats(String),
    /// Redis is unreachable or failed: retried with backoff.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// JetStream refused the spec for good (`reason` is the Ready reason): retried slowly.
    #[error("{message}")]
    Refused { reason: &'static str, message: String },
}

fn nats(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Nats(format!("{what}: {e}"))
}

/// What JetStream's refusal of a stream or consumer means: an outage, or a spec to change.
fn classify(what: &str, code: Option<jetstream::ErrorCode>, e: impl std::fmt::Display) -> BackendError {
    let refused = |reason, hint: &str| BackendError::Refused { reason, message: format!("{what}: {e} ({hint})") };
    match code {
        Some(jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP) => {
            refused("Conflict", "another stream already captures these subjects; remove it or this RelayChannel")
        }
        Some(jetstream::ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED) => {
            refused("Unsupported", "this NATS is not clustered: set stream.replicas to 1")
        }
        Some(jetstream::ErrorCode::STREAM_INVALID_CONFIG) => {
            refused("Unsupported", "JetStream refuses this stream configuration")
        }
        Some(
            jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED
            | jetstream::ErrorCode::MEMORY_RESOURCES_EXCEEDED
            | jetstream::ErrorCode::INSUFFICIENT_RESOURCES
            | jetstream::ErrorCode::ACCOUNT_RESOURCES_EXCEEDED,
        ) => {
            refused("Unsupported", "JetStream has no room for it: lower stream.maxBytes or give JetStream more storage")
        }
        Some(jetstream::ErrorCode::CLUSTER_NO_PEERS) => {
            refused("Unsupported", "the NATS cluster has fewer servers than stream.replicas asks for")
        }
        Some(
            jetstream::ErrorCode::MAXIMUM_STREAMS_LIMIT
            | jetstream::ErrorCode::MAXIMUM_CONSUMERS_LIMIT
            | jetstream::ErrorCode::STREAM_LIMITS,
        ) => refused("Unsupported", "a JetStream account limit refuses it"),
        _ => nats(what, e),
    }
}

/// What a reconcile found and did.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// The tree's stream, when it has one.
    pub stream: Option<StreamStatus>,
    /// Why part of the spec could not be applied (the rest was).
    pub blocked: Option<String>,
    /// Another `RelayChannel` of the same name (another namespace) owns the channel.
    pub conflict: Option<String>,
    /// Human-readable changes made, for events.
    pub changes: Vec<String>,
}

/// Something changed that reconciles should look at now, not at the next resync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Everything (a backend went away or came back, a declaration's owner left).
    All,
    /// Every declaration under this top-level name (its stream changed).
    Tree(String),
    /// One declaration (its settings changed behind the operator's back).
    Channel(String),
}

/// NATS and Redis, cheap to clone.
#[derive(Clone)]
pub struct Backends {
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub redis: Conn,
    /// The settings JSON each declaration should have in Redis, as last written.
    pub written: Arc<Mutex<HashMap<String, String>>>,
    /// Drift and outages seen, for the controller to reconcile at once.
    pub triggers: broadcast::Sender<Trigger>,
}

impl Backends {
    /// Connects lazily to both: the operator starts (not ready) while they are down.
    pub async fn connect(nats: &relay_connect::Nats, redis: &relay_connect::Redis) -> anyhow::Result<Self> {
        let (triggers, _) = broadcast::channel(1024);
        let events = triggers.clone();
        let options = nats.options("relay-operator").await?.event_callback(move |event| {
            let events = events.clone();
            async move {
                tracing::info!(%event, "nats");
                if matches!(event, async_nats::Event::Connected | async_nats::Event::Disconnected) {
                    let _ = events.send(Trigger::All);
                }
            }
        });
        let nats = nats.connect(options).await?;
        let redis = redis.connect()?;
        Ok(Self { js: jetstream::new(nats.clone()), nats, redis, written: Arc::default(), triggers })
    }

    /// Whether both backends answer.
    pub async fn reachable(&self) -> bool {
        let mut conn = self.redis.clone();
        let redis_ok = redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok();
        redis_ok && self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// The settings the channel `name` has now (as stored, and parsed), and whether another
    /// resource owns them.
    async fn current(&self, name: &str, owner: &str) -> Result<Current, BackendError> {
        let mut conn = self.redis.clone();
        let raw: Option<String> = conn.get(names::settings_key(name)).await?;
        let parsed = raw.as_deref().and_then(|raw| ChannelSettings::from_json(raw).ok());
        let other = parsed.as_ref().and_then(|c| c.owner.clone()).filter(|o| o != owner);
        Ok(Current { raw, parsed, other })
    }

    /// Makes the backends match `desired` for the channel `name`, owned by `owner` (the caller
    /// decided it owns the name). Redis first: a new declaration is marked not in force, changed
    /// rules of one in force apply at once, so neither waits for NATS.
    pub async fn apply(&self, name: &str, owner: &str, desired: &Desired) -> Result<Outcome, BackendError> {
        let mut out = Outcome::default();
        let current = self.current(name, owner).await?;
        let mut settings = desired.settings.clone();
        settings.owner = Some(owner.to_owned());
        // A stream turned off that data is retained in stays, and so does publishing through it:
        // the change is refused as a whole, not made halfway.
        let retained = desired.stream.is_none() && desired.retain && self.stream_exists(&desired.stream_name).await?;
        if retained {
            settings.stream = Some(desired.stream_name.clone());
            out.blocked = Some(format!(
                "spec.stream.enabled is false, but stream {0} exists and a declaration under it retains its data \
                 (deletionPolicy: Retain): delete the stream yourself (nats stream rm {0}) or set deletionPolicy: Delete",
                desired.stream_name
            ));
        }
        let in_force =
            current.parsed.as_ref().is_some_and(|c| c.not_ready.is_none() && c.owner.as_deref() == Some(owner));
        if !in_force {
            let marked = ChannelSettings { not_ready: Some("Reconciling".into()), ..settings.clone() };
            if current.raw.as_deref() != Some(marked.to_json().as_str()) {
                self.write_settings(name, &marked).await?;
                out.changes.push("declared the channel (not in force yet)".into());
            }
        } else if current.raw.as_deref() != Some(settings.to_json().as_str()) {
            self.write_settings(name, &settings).await?;
            out.changes.push("updated settings".into());
        }
        // Say so at once rather than after JetStream's request timeout.
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return Err(BackendError::Nats("not connected".into()));
        }
        let applied = async {
            let Some(config) = &desired.stream else {
                if !retained {
                    self.remove_stream(&desired.stream_name, &mut out).await?;
                }
                return Ok(None);
            };
            let stream = self.apply_stream(config, desired.stream_explicit, &mut out).await?;
            self.apply_consumer(&stream, name, desired.queue_consumer.as_ref(), &mut out).await?;
            Ok::<_, BackendError>(Some(stream))
        }
        .await;
        let stream = match applied {
            Ok(stream) => stream,
            Err(BackendError::Refused { reason, message }) => {
                self.refuse(name, owner, reason).await?;
                return Err(BackendError::Refused { reason, message });
            }
            Err(e) => return Err(e),
        };
        if !in_force {
            self.write_settings(name, &settings).await?;
            out.changes.push("put the channel in force".into());
        } else {
            self.remember(name, &settings);
        }
        let Some(mut stream) = stream else { return Ok(out) };
        let info = stream.info().await.map_err(|e| nats("stream info", e))?;
        let n = |v: u64| v.min(i64::MAX as u64) as i64;
        out.stream = Some(StreamStatus {
            name: info.config.name.clone(),
            messages: n(info.state.messages),
            bytes: n(info.state.bytes),
            last_seq: n(info.state.last_sequence),
            replicas: info.config.num_replicas.clamp(0, i32::MAX as usize) as i32,
            leader: info.cluster.as_ref().and_then(|c| c.leader.clone()),
            placement: placement(info.cluster.as_ref()),
        });
        Ok(out)
    }

    /// Marks a declaration not in force (its spec cannot be applied), unless another resource owns
    /// the channel; writes only when that changes something.
    pub async fn refuse(&self, name: &str, owner: &str, reason: &str) -> Result<(), BackendError> {
        let current = self.current(name, owner).await?;
        if current.other.is_some() {
            return Ok(());
        }
        let mut settings = current.parsed.unwrap_or_default();
        settings.owner = Some(owner.to_owned());
        settings.not_ready = Some(reason.to_owned());
        if current.raw.as_deref() == Some(settings.to_json().as_str()) {
            self.remember(name, &settings);
            return Ok(());
        }
        self.write_settings(name, &settings).await
    }

    async fn write_settings(&self, name: &str, settings: &ChannelSettings) -> Result<(), BackendError> {
        let mut conn = self.redis.clone();
        let json = settings.to_json();
        let () = conn.set(names::settings_key(name), &json).await?;
        self.written.lock().expect("written lock").insert(name.to_owned(), json);
        self.announce(name).await
    }

    fn remember(&self, name: &str, settings: &ChannelSettings) {
        self.written.lock().expect("written lock").insert(name.to_owned(), settings.to_json());
    }

    async fn apply_stream(
        &self,
        desired: &stream::Config,
        explicit: bool,
        out: &mut Outcome,
    ) -> Result<stream::Stream, BackendError> {
        let observed = match self.js.get_stream(&desired.name).await {
            Ok(mut s) => Some(s.info().await.map_err(|e| nats("stream info", e))?.config.clone()),
            Err(e) if matches!(e.kind(), context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
                None
            }
            Err(e) => return Err(nats("get stream", e)),
        };
        let code = |kind: &context::CreateStreamErrorKind| match kind {
            context::CreateStreamErrorKind::JetStream(j) => Some(j.error_code()),
            _ => None,
        };
        // No declaration of the tree sets limits: an existing stream keeps its own.
        let desired = match &observed {
            Some(o) if !explicit => stream::Config { subjects: desired.subjects.clone(), ..o.clone() },
            _ => desired.clone(),
        };
        let desired = &desired;
        match plan::plan_stream(desired, observed.as_ref()) {
            StreamAction::Create => {
                self.js
                    .create_stream(desired.clone())
                    .await
                    .map_err(|e| classify("create stream", code(&e.kind()), e))?;
                out.changes.push(format!("created stream {}", desired.name));
            }
            StreamAction::Update => {
                self.js
                    .update_stream(desired.clone())
                    .await
                    .map_err(|e| classify("update stream", code(&e.kind()), e))?;
                out.changes.push(format!("updated stream {}", desired.name));
            }
            StreamAction::Keep => {}
            StreamAction::Blocked(why) => out.blocked = Some(why),
        }
        self.js.get_stream(&desired.name).await.map_err(|e| nats("get stream", e))
    }

    async fn stream_exists(&self, name: &str) -> Result<bool, BackendError> {
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return Err(BackendError::Nats("not connected".into()));
        }
        match self.js.get_stream(name).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
                Ok(false)
            }
            Err(e) => Err(nats("get stream", e)),
        }
    }

    /// A tree whose stream is turned off: its stream is deleted, messages and consumers with it
    /// (Redis history stays).
    async fn remove_stream(&self, name: &str, out: &mut Outcome) -> Result<(), BackendError> {
        if self.delete_stream(name).await? {
            out.changes.push(format!("deleted stream {name} (spec.stream.enabled is false)"));
        }
        Ok(())
    }

    /// Deletes a stream; false when there was none.
    async fn delete_stream(&self, name: &str) -> Result<bool, BackendError> {
        match self.js.delete_stream(name).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), context::DeleteStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
                Ok(false)
            }
            Err(e) => Err(nats("delete stream", e)),
        }
    }

    /// The channel's queue consumer: made or updated for queue delivery, removed otherwise.
    async fn apply_consumer(
        &self,
        stream: &stream::Stream,
        channel: &str,
        desired: Option<&consumer::pull::Config>,
        out: &mut Outcome,
    ) -> Result<(), BackendError> {
        let name = names::queue_consumer(channel);
        let observed = match stream.consumer_info(&name).await {
            Ok(info) => Some(info.config),
            Err(e) if consumer_missing(e.kind()) => None,
            Err(e) => return Err(nats("consumer info", e)),
        };
        match plan::plan_consumer(desired, observed.as_ref()) {
            ConsumerAction::Delete => {
                stream.delete_consumer(&name).await.map_err(|e| nats("delete consumer", e))?;
                out.changes.push(format!("deleted consumer {name}"));
            }
            ConsumerAction::Create | ConsumerAction::Update => {
                let desired = desired.expect("create or update has a desired consumer");
                stream.create_consumer(desired.clone()).await.map_err(|e| {
                    let code = match e.kind() {
                        stream::ConsumerErrorKind::JetStream(j) => Some(j.error_code()),
                        _ => None,
                    };
                    classify("create consumer", code, e)
                })?;
                out.changes.push(format!("applied consumer {name}"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Removes the declaration `name`: its settings always (it is no longer declared); with
    /// `delete_data` also the data of the channels it governs: their Redis keys, their messages in
    /// the tree's stream (the stream itself when it is left empty and undeclared) and their queue
    /// consumers. What `remaining` declarations govern (a nested declaration's sub-tree) is never
    /// touched, nor is anything when another resource owns the channel. Then whoever waits for the
    /// name is reconciled.
    pub async fn cleanup(
        &self,
        name: &str,
        owner: &str,
        delete_data: bool,
        remaining: &[Declared<'_>],
    ) -> Result<(), BackendError> {
        if relay_channel::ChannelId::parse(name).is_err() {
            // Not a channel id (a hand-written file): it cannot have been applied, and its name
            // must never reach a SCAN pattern.
            return Ok(());
        }
        if self.current(name, owner).await?.other.is_some() {
            return Ok(());
        }
        let mut conn = self.redis.clone();
        let () = conn.del(names::settings_key(name)).await?;
        self.written.lock().expect("written lock").remove(name);
        self.announce(name).await?;
        if delete_data {
            let remaining: Vec<Declared> =
                remaining.iter().filter(|d| d.owner != owner && d.name != name).cloned().collect();
            let deeper = format!("{name}.");
            // Governed by `name`: the channel or a sub-channel of it that no remaining deeper
            // declaration takes.
            let mine = |channel: &str| {
                (channel == name || channel.starts_with(&deeper))
                    && plan::governing(channel, &remaining).is_none_or(|d| !d.name.starts_with(&deeper))
            };
            self.delete_redis_data(name, &mine).await?;
            self.delete_stream_data(name, &remaining, &mine).await?;
        }
        // Someone waiting for this name (a Conflict in another namespace) can have it now.
        let _ = self.triggers.send(Trigger::Channel(name.to_owned()));
        Ok(())
    }

    async fn delete_redis_data(&self, name: &str, mine: &(dyn Fn(&str) -> bool + Sync)) -> Result<(), BackendError> {
        let mut conn = self.redis.clone();
        for pattern in [format!("relay:{{{name}}}:*"), format!("relay:{{{name}.*}}:*")] {
            let keys: Vec<String> = self
                .redis
                .scan(&pattern)
                .await?
                .into_iter()
                // Settings are the declarations' own business (a nested one's must stay).
                .filter(|k| !k.ends_with(":config") && key_channel(k).is_some_and(mine))
                .collect();
            // One DEL per key: in a Redis Cluster they live in different slots.
            for key in keys {
                let () = conn.del(&key).await?;
            }
        }
        Ok(())
    }

    async fn delete_stream_data(
        &self,
        name: &str,
        remaining: &[Declared<'_>],
        mine: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(), BackendError> {
        let root = names::root(name);
        let stream_name = names::stream_name(root);
        let not_found = |e: &context::GetStreamError| matches!(e.kind(), context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND);
        let mut stream = match self.js.get_stream(&stream_name).await {
            Ok(s) => s,
            Err(e) if not_found(&e) => return Ok(()),
            Err(e) => return Err(nats("get stream", e)),
        };
        let subject = names::subject(name);
        let prefix = format!("{}.", names::GROUP);
        for filter in [subject.clone(), format!("{subject}.>")] {
            let mut subjects = stream.info_with_subjects(filter).await.map_err(|e| nats("stream subjects", e))?;
            let mut found = Vec::new();
            while let Some(item) = subjects.next().await {
                let (s, _count) = item.map_err(|e| nats("stream subjects", e))?;
                found.push(s);
            }
            for s in found {
                if s.strip_prefix(&prefix).is_some_and(mine) {
                    stream.purge().filter(s).await.map_err(|e| nats("purge", e))?;
                }
            }
        }
        let mut consumers = stream.consumers();
        let mut doomed = Vec::new();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| nats("list consumers", e))?;
            if info.config.filter_subject.strip_prefix(&prefix).is_some_and(mine) {
                doomed.push(info.name.clone());
            }
        }
        for consumer in doomed {
            stream.delete_consumer(&consumer).await.map_err(|e| nats("delete consumer", e))?;
        }
        // The tree's last declaration takes the stream along, unless messages someone kept
        // (`Retain`) are still in it.
        let undeclared = !remaining.iter().any(|d| names::root(d.name) == root);
        if undeclared && stream.info().await.map_err(|e| nats("stream info", e))?.state.messages == 0 {
            self.delete_stream(&stream_name).await?;
        }
        Ok(())
    }

    /// Tells relays to drop their cached settings of `name`.
    async fn announce(&self, name: &str) -> Result<(), BackendError> {
        self.nats
            .publish(names::SETTINGS_CHANGED_SUBJECT, name.to_owned().into())
            .await
            .map_err(|e| nats("announce settings change", e))
    }
}

/// What Redis holds for a declaration now.
struct Current {
    raw: Option<String>,
    parsed: Option<ChannelSettings>,
    /// Another resource's owner string, when it owns the settings.
    other: Option<String>,
}

/// The channel a `relay:{<channel>}:...` key belongs to.
fn key_channel(key: &str) -> Option<&str> {
    let start = key.find('{')? + 1;
    let end = start + key[start..].find('}')?;
    Some(&key[start..end])
}

fn consumer_missing(kind: context::ConsumerInfoErrorKind) -> bool {
    match kind {
        context::ConsumerInfoErrorKind::NotFound => true,
        context::ConsumerInfoErrorKind::JetStream(e) => e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

/// The servers holding a stream's copies, leader first, marked when one is behind or offline.
fn placement(cluster: Option<&jetstream::stream::ClusterInfo>) -> Vec<String> {
    let Some(cluster) = cluster else { return Vec::new() };
    let mut out: Vec<String> = cluster.leader.iter().cloned().collect();
    for peer in &cluster.replicas {
        let mark = if peer.offline {
            " (offline)"
        } else if !peer.current {
            " (behind)"
        } else {
            ""
        };
        out.push(format!("{}{mark}", peer.name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_channel() {
        assert_eq!(key_channel("relay:{hall.vip}:history"), Some("hall.vip"));
        assert_eq!(key_channel("relay:{hall}:idem:u:k"), Some("hall"));
        assert_eq!(key_channel("other"), None);
    }
}
