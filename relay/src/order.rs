//! Putting a channel's live messages in `seq` order. Pure: callers do the reading from history.
//!
//! Two replicas may assign seq n and n+1 and reach NATS in the other order, and core NATS may drop
//! messages to a slow connection or during a reconnect. An early message waits in a small reorder
//! buffer ([`Reorder`]) for the ones before it; when they do not come in time the caller reads the
//! gap ([`Reorder::gap`]) from history, which always has them (every message is in Redis before it
//! is on NATS), and hands them to [`Reorder::fill`].

use std::collections::BTreeMap;
use std::time::Duration;

use relay_channel::WireMessage;

/// How long an early message waits for the ones before it before history is asked.
pub const REORDER_WAIT: Duration = Duration::from_millis(20);
/// Early messages held at most; past this the gap is repaired from history at once.
const REORDER_MAX: usize = 4096;

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

/// Tracks the last delivered `seq` of one channel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sequencer {
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

/// One channel's reorder buffer.
#[derive(Default)]
pub struct Reorder {
    pub seq: Sequencer,
    early: BTreeMap<u64, WireMessage>,
}

impl Reorder {
    pub fn starting_after(seq: u64) -> Self {
        Self { seq: Sequencer::starting_after(seq), early: BTreeMap::new() }
    }

    /// Takes one message; returns what can be delivered now, in order.
    pub fn push(&mut self, m: WireMessage) -> Vec<WireMessage> {
        match self.seq.step(m.seq) {
            Step::Duplicate => Vec::new(),
            Step::Next => {
                self.seq.delivered(m.seq);
                let mut out = vec![m];
                self.release(&mut out);
                out
            }
            Step::Gap { .. } => {
                self.early.insert(m.seq, m);
                Vec::new()
            }
        }
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

    /// Takes what history holds after the last delivered seq and returns everything now
    /// deliverable. What history no longer holds (retention) is skipped, not waited for forever.
    pub fn fill(&mut self, from_history: Vec<WireMessage>) -> Vec<WireMessage> {
        let mut out = Vec::new();
        for m in from_history {
            if self.seq.step(m.seq) != Step::Duplicate {
                self.early.remove(&m.seq);
                self.seq.delivered(m.seq);
                out.push(m);
            }
        }
        if let Some(&first) = self.early.keys().next()
            && self.seq.step(first) != Step::Next
        {
            self.seq.delivered(first - 1);
        }
        self.release(&mut out);
        out
    }

    /// Moves the waiting messages that are now next into `out`.
    fn release(&mut self, out: &mut Vec<WireMessage>) {
        while let Some(entry) = self.early.first_entry() {
            match self.seq.step(*entry.key()) {
                Step::Next => {
                    let m = entry.remove();
                    self.seq.delivered(m.seq);
                    out.push(m);
                }
                Step::Duplicate => {
                    entry.remove();
                }
                Step::Gap { .. } => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u64) -> WireMessage {
        WireMessage {
            channelid: "c".into(),
            userid: "u".into(),
            username: String::new(),
            text: seq.to_string(),
            ts: seq as i64,
            seq,
            id: seq.to_string(),
        }
    }

    fn seqs(v: &[WireMessage]) -> Vec<u64> {
        v.iter().map(|m| m.seq).collect()
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
        let mut r = Reorder::starting_after(0);
        assert_eq!(seqs(&r.push(m(1))), [1]);
        assert!(r.push(m(3)).is_empty());
        assert!(r.push(m(4)).is_empty());
        assert_eq!(r.gap(), Some((1, 3)));
        assert_eq!(seqs(&r.push(m(2))), [2, 3, 4], "the late one releases the early ones");
        assert_eq!(r.gap(), None);
        assert!(r.push(m(3)).is_empty(), "duplicates are dropped");
    }

    #[test]
    fn a_gap_that_does_not_fill_is_read_from_history_or_skipped() {
        let mut r = Reorder::starting_after(5);
        assert!(r.push(m(8)).is_empty());
        assert!(r.push(m(9)).is_empty());
        assert_eq!(seqs(&r.fill(vec![m(6), m(7)])), [6, 7, 8, 9]);
        // History lost 11 (retention): skip it rather than wait forever.
        assert!(r.push(m(12)).is_empty());
        assert_eq!(seqs(&r.fill(vec![m(10)])), [10, 12]);
        assert_eq!(r.gap(), None);
        assert_eq!(seqs(&r.push(m(13))), [13]);
        // A reconnect catch-up hands over whatever history has after the last seq.
        assert_eq!(seqs(&r.fill(vec![m(13), m(14), m(15)])), [14, 15]);
    }
}
