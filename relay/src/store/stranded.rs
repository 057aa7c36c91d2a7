//! Messages this relay stored that replicas did not confirm in time (`--redis-wait-replicas`: the
//! WAIT timed out, a failover was under way). Their publishers were told UNAVAILABLE ("stored,
//! retry with the same key") and they were not announced, since a failover could still take them
//! back. But often the new master has them, and once replicas are known to have them they must be
//! announced before anything after them: a perUser stream that resumes past a later message never
//! sees an earlier one announced after it (the fault checker's Sentinel run found exactly that).
//!
//! So each unconfirmed message is kept here, per channel:
//! - The next durable mark this relay writes on the channel checks them in the same script call.
//!   Those it vouches for are announced ahead of the marking batch, in seq order ([`Covered`]).
//! - Those no mark of this relay covers are looked at every second ([`Store::settle`]). They are
//!   announced once the channel's durable mark (any relay's) has passed them, and dropped when
//!   history no longer holds them: a failover took them, they were never acknowledged, and their
//!   publishers' retries store them again.
//!
//! Bounded: at most [`CAPACITY`] messages, each kept at most [`GIVE_UP_AFTER`]. Past either, a
//! message is announced only by its publisher's retry, as before this list existed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use relay_channel::{WireMessage, names};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::Store;

/// Messages kept at most, over all channels.
const CAPACITY: usize = 10_000;
/// How long a message is kept before it is left to its publisher's retry.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
/// How long a message waits for a mark of this relay before [`Store::settle`] looks at it.
const SETTLE_AFTER: Duration = Duration::from_secs(1);
/// The most messages one script call checks.
const MAX_CHECK: usize = 512;

/// Messages stored here but not confirmed by replicas, per channel.
#[derive(Default)]
pub struct Stranded {
    channels: Mutex<HashMap<String, Vec<Kept>>>,
}

pub struct Kept {
    pub message: WireMessage,
    since: Instant,
}

/// Earlier messages a durable mark vouched for: announced once, before any message of the batch
/// that wrote the mark.
pub struct Covered {
    pub messages: Vec<WireMessage>,
    announced: OnceCell<()>,
}

impl Covered {
    pub fn new(messages: Vec<WireMessage>) -> Self {
        Self { messages, announced: OnceCell::new() }
    }

    /// Runs `announce` the first time it is called; later callers wait for that one to finish.
    pub async fn announce_once<F: Future<Output = ()>>(&self, announce: impl FnOnce() -> F) {
        self.announced.get_or_init(|| async { announce().await }).await;
    }
}

impl Stranded {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Kept>>> {
        self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps an unconfirmed message (once: a retry that is not confirmed either brings it again).
    pub fn keep(&self, message: WireMessage) {
        let mut channels = self.lock();
        let total: usize = channels.values().map(Vec::len).sum();
        let kept = channels.entry(message.channelid.clone()).or_default();
        if kept.iter().any(|k| k.message.seq == message.seq && k.message.id == message.id) {
            return;
        }
        if total >= CAPACITY {
            crate::metrics::dropped("stranded_full");
            return;
        }
        kept.push(Kept { message, since: Instant::now() });
    }

    /// Takes a channel's messages of `epoch` up to `seq`, in seq order (at most [`MAX_CHECK`]).
    pub fn take(&self, channel: &str, epoch: &str, seq: u64) -> Vec<Kept> {
        let mut channels = self.lock();
        let Some(kept) = channels.get_mut(channel) else { return Vec::new() };
        let (mut taken, rest): (Vec<Kept>, Vec<Kept>) =
            std::mem::take(kept).into_iter().partition(|k| k.message.epoch == epoch && k.message.seq <= seq);
        *kept = rest;
        taken.sort_by_key(|k| k.message.seq);
        if taken.len() > MAX_CHECK {
            kept.extend(taken.split_off(MAX_CHECK));
        }
        if kept.is_empty() {
            channels.remove(channel);
        }
        taken
    }

    /// Puts back what a check could not settle (Redis away, replicas not confirming).
    pub fn put_back(&self, kept: Vec<Kept>) {
        let mut channels = self.lock();
        for k in kept {
            if k.since.elapsed() > GIVE_UP_AFTER {
                crate::metrics::dropped("stranded_gave_up");
                continue;
            }
            channels.entry(k.message.channelid.clone()).or_default().push(k);
        }
    }

    /// A channel and epoch whose oldest message waited past [`SETTLE_AFTER`], with its messages of
    /// that epoch, taken; None when no message is due.
    fn next_due(&self, skip: &[(String, String)]) -> Option<(String, String, Vec<Kept>)> {
        let (channel, epoch) = {
            let channels = self.lock();
            channels.iter().find_map(|(channel, kept)| {
                kept.iter()
                    .find(|k| {
                        k.since.elapsed() > SETTLE_AFTER
                            && !skip.iter().any(|(c, e)| c == channel && *e == k.message.epoch)
                    })
                    .map(|k| (channel.clone(), k.message.epoch.clone()))
            })?
        };
        let kept = self.take(&channel, &epoch, u64::MAX);
        Some((channel, epoch, kept))
    }
}

impl Store {
    /// Keeps a message that replicas did not confirm (see [`Stranded`]).
    pub(super) fn strand(&self, message: WireMessage) {
        self.stranded.keep(message);
    }

    /// Looks at the unconfirmed messages no mark of this relay covered within a second. Returns
    /// those the channel's durable mark has passed, to announce, in seq order per channel; drops
    /// those history no longer holds; keeps the rest.
    pub async fn settle(&self) -> Vec<WireMessage> {
        let mut announce = Vec::new();
        let mut seen = Vec::new();
        while let Some((channel, epoch, kept)) = self.stranded.next_due(&seen) {
            seen.push((channel.clone(), epoch.clone()));
            let meta = names::meta_key(&channel);
            let mut check = redis::Cmd::new();
            check.arg(2).arg(names::history_key(&channel)).arg(&meta).arg(&epoch).arg("0");
            for k in &kept {
                check.arg(k.message.seq.to_string()).arg(&k.message.id);
            }
            let flags = match self.eval(&self.conn, &self.scripts.durable, &check, &meta, None).await {
                Ok((reply, _)) => redis::from_redis_value::<Vec<u64>>(reply).ok().filter(|f| f.len() == kept.len() + 1),
                Err(e) => {
                    tracing::debug!(%channel, error = %e, "could not look at unconfirmed messages; will look again");
                    None
                }
            };
            let Some(flags) = flags else {
                self.stranded.put_back(kept);
                continue;
            };
            let durable = flags[0];
            let mut waiting = Vec::new();
            for (k, held) in kept.into_iter().zip(&flags[1..]) {
                match (*held == 1, k.message.seq <= durable) {
                    (true, true) => announce.push(k.message),
                    (true, false) => waiting.push(k),
                    // Not in history at that seq: a failover took it, never acknowledged.
                    (false, _) => crate::metrics::dropped("stranded_lost"),
                }
            }
            self.stranded.put_back(waiting);
        }
        announce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(channel: &str, epoch: &str, seq: u64) -> WireMessage {
        WireMessage {
            channelid: channel.into(),
            userid: "u".into(),
            username: "U".into(),
            text: "t".into(),
            ts: seq as i64,
            seq,
            id: format!("id-{seq}"),
            epoch: epoch.into(),
        }
    }

    #[test]
    fn takes_a_channels_epoch_up_to_a_seq_in_order_once() {
        let s = Stranded::default();
        for seq in [5, 2, 9] {
            s.keep(msg("a", "e1", seq));
        }
        s.keep(msg("a", "e1", 2)); // a retry not confirmed either: kept once
        s.keep(msg("a", "e0", 3));
        s.keep(msg("b", "e1", 1));
        let seqs = |v: Vec<Kept>| v.into_iter().map(|k| k.message.seq).collect::<Vec<_>>();
        assert_eq!(seqs(s.take("a", "e1", 6)), vec![2, 5]);
        assert_eq!(seqs(s.take("a", "e1", 6)), Vec::<u64>::new());
        assert_eq!(seqs(s.take("a", "e1", 100)), vec![9]);
        assert_eq!(seqs(s.take("a", "e0", 100)), vec![3]);
        assert!(s.lock().get("a").is_none(), "an emptied channel is forgotten");
        assert_eq!(seqs(s.take("b", "e1", 1)), vec![1]);
    }

    #[test]
    fn bounded() {
        let s = Stranded::default();
        for seq in 0..(CAPACITY as u64 + 10) {
            s.keep(msg("a", "e1", seq));
        }
        assert_eq!(s.lock().values().map(Vec::len).sum::<usize>(), CAPACITY);
        assert_eq!(s.take("a", "e1", u64::MAX).len(), MAX_CHECK, "one check at a time");
    }

    #[tokio::test(start_paused = true)]
    async fn only_what_waited_is_due_and_old_messages_are_given_up() {
        let s = Stranded::default();
        s.keep(msg("a", "e1", 1));
        assert!(s.next_due(&[]).is_none());
        tokio::time::advance(SETTLE_AFTER + Duration::from_millis(1)).await;
        let (channel, epoch, kept) = s.next_due(&[]).expect("due");
        assert_eq!((channel.as_str(), epoch.as_str(), kept.len()), ("a", "e1", 1));
        assert!(s.next_due(&[]).is_none(), "taken");
        s.put_back(kept);
        assert!(s.next_due(&[("a".into(), "e1".into())]).is_none(), "skipped once looked at");
        tokio::time::advance(GIVE_UP_AFTER).await;
        let (_, _, kept) = s.next_due(&[]).expect("due");
        s.put_back(kept);
        assert!(s.lock().is_empty(), "given up");
    }
}
