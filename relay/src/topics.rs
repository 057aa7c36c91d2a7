//! One shared value per channel on this replica (a hub topic, a live topic): made once by the
//! first caller while later callers for that channel wait, and dropped with its last holder. No
//! lock is held across I/O but the channel's own slot; the map of slots is pruned of dead entries
//! as it grows, so junk channel names cannot grow it without bound.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};

use crate::error::{Error, Result};

pub struct Topics<T> {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Weak<T>>>>>,
}

impl<T> Default for Topics<T> {
    fn default() -> Self {
        Self { slots: Mutex::default() }
    }
}

impl<T> Topics<T> {
    /// The channel's value, made by `make` if there is none alive. Waiting for another caller's
    /// `make` takes at most the NATS deadline (`make` subscribes on NATS).
    pub async fn get_or_make<F, Fut>(&self, channel: &str, make: F) -> Result<Arc<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<T>>>,
    {
        let slot = {
            let mut slots = self.slots.lock().expect("topics lock");
            if slots.len() > 1024 && slots.len().is_power_of_two() {
                slots.retain(|_, s| s.try_lock().map_or(true, |t| t.strong_count() > 0));
            }
            slots.entry(channel.to_owned()).or_default().clone()
        };
        // Only this channel's callers wait here, for one subscription; not for a queue of failing
        // attempts on a slow NATS, though: each takes up to the bus deadline.
        let Ok(mut current) = tokio::time::timeout(crate::bus::NATS_TIMEOUT, slot.lock()).await else {
            return Err(Error::unavailable("nats", "subscribing to the channel took too long"));
        };
        if let Some(t) = current.upgrade() {
            return Ok(t);
        }
        let made = make().await?;
        *current = Arc::downgrade(&made);
        Ok(made)
    }

    /// Channels with a slot (alive, or dead and not yet pruned).
    pub fn len(&self) -> usize {
        self.slots.lock().expect("topics lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
