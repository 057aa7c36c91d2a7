//! Putting a channel's live messages in order, and saying so when that is not possible. Pure:
//! callers do the reading from history.
//!
//! Two replicas may assign seq n and n+1 and reach NATS in the other order, core NATS may drop
//! messages to a slow connection or during a reconnect, and a channel's history may be lost and
//! start again (a new epoch, or the same epoch with seqs handed out again after a Redis failover).
//!
//! - [`Reorder`] (the hub: one per channel per replica) delivers every message of an epoch once,
//!   in seq order. An early message waits in a small buffer for the ones before it; when they do
//!   not come in time the caller reads the gap ([`Reorder::gap`]) from history, which has them
//!   (every message is in Redis before it is on NATS), and hands it to [`Reorder::fill`]. What
//!   history no longer holds, a new epoch, seqs handed out again, or a late message of an epoch
//!   already left produce a [`Marker`] in the output: the stream tells its client that messages may
//!   be missing there (`Recovery{recovered=false}`), never nothing.
//! - [`Sequencer`] is what each stream keeps of its own position, to join the hub's ordered
//!   output after its history read.
//! - [`Share`] orders and de-duplicates what a perUser or core-queue stream receives: a share of
//!   the messages, so gaps are normal; it only waits briefly for late ones and drops copies.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use relay_channel::WireMessage;
use tokio::time::Instant;

/// How long an early message waits for the ones before it before history is asked.
pub const REORDER_WAIT: Duration = Duration::from_millis(20);
/// Early messages held at most; past this the gap is repaired from history at once.
const REORDER_MAX: usize = 4096;
/// Delivered (seq, id) pairs remembered, to tell a copy of a message from a new message that got
/// a seq again (a Redis failover to a replica that had not received the last writes).
const RECENT: usize = 256;

/// Why a stream is told that messages may be missing.
pub mod reason {
    pub const NEW_EPOCH: &str = "the channel's history was lost and started again (new epoch)";
    pub const REWOUND: &str = "the channel's history was rolled back (seqs handed out again)";
    pub const EXPIRED: &str = "messages left history before they could be delivered";
    pub const UNREADABLE: &str = "messages could not be read from history in time";
    pub const STALE_EPOCH: &str = "a late message of an earlier epoch was dropped";
}

/// Messages may be missing before what follows, which continues in `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub epoch: String,
    pub reason: &'static str,
}

/// One output of the live path, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Message(WireMessage),
    Marker(Marker),
}

impl Out {
    fn marker(epoch: &str, reason: &'static str) -> Self {
        Out::Marker(Marker { epoch: epoch.to_owned(), reason })
    }
}

/// What the live path does with an incoming `seq`.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Already delivered (or older): drop it.
    Duplicate,
    /// The next one: deliver it.
    Next,
    /// Messages `after < seq < this` are missing.
    Gap { after: u64 },
}

/// Tracks the last delivered `seq` of one channel in one epoch.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sequencer {
    /// None: the next message sets the baseline.
    pub last: Option<u64>,
}

impl Sequencer {
    pub fn starting_after(seq: u64) -> Self {
        Self { last: Some(seq) }
    }

    pub fn step(&self, seq: u64) -> Step {
        match self.last {
            None => Step::Next,
            Some(last) if seq <= last => Step::Duplicate,
            Some(last) if seq == last + 1 => Step::Next,
            Some(last) => Step::Gap { after: last },
        }
    }

    pub fn delivered(&mut self, seq: u64) {
        self.last = Some(self.last.map_or(seq, |l| l.max(seq)));
    }
}

/// The last [`RECENT`] delivered seqs with a hash of their ids.
#[derive(Default)]
struct Recent(VecDeque<(u64, u64)>);

impl Recent {
    fn push(&mut self, m: &WireMessage) {
        if self.0.len() == RECENT {
            self.0.pop_front();
        }
        self.0.push_back((m.seq, id_hash(&m.id)));
    }

    /// Some(true) when `m` is a copy of a delivered message, Some(false) when its seq was delivered
    /// with another id, None when the seq is older than what is remembered.
    fn is_copy(&self, m: &WireMessage) -> Option<bool> {
        self.0.iter().rev().find(|(seq, _)| *seq == m.seq).map(|(_, h)| *h == id_hash(&m.id))
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// One channel's reorder buffer (the hub's).
#[derive(Default)]
pub struct Reorder {
    /// Empty until the first message.
    epoch: String,
    seq: Sequencer,
    early: BTreeMap<u64, WireMessage>,
    recent: Recent,
    /// Given up on a gap (a marker said so): the next message is taken whatever its seq, as long
    /// as it is newer than the last delivered.
    skipping: bool,
}

impl Reorder {
    /// A buffer that delivers what follows `last` in `epoch` (empty: whatever epoch comes first).
    pub fn starting_at(epoch: &str, last: u64) -> Self {
        Self { epoch: epoch.to_owned(), seq: Sequencer::starting_after(last), ..Default::default() }
    }

    /// Where the channel stands: its epoch and the last seq delivered.
    pub fn position(&self) -> (&str, Option<u64>) {
        (&self.epoch, self.seq.last)
    }

    /// Takes one message; returns what can be delivered now, in order.
    pub fn push(&mut self, m: WireMessage) -> Vec<Out> {
        if self.epoch.is_empty() {
            self.epoch = m.epoch.clone();
        }
        match m.epoch.as_str().cmp(self.epoch.as_str()) {
            std::cmp::Ordering::Less => vec![Out::marker(&self.epoch, reason::STALE_EPOCH)],
            std::cmp::Ordering::Greater => {
                let mut out = self.drain_early(reason::NEW_EPOCH);
                out.push(Out::marker(&m.epoch, reason::NEW_EPOCH));
                // An epoch starts at seq 1: anything before this message is waited for.
                self.restart(&m.epoch, Some(0));
                out.extend(self.push_in_epoch(m));
                out
            }
            std::cmp::Ordering::Equal => self.push_in_epoch(m),
        }
    }

    fn push_in_epoch(&mut self, m: WireMessage) -> Vec<Out> {
        match self.seq.step(m.seq) {
            Step::Duplicate => match self.recent.is_copy(&m) {
                // Seqs were handed out again: what follows replaces what was delivered.
                Some(false) => {
                    let mut out = vec![Out::marker(&self.epoch, reason::REWOUND)];
                    let epoch = self.epoch.clone();
                    self.restart(&epoch, Some(m.seq - 1));
                    out.extend(self.push_in_epoch(m));
                    out
                }
                _ => Vec::new(),
            },
            Step::Next => {
                let mut out = Vec::new();
                self.deliver(m, &mut out);
                self.release(&mut out);
                out
            }
            Step::Gap { .. } if self.skipping => {
                let mut out = Vec::new();
                self.deliver(m, &mut out);
                self.release(&mut out);
                out
            }
            Step::Gap { .. } => {
                self.early.insert(m.seq, m);
                Vec::new()
            }
        }
    }

    fn restart(&mut self, epoch: &str, last: Option<u64>) {
        self.epoch = epoch.to_owned();
        self.seq = Sequencer { last };
        self.early.clear();
        self.recent.clear();
        self.skipping = false;
    }

    fn deliver(&mut self, m: WireMessage, out: &mut Vec<Out>) {
        self.skipping = false;
        self.seq.delivered(m.seq);
        self.recent.push(&m);
        out.push(Out::Message(m));
    }

    /// The missing range `(after, before)` while messages wait, or None.
    pub fn gap(&self) -> Option<(u64, u64)> {
        let first = *self.early.keys().next()?;
        Some((self.seq.last.unwrap_or(0), first))
    }

    /// Whether so many wait that the gap should be repaired without waiting longer.
    pub fn overfull(&self) -> bool {
        self.early.len() >= REORDER_MAX
    }

    /// Takes what history holds after the last delivered seq (`epoch` is the epoch history was in
    /// when read; `more`: the read stopped short, more follows) and returns everything now
    /// deliverable. What a complete read shows history no longer holds is skipped behind a marker
    /// rather than waited for forever; a history in a newer epoch starts it.
    pub fn fill(&mut self, epoch: &str, from_history: Vec<WireMessage>, more: bool) -> Vec<Out> {
        let mut out = Vec::new();
        if self.epoch.is_empty() {
            self.epoch = epoch.to_owned();
        }
        match epoch.cmp(self.epoch.as_str()) {
            // History holds nothing of this epoch any more (it was lost and nothing was published since).
            std::cmp::Ordering::Less => return self.skip_gap(reason::UNREADABLE),
            std::cmp::Ordering::Greater => {
                out = self.drain_early(reason::NEW_EPOCH);
                out.push(Out::marker(epoch, reason::NEW_EPOCH));
                self.restart(epoch, Some(0));
            }
            std::cmp::Ordering::Equal => {}
        }
        for m in from_history {
            match self.seq.step(m.seq) {
                Step::Duplicate => {}
                Step::Next => {
                    self.early.remove(&m.seq);
                    self.deliver(m, &mut out);
                    self.release(&mut out);
                }
                Step::Gap { .. } => {
                    self.early.insert(m.seq, m);
                }
            }
        }
        self.release(&mut out);
        if !more && !self.early.is_empty() {
            out.extend(self.skip_gap(reason::EXPIRED));
        }
        out
    }

    /// Stops waiting for what follows the last delivered message: what waits goes out behind
    /// markers, and the next newer message is taken as it comes, after a marker saying why. The
    /// position is kept: what was delivered is never delivered again.
    pub fn give_up(&mut self, why: &'static str) -> Vec<Out> {
        let mut out = self.drain_early(why);
        out.push(Out::marker(&self.epoch, why));
        self.skipping = true;
        out
    }

    /// Gives up on the gap before the waiting messages: a marker, then what waits.
    pub fn skip_gap(&mut self, why: &'static str) -> Vec<Out> {
        let mut out = Vec::new();
        if let Some(&first) = self.early.keys().next() {
            out.push(Out::marker(&self.epoch, why));
            self.seq.last = Some(first - 1);
            self.release(&mut out);
        }
        out
    }

    /// Everything waiting, in order, with a marker before each gap.
    fn drain_early(&mut self, why: &'static str) -> Vec<Out> {
        let mut out = Vec::new();
        while !self.early.is_empty() {
            out.extend(self.skip_gap(why));
        }
        out
    }

    /// Moves the waiting messages that are now next into `out`.
    fn release(&mut self, out: &mut Vec<Out>) {
        while let Some(entry) = self.early.first_entry() {
            match self.seq.step(*entry.key()) {
                Step::Next => {
                    let m = entry.remove();
                    self.deliver(m, out);
                }
                Step::Duplicate => {
                    entry.remove();
                }
                Step::Gap { .. } => break,
            }
        }
    }
}

/// De-duplicates and orders a stream's share of a channel (perUser and core-queue delivery): other
/// streams get the rest, so a gap is normal and is not read from history. A message that arrives
/// before one with a lower seq waits up to [`REORDER_WAIT`] for it.
#[derive(Default)]
pub struct Share {
    epoch: String,
    /// History covered everything up to here.
    floor: u64,
    /// The highest seq forwarded.
    last: Option<u64>,
    held: BTreeMap<u64, WireMessage>,
    /// When the oldest held message stops waiting.
    deadline: Option<Instant>,
    recent: Recent,
}

impl Share {
    /// A share that forwards only what is newer than `last` (what history already sent).
    pub fn after(epoch: &str, last: u64) -> Self {
        Self { epoch: epoch.to_owned(), floor: last, last: Some(last), ..Default::default() }
    }

    /// The epoch and the highest seq forwarded.
    pub fn position(&self) -> (&str, u64) {
        (&self.epoch, self.last.unwrap_or(0))
    }

    /// When [`Share::expire`] should be called next.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Takes one message; returns what to forward now.
    pub fn push(&mut self, m: WireMessage, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        if self.epoch.is_empty() && self.last.is_none_or(|l| l == 0) {
            self.epoch = m.epoch.clone();
        }
        match m.epoch.as_str().cmp(self.epoch.as_str()) {
            std::cmp::Ordering::Less => return vec![Out::marker(&self.epoch, reason::STALE_EPOCH)],
            std::cmp::Ordering::Greater => {
                out.extend(self.expire_all());
                out.push(Out::marker(&m.epoch, reason::NEW_EPOCH));
                *self = Self { epoch: m.epoch.clone(), ..Default::default() };
            }
            std::cmp::Ordering::Equal => {}
        }
        if self.recent.is_copy(&m) == Some(true) || self.held.contains_key(&m.seq) {
            return out;
        }
        match self.last {
            Some(l) if m.seq == l + 1 => {
                self.forward(m, &mut out);
                self.release(&mut out);
            }
            Some(l) if m.seq > l + 1 => {
                self.held.insert(m.seq, m);
                self.deadline.get_or_insert(now + REORDER_WAIT);
            }
            // Older than the last forwarded: late (another replica published it first) unless
            // history covered it already, or it is too old to tell from a copy.
            Some(l) => {
                if m.seq > self.floor && m.seq > l.saturating_sub(RECENT as u64) {
                    self.forward(m, &mut out);
                }
            }
            None => self.forward(m, &mut out),
        }
        out
    }

    /// Forwards everything that waited past its deadline, in order.
    pub fn expire(&mut self, now: Instant) -> Vec<Out> {
        if self.deadline.is_some_and(|d| d <= now) { self.expire_all() } else { Vec::new() }
    }

    fn expire_all(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        for (_, m) in std::mem::take(&mut self.held) {
            self.forward(m, &mut out);
        }
        self.deadline = None;
        out
    }

    fn forward(&mut self, m: WireMessage, out: &mut Vec<Out>) {
        self.last = Some(self.last.map_or(m.seq, |l| l.max(m.seq)));
        self.recent.push(&m);
        out.push(Out::Message(m));
    }

    fn release(&mut self, out: &mut Vec<Out>) {
        while let Some(entry) = self.held.first_entry() {
            if self.last.is_some_and(|l| *entry.key() == l + 1) {
                let m = entry.remove();
                self.forward(m, out);
            } else {
                break;
            }
        }
        if self.held.is_empty() {
            self.deadline = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u64) -> WireMessage {
        me("e1", seq, &seq.to_string())
    }

    fn me(epoch: &str, seq: u64, id: &str) -> WireMessage {
        WireMessage {
            channelid: "c".into(),
            userid: "u".into(),
            username: String::new(),
            text: seq.to_string(),
            ts: seq as i64,
            seq,
            id: id.into(),
            epoch: epoch.into(),
        }
    }

    /// Messages as `seq`, markers as 0.
    fn seqs(v: &[Out]) -> Vec<u64> {
        v.iter()
            .map(|o| match o {
                Out::Message(m) => m.seq,
                Out::Marker(_) => 0,
            })
            .collect()
    }

    fn started(last: u64) -> Reorder {
        let mut r = Reorder::default();
        r.push(m(last));
        r
    }

    #[test]
    fn sequencer_steps() {
        let mut s = Sequencer::default();
        assert_eq!(s.step(5), Step::Next, "the first message sets the baseline");
        s.delivered(5);
        assert_eq!(s.step(5), Step::Duplicate);
        assert_eq!(s.step(3), Step::Duplicate);
        assert_eq!(s.step(6), Step::Next);
        assert_eq!(s.step(9), Step::Gap { after: 5 });
        s.delivered(9);
        s.delivered(7);
        assert_eq!(s.last, Some(9), "never goes back");
    }

    #[test]
    fn early_messages_wait_for_the_ones_before_them() {
        let mut r = Reorder::default();
        assert_eq!(seqs(&r.push(m(1))), [1]);
        assert!(r.push(m(3)).is_empty());
        assert!(r.push(m(4)).is_empty());
        assert_eq!(r.gap(), Some((1, 3)));
        assert_eq!(seqs(&r.push(m(2))), [2, 3, 4], "the late one releases the early ones");
        assert_eq!(r.gap(), None);
        assert!(r.push(m(3)).is_empty(), "duplicates are dropped");
    }

    #[test]
    fn a_gap_is_read_from_history_and_what_history_lost_is_marked() {
        let mut r = started(5);
        assert!(r.push(m(8)).is_empty());
        assert!(r.push(m(9)).is_empty());
        assert_eq!(seqs(&r.fill("e1", vec![m(6), m(7)], false)), [6, 7, 8, 9]);
        // History lost 11 (retention): a marker, never a silent skip.
        assert!(r.push(m(12)).is_empty());
        assert!(r.push(m(12)).is_empty());
        assert_eq!(seqs(&r.fill("e1", vec![m(10)], true)), [10], "a read cut short: 11 may still come");
        assert_eq!(r.gap(), Some((10, 12)));
        assert_eq!(seqs(&r.fill("e1", vec![], false)), [0, 12]);
        assert_eq!(r.gap(), None);
        assert_eq!(seqs(&r.push(m(13))), [13]);
        // History in another epoch cannot fill the gap either.
        assert!(r.push(m(15)).is_empty());
        assert_eq!(
            seqs(&r.fill("e2", vec![me("e2", 1, "x")], false)),
            [0, 15, 0, 1],
            "what waited, then the new epoch"
        );
    }

    #[test]
    fn a_new_epoch_is_marked_and_counted_from_its_start() {
        let mut r = started(5);
        assert!(r.push(m(7)).is_empty(), "waits for 6");
        let out = r.push(me("e2", 1, "a"));
        assert_eq!(seqs(&out), [0, 7, 0, 1], "what waited (after a marker for 6), then the reset, then seq 1");
        assert!(
            matches!(&out[2], Out::Marker(Marker { epoch, reason }) if epoch == "e2" && *reason == reason::NEW_EPOCH)
        );
        assert_eq!(seqs(&r.push(me("e2", 2, "b"))), [2]);
        assert_eq!(seqs(&r.push(m(8))), [0], "a late message of the old epoch is dropped behind a marker");
        assert_eq!(r.position(), ("e2", Some(2)));
        // A new epoch that starts past seq 1 (its first messages were lost on the way) waits for them.
        assert_eq!(seqs(&r.push(me("e3", 3, "c"))), [0]);
        assert_eq!(r.gap(), Some((0, 3)));
    }

    #[test]
    fn seqs_handed_out_again_are_marked_not_dropped() {
        let mut r = Reorder::default();
        for s in 1..=5 {
            r.push(m(s));
        }
        assert!(r.push(m(4)).is_empty(), "a copy (same id) is a duplicate");
        // A failover lost 4 and 5: seq 4 comes again with another id.
        let out = r.push(me("e1", 4, "new-4"));
        assert_eq!(seqs(&out), [0, 4]);
        assert!(matches!(&out[0], Out::Marker(Marker { reason, .. }) if *reason == reason::REWOUND));
        assert_eq!(seqs(&r.push(me("e1", 5, "new-5"))), [5]);
    }

    #[test]
    fn giving_up_keeps_the_position_so_nothing_is_delivered_twice() {
        let mut r = started(5);
        assert!(r.push(m(8)).is_empty());
        assert_eq!(seqs(&r.give_up(reason::UNREADABLE)), [0, 8, 0], "what waited goes out behind markers");
        assert_eq!(r.position(), ("e1", Some(8)));
        assert_eq!(r.gap(), None);
        // A catch-up reads after 8, not from the start of history.
        assert_eq!(seqs(&r.fill("e1", (1..=9).map(m).collect(), false)), [9]);
        assert!(r.push(m(3)).is_empty(), "an old copy is still a duplicate");
        // After giving up again, the next newer message goes out whatever came before it.
        r.give_up(reason::UNREADABLE);
        assert_eq!(seqs(&r.push(m(12))), [12]);
        assert!(r.push(m(14)).is_empty(), "and then order is kept again");
        assert_eq!(r.gap(), Some((12, 14)));
    }

    #[test]
    fn a_share_drops_copies_and_orders_what_arrives_close_together() {
        let t0 = Instant::now();
        let mut s = Share::after("e1", 2);
        assert!(s.push(m(2), t0).is_empty(), "history covered it");
        assert_eq!(seqs(&s.push(m(3), t0)), [3]);
        assert!(s.push(m(5), t0).is_empty(), "waits briefly for 4");
        assert_eq!(seqs(&s.push(m(4), t0)), [4, 5]);
        assert!(s.push(m(4), t0).is_empty(), "copy");
        // 7 waits; 6 went to another stream: 7 goes out after the wait.
        assert!(s.push(m(7), t0).is_empty());
        assert!(s.expire(t0 + Duration::from_millis(5)).is_empty());
        assert_eq!(seqs(&s.expire(t0 + REORDER_WAIT)), [7]);
        assert_eq!(s.deadline(), None);
        // 6 arrives late after all: forwarded (never dropped), even out of order.
        assert_eq!(seqs(&s.push(m(6), t0)), [6]);
        assert!(s.push(m(6), t0).is_empty());
        // A new epoch: marker, then from its start.
        assert_eq!(seqs(&s.push(me("e2", 1, "x"), t0)), [0, 1]);
    }
}
