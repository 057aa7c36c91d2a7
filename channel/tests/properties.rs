//! Properties of everything in this crate that parses input from clients or operators: it never
//! panics, it accepts exactly its grammar, and what it writes it reads back.

use proptest::prelude::*;
use relay_channel::{ChannelId, ChannelSettings, WireMessage, duration};

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,12}"
}

fn valid_id() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 1..6).prop_map(|t| t.join("."))
}

proptest! {
    #[test]
    fn channel_ids_never_panic_and_accept_exactly_the_grammar(raw in any::<String>()) {
        match ChannelId::parse(&raw) {
            Ok(id) => {
                prop_assert_eq!(id.as_str(), raw.as_str());
                prop_assert!(raw.len() <= 255);
                prop_assert!(raw.split('.').all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')));
            }
            Err(_) => prop_assert!(
                raw.is_empty() || raw.len() > 255
                    || raw.split('.').any(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
            ),
        }
    }

    #[test]
    fn wildcards_and_separators_never_pass(prefix in valid_id(), bad in prop::sample::select(vec!["*", ">", " ", "..", "\0", "\n", "$", "/"])) {
        let raw = format!("{prefix}{bad}");
        prop_assert!(ChannelId::parse(&raw).is_err(), "{:?}", raw);
    }

    #[test]
    fn governing_candidates_are_the_id_and_its_parents_longest_first(raw in valid_id()) {
        let id = ChannelId::parse(&raw).unwrap();
        let candidates: Vec<&str> = id.governing_candidates().collect();
        prop_assert_eq!(candidates.len(), raw.split('.').count());
        prop_assert_eq!(candidates[0], raw.as_str());
        for pair in candidates.windows(2) {
            let parent = format!("{}.", pair[1]);
            prop_assert!(pair[0].starts_with(&parent));
        }
        prop_assert_eq!(id.last_token(), raw.rsplit('.').next().unwrap());
    }

    #[test]
    fn wire_messages_never_panic_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = WireMessage::from_json(&bytes);
    }

    #[test]
    fn wire_messages_read_back_what_they_write(
        channelid in valid_id(), userid in ".*", username in ".*", text in ".*",
        ts in any::<i64>(), seq in any::<u64>(), id in ".*", epoch in "[0-9a-z]{0,20}",
    ) {
        let m = WireMessage { channelid, userid, username, text, ts, seq, id, epoch };
        prop_assert_eq!(WireMessage::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn settings_never_panic_on_any_text(raw in ".*") {
        let _ = ChannelSettings::from_json(&raw);
    }

    #[test]
    fn settings_never_panic_on_json_shaped_text(raw in r#"\{("[a-zA-Z]{1,16}":(\d{1,25}|"[a-z]{0,8}"|\[\]|\{\}|null|true|-1),?){0,6}\}"#) {
        let _ = ChannelSettings::from_json(&raw);
    }

    #[test]
    fn durations_never_panic_and_scale_exactly(raw in ".{0,24}", n in 0u64..1_000_000_000, unit in prop::sample::select(vec!["ms", "s", "m", "h", ""])) {
        let _ = duration::parse(&raw);
        let d = duration::parse(&format!("{n}{unit}")).unwrap();
        let want = match unit { "ms" => n as u128 * 1_000_000, "m" => n as u128 * 60_000_000_000, "h" => n as u128 * 3_600_000_000_000, _ => n as u128 * 1_000_000_000 };
        prop_assert_eq!(d.as_nanos(), want);
    }
}
