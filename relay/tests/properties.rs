//! Properties of what the relay parses and orders: tokens and cursors never panic, and the live
//! path's reorder buffer and shares deliver every message once, in order where promised, whatever
//! order the network hands them over in.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use proptest::prelude::*;
use relay::order::{Out, Reorder, Share};
use relay::proto::{Cursor, cursor::Position};
use relay_channel::WireMessage;

fn m(seq: u64) -> WireMessage {
    WireMessage {
        channelid: "c".into(),
        userid: "u".into(),
        username: String::new(),
        text: String::new(),
        ts: seq as i64,
        seq,
        id: format!("id{seq}"),
        epoch: "e1".into(),
    }
}

fn messages(out: &[Out]) -> Vec<u64> {
    out.iter().filter_map(|o| if let Out::Message(m) = o { Some(m.seq) } else { None }).collect()
}

fn markers(out: &[Out]) -> usize {
    out.iter().filter(|o| matches!(o, Out::Marker(_))).count()
}

/// Arrivals: seqs 1..=n shuffled, some twice.
fn arrivals() -> impl Strategy<Value = Vec<u64>> {
    (1u64..200)
        .prop_flat_map(|n| {
            let all: Vec<u64> = (1..=n).collect();
            (Just(all.clone()).prop_shuffle(), prop::collection::vec(prop::sample::select(all), 0..20))
        })
        .prop_map(|(mut order, copies)| {
            for (i, c) in copies.into_iter().enumerate() {
                let at = (i * 7) % (order.len() + 1);
                order.insert(at, c);
            }
            order
        })
}

proptest! {
    #[test]
    fn token_expiry_never_panics(raw in ".{0,300}") {
        let _ = relay::auth::token_expiry(&raw);
    }

    #[test]
    fn any_exp_claim_is_read_or_refused_without_a_panic(exp in prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        "[0-9]{19,40}",
        Just("null".to_owned()),
        Just("\"soon\"".to_owned()),
    ]) {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!("{}.{}.sig", b64("{}"), b64(&format!(r#"{{"exp":{exp}}}"#)));
        let _ = relay::auth::token_expiry(&token);
    }

    #[test]
    fn cursors_never_panic(seq in any::<u64>(), ts in any::<i64>(), epoch in ".{0,80}", which in 0u8..3) {
        let position = match which { 0 => None, 1 => Some(Position::SinceSeq(seq)), _ => Some(Position::SinceTs(ts)) };
        let c = Cursor { position, epoch };
        if let Ok(Some(r)) = relay::rpc::cursor(Some(&c)) {
            prop_assert!(r.epoch.len() <= 64 && r.epoch.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn the_reorder_buffer_delivers_every_message_once_in_order(order in arrivals()) {
        let n = *order.iter().max().unwrap();
        let mut r = Reorder::starting_at("e1", 0);
        let mut out = Vec::new();
        for seq in order {
            out.extend(r.push(m(seq)));
            // History always has what is missing: a repair fills any gap.
            if r.overfull() {
                let (after, before) = r.gap().unwrap();
                out.extend(r.fill("e1", (after + 1..before).map(m).collect(), false));
            }
        }
        while let Some((after, before)) = r.gap() {
            out.extend(r.fill("e1", (after + 1..before).map(m).collect(), false));
        }
        prop_assert_eq!(messages(&out), (1..=n).collect::<Vec<_>>());
        prop_assert_eq!(markers(&out), 0);
    }

    #[test]
    fn what_history_lost_is_marked_never_skipped_silently(order in arrivals(), lost in prop::collection::btree_set(1u64..200, 0..10)) {
        let n = *order.iter().max().unwrap();
        let mut r = Reorder::starting_at("e1", 0);
        let mut out = Vec::new();
        for seq in order.into_iter().filter(|s| !lost.contains(s)) {
            out.extend(r.push(m(seq)));
        }
        while let Some((after, before)) = r.gap() {
            out.extend(r.fill("e1", (after + 1..before).filter(|s| !lost.contains(s)).map(m).collect(), false));
        }
        let got = messages(&out);
        prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {:?}", got);
        let want: Vec<u64> = (1..=n).filter(|s| !lost.contains(s)).collect();
        // The tail after the last received message cannot be known to be missing yet.
        prop_assert_eq!(&got, &want);
        // Every gap in what was delivered has a marker in front of the message after it.
        let mut last = 0;
        for o in &out {
            match o {
                Out::Marker(_) => last = u64::MAX,
                Out::Message(msg) => {
                    prop_assert!(last == u64::MAX || msg.seq == last + 1, "unmarked gap before {}", msg.seq);
                    last = msg.seq;
                }
            }
        }
    }

    #[test]
    fn a_share_forwards_every_message_once(order in arrivals(), floor in 0u64..5) {
        let t0 = tokio::time::Instant::now();
        let mut s = Share::after("e1", floor);
        let mut out = Vec::new();
        for (i, seq) in order.iter().enumerate() {
            let now = t0 + Duration::from_millis(i as u64);
            out.extend(s.push(m(*seq), now));
            out.extend(s.expire(now));
        }
        out.extend(s.expire(t0 + Duration::from_secs(3600)));
        let got = messages(&out);
        let unique: BTreeSet<u64> = got.iter().copied().collect();
        prop_assert_eq!(unique.len(), got.len(), "no copies: {:?}", got);
        let want: BTreeSet<u64> = order.iter().copied().filter(|s| *s > floor).collect();
        prop_assert_eq!(unique, want);
    }
}
