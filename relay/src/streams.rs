//! The Subscribe streams open on this replica: their ids (what `Ack` and `RefreshToken` name), their
//! owners, their queue lanes, and the per-user cap.
//!
//! A stream id is `<replica>-<n>`: the replica part tells any relay where to route a call about the
//! stream ([`crate::route`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{Error, Result};
use crate::queue::Lane;

/// The registry; one per replica.
pub struct Streams {
    /// This replica's id: a random token, new at every start.
    pub replica: String,
    max_per_user: usize,
    next: AtomicU64,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Weak<Stream>>,
    per_user: HashMap<String, usize>,
}

/// One open stream, as the rest of the relay sees it.
pub struct Stream {
    pub id: String,
    pub user: String,
    /// The token the stream is authorized by; replaced by `RefreshToken`.
    token: Mutex<String>,
    /// When that token expires (Unix seconds).
    expires: AtomicI64,
    /// Bumped on every refresh, so the stream's watcher re-reads the token.
    pub refreshed: tokio::sync::Notify,
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
    registry: Weak<Mutex<Inner>>,
}

impl Streams {
    pub fn new(max_per_user: usize) -> Self {
        let replica: String = (0..10).map(|_| char::from(b'a' + rand::random_range(0..26u8))).collect();
        Self { replica, max_per_user, next: AtomicU64::new(1), inner: Arc::default() }
    }

    /// Registers a stream of `user`; RESOURCE_EXHAUSTED past the per-user cap. The stream is
    /// forgotten when the returned handle is dropped.
    pub fn open(&self, user: &str, token: &str, expires: i64) -> Result<Arc<Stream>> {
        let mut inner = self.inner.lock().expect("streams lock");
        let n = inner.per_user.entry(user.to_owned()).or_default();
        if *n >= self.max_per_user {
            return Err(Error::ResourceExhausted(format!(
                "too many streams: user {user} already holds {} (Subscribe and PublishStream calls) on this relay; close one, or subscribe to several channels on one stream",
                self.max_per_user
            )));
        }
        *n += 1;
        let id = format!("{}-{}", self.replica, self.next.fetch_add(1, Ordering::Relaxed));
        let stream = Arc::new(Stream {
            id: id.clone(),
            user: user.to_owned(),
            token: Mutex::new(token.to_owned()),
            expires: AtomicI64::new(expires),
            refreshed: tokio::sync::Notify::new(),
            lanes: Mutex::default(),
            registry: Arc::downgrade(&self.inner),
        });
        if inner.by_id.len() > 1024 && inner.by_id.len().is_power_of_two() {
            inner.by_id.retain(|_, s| s.strong_count() > 0);
        }
        inner.by_id.insert(id, Arc::downgrade(&stream));
        Ok(stream)
    }

    /// The open stream `id` of `user` on this replica. NOT_FOUND when there is none, or when it is
    /// someone else's (the same answer, so ids cannot be probed).
    pub fn get(&self, id: &str, user: &str) -> Result<Arc<Stream>> {
        // Upgraded outside the lock: the upgraded handle may be the last one (the stream ending
        // meanwhile), and dropping it takes the lock again.
        let weak = self.inner.lock().expect("streams lock").by_id.get(id).cloned();
        weak.and_then(|w| w.upgrade()).filter(|s| s.user == user).ok_or_else(|| not_open(id))
    }

    /// Whether `id` names a stream of this replica.
    pub fn is_local(&self, id: &str) -> bool {
        replica_of(id) == Some(self.replica.as_str())
    }
}

/// The replica part of a stream id.
pub fn replica_of(id: &str) -> Option<&str> {
    // Ten letters, a dash and a u64: never longer than this.
    if id.len() > 32 {
        return None;
    }
    let (replica, n) = id.split_once('-')?;
    (!replica.is_empty() && replica.bytes().all(|b| b.is_ascii_lowercase()) && n.parse::<u64>().is_ok())
        .then_some(replica)
}

pub fn not_open(id: &str) -> Error {
    Error::NotFound(format!(
        "stream {} is not open (it ended, or it is not yours); its unacked messages are delivered again",
        crate::error::quote(id)
    ))
}

impl Stream {
    pub fn token(&self) -> String {
        self.token.lock().expect("stream lock").clone()
    }

    pub fn expires(&self) -> i64 {
        self.expires.load(Ordering::Relaxed)
    }

    /// Replaces the stream's token (already verified to be the same user's).
    pub fn refresh(&self, token: &str, expires: i64) {
        *self.token.lock().expect("stream lock") = token.to_owned();
        self.expires.store(expires, Ordering::Relaxed);
        self.refreshed.notify_one();
    }

    pub fn add_lane(&self, channel: &str, lane: Arc<Lane>) {
        self.lanes.lock().expect("stream lock").insert(channel.to_owned(), lane);
    }

    pub fn lane(&self, channel: &str) -> Option<Arc<Lane>> {
        self.lanes.lock().expect("stream lock").get(channel).cloned()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let Some(registry) = self.registry.upgrade() else { return };
        let mut inner = registry.lock().expect("streams lock");
        inner.by_id.remove(&self.id);
        if let Some(n) = inner.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                inner.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_route_caps_hold_and_drop_releases() {
        let streams = Streams::new(2);
        let a = streams.open("u1", "t", 0).unwrap();
        let b = streams.open("u1", "t", 0).unwrap();
        assert!(matches!(streams.open("u1", "t", 0), Err(Error::ResourceExhausted(_))));
        assert!(streams.open("u2", "t", 0).is_ok(), "the cap is per user");
        assert!(streams.is_local(&a.id));
        assert_eq!(replica_of(&a.id), Some(streams.replica.as_str()));
        assert!(streams.get(&a.id, "u1").is_ok());
        assert!(matches!(streams.get(&a.id, "u2"), Err(Error::NotFound(_))), "not someone else's");
        drop(a);
        assert!(streams.open("u1", "t", 0).is_ok(), "a closed stream frees its slot");
        assert!(streams.get(&b.id, "u1").is_ok());
        // Someone else's id, its stream ending while looked up: the last handle is dropped in
        // `get`, which must not hold the registry's lock then.
        let c = streams.open("u3", "t", 0).unwrap();
        let id = c.id.clone();
        let weak = Arc::downgrade(&c);
        let looking = std::thread::spawn({
            let streams = Arc::new(streams);
            move || {
                for _ in 0..10_000 {
                    let _ = streams.get(&id, "u1");
                }
                streams
            }
        });
        drop(c);
        let streams = looking.join().unwrap();
        assert!(weak.upgrade().is_none());
        assert!(streams.get(&b.id, "u1").is_ok());
        for bad in ["", "-", "abc", "ABC-1", "abc-x", "a.b-1"] {
            assert_eq!(replica_of(bad), None, "{bad}");
        }
    }
}
