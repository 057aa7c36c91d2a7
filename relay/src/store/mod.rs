//! Redis: each channel's history, its `seq`/`ts` counters, its epoch and remembered idempotency keys.
//!
//! Two Lua scripts do all of it, each atomically: `append.lua` appends a batch of messages of one
//! channel, in turn assigning each a `seq` (a counter) and a `ts` (Redis's own clock, pushed forward
//! by a nanosecond when it would not increase), adding the entry to the history stream with id
//! `<seq>-0` and remembering its idempotency key, then trims by count and by age; `read.lua` reads a
//! page after a cursor together with where the channel stands. Because every replica goes through
//! the same scripts on the same keys, `seq` and `ts` are strictly increasing per channel however
//! many replicas publish at once, and no two relays' clocks are ever compared. Concurrent appends
//! to a channel on one relay go together in one call ([`batch`]: group commit).
//!
//! **Epochs.** The channel's meta hash holds an epoch, set by the first append after the hash was
//! created. When the hash is lost (a Redis without persistence restarting, a failover to a replica
//! that had not received it, the operator deleting a channel's data) the next append starts a new
//! epoch, drops what is left of the old history and counts `seq` from 1 again. Every message carries
//! its epoch, so readers can tell "seq 3 again" from "seq 3 once more" and say so to clients.
//!
//! **Replicas.** Redis replicates asynchronously: a master that fails takes its last writes with
//! it, and the promoted replica hands their seqs out again. With `--redis-wait-replicas N` every
//! append is followed by `WAIT N` on the same connection (one pipeline, so the WAIT vouches for that
//! write and no other); only then is the message announced, and `durable.lua` records the channel's
//! `durable` seq, past which readers do not read (`read.lua`'s last argument). What a failover can
//! take back was then never seen by anyone: neither on NATS nor in a history page. A message no
//! mark of its own covered (its WAIT failed) is announced by the first batch whose mark covers it,
//! before that batch ([`covered`]).
//!
//! Finding a position by age or by `ts` is a binary search over seqs inside the scripts (entries are
//! in `ts` order because `ts` grows with `seq`): a page costs O(log n) stream lookups plus the page,
//! never a scan of the history.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use relay_channel::{WireMessage, names};
use relay_connect::redis::Conn;

use crate::error::{Error, Result};

mod batch;
mod covered;

pub use covered::Covered;

const HELPERS: &str = include_str!("helpers.lua");
const APPEND: &str = include_str!("append.lua");
const READ: &str = include_str!("read.lua");
const DURABLE: &str = include_str!("durable.lua");

/// How long an idempotency key is remembered when the channel keeps history for less.
const MIN_IDEMPOTENCY_TTL: u64 = 3600;
/// The largest seq position handed to the scripts: Lua numbers are doubles, exact up to 2^53.
const MAX_POSITION: u64 = (1 << 53) - 2;
/// How long a Redis call may take before the caller gets UNAVAILABLE (the connection's own
/// response timeout, retried, could add up to more).
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// The most messages one repair reads from history.
pub const MAX_REPAIR: usize = 4096;
/// The most bytes of message fields one read returns (at least one message, whatever its size):
/// what a page holds in memory, in Redis and here, stays bounded with large messages.
pub const PAGE_BYTES: usize = 1024 * 1024;

/// What to append.
pub struct Append<'a> {
    pub channel: &'a str,
    pub userid: &'a str,
    /// The sender's display name, stored with the message.
    pub username: &'a str,
    pub text: &'a str,
    pub id: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub max_messages: u64,
    pub max_age_secs: u64,
    /// When set, the channel's meta and history expire after this long without a publish (channels
    /// that no `RelayChannel` names exactly, so junk names do not stay in Redis forever).
    pub idle_ttl_secs: Option<u64>,
}

/// The result of an append.
pub struct Appended {
    pub message: WireMessage,
    /// The idempotency key was seen before: this is the message stored then.
    pub replayed: bool,
    /// On as many Redis replicas as `--redis-wait-replicas` asks (always, when it asks none).
    pub replicated: bool,
    /// Earlier messages of the channel that replicas did not confirm at first and this append's
    /// durable mark vouched for: to announce before this one (shared by the appends of a batch).
    pub covered: Option<Arc<Covered>>,
}

/// Where a reader resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    Seq(u64),
    Ts(i64),
}

/// Which page to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// Oldest first, after a position.
    After(After),
    /// The newest messages, returned oldest first.
    Latest,
}

/// A page of history and where the channel stood when it was read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Page {
    /// The channel's epoch; empty when nothing was ever published (or its meta was lost since).
    pub epoch: String,
    /// The last seq a reader may read in this epoch (0: none): the last assigned, or with
    /// `--redis-wait-replicas` the last that replicas are known to have.
    pub last_seq: u64,
    /// The last seq assigned in this epoch (at least `last_seq`).
    pub assigned_seq: u64,
    /// The last ts assigned in this epoch (0: none).
    pub last_ts: i64,
    /// The oldest message inside retention, as (seq, ts).
    pub oldest: Option<(u64, i64)>,
    pub messages: Vec<WireMessage>,
    /// More messages follow the page (for `Latest`: precede it).
    pub more: bool,
}

impl Page {
    /// Whether the channel's history was lost since a cursor at `after` of `epoch` was handed out:
    /// its position means nothing in the current epoch, so a reader starts from the beginning.
    pub fn lost_since(&self, after: After, epoch: &str) -> bool {
        (!epoch.is_empty() && epoch != self.epoch) || matches!(after, After::Seq(s) if s > self.assigned_seq)
    }

    /// Whether history holds everything after `after` of epoch `epoch` (empty: the current one),
    /// so a reader resuming there misses nothing.
    pub fn covers(&self, after: After, epoch: &str) -> bool {
        if !epoch.is_empty() && epoch != self.epoch {
            return false;
        }
        match after {
            // A seq beyond the last assigned one comes from before a loss of Redis data; one past
            // what may be read yet (replicas have not confirmed it) misses nothing.
            After::Seq(s) => {
                (self.last_seq..=self.assigned_seq).contains(&s)
                    || (s < self.last_seq && self.oldest.is_some_and(|(seq, _)| seq <= s + 1))
            }
            // Nothing is newer, or nothing was ever trimmed, or all that was trimmed is older.
            After::Ts(t) => t >= self.last_ts || self.oldest.is_some_and(|(seq, ts)| seq == 1 || ts <= t),
        }
    }
}

/// Redis access for history; cheap to clone (one multiplexed, self-reconnecting connection, to a
/// standalone Redis, a Redis Cluster or a Sentinel-managed master).
#[derive(Clone)]
pub struct Store {
    conn: Conn,
    /// Shared: a clone of the store (one per publish) copies no script source.
    scripts: Arc<Scripts>,
    /// Set with `--redis-wait-replicas`: appends wait for that many replicas.
    replication: Option<Arc<Replication>>,
    /// Appends waiting per channel (group commit).
    batches: Arc<batch::Batches>,
}

struct Scripts {
    append: redis::Script,
    read: redis::Script,
    durable: redis::Script,
}

/// Appends that count only once Redis replicas have them (`WAIT` behind each append).
pub struct Replication {
    /// Connections for appends only: a WAIT holds up what follows it on its connection, so reads
    /// never queue behind one, and appends spread over a few.
    writers: Vec<Conn>,
    next: AtomicUsize,
    pub replicas: u32,
    pub timeout: Duration,
}

impl Replication {
    pub fn new(writers: Vec<Conn>, replicas: u32, timeout: Duration) -> Self {
        assert!(!writers.is_empty(), "at least one writer connection");
        Self { writers, next: AtomicUsize::new(0), replicas, timeout }
    }
}

type Entry = (String, Vec<String>);
type ReadReply = (Vec<String>, u64, String, Vec<Entry>, u8);

impl Store {
    /// Uses a connection that connects lazily: the relay starts (not ready) while Redis is down.
    pub fn new(conn: Conn) -> Result<Self> {
        Ok(Self {
            conn,
            scripts: Arc::new(Scripts {
                append: redis::Script::new(&format!("{HELPERS}\n{APPEND}")),
                read: redis::Script::new(&format!("{HELPERS}\n{READ}")),
                durable: redis::Script::new(&format!("{HELPERS}\n{DURABLE}")),
            }),
            replication: None,
            batches: Arc::default(),
        })
    }

    /// Makes appends wait for Redis replicas (see [`Replication`]).
    pub fn with_replication(mut self, replication: Replication) -> Self {
        self.replication = Some(Arc::new(replication));
        self
    }

    /// Runs a script call (`EVALSHA`, loading the script first where Redis does not have it yet)
    /// on `conn`, with a `WAIT` for replicas behind it when `wait` is given; returns the reply and
    /// whether it is on as many replicas as asked.
    async fn eval(
        &self,
        conn: &Conn,
        script: &redis::Script,
        args: &redis::Cmd,
        key: &str,
        wait: Option<&Replication>,
    ) -> Result<(redis::Value, bool)> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash());
        for arg in args.args_iter() {
            if let redis::Arg::Simple(bytes) = arg {
                cmd.arg(bytes);
            }
        }
        let run = || async {
            match wait {
                None => cmd.query_async::<redis::Value>(&mut conn.clone()).await.map(|v| (v, true)),
                Some(r) => {
                    let (v, acked) = conn.write_and_wait(key, &cmd, r.replicas, r.timeout).await?;
                    Ok((v, acked >= i64::from(r.replicas)))
                }
            }
        };
        bounded(async {
            match run().await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    // Loaded through the same connection: the node that lacks it.
                    let _: String = script.load_async(&mut conn.clone()).await?;
                    run().await
                }
                other => other,
            }
        })
        .await
    }

    /// Runs another module's script (`args`: numkeys, keys, arguments) on the shared connection,
    /// with the same deadline as every Redis call; `key` is one of its keys (for routing).
    pub async fn run_script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        args: &redis::Cmd,
        key: &str,
    ) -> Result<T> {
        let (reply, _) = self.eval(&self.conn, script, args, key, None).await?;
        redis::from_redis_value(reply).map_err(|e| Error::unavailable("redis", e.to_string()))
    }

    /// Runs a command, with the same deadline as every Redis call.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T> {
        let mut conn = self.conn.clone();
        bounded(cmd.query_async(&mut conn)).await
    }

    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Appends one message; see the module docs for what the script guarantees. Concurrent
    /// appends to a channel share a script call ([`batch`]).
    pub async fn append(&self, mut a: Append<'_>) -> Result<Appended> {
        // Settings come from Redis: whatever they say, Redis and the script get numbers they take.
        a.max_age_secs = a.max_age_secs.min(MAX_AGE_SECS);
        a.max_messages = a.max_messages.clamp(1, MAX_MESSAGES);
        a.idle_ttl_secs = a.idle_ttl_secs.map(|t| t.min(MAX_AGE_SECS).max(a.max_age_secs));
        let (job, answer) = batch::Job::new(&a);
        self.submit(job, answer).await
    }

    /// Appends a batch of messages to one channel (all with the same limits) in one script call,
    /// in order; one answer per message.
    /// The outer error: the call failed (whether it stored anything is unknown).
    async fn append_batch(&self, jobs: &[batch::Job]) -> Result<Vec<Result<Appended>>> {
        let Some(first) = jobs.first() else { return Ok(Vec::new()) };
        let (channel, limits) = (first.channel.as_str(), first.limits);
        let meta = names::meta_key(channel);
        let mut args = redis::Cmd::new();
        args.arg(3 + jobs.len()).arg(names::history_key(channel)).arg(&meta).arg(names::pending_key(channel));
        for job in jobs {
            // Without a key, the meta key stands in: every key of a script shares the channel's slot.
            match &job.idempotency_key {
                Some(k) => args.arg(names::idempotency_key(channel, &job.userid, k)),
                None => args.arg(&meta),
            };
        }
        args.arg(limits.max_messages)
            .arg(limits.max_age_secs)
            .arg(limits.max_age_secs.max(MIN_IDEMPOTENCY_TTL))
            .arg(new_epoch())
            .arg(limits.idle_ttl_secs.unwrap_or(0))
            .arg(jobs.len())
            .arg(if self.replication.is_some() { "1" } else { "0" });
        for job in jobs {
            args.arg(&job.userid)
                .arg(&job.text)
                .arg(&job.id)
                .arg(&job.username)
                .arg(if job.idempotency_key.is_some() { "1" } else { "0" });
        }
        let replication = self.replication.as_deref();
        // One writer for the appends and their durable mark: both reach the same master.
        let conn = match replication {
            Some(r) => &r.writers[r.next.fetch_add(1, Ordering::Relaxed) % r.writers.len()],
            None => &self.conn,
        };
        let (reply, replicated) = self.eval(conn, &self.scripts.append, &args, &meta, replication).await?;
        let replies: Vec<redis::Value> = redis::from_redis_value(reply).map_err(|_| bad_reply("reply (not a list)"))?;
        if replies.len() != jobs.len() {
            return Err(bad_reply("number of replies"));
        }
        // Each message answered on its own: one odd reply (a replayed key's record written by
        // something else, say) fails that publish, not the batch stored beside it.
        let mut appended: Vec<Result<Appended>> =
            jobs.iter().zip(replies).map(|(job, reply)| parse_appended(job, reply, replicated)).collect();
        if replicated && replication.is_some() {
            self.mark_durable(conn, channel, &meta, &mut appended).await;
        }
        Ok(appended)
    }

    /// After a WAIT said replicas have a batch: lets readers that read only what replicas hold read
    /// it. One mark per epoch, at its highest seq (marks only move forward, and replication is in
    /// order). The mark is checked against the entry (the same id at that seq, in that epoch), so a
    /// relay whose connections straddle an old and a new master cannot expose what the new one's
    /// replicas lack; messages whose mark does not hold are answered as not replicated. A mark with
    /// no answer (Redis away, no answer in time) does too: they are answered "stored, retry with
    /// the same key" and announced by their retry (or, if the mark never ran, by the first later
    /// mark, which finds them pending).
    ///
    /// The mark hands back the channel's earlier messages no mark covered ([`covered`]): the
    /// batch announces them first ([`Appended::covered`]).
    async fn mark_durable(&self, conn: &Conn, channel: &str, meta: &str, appended: &mut [Result<Appended>]) {
        let replication = self.replication.as_deref();
        let mut epochs: Vec<String> = appended.iter().flatten().map(|a| a.message.epoch.clone()).collect();
        epochs.sort_unstable();
        epochs.dedup();
        for epoch in epochs {
            let in_epoch = |a: &&Appended| a.message.epoch == epoch;
            let Some(top) = appended.iter().flatten().filter(in_epoch).max_by_key(|a| a.message.seq) else { continue };
            let mut mark = redis::Cmd::new();
            mark.arg(3)
                .arg(names::history_key(channel))
                .arg(meta)
                .arg(names::pending_key(channel))
                .arg(&epoch)
                .arg(top.message.seq.to_string())
                .arg(&top.message.id)
                .arg(covered::MAX_COVERED);
            for a in appended.iter().flatten().filter(in_epoch) {
                mark.arg(a.message.seq.to_string());
            }
            // (whether the mark holds, the earlier messages it handed back). A mark that holds
            // counts even when its own WAIT fails: the batch's WAIT already vouched for the batch
            // and everything before it, and the mark left the pending set, so no one else would
            // announce them. A lost mark only keeps readers behind.
            let (durable, earlier) = match self.eval(conn, &self.scripts.durable, &mark, meta, replication).await {
                Ok((reply, _)) => match redis::from_redis_value::<(u8, Vec<Entry>)>(reply) {
                    Ok((1, entries)) => (true, entries),
                    Ok(_) => (false, Vec::new()),
                    Err(e) => {
                        tracing::debug!(%channel, error = %e, "durable mark answered oddly; the batch counts as not replicated");
                        (false, Vec::new())
                    }
                },
                Err(e) => {
                    tracing::debug!(%channel, error = %e, "durable mark failed; the batch counts as not replicated");
                    (false, Vec::new())
                }
            };
            let earlier: Vec<WireMessage> = earlier.into_iter().filter_map(|e| parse(channel, &epoch, e)).collect();
            let covered = (!earlier.is_empty()).then(|| Arc::new(Covered::new(earlier)));
            for a in appended.iter_mut().flatten().filter(|a| a.message.epoch == epoch) {
                a.replicated = durable;
                a.covered = covered.clone();
            }
        }
    }

    /// Up to `limit` messages and where the channel stands. Messages older than `max_age` (zero:
    /// no limit) are left out even before they are trimmed, and paged past.
    pub async fn read(&self, channel: &str, from: Read, limit: usize, max_age: Duration) -> Result<Page> {
        let (mode, position) = match from {
            Read::After(After::Seq(s)) => ("seq", s.min(MAX_POSITION).to_string()),
            Read::After(After::Ts(t)) => ("ts", t.max(0).to_string()),
            Read::Latest => ("latest", "0".to_owned()),
        };
        let mut conn = self.conn.clone();
        let (header, oldest_seq, oldest_ts, entries, cut) = bounded(
            self.scripts
                .read
                .key(names::history_key(channel))
                .key(names::meta_key(channel))
                .arg(mode)
                .arg(position)
                .arg(max_age.as_secs().min(MAX_AGE_SECS))
                .arg(limit)
                .arg(PAGE_BYTES)
                .arg(if self.replication.is_some() { "1" } else { "0" })
                .invoke_async::<ReadReply>(&mut conn),
        )
        .await?;
        let number = |i: usize| header.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let epoch = header.first().cloned().unwrap_or_default();
        let more = entries.len() > limit || cut == 1;
        let mut messages: Vec<WireMessage> =
            entries.into_iter().take(limit).filter_map(|e| parse(channel, &epoch, e)).collect();
        if from == Read::Latest {
            messages.reverse();
        }
        Ok(Page {
            last_seq: number(1).max(0) as u64,
            assigned_seq: number(4).max(number(1)).max(0) as u64,
            last_ts: number(2).saturating_mul(1_000_000_000).saturating_add(number(3)),
            oldest: (oldest_seq > 0).then(|| (oldest_seq, oldest_ts.parse().unwrap_or(0))),
            epoch,
            messages,
            more,
        })
    }

    /// Messages with `from < seq < to` (at most [`MAX_REPAIR`], and [`PAGE_BYTES`]), for repairing a gap seen on the
    /// live path, with the epoch they belong to. Retention by age does not apply: what is still
    /// there is delivered rather than skipped.
    pub async fn between(&self, channel: &str, from: u64, to: u64) -> Result<Page> {
        let want = (to.saturating_sub(from).saturating_sub(1) as usize).min(MAX_REPAIR);
        let mut page = self.read(channel, Read::After(After::Seq(from)), want, Duration::ZERO).await?;
        let reached = page.messages.iter().any(|m| m.seq >= to);
        page.messages.retain(|m| m.seq < to);
        // `more`: messages before `to` may follow the page (it was cut short).
        page.more = page.more && !reached && !page.messages.is_empty();
        Ok(page)
    }
}

/// The longest retention the store applies (twenty years): longer ones are taken as this.
pub const MAX_AGE_SECS: u64 = 20 * 365 * 24 * 3600;
/// The most messages a history keeps (what Lua numbers hold exactly).
pub const MAX_MESSAGES: u64 = 1 << 53;

/// Awaits a Redis call for at most [`REDIS_TIMEOUT`].
async fn bounded<T>(call: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
    match tokio::time::timeout(REDIS_TIMEOUT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::unavailable("redis", format!("no answer within {REDIS_TIMEOUT:?}"))),
    }
}

fn bad_reply(what: &str) -> Error {
    Error::unavailable("redis", format!("append script returned a bad {what}"))
}

/// One message's reply from `append.lua`: `{0, seq, ts, epoch}` for an append, or
/// `{1, seq, ts, id, text, username, epoch}` for a replayed idempotency key.
fn parse_appended(job: &batch::Job, reply: redis::Value, replicated: bool) -> Result<Appended> {
    let reply: Vec<redis::Value> = redis::from_redis_value(reply).map_err(|_| bad_reply("entry"))?;
    let field = |i: usize| -> Result<String> {
        reply.get(i).and_then(|v| redis::from_redis_value(v.clone()).ok()).ok_or_else(|| bad_reply("field"))
    };
    let replayed = field(0)? == "1";
    let (username, text, id, epoch) = if replayed {
        (field(5)?, field(4)?, field(3)?, field(6)?)
    } else {
        (job.username.clone(), job.text.clone(), job.id.clone(), field(3)?)
    };
    Ok(Appended {
        message: WireMessage {
            channelid: job.channel.clone(),
            userid: job.userid.clone(),
            username,
            text,
            ts: field(2)?.parse().map_err(|_| bad_reply("ts"))?,
            seq: field(1)?.parse().map_err(|_| bad_reply("seq"))?,
            id,
            epoch,
        },
        replayed,
        replicated,
        covered: None,
    })
}

/// A fresh epoch: the time in milliseconds (so epochs sort by when they began) and randomness (so
/// two replicas starting one at the same moment cannot collide).
fn new_epoch() -> String {
    format!("{:x}{:04x}", crate::now_nanos() / 1_000_000, rand::random::<u16>())
}

/// One stream entry (`<seq>-0`, fields u t ts id n) as a message; None for an entry not of ours.
fn parse(channel: &str, epoch: &str, (id, fields): Entry) -> Option<WireMessage> {
    let seq = id.strip_suffix("-0")?.parse().ok()?;
    let mut m = WireMessage {
        channelid: channel.to_owned(),
        userid: String::new(),
        username: String::new(),
        text: String::new(),
        ts: 0,
        seq,
        id: String::new(),
        epoch: epoch.to_owned(),
    };
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match k.as_str() {
            "u" => m.userid = v,
            "t" => m.text = v,
            "ts" => m.ts = v.parse().ok()?,
            "id" => m.id = v,
            "n" => m.username = v,
            _ => {}
        }
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(epoch: &str, last_seq: u64, last_ts: i64, oldest: Option<(u64, i64)>) -> Page {
        Page { epoch: epoch.into(), last_seq, assigned_seq: last_seq, last_ts, oldest, ..Default::default() }
    }

    #[test]
    fn covers_by_seq() {
        let p = page("e1", 10, 1000, Some((4, 400)));
        assert!(p.covers(After::Seq(10), ""), "nothing newer");
        assert!(p.covers(After::Seq(3), ""), "4..10 all kept");
        assert!(!p.covers(After::Seq(2), ""), "3 was trimmed");
        assert!(!p.covers(After::Seq(11), ""), "a seq from the future predates a loss");
        assert!(p.covers(After::Seq(5), "e1"));
        assert!(!p.covers(After::Seq(5), "e0"), "another epoch: history was lost");
        assert!(!page("", 0, 0, None).covers(After::Seq(5), "e1"), "meta lost, nothing since");
        assert!(page("", 0, 0, None).covers(After::Seq(0), ""), "empty channel, start");
        assert!(!page("e1", 10, 1000, None).covers(After::Seq(3), ""), "everything expired");
    }

    #[test]
    fn covers_by_ts() {
        let p = page("e1", 10, 1000, Some((4, 400)));
        assert!(p.covers(After::Ts(1000), ""));
        assert!(p.covers(After::Ts(400), ""), "the oldest kept is at the cursor");
        assert!(p.covers(After::Ts(450), ""));
        assert!(!p.covers(After::Ts(399), ""), "something between 399 and 400 may be gone");
        assert!(page("e1", 10, 1000, Some((1, 100))).covers(After::Ts(5), ""), "nothing ever trimmed");
    }

    #[test]
    fn epochs_sort_by_time() {
        let a = new_epoch();
        std::thread::sleep(Duration::from_millis(2));
        let b = new_epoch();
        assert!(a.len() >= 12 && a < b, "{a} {b}");
    }
}
