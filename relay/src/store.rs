//! Redis: each channel's history, its `seq`/`ts` counters and remembered idempotency keys.
//!
//! One Lua script appends a message atomically: it assigns `seq` (a counter) and `ts` (Redis's own
//! clock, pushed forward by a nanosecond when it would not increase), adds the entry to the history
//! stream with id `<seq>-0`, trims by count and age, and remembers the idempotency key. Because every
//! replica goes through the same script on the same keys, `seq` and `ts` are strictly increasing per
//! channel however many replicas publish at once, and no two relays' clocks are ever compared.
//!
//! `ts` is built from two integers (seconds, nanoseconds) inside the script: Lua numbers are doubles
//! and cannot hold a nanosecond timestamp exactly.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use relay_channel::{WireMessage, names};

use crate::error::{Error, Result};

const APPEND: &str = r#"
-- KEYS: history stream, meta hash, idempotency key (ignored unless ARGV[7] == '1')
-- ARGV: userid, text, id, max messages, max age seconds, idempotency ttl seconds,
--       has idempotency key, sender's display name
if ARGV[7] == '1' then
  local prev = redis.call('HMGET', KEYS[3], 'seq', 'ts', 'id', 't', 'n')
  if prev[1] then
    return {1, prev[1], prev[2], prev[3], prev[4], prev[5]}
  end
end
local now = redis.call('TIME')
local sec = tonumber(now[1])
local nsec = tonumber(now[2]) * 1000
local last = redis.call('HMGET', KEYS[2], 'ts_s', 'ts_ns')
if last[1] then
  local ls, lns = tonumber(last[1]), tonumber(last[2])
  if sec < ls or (sec == ls and nsec <= lns) then
    sec, nsec = ls, lns + 1
    if nsec >= 1000000000 then sec, nsec = sec + 1, 0 end
  end
end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
redis.call('HSET', KEYS[2], 'ts_s', sec, 'ts_ns', nsec)
local ts = string.format('%d%09d', sec, nsec)
local maxlen = tonumber(ARGV[4])
-- Field order matters: the age trim below reads ts as the entry's sixth element.
redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, seq .. '-0', 'u', ARGV[1], 't', ARGV[2], 'ts', ts, 'id', ARGV[3], 'n', ARGV[8])
local max_age = tonumber(ARGV[5])
if max_age > 0 then
  redis.call('EXPIRE', KEYS[1], max_age)
  local cutoff = string.format('%d%09d', sec - max_age, nsec)
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if first[1] and first[1][2][6] < cutoff then
    local batch = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 128)
    local keep = nil
    for _, e in ipairs(batch) do
      if e[2][6] >= cutoff then keep = e[1] break end
    end
    if keep then redis.call('XTRIM', KEYS[1], 'MINID', keep) else redis.call('XTRIM', KEYS[1], 'MINID', seq .. '-0') end
  end
end
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[3], 'seq', seq, 'ts', ts, 'id', ARGV[3], 't', ARGV[2], 'n', ARGV[8])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
end
return {0, tostring(seq), ts, ARGV[3], ARGV[2], ARGV[8]}
"#;

/// How long an idempotency key is remembered when the channel keeps history for less.
const MIN_IDEMPOTENCY_TTL: u64 = 3600;
/// Page size when walking history backwards to find a `since_ts` cursor.
const TS_SCAN_PAGE: usize = 256;

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
}

/// The result of an append.
pub struct Appended {
    pub message: WireMessage,
    /// The idempotency key was seen before: this is the message stored then.
    pub replayed: bool,
}

/// A page of history.
#[derive(Debug, Default)]
pub struct Page {
    pub messages: Vec<WireMessage>,
    pub more: bool,
}

/// Where a channel stands.
#[derive(Debug, Default)]
pub struct Bounds {
    pub last_seq: u64,
    pub last_ts: i64,
    pub oldest: Option<WireMessage>,
}

/// Where a reader resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    Seq(u64),
    Ts(i64),
}

/// Redis access for history; cheap to clone (one multiplexed, self-reconnecting connection).
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    append: redis::Script,
}

type Entry = (String, Vec<String>);

impl Store {
    /// Connects lazily: the relay starts (not ready) while Redis is down.
    pub fn new(url: &str) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|e| Error::unavailable("redis url", e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| Error::unavailable("redis", e))?;
        Ok(Self { conn, append: redis::Script::new(APPEND) })
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Appends one message; see the module docs for what the script guarantees.
    pub async fn append(&self, a: Append<'_>) -> Result<Appended> {
        let mut conn = self.conn.clone();
        let idem = a.idempotency_key.map(|k| names::idempotency_key(a.channel, a.userid, k));
        let idem_ttl = a.max_age_secs.max(MIN_IDEMPOTENCY_TTL);
        let meta = names::meta_key(a.channel);
        let (replayed, seq, ts, id, text, username): (u8, String, String, String, String, String) = self
            .append
            .key(names::history_key(a.channel))
            .key(&meta)
            // Without a key, the meta key stands in: every key of a script shares the channel's slot.
            .key(idem.as_deref().unwrap_or(&meta))
            .arg(a.userid)
            .arg(a.text)
            .arg(a.id)
            .arg(a.max_messages.max(1))
            .arg(a.max_age_secs)
            .arg(idem_ttl)
            .arg(if idem.is_some() { "1" } else { "0" })
            .arg(a.username)
            .invoke_async(&mut conn)
            .await?;
        let bad = |what: &str| Error::unavailable("redis", format!("append script returned a bad {what}"));
        Ok(Appended {
            message: WireMessage {
                channelid: a.channel.to_owned(),
                userid: a.userid.to_owned(),
                username,
                text,
                ts: ts.parse().map_err(|_| bad("ts"))?,
                seq: seq.parse().map_err(|_| bad("seq"))?,
                id,
            },
            replayed: replayed == 1,
        })
    }

    /// Up to `limit` messages after `after`, oldest first; messages older than `max_age` are left out.
    pub async fn after(&self, channel: &str, after: After, limit: usize, max_age: Option<Duration>) -> Result<Page> {
        let mut messages = match after {
            After::Seq(seq) => self.range_after_seq(channel, seq, limit + 1).await?,
            After::Ts(ts) => self.range_after_ts(channel, ts, limit + 1).await?,
        };
        drop_expired(&mut messages, max_age);
        let more = messages.len() > limit;
        messages.truncate(limit);
        Ok(Page { messages, more })
    }

    /// The newest `limit` messages, oldest first.
    pub async fn latest(&self, channel: &str, limit: usize, max_age: Option<Duration>) -> Result<Page> {
        let mut conn = self.conn.clone();
        let entries: Vec<Entry> = redis::cmd("XREVRANGE")
            .arg(names::history_key(channel))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit + 1)
            .query_async(&mut conn)
            .await?;
        let more = entries.len() > limit;
        let mut messages: Vec<_> = entries.into_iter().take(limit).filter_map(|e| parse(channel, e)).collect();
        messages.reverse();
        drop_expired(&mut messages, max_age);
        Ok(Page { messages, more })
    }

    /// Messages with `from < seq < to`, for repairing a gap seen on the live path.
    pub async fn between(&self, channel: &str, from: u64, to: u64) -> Result<Vec<WireMessage>> {
        if to <= from + 1 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let entries: Vec<Entry> = redis::cmd("XRANGE")
            .arg(names::history_key(channel))
            .arg(format!("({from}-0"))
            .arg(format!("({to}-0"))
            .query_async(&mut conn)
            .await?;
        Ok(entries.into_iter().filter_map(|e| parse(channel, e)).collect())
    }

    /// Where the channel stands: the last assigned `seq` and `ts` (zero when nothing was ever
    /// published) and the oldest message history still holds.
    pub async fn bounds(&self, channel: &str) -> Result<Bounds> {
        let mut conn = self.conn.clone();
        type Meta = (Option<u64>, Option<i64>, Option<i64>);
        let ((seq, ts_s, ts_ns), oldest): (Meta, Vec<Entry>) = redis::pipe()
            .cmd("HMGET")
            .arg(names::meta_key(channel))
            .arg(&["seq", "ts_s", "ts_ns"])
            .cmd("XRANGE")
            .arg(names::history_key(channel))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(Bounds {
            last_seq: seq.unwrap_or(0),
            last_ts: ts_s.unwrap_or(0) * 1_000_000_000 + ts_ns.unwrap_or(0),
            oldest: oldest.into_iter().next().and_then(|e| parse(channel, e)),
        })
    }

    async fn range_after_seq(&self, channel: &str, seq: u64, count: usize) -> Result<Vec<WireMessage>> {
        let mut conn = self.conn.clone();
        let entries: Vec<Entry> = redis::cmd("XRANGE")
            .arg(names::history_key(channel))
            .arg(format!("({seq}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(entries.into_iter().filter_map(|e| parse(channel, e)).collect())
    }

    /// Walks history backwards from the newest entry until it passes `ts`: a reconnecting client's
    /// cursor is usually recent, so this reads little more than what it returns.
    async fn range_after_ts(&self, channel: &str, ts: i64, count: usize) -> Result<Vec<WireMessage>> {
        let mut conn = self.conn.clone();
        let key = names::history_key(channel);
        let mut newer_first = Vec::new();
        let mut end = "+".to_owned();
        loop {
            let entries: Vec<Entry> = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(TS_SCAN_PAGE)
                .query_async(&mut conn)
                .await?;
            let page_len = entries.len();
            let mut passed = false;
            for m in entries.into_iter().filter_map(|e| parse(channel, e)) {
                if m.ts <= ts {
                    passed = true;
                    break;
                }
                end = format!("({}-0", m.seq);
                newer_first.push(m);
            }
            if passed || page_len < TS_SCAN_PAGE {
                break;
            }
        }
        newer_first.reverse();
        newer_first.truncate(count);
        Ok(newer_first)
    }
}

fn drop_expired(messages: &mut Vec<WireMessage>, max_age: Option<Duration>) {
    let Some(max_age) = max_age.filter(|d| !d.is_zero()) else { return };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let cutoff = now.saturating_sub(max_age).as_nanos() as i64;
    messages.retain(|m| m.ts >= cutoff);
}

/// One stream entry (`<seq>-0`, fields u t ts id n) as a message; None for an entry not of ours.
fn parse(channel: &str, (id, fields): Entry) -> Option<WireMessage> {
    let seq = id.strip_suffix("-0")?.parse().ok()?;
    let mut m = WireMessage {
        channelid: channel.to_owned(),
        userid: String::new(),
        username: String::new(),
        text: String::new(),
        ts: 0,
        seq,
        id: String::new(),
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
