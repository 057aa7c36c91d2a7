//! Channel settings as relays see them: read from `relay:{<name>}:config` (written by the operator),
//! cached for a TTL in a bounded cache, and dropped from the cache at once when the operator
//! announces a change on NATS (open streams then check their access again).
//!
//! Concurrent lookups of one channel share one Redis read. Entries are keyed by an invalidation
//! generation: a load that was under way when a change was announced lands under the old
//! generation, where no lookup finds it (it may have read the old rules, and caching them would
//! put them back for a whole TTL).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use relay_channel::{ChannelId, ChannelSettings, names};
use tokio::sync::broadcast;

use crate::config::Undeclared;
use crate::error::{Error, Result};
use crate::store::Store;

/// Channel ids whose settings are cached at most (junk sub-channel names cannot grow it further).
const CACHED_CHANNELS: u64 = 100_000;

/// The settings that govern one channel id.
#[derive(Debug, PartialEq)]
pub struct Governed {
    /// The name of the `RelayChannel` that declares the channel (or the channel itself when
    /// undeclared channels are allowed).
    pub declared_by: String,
    /// False for an undeclared channel served with defaults (`--undeclared-channels allow`).
    pub declared: bool,
    pub settings: ChannelSettings,
}

pub struct SettingsCache {
    store: Store,
    undeclared: Undeclared,
    cache: moka::future::Cache<(u64, ChannelId), Arc<Governed>>,
    /// Bumped by every invalidation.
    generation: AtomicU64,
    /// Announced changes (the channel name the operator sent), for open streams.
    changed: broadcast::Sender<String>,
}

impl SettingsCache {
    pub fn new(store: Store, ttl: Duration, undeclared: Undeclared) -> Self {
        let cache = moka::future::Cache::builder().max_capacity(CACHED_CHANNELS).time_to_live(ttl).build();
        Self { store, undeclared, cache, generation: AtomicU64::new(0), changed: broadcast::channel(256).0 }
    }

    /// The settings governing `channel`: those of the longest declared prefix (`chat` governs
    /// `chat.room1`); NOT_FOUND when none is declared and undeclared channels are denied.
    /// A declaration that exists but is not in force (the operator could not apply it) refuses its
    /// channel with UNAVAILABLE: serving it under a parent's looser rules is never an option.
    pub async fn get(&self, channel: &ChannelId) -> Result<Arc<Governed>> {
        let key = (self.generation.load(Ordering::SeqCst), channel.clone());
        let governed = self
            .cache
            .try_get_with(key, async { self.load(channel).await.map(Arc::new) })
            .await
            .map_err(|e| e.to_owned_error())?;
        if let Some(reason) = &governed.settings.not_ready {
            return Err(Error::Retry(format!(
                "channel {channel} is declared by RelayChannel {} but not in force ({reason}); ask whoever runs the relay",
                governed.declared_by
            )));
        }
        Ok(governed)
    }

    /// Forgets everything and tells open streams: called when the operator announces a change.
    pub fn invalidate(&self, announced: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
        let _ = self.changed.send(announced.to_owned());
    }

    /// Announced changes, for a stream that must check its access again.
    pub fn changes(&self) -> broadcast::Receiver<String> {
        self.changed.subscribe()
    }

    async fn load(&self, channel: &ChannelId) -> Result<Governed> {
        let candidates: Vec<&str> = channel.governing_candidates().collect();
        // One GET each, concurrently: the keys live in different Redis Cluster slots.
        let gets =
            candidates.iter().map(|c| self.store.query::<Option<String>>(redis::Cmd::get(names::settings_key(c))));
        let found: Vec<Option<String>> = futures::future::try_join_all(gets).await?;
        for (name, raw) in candidates.iter().zip(found) {
            if let Some(raw) = raw {
                let settings = ChannelSettings::from_json(&raw).map_err(|e| {
                    Error::unavailable("channel settings", format!("{} holds bad JSON: {e}", names::settings_key(name)))
                })?;
                return Ok(Governed { declared_by: (*name).to_owned(), declared: true, settings });
            }
        }
        match self.undeclared {
            Undeclared::Allow => {
                Ok(Governed { declared_by: channel.to_string(), declared: false, settings: ChannelSettings::default() })
            }
            Undeclared::Deny => Err(Error::NotFound(format!(
                "channel {channel:?} is not declared: create a RelayChannel for it (or one of its parents)"
            ))),
        }
    }
}
