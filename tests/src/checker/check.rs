//! The invariants, judged on a recorded [`History`] (pure: unit-tested below on made-up histories).
//!
//! - **broadcast**: every acknowledged message reaches every subscriber, in seq order within its
//!   epoch, exactly once, unless a `recovered=false` marker told the subscriber of that range: a
//!   marker covers the messages between the last one delivered before it and the first one after.
//! - **perUser**: the same per user (one stream at a time, resuming with its cursor), except
//!   order, which is counted, not required (a share may see a late message after a newer one).
//! - **queue**: every acknowledged message is acked by some worker; a message delivered more than
//!   once is a duplicate, allowed only in a run with faults or workers that abandoned messages, and
//!   counted; a second delivery carries a non-zero `redelivered`.
//! - **content**: what is delivered as (epoch, seq) is what was acknowledged as (epoch, seq), and
//!   every delivered text is one a publisher sent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use super::history::{History, Mode, Published, Seen, Subscriber};

/// A broken invariant, with enough of the history to see why.
#[derive(Debug, Clone)]
pub struct Violation {
    pub what: String,
    /// The events around it.
    pub context: String,
}

/// Figures of a checked run.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub acknowledged: usize,
    /// (subscriber, message) pairs checked for delivery.
    pub deliveries_checked: usize,
    /// Messages missed but covered by a marker.
    pub covered_by_markers: usize,
    pub markers: usize,
    pub queue_duplicates: usize,
    /// Messages a worker dropped unacked (a worker crash).
    pub queue_abandons: usize,
    pub per_user_out_of_order: usize,
    pub violations: Vec<Violation>,
}

type Pos = (String, u64);
/// A queue delivery: when, to which worker, at which event, with which redelivered count.
type Delivery = (std::time::Duration, usize, usize, u32);

/// Judges a history.
pub fn check(history: &History) -> Verdict {
    let mut v = Verdict { acknowledged: history.published.len(), ..Default::default() };
    let by_pos: HashMap<(&str, &str, u64), &Published> =
        history.published.iter().map(|p| ((p.channel.as_str(), p.epoch.as_str(), p.seq), p)).collect();
    for sub in &history.subscribers {
        content(history, &by_pos, sub, &mut v);
        match sub.mode {
            Mode::Broadcast | Mode::PerUser => stream(history, sub, &mut v),
            Mode::Queue => {}
        }
    }
    queue(history, &mut v);
    v
}

/// Delivered messages are the acknowledged ones, and no text comes from nowhere.
fn content(history: &History, by_pos: &HashMap<(&str, &str, u64), &Published>, sub: &Subscriber, v: &mut Verdict) {
    for (i, (_, e)) in sub.events.iter().enumerate() {
        let Seen::Message { epoch, seq, id, text, .. } = e else { continue };
        if !history.attempted.contains(text) {
            v.violations.push(violation(
                sub,
                i,
                format!("{}: delivered text {text:?} that no publisher sent", sub.name),
            ));
        }
        if let Some(p) = by_pos.get(&(sub.channel.as_str(), epoch.as_str(), *seq))
            && (p.id != *id || p.key != *text)
        {
            v.violations.push(violation(
                sub,
                i,
                format!(
                    "{}: ({epoch}, {seq}) delivered as {text:?}/{id} but acknowledged as {:?}/{}",
                    sub.name, p.key, p.id
                ),
            ));
        }
    }
}

/// Broadcast and perUser: once each, in order (broadcast), nothing missing without a marker.
fn stream(history: &History, sub: &Subscriber, v: &mut Verdict) {
    let mut delivered: HashSet<(&str, u64, &str)> = HashSet::new();
    // Positions of the messages delivered, in order, and the markers between them.
    let mut timeline: Vec<(usize, Option<Pos>)> = Vec::new(); // (event index, Some(message position) | None for a marker)
    let mut last: Option<Pos> = None;
    for (i, (_, e)) in sub.events.iter().enumerate() {
        match e {
            Seen::Start { cursor, .. } => {
                last = cursor.clone().filter(|(_, s)| *s > 0);
            }
            Seen::Marker { recovered: false, .. } => {
                v.markers += 1;
                timeline.push((i, None));
                last = None;
            }
            Seen::Message { epoch, seq, id, .. } => {
                if !delivered.insert((epoch.as_str(), *seq, id.as_str())) {
                    v.violations.push(violation(sub, i, format!("{}: ({epoch}, {seq}) delivered twice", sub.name)));
                }
                if let Some((le, ls)) = &last
                    && le == epoch
                    && *seq <= *ls
                {
                    if sub.mode == Mode::Broadcast {
                        v.violations.push(violation(
                            sub,
                            i,
                            format!("{}: ({epoch}, {seq}) after ({le}, {ls}) without a marker: out of order", sub.name),
                        ));
                    } else {
                        v.per_user_out_of_order += 1;
                    }
                }
                if last.as_ref().is_none_or(|(le, ls)| le != epoch || seq > ls) {
                    last = Some((epoch.clone(), *seq));
                }
                timeline.push((i, Some((epoch.clone(), *seq))));
            }
            _ => {}
        }
    }
    // Completeness: every acknowledged message of the channel is delivered or inside a marked gap.
    // Subscribers start from the channel's beginning, so every acknowledged message is owed.
    if !sub.events.iter().any(|(_, e)| matches!(e, Seen::Start { .. })) {
        return;
    }
    let gaps = marked_gaps(&timeline);
    for p in history.published.iter().filter(|p| p.channel == sub.channel) {
        v.deliveries_checked += 1;
        if delivered.contains(&(p.epoch.as_str(), p.seq, p.id.as_str())) {
            continue;
        }
        let pos = (p.epoch.clone(), p.seq);
        if gaps
            .iter()
            .any(|(after, before)| after.as_ref().is_none_or(|a| *a < pos) && before.as_ref().is_none_or(|b| pos < *b))
        {
            v.covered_by_markers += 1;
            continue;
        }
        let near =
            timeline.iter().find(|(_, m)| m.as_ref().is_some_and(|m| *m > pos)).map_or(sub.events.len(), |(i, _)| *i);
        v.violations.push(violation(
            sub,
            near,
            format!(
                "{}: ({}, {}) {:?} acknowledged at {:?} never delivered and no marker covers it",
                sub.name, p.epoch, p.seq, p.key, p.at
            ),
        ));
    }
}

/// The ranges each marker covers: (last delivered before it, first delivered after it), open ends
/// as None.
fn marked_gaps(timeline: &[(usize, Option<Pos>)]) -> Vec<(Option<Pos>, Option<Pos>)> {
    let mut gaps = Vec::new();
    for (k, (_, item)) in timeline.iter().enumerate() {
        if item.is_some() {
            continue;
        }
        let before = timeline[..k].iter().rev().find_map(|(_, m)| m.clone());
        let after = timeline[k + 1..].iter().find_map(|(_, m)| m.clone());
        gaps.push((before, after));
    }
    gaps
}

/// Queue: everything acknowledged is acked by a worker; duplicates only with faults.
fn queue(history: &History, v: &mut Verdict) {
    let workers: Vec<&Subscriber> = history.subscribers.iter().filter(|s| s.mode == Mode::Queue).collect();
    let Some(channel) = workers.first().map(|w| w.channel.clone()) else { return };
    let abandons = workers.iter().flat_map(|w| &w.events).filter(|(_, e)| matches!(e, Seen::Abandoned { .. })).count();
    v.queue_abandons = abandons;
    let excused = !history.faults.is_empty() || abandons > 0;
    // A NATS server killed between two deliveries may have lost its record of the first one (it
    // writes consumer state lazily), so the second cannot count it.
    let nats_killed = |from: std::time::Duration, to: std::time::Duration| {
        history.faults.iter().any(|f| f.kind.starts_with("KillNats") && f.start <= to && f.end >= from)
    };
    // (epoch, seq) -> deliveries (worker, event index, redelivered), in time order.
    let mut deliveries: BTreeMap<Pos, Vec<Delivery>> = BTreeMap::new();
    let mut acked: HashSet<(String, u64)> = HashSet::new();
    // Acks whose answer never came because a relay died after the call went out: the relay may
    // have applied it, so a message never delivered again after one was acked for all anyone can
    // tell. (An ack sent to a relay already dead fails to connect, and excuses nothing.)
    let mut maybe_acked: HashSet<(String, u64)> = HashSet::new();
    let relay_died_during = |sent: std::time::Duration, answered: std::time::Duration| {
        history.faults.iter().any(|f| f.kind.starts_with("KillRelay") && f.start >= sent && f.start <= answered)
    };
    for (w, sub) in workers.iter().enumerate() {
        for (i, (at, e)) in sub.events.iter().enumerate() {
            match e {
                Seen::Message { epoch, seq, redelivered, .. } => {
                    deliveries.entry((epoch.clone(), *seq)).or_default().push((*at, w, i, *redelivered));
                }
                Seen::Acked { epoch, seq, acked: Ok(1), .. } => {
                    acked.insert((epoch.clone(), *seq));
                }
                Seen::Acked { epoch, seq, acked: Err(_), sent } if relay_died_during(*sent, *at) => {
                    maybe_acked.insert((epoch.clone(), *seq));
                }
                _ => {}
            }
        }
    }
    for (pos, list) in &mut deliveries {
        list.sort();
        if list.len() > 1 {
            v.queue_duplicates += list.len() - 1;
            if !excused {
                let (_, w, i, _) = list[1];
                v.violations.push(violation(
                    workers[w],
                    i,
                    format!("queue: {pos:?} delivered {} times in a run without faults", list.len()),
                ));
            }
            for pair in list.windows(2) {
                let (before, (at, w, i, redelivered)) = (pair[0].0, pair[1]);
                if redelivered == 0 && !nats_killed(before, at) {
                    v.violations.push(violation(
                        workers[w],
                        i,
                        format!("queue: {pos:?} delivered again with redelivered=0"),
                    ));
                }
            }
        }
    }
    for p in history.published.iter().filter(|p| p.channel == channel) {
        v.deliveries_checked += 1;
        let key = (p.epoch.clone(), p.seq);
        let seen = deliveries.get(&key).map_or(0, Vec::len);
        let maybe = seen == 1 && maybe_acked.contains(&key);
        if !(acked.contains(&key) || maybe) {
            let (w, i) =
                deliveries.get(&(p.epoch.clone(), p.seq)).and_then(|l| l.last()).map_or((0, 0), |d| (d.1, d.2));
            v.violations.push(violation(
                workers[w],
                i,
                format!(
                    "queue: ({}, {}) {:?} acknowledged at {:?} was never acked by a worker (delivered {seen} times)",
                    p.epoch, p.seq, p.key, p.at
                ),
            ));
        }
    }
}

/// A violation with the subscriber's events around index `at`.
fn violation(sub: &Subscriber, at: usize, what: String) -> Violation {
    let mut context = String::new();
    let from = at.saturating_sub(6);
    for (i, (t, e)) in sub.events.iter().enumerate().skip(from).take(12) {
        let mark = if i == at { ">>" } else { "  " };
        let _ = writeln!(context, "{mark} {} #{i} {t:?} {e:?}", sub.name);
    }
    Violation { what, context }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::checker::history::{Fault, Mode, Published, Seen, Subscriber};

    fn p(seq: u64, epoch: &str) -> Published {
        Published {
            key: format!("k{epoch}{seq}"),
            channel: "bc".into(),
            epoch: epoch.into(),
            seq,
            id: format!("i{epoch}{seq}"),
            at: Duration::ZERO,
        }
    }

    fn msg(seq: u64, epoch: &str) -> Seen {
        Seen::Message {
            epoch: epoch.into(),
            seq,
            id: format!("i{epoch}{seq}"),
            text: format!("k{epoch}{seq}"),
            redelivered: 0,
        }
    }

    fn marker(epoch: &str) -> Seen {
        Seen::Marker { recovered: false, epoch: epoch.into(), reason: "test".into() }
    }

    fn history(published: Vec<Published>, events: Vec<Seen>, mode: Mode) -> History {
        let mut h =
            History { attempted: published.iter().map(|p| p.key.clone()).collect(), published, ..Default::default() };
        let mut all = vec![Seen::Start { relay: 0, cursor: None }];
        all.extend(events);
        h.subscribers.push(Subscriber {
            name: "s".into(),
            mode,
            channel: "bc".into(),
            events: all.into_iter().map(|e| (Duration::ZERO, e)).collect(),
        });
        h
    }

    #[test]
    fn a_complete_ordered_history_passes() {
        let h = history(
            vec![p(1, "a"), p(2, "a"), p(3, "a")],
            vec![msg(1, "a"), msg(2, "a"), msg(3, "a")],
            Mode::Broadcast,
        );
        let v = check(&h);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.deliveries_checked, 3);
    }

    #[test]
    fn a_missing_message_is_a_violation_unless_a_marker_covers_it() {
        let published = vec![p(1, "a"), p(2, "a"), p(3, "a")];
        let v = check(&history(published.clone(), vec![msg(1, "a"), msg(3, "a")], Mode::Broadcast));
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].what.contains("(a, 2)"));
        let v = check(&history(published, vec![msg(1, "a"), marker("a"), msg(3, "a")], Mode::Broadcast));
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.covered_by_markers, 1);
    }

    #[test]
    fn a_lost_epoch_is_covered_by_the_new_epochs_marker() {
        let published = vec![p(1, "a"), p(2, "a"), p(1, "b"), p(2, "b")];
        let events = vec![msg(1, "a"), marker("b"), msg(1, "b"), msg(2, "b")];
        let v = check(&history(published.clone(), events, Mode::Broadcast));
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        // Without the marker, (a, 2) is simply lost.
        let v = check(&history(published, vec![msg(1, "a"), msg(1, "b"), msg(2, "b")], Mode::Broadcast));
        assert_eq!(v.violations.len(), 1);
    }

    #[test]
    fn duplicates_and_disorder_are_violations_for_broadcast() {
        let published = vec![p(1, "a"), p(2, "a")];
        let v = check(&history(published.clone(), vec![msg(1, "a"), msg(2, "a"), msg(2, "a")], Mode::Broadcast));
        assert!(v.violations.iter().any(|x| x.what.contains("twice")), "{:?}", v.violations);
        let v = check(&history(published.clone(), vec![msg(2, "a"), msg(1, "a")], Mode::Broadcast));
        assert!(v.violations.iter().any(|x| x.what.contains("out of order")), "{:?}", v.violations);
        let v = check(&history(published, vec![msg(2, "a"), msg(1, "a")], Mode::PerUser));
        assert!(v.violations.is_empty() && v.per_user_out_of_order == 1);
    }

    #[test]
    fn content_must_match_what_was_acknowledged() {
        let mut wrong = msg(1, "a");
        if let Seen::Message { id, .. } = &mut wrong {
            *id = "other".into();
        }
        let v = check(&history(vec![p(1, "a")], vec![wrong], Mode::Broadcast));
        assert!(v.violations.iter().any(|x| x.what.contains("acknowledged as")), "{:?}", v.violations);
        let phantom =
            Seen::Message { epoch: "a".into(), seq: 9, id: "x".into(), text: "nobody".into(), redelivered: 0 };
        let v = check(&history(vec![], vec![phantom], Mode::Broadcast));
        assert!(v.violations.iter().any(|x| x.what.contains("no publisher")));
    }

    #[test]
    fn queue_messages_must_be_acked_and_duplicates_need_a_fault() {
        let published = vec![p(1, "a"), p(2, "a")];
        let acked = |seq| Seen::Acked { epoch: "a".into(), seq, acked: Ok(1), sent: Duration::ZERO };
        let mut again = msg(1, "a");
        if let Seen::Message { redelivered, .. } = &mut again {
            *redelivered = 1;
        }
        let events = vec![msg(1, "a"), msg(2, "a"), acked(2), again, acked(1)];
        let mut h = history(published.clone(), events.clone(), Mode::Queue);
        let v = check(&h);
        assert_eq!(v.queue_duplicates, 1);
        assert!(v.violations.iter().any(|x| x.what.contains("without faults")), "{:?}", v.violations);
        h.faults.push(Fault { kind: "kill relay 0".into(), start: Duration::ZERO, end: Duration::ZERO });
        assert!(check(&h).violations.is_empty(), "{:?}", check(&h).violations);
        let v = check(&history(published, vec![msg(1, "a"), acked(1), msg(2, "a")], Mode::Queue));
        assert!(v.violations.iter().any(|x| x.what.contains("never acked")), "{:?}", v.violations);
    }

    /// Found by seed 1 in CI: a worker's ack went out, the relay holding its stream was killed
    /// before answering, and the message was never delivered again: the relay had applied it.
    #[test]
    fn an_ack_cut_off_by_a_dying_relay_may_have_been_applied() {
        let failed =
            |sent| Seen::Acked { epoch: "a".into(), seq: 1, acked: Err("Unknown: transport error".into()), sent };
        let kill = || Fault { kind: "KillRelay(0) for 300ms".into(), start: secs(2), end: secs(3) };
        let with = |sent: Duration, answered: Duration| {
            let mut h = history(vec![p(1, "a")], vec![msg(1, "a"), failed(sent)], Mode::Queue);
            h.subscribers[0].events[2].0 = answered;
            h.faults.push(kill());
            check(&h)
        };
        // Sent at 1 s, the relay died at 2 s before answering: maybe applied.
        assert!(with(secs(1), secs(2)).violations.is_empty(), "{:?}", with(secs(1), secs(2)).violations);
        // Sent at 3 s, to a relay already dead: it cannot have been applied.
        assert!(with(secs(3), secs(3)).violations.iter().any(|x| x.what.contains("never acked")));
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }
}
