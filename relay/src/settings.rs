//! Channel settings as relays see them: read from `relay:{<name>}:config` (written by the operator),
//! cached for a TTL, and dropped from the cache at once when the operator announces a change on NATS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relay_channel::{ChannelId, ChannelSettings, names};

use crate::config::Undeclared;
use crate::error::{Error, Result};
use crate::store::Store;

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
    ttl: Duration,
    undeclared: Undeclared,
    cache: Mutex<HashMap<ChannelId, (Instant, Arc<Governed>)>>,
}

impl SettingsCache {
    pub fn new(store: Store, ttl: Duration, undeclared: Undeclared) -> Self {
        Self { store, ttl, undeclared, cache: Mutex::new(HashMap::new()) }
    }

    /// The settings governing `channel`: those of the longest declared prefix (`chat` governs
    /// `chat.room1`); NOT_FOUND when none is declared and undeclared channels are denied.
    pub async fn get(&self, channel: &ChannelId) -> Result<Arc<Governed>> {
        if let Some((at, g)) = self.cache.lock().expect("settings lock").get(channel)
            && at.elapsed() < self.ttl
        {
            return Ok(g.clone());
        }
        let governed = Arc::new(self.load(channel).await?);
        self.cache.lock().expect("settings lock").insert(channel.clone(), (Instant::now(), governed.clone()));
        Ok(governed)
    }

    /// Forgets everything: called when the operator announces a change.
    pub fn invalidate(&self) {
        self.cache.lock().expect("settings lock").clear();
    }

    async fn load(&self, channel: &ChannelId) -> Result<Governed> {
        let candidates: Vec<&str> = channel.governing_candidates().collect();
        let mut pipe = redis::pipe();
        for c in &candidates {
            pipe.get(names::settings_key(c));
        }
        let mut conn = self.store.connection();
        let found: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
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
