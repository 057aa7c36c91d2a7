//! The effects: make NATS JetStream and Redis match a [`Desired`] state, read back what is there,
//! and clean up. Each call is idempotent; "not found" while deleting is success.

use async_nats::jetstream::{self, consumer, context, stream};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use relay_channel::{ChannelSettings, names};

use crate::crd::StreamStatus;
use crate::plan::{self, ConsumerAction, Desired, StreamAction};

/// A backend failed; the reconcile is retried with backoff and Ready=False says which.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("nats: {0}")]
    Nats(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

fn nats(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Nats(format!("{what}: {e}"))
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

/// NATS and Redis, cheap to clone.
#[derive(Clone)]
pub struct Backends {
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub redis: ConnectionManager,
}

impl Backends {
    /// Connects lazily to both: the operator starts (not ready) while they are down.
    pub async fn connect(nats: &relay_connect::Nats, redis: &relay_connect::Redis) -> anyhow::Result<Self> {
        let options = nats.options("relay-operator").await?;
        let nats = nats.connect(options).await?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(3)))
            .set_number_of_retries(1);
        let redis = ConnectionManager::new_lazy_with_config(redis.client()?, config)?;
        Ok(Self { js: jetstream::new(nats.clone()), nats, redis })
    }

    /// Whether both backends answer.
    pub async fn reachable(&self) -> bool {
        let mut conn = self.redis.clone();
        let redis_ok = redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok();
        redis_ok && self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// Makes the backends match `desired` for the channel `name`, owned by `owner`.
    pub async fn apply(&self, name: &str, owner: &str, desired: &Desired) -> Result<Outcome, BackendError> {
        let mut out = Outcome::default();
        let mut conn = self.redis.clone();
        let key = names::settings_key(name);
        let current: Option<String> = conn.get(&key).await?;
        let current = current.and_then(|raw| ChannelSettings::from_json(&raw).ok());
        if let Some(other) = current.as_ref().and_then(|c| c.owner.as_deref()).filter(|o| *o != owner) {
            out.conflict = Some(format!("channel {name} is already declared by RelayChannel {other}"));
            return Ok(out);
        }

        let stream = self.apply_stream(&desired.stream, &mut out).await?;
        self.apply_consumer(&stream, desired.queue_consumer.as_ref(), &mut out).await?;

        let mut settings = desired.settings.clone();
        settings.owner = Some(owner.to_owned());
        if current.as_ref() != Some(&settings) {
            let () = conn.set(&key, settings.to_json()).await?;
            self.announce(name).await?;
            out.changes.push(if current.is_some() { "updated settings" } else { "wrote settings" }.into());
        }
        let mut stream = stream;
        let info = stream.info().await.map_err(|e| nats("stream info", e))?;
        out.stream = StreamStatus {
            name: info.config.name.clone(),
            messages: info.state.messages,
            bytes: info.state.bytes,
            last_seq: info.state.last_sequence,
        };
        Ok(out)
    }

    async fn apply_stream(&self, desired: &stream::Config, out: &mut Outcome) -> Result<stream::Stream, BackendError> {
        let observed = match self.js.get_stream(&desired.name).await {
            Ok(mut s) => Some(s.info().await.map_err(|e| nats("stream info", e))?.config.clone()),
            Err(e) if matches!(e.kind(), context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
                None
            }
            Err(e) => return Err(nats("get stream", e)),
        };
        match plan::plan_stream(desired, observed.as_ref()) {
            StreamAction::Create => {
                self.js.create_stream(desired.clone()).await.map_err(|e| nats("create stream", e))?;
                out.changes.push(format!("created stream {}", desired.name));
            }
            StreamAction::Update => {
                self.js.update_stream(desired.clone()).await.map_err(|e| nats("update stream", e))?;
                out.changes.push(format!("updated stream {}", desired.name));
            }
            StreamAction::Keep => {}
            StreamAction::Blocked(why) => out.blocked = Some(why),
        }
        self.js.get_stream(&desired.name).await.map_err(|e| nats("get stream", e))
    }

    async fn apply_consumer(
        &self,
        stream: &stream::Stream,
        desired: Option<&consumer::pull::Config>,
        out: &mut Outcome,
    ) -> Result<(), BackendError> {
        let observed = match stream.consumer_info(plan::QUEUE_CONSUMER).await {
            Ok(info) => Some(info.config),
            Err(e) if consumer_missing(e.kind()) => None,
            Err(e) => return Err(nats("consumer info", e)),
        };
        match plan::plan_consumer(desired, observed.as_ref()) {
            ConsumerAction::Create | ConsumerAction::Update => {
                let config = desired.expect("create or update has a desired consumer").clone();
                stream.create_consumer(config).await.map_err(|e| nats("create consumer", e))?;
                out.changes.push(format!("applied consumer {}", plan::QUEUE_CONSUMER));
            }
            ConsumerAction::Delete => {
                stream.delete_consumer(plan::QUEUE_CONSUMER).await.map_err(|e| nats("delete consumer", e))?;
                out.changes.push(format!("deleted consumer {}", plan::QUEUE_CONSUMER));
            }
            ConsumerAction::Keep | ConsumerAction::None => {}
        }
        Ok(())
    }

    /// Removes the channel: its settings always (it is no longer declared); with `delete_data`
    /// also its stream and the history of it and its sub-channels. Skips a channel owned by
    /// another resource.
    pub async fn cleanup(&self, name: &str, owner: &str, delete_data: bool) -> Result<(), BackendError> {
        let mut conn = self.redis.clone();
        let key = names::settings_key(name);
        let current: Option<String> = conn.get(&key).await?;
        let owned_by_other = current
            .and_then(|raw| ChannelSettings::from_json(&raw).ok())
            .and_then(|s| s.owner)
            .is_some_and(|o| o != owner);
        if owned_by_other {
            return Ok(());
        }
        let () = conn.del(&key).await?;
        self.announce(name).await?;
        if !delete_data {
            return Ok(());
        }
        match self.js.delete_stream(names::stream_name(name)).await {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
                {}
            Err(e) => return Err(nats("delete stream", e)),
        }
        for pattern in [format!("relay:{{{name}}}:*"), format!("relay:{{{name}.*}}:*")] {
            let keys: Vec<String> = {
                let mut iter: redis::AsyncIter<String> = conn.scan_match(&pattern).await?;
                let mut keys = Vec::new();
                while let Some(k) = futures::StreamExt::next(&mut iter).await {
                    keys.push(k?);
                }
                keys
            };
            for chunk in keys.chunks(500) {
                let () = conn.del(chunk).await?;
            }
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

fn consumer_missing(kind: context::ConsumerInfoErrorKind) -> bool {
    match kind {
        context::ConsumerInfoErrorKind::NotFound => true,
        context::ConsumerInfoErrorKind::JetStream(e) => e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}
