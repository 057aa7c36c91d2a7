//! Presence: who has a Subscribe stream open on a channel, across every replica.
//!
//! Redis holds it under the channel's hash tag (`presence.lua`, one atomic script for every
//! operation): one entry per stream with an expiry, and per user a count of streams, a name and
//! since when. A user joins when their count goes 0 -> 1 and leaves when it goes back to 0, so a
//! second stream is no join; a stream that ends counts [`GRACE`] longer, so a reconnect to any
//! replica within it is neither a leave nor a join. The script that sees the count change says so,
//! and this replica announces it on the channel's live subject ([`crate::live`]), once.
//!
//! Each replica keeps its own streams' entries alive: one task ([`Presence::run`]) refreshes them
//! every third of the channel's ttl, many streams per script call; enters and departures queue up
//! and go out together as soon as the task is free (a burst of a thousand joins costs a few calls,
//! not a thousand). A replica that dies stops refreshing: its entries expire within the ttl, and
//! the next script call on the channel (any replica's refresh, a sweep due at the earliest expiry,
//! a Presence call) removes them and announces the leaves.
//!
//! Presence is soft state: an entry lost with Redis's data comes back with the next refresh, and
//! a Redis outage costs neither streams nor calls (the work is retried), only staleness.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use relay_channel::{LiveEvent, names};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::bus::Bus;
use crate::error::{Error, Result};
use crate::store::Store;

const SCRIPT: &str = include_str!("presence.lua");
/// How long a stream that ended still counts: a reconnect within it is no leave and join.
pub const GRACE: Duration = Duration::from_secs(5);
/// Streams per script call.
const BATCH: usize = 500;
/// Script calls in flight at once.
const CONCURRENCY: usize = 16;
/// The task's pace when nothing wakes it, and the delay before retrying failed work.
const TICK: Duration = Duration::from_secs(1);
/// How long a Presence answer is reused: a crowd asking costs one read per second per replica.
const MEMBERS_FRESH: Duration = Duration::from_secs(1);
/// Channels whose member lists are cached at most.
const CACHED_LISTS: u64 = 1024;
/// Departures waiting to go out at most, per channel (their entries expire anyway).
const MAX_DEPARTED: usize = 100_000;
/// Members one Presence answer lists at most (about: Redis's HSCAN picks them).
pub const MAX_LISTED: usize = 10_000;

/// One member of a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub user: String,
    pub name: String,
    pub streams: u32,
    /// Unix milliseconds.
    pub since_ms: i64,
}

/// A channel's members, or a sample of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    pub members: Vec<Member>,
    /// The channel has more than [`MAX_LISTED`] members: these are some of them.
    pub truncated: bool,
}

/// Counts of a channel's presence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub members: u64,
    pub streams: u64,
}

/// What this replica holds for one channel.
struct Local {
    ttl: Duration,
    /// Announce joins and leaves (the channel's `presence.joinLeave`).
    announce: bool,
    /// Open streams here: stream id -> (user, name).
    streams: HashMap<String, (String, String)>,
    /// Streams opened since the last enter.
    fresh: Vec<String>,
    /// Streams ended since the last depart.
    departed: Vec<String>,
    next_refresh: Instant,
    /// When the earliest entry (anyone's) expires: its leave is announced then.
    next_sweep: Option<Instant>,
    /// Kept this long after the last stream ended, to sweep its entry.
    linger_until: Instant,
}

enum Op {
    /// Enter (or refresh) these streams: (stream, user, name).
    Enter(Vec<(String, String, String)>, bool),
    Depart(Vec<String>),
    Sweep,
}

struct Job {
    channel: String,
    ttl: Duration,
    announce: bool,
    op: Op,
}

/// The replica's presence work; see the module docs.
pub struct Presence {
    store: Store,
    bus: Bus,
    script: redis::Script,
    channels: Mutex<HashMap<String, Local>>,
    wake: Notify,
    lists: moka::future::Cache<String, Arc<Members>>,
}

/// A stream's place in a channel's presence; dropping it starts the stream's departure.
pub struct Entry {
    presence: Arc<Presence>,
    channel: String,
    stream: String,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.presence.depart(&self.channel, &self.stream);
    }
}

type Reply = (Vec<String>, Vec<String>, i64, redis::Value);

impl Presence {
    pub fn new(store: Store, bus: Bus) -> Self {
        Self {
            store,
            bus,
            script: redis::Script::new(SCRIPT),
            channels: Mutex::default(),
            wake: Notify::new(),
            lists: moka::future::Cache::builder().max_capacity(CACHED_LISTS).time_to_live(MEMBERS_FRESH).build(),
        }
    }

    /// Counts `stream` of `user` on `channel` from now until the returned entry drops.
    pub fn enter(
        self: &Arc<Self>,
        channel: &str,
        settings: &relay_channel::PresenceSettings,
        stream: &str,
        user: &crate::auth::User,
    ) -> Entry {
        {
            let mut channels = self.channels.lock().expect("presence lock");
            let local = channels.entry(channel.to_owned()).or_insert_with(|| Local {
                ttl: ttl(settings),
                announce: settings.join_leave,
                streams: HashMap::new(),
                fresh: Vec::new(),
                departed: Vec::new(),
                next_refresh: Instant::now() + ttl(settings) / 3,
                next_sweep: None,
                linger_until: Instant::now(),
            });
            // The newest stream's view of the settings wins.
            local.ttl = ttl(settings);
            local.announce = settings.join_leave;
            local.streams.insert(stream.to_owned(), (user.id.clone(), user.name.clone()));
            local.fresh.push(stream.to_owned());
        }
        self.wake.notify_one();
        Entry { presence: self.clone(), channel: channel.to_owned(), stream: stream.to_owned() }
    }

    fn depart(&self, channel: &str, stream: &str) {
        {
            let mut channels = self.channels.lock().expect("presence lock");
            let Some(local) = channels.get_mut(channel) else { return };
            local.streams.remove(stream);
            local.fresh.retain(|s| s != stream);
            if local.departed.len() < MAX_DEPARTED {
                local.departed.push(stream.to_owned());
            }
            local.linger_until = Instant::now() + GRACE + TICK;
        }
        self.wake.notify_one();
    }

    /// The channel's members. Reused for up to a second; concurrent callers share one read.
    pub async fn members(&self, channel: &str, settings: &relay_channel::PresenceSettings) -> Result<Arc<Members>> {
        self.lists
            .try_get_with(channel.to_owned(), async {
                let job = Job {
                    channel: channel.to_owned(),
                    ttl: ttl(settings),
                    announce: settings.join_leave,
                    op: Op::Sweep,
                };
                let (_, extra) = self.call(&job, "members").await?;
                members_of(extra).map(Arc::new)
            })
            .await
            .map_err(|e| e.to_owned_error())
    }

    /// How many users and streams the channel has: O(1) in Redis.
    pub async fn stats(&self, channel: &str, settings: &relay_channel::PresenceSettings) -> Result<Stats> {
        let job = Job { channel: channel.to_owned(), ttl: ttl(settings), announce: settings.join_leave, op: Op::Sweep };
        let (_, extra) = self.call(&job, "stats").await?;
        let (members, streams): (u64, u64) = redis::from_redis_value(extra).map_err(bad_reply)?;
        Ok(Stats { members, streams })
    }

    /// Enters, refreshes, departs and sweeps until the relay stops.
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.cancelled() => break,
            }
            self.pass().await;
        }
    }

    /// Sends what is queued: the departures of streams a shutdown ended, before the process goes.
    pub async fn flush(&self) {
        self.pass().await;
    }

    /// One pass: every channel's due work, [`CONCURRENCY`] calls at a time.
    async fn pass(&self) {
        let jobs = self.due(Instant::now());
        let done: Vec<(Job, Result<i64>)> = futures::stream::iter(jobs)
            .map(|job| async move {
                let result = self.run_job(&job).await;
                (job, result)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let now = Instant::now();
        let mut channels = self.channels.lock().expect("presence lock");
        for (job, result) in done {
            let Some(local) = channels.get_mut(&job.channel) else { continue };
            match result {
                Ok(next_ms) => {
                    let next = (next_ms >= 0).then(|| now + Duration::from_millis(next_ms as u64));
                    local.next_sweep = match (local.next_sweep, next) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    match &job.op {
                        // Never later than a failed batch's retry of the same pass.
                        Op::Enter(_, true) => local.next_refresh = local.next_refresh.min(now + local.ttl / 3),
                        // Stay until the departed entries' sweep has announced their leaves.
                        Op::Depart(_) => {
                            local.linger_until = local.linger_until.max(next.unwrap_or(now) + TICK);
                        }
                        _ => {}
                    }
                }
                Err(e) => {
                    tracing::debug!(channel = %job.channel, error = %e, "presence update failed; retrying");
                    // A refresh enters every stream again, the fresh ones included.
                    local.next_refresh = local.next_refresh.min(now + TICK);
                    local.next_sweep = Some(now + TICK);
                    if let Op::Depart(streams) = job.op
                        && local.departed.len() < MAX_DEPARTED
                    {
                        local.departed.extend(streams);
                    }
                }
            }
        }
    }

    /// Takes the work due at `now` off every channel.
    fn due(&self, now: Instant) -> Vec<Job> {
        let mut jobs = Vec::new();
        let mut channels = self.channels.lock().expect("presence lock");
        channels.retain(|_, l| {
            !(l.streams.is_empty() && l.departed.is_empty() && l.fresh.is_empty() && now >= l.linger_until)
        });
        for (channel, local) in channels.iter_mut() {
            let job = |op| Job { channel: channel.clone(), ttl: local.ttl, announce: local.announce, op };
            let mut busy = false;
            if !local.departed.is_empty() {
                for chunk in std::mem::take(&mut local.departed).chunks(BATCH) {
                    jobs.push(job(Op::Depart(chunk.to_vec())));
                }
                busy = true;
            }
            let refresh = now >= local.next_refresh;
            if refresh || !local.fresh.is_empty() {
                let fresh = std::mem::take(&mut local.fresh);
                let ids: Vec<&String> = if refresh { local.streams.keys().collect() } else { fresh.iter().collect() };
                let entries: Vec<(String, String, String)> = ids
                    .into_iter()
                    .filter_map(|s| local.streams.get(s).map(|(u, n)| (s.clone(), u.clone(), n.clone())))
                    .collect();
                for chunk in entries.chunks(BATCH) {
                    jobs.push(job(Op::Enter(chunk.to_vec(), refresh)));
                }
                if refresh {
                    // Not again until this one is answered (or fails and is retried).
                    local.next_refresh = now + local.ttl;
                }
                busy = true;
            }
            if busy {
                // Every job sweeps: the replies say when the next sweep is due.
                local.next_sweep = None;
            } else if local.next_sweep.is_some_and(|at| now >= at) {
                local.next_sweep = None;
                jobs.push(job(Op::Sweep));
            }
        }
        jobs
    }

    /// Runs one job; announces its joins and leaves; returns ms until the next expiry (-1: none).
    async fn run_job(&self, job: &Job) -> Result<i64> {
        let op = match job.op {
            Op::Enter(..) => "enter",
            Op::Depart(_) => "depart",
            Op::Sweep => "sweep",
        };
        let (next, _) = self.call(job, op).await?;
        Ok(next)
    }

    /// Calls the script for `job` as `op`, announces what it reports, returns (next, extra).
    async fn call(&self, job: &Job, op: &str) -> Result<(i64, redis::Value)> {
        let ch = job.channel.as_str();
        let keys = ["exp", "conn", "users", "info"].map(|part| names::presence_key(ch, part));
        let mut args = redis::Cmd::new();
        args.arg(keys.len()).arg(&keys);
        let ttl_ms = job.ttl.as_millis() as u64;
        // Long enough for any entry: the keys outlive every stream entered with this ttl.
        args.arg(op).arg(2 * ttl_ms + GRACE.as_millis() as u64);
        match &job.op {
            Op::Enter(entries, _) => {
                args.arg(ttl_ms);
                for (stream, user, name) in entries {
                    args.arg(stream).arg(user).arg(name);
                }
            }
            Op::Depart(streams) => {
                args.arg(GRACE.as_millis() as u64).arg(streams);
            }
            Op::Sweep => {
                args.arg(MAX_LISTED);
            }
        }
        let (joins, leaves, next, extra): Reply = self.store.run_script(&self.script, &args, &keys[0]).await?;
        crate::metrics::presence_changes("join", joins.len() / 2);
        crate::metrics::presence_changes("leave", leaves.len() / 2);
        if job.announce {
            let join =
                |(userid, username): (String, String)| LiveEvent::Join { channelid: ch.to_owned(), userid, username };
            let leave =
                |(userid, username): (String, String)| LiveEvent::Leave { channelid: ch.to_owned(), userid, username };
            let events: Vec<LiveEvent> = pairs(joins).map(join).chain(pairs(leaves).map(leave)).collect();
            // Best effort, as every live event: a NATS outage loses the announcements, not the
            // presence (Presence still answers right). One deadline for all of them: a NATS that
            // does not take them must not hold up this replica's refreshes.
            let announce = async {
                for event in events {
                    self.bus.client.publish(names::live_subject(ch), event.to_json().into()).await?;
                }
                Ok::<(), async_nats::PublishError>(())
            };
            if let Err(e) = crate::bus::bounded("nats publish", announce).await {
                tracing::debug!(channel = %ch, error = %e, "could not announce joins or leaves");
            }
        }
        Ok((next, extra))
    }
}

fn ttl(settings: &relay_channel::PresenceSettings) -> Duration {
    Duration::from_secs(settings.ttl_secs.clamp(1, 3600))
}

fn pairs(flat: Vec<String>) -> impl Iterator<Item = (String, String)> {
    let mut it = flat.into_iter();
    std::iter::from_fn(move || Some((it.next()?, it.next()?)))
}

fn bad_reply(e: impl std::fmt::Display) -> Error {
    Error::unavailable("redis", format!("presence script returned {e}"))
}

/// The members from a `members` reply: (users and their stream counts as a flat list, each one's
/// `<since>:<name>` in the same order, truncated).
fn members_of(extra: redis::Value) -> Result<Members> {
    let (counts, info, truncated): (Vec<String>, Vec<String>, u8) =
        redis::from_redis_value(extra).map_err(bad_reply)?;
    let mut members: Vec<Member> = pairs(counts)
        .zip(info)
        .map(|((user, streams), info)| {
            let (since, name) = info.split_once(':').unwrap_or(("0", ""));
            Member {
                name: name.to_owned(),
                streams: streams.parse().unwrap_or(0),
                since_ms: since.parse().unwrap_or(0),
                user,
            }
        })
        .collect();
    members.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(Members { members, truncated: truncated == 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_of_a_flat_list() {
        let got: Vec<_> = pairs(vec!["u1".into(), "A".into(), "u2".into(), String::new()]).collect();
        assert_eq!(got, [("u1".to_owned(), "A".to_owned()), ("u2".to_owned(), String::new())]);
        assert_eq!(pairs(vec!["odd".into()]).count(), 0);
    }

    #[test]
    fn members_from_a_reply() {
        use redis::Value::{Array, BulkString};
        let s = |v: &str| BulkString(v.as_bytes().to_vec());
        let reply = Array(vec![
            Array(vec![s("bob"), s("2"), s("al"), s("1")]),
            Array(vec![s("1700000000000:Bob: the builder"), s("5:")]),
            redis::Value::Int(1),
        ]);
        let got = members_of(reply).unwrap();
        assert!(got.truncated);
        let got = got.members;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Member { user: "al".into(), name: String::new(), streams: 1, since_ms: 5 });
        assert_eq!(got[1].name, "Bob: the builder", "a name may hold colons");
        assert_eq!(got[1].streams, 2);
    }
}
