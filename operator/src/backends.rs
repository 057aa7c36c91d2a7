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
use redis::aio::ConnectionManager;
use relay_channel::{ChannelSettings, names};
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
        Some(jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED) => {
            refused("Unsupported", "JetStream has no room for it: lower stream.maxBytes or give JetStream more storage")
        }
        _ => nats(what, e),
    }
}

/// What a reconcile found and did.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub stream: StreamStatus,
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
    pub redis: ConnectionManager,
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
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(3)))
            .set_number_of_retries(1);
        let redis = ConnectionManager::new_lazy_with_config(redis.client()?, config)?;
        Ok(Self { js: jetstream::new(nats.clone()), nats, redis, written: Arc::default(), triggers })
    }

    /// Whether both backends answer.
    pub async fn reachable(&self) -> bool {
        let mut conn = self.redis.clone();
        let redis_ok = redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok();
        redis_ok && self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// The settings the channel `name` has now, and whether another resource owns them.
    async fn current(
        &self,
        name: &str,
        owner: &str,
    ) -> Result<(Option<ChannelSettings>, Option<String>), BackendError> {
        let mut conn = self.redis.clone();
        let raw: Option<String> = conn.get(names::settings_key(name)).await?;
        let current = raw.and_then(|raw| ChannelSettings::from_json(&raw).ok());
        let other = current.as_ref().and_then(|c| c.owner.clone()).filter(|o| o != owner);
        Ok((current, other))
    }

    /// Makes the backends match `desired` for the channel `name`, owned by `owner`.
    pub async fn apply(&self, name: &str, owner: &str, desired: &Desired) -> Result<Outcome, BackendError> {
        // Say so at once rather than after JetStream's request timeout.
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return Err(BackendError::Nats("not connected".into()));
        }
        let mut out = Outcome::default();
        let (current, other) = self.current(name, owner).await?;
        if let Some(other) = other {
            out.conflict = Some(format!("channel {name} is already declared by RelayChannel {other}"));
            return Ok(out);
        }
        let mut settings = desired.settings.clone();
        settings.owner = Some(owner.to_owned());
        if current.is_none() {
            // First sight: declared, not yet in force.
            self.write_settings(name, &ChannelSettings { not_ready: Some("Reconciling".into()), ..settings.clone() })
                .await?;
            out.changes.push("declared the channel (not in force yet)".into());
        }
        let applied = async {
            let stream = self.apply_stream(&desired.stream, &mut out).await?;
            self.apply_consumer(&stream, name, desired.queue_consumer.as_ref(), &mut out).await?;
            Ok::<_, BackendError>(stream)
        }
        .await;
        let mut stream = match applied {
            Ok(stream) => stream,
            Err(BackendError::Refused { reason, message }) => {
                self.write_settings(name, &ChannelSettings { not_ready: Some(reason.into()), ..settings }).await?;
                return Err(BackendError::Refused { reason, message });
            }
            Err(e) => return Err(e),
        };
        if current.as_ref() != Some(&settings) {
            self.write_settings(name, &settings).await?;
            out.changes.push(if current.is_some() { "updated settings" } else { "wrote settings" }.into());
        } else {
            self.remember(name, &settings);
        }
        let info = stream.info().await.map_err(|e| nats("stream info", e))?;
        let n = |v: u64| v.min(i64::MAX as u64) as i64;
        out.stream = StreamStatus {
            name: info.config.name.clone(),
            messages: n(info.state.messages),
            bytes: n(info.state.bytes),
            last_seq: n(info.state.last_sequence),
        };
        Ok(out)
    }

    /// Marks a declaration not in force (its spec cannot be applied), unless another resource owns
    /// the channel.
    pub async fn refuse(&self, name: &str, owner: &str, reason: &str) -> Result<(), BackendError> {
        let (current, other) = self.current(name, owner).await?;
        if other.is_some() {
            return Ok(());
        }
        let mut settings = current.unwrap_or_default();
        settings.owner = Some(owner.to_owned());
        settings.not_ready = Some(reason.to_owned());
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

    async fn apply_stream(&self, desired: &stream::Config, out: &mut Outcome) -> Result<stream::Stream, BackendError> {
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
    /// the tree's stream (the whole stream when it was the tree's last declaration) and their queue
    /// consumers. What `remaining` declarations govern (a nested declaration's sub-tree) is never
    /// touched. Skips a channel owned by another resource.
    pub async fn cleanup(
        &self,
        name: &str,
        owner: &str,
        delete_data: bool,
        remaining: &[Declared<'_>],
    ) -> Result<(), BackendError> {
        let (_, other) = self.current(name, owner).await?;
        if other.is_some() {
            return Ok(());
        }
        let mut conn = self.redis.clone();
        let () = conn.del(names::settings_key(name)).await?;
        self.written.lock().expect("written lock").remove(name);
        self.announce(name).await?;
        // Someone waiting for this name (a Conflict in another namespace) can have it now.
        let _ = self.triggers.send(Trigger::All);
        if !delete_data {
            return Ok(());
        }
        let remaining: Vec<Declared> = remaining.iter().filter(|d| d.name != name).cloned().collect();
        // Governed by `name` once it is gone: no remaining declaration is a deeper prefix.
        let mine = |channel: &str| {
            plan::governing(channel, &remaining).is_none_or(|d| !d.name.starts_with(&format!("{name}.")))
        };
        self.delete_redis_data(name, &mine).await?;
        self.delete_stream_data(name, &remaining, &mine).await
    }

    async fn delete_redis_data(&self, name: &str, mine: &(dyn Fn(&str) -> bool + Sync)) -> Result<(), BackendError> {
        let mut conn = self.redis.clone();
        for pattern in [format!("relay:{{{name}}}:*"), format!("relay:{{{name}.*}}:*")] {
            let keys: Vec<String> = {
                let mut iter: redis::AsyncIter<String> = conn.scan_match(&pattern).await?;
                let mut keys = Vec::new();
                while let Some(k) = iter.next().await {
                    let k = k?;
                    if key_channel(&k).is_some_and(mine) {
                        keys.push(k);
                    }
                }
                keys
            };
            for chunk in keys.chunks(500) {
                let () = conn.del(chunk).await?;
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
        if !remaining.iter().any(|d| names::root(d.name) == root) {
            return match self.js.delete_stream(&stream_name).await {
                Ok(_) => Ok(()),
                Err(e) if matches!(e.kind(), context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
                    Ok(())
                }
                Err(e) => Err(nats("delete stream", e)),
            };
        }
        // The tree goes on: take out only what this declaration governed.
        let stream = match self.js.get_stream(&stream_name).await {
            Ok(s) => s,
            Err(_) => return Ok(()),
        };
        let subject = names::subject(name);
        for filter in [subject.clone(), format!("{subject}.>")] {
            let mut subjects = stream.info_with_subjects(filter).await.map_err(|e| nats("stream subjects", e))?;
            let mut found = Vec::new();
            while let Some(item) = subjects.next().await {
                let (s, _count) = item.map_err(|e| nats("stream subjects", e))?;
                found.push(s);
            }
            for s in found {
                if s.strip_prefix(&format!("{}.", names::GROUP)).is_some_and(mine) {
                    stream.purge().filter(s).await.map_err(|e| nats("purge", e))?;
                }
            }
        }
        let mut consumers = stream.consumers();
        let mut doomed = Vec::new();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| nats("list consumers", e))?;
            let channel = info.config.filter_subject.strip_prefix(&format!("{}.", names::GROUP)).map(str::to_owned);
            if channel.is_some_and(|c| (c == name || c.starts_with(&format!("{name}."))) && mine(&c)) {
                doomed.push(info.name.clone());
            }
        }
        for consumer in doomed {
            stream.delete_consumer(&consumer).await.map_err(|e| nats("delete consumer", e))?;
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
