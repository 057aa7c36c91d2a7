//! Properties of what the operator parses from RelayChannel specs: sizes, durations and whole
//! specs never panic, and a spec the plan accepts always maps to a stream config JetStream takes.

use operator::crd::RelayChannelSpec;
use operator::plan;
use proptest::prelude::*;

proptest! {
    #[test]
    fn sizes_and_durations_never_panic(raw in ".{0,30}", n in 0i64..i64::MAX, unit in prop::sample::select(vec!["", "K", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"])) {
        let _ = plan::size("f", &raw);
        let _ = plan::duration("f", &raw);
        if let Ok(bytes) = plan::size("f", &format!("{n}{unit}")) {
            prop_assert!(bytes >= n, "{n}{unit} -> {bytes}");
        }
    }

    #[test]
    fn any_spec_plans_or_is_refused_without_a_panic(
        delivery in prop::sample::select(vec!["broadcast", "perUser", "queue"]),
        max_messages in 0u64..2_000_000,
        history_age in "[0-9]{1,20}(ms|s|m|h)?",
        stream_age in "[0-9]{1,20}(ms|s|m|h)?",
        stream_messages in -1i64..10_000_000,
        max_bytes in "(-1|[0-9]{1,20}(Ki|Mi|Gi|Ti|K|M|G|T)?)",
        replicas in 1u32..6,
        ack_wait in "[0-9]{1,12}(ms|s|m|h)?",
        name in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,3}",
    ) {
        let spec: RelayChannelSpec = serde_json::from_value(serde_json::json!({
            "delivery": delivery,
            "history": {"maxMessages": max_messages, "maxAge": history_age},
            "stream": {"maxAge": stream_age, "maxMessages": stream_messages, "maxBytes": max_bytes, "replicas": replicas},
            "queue": {"ackWait": ack_wait},
        })).unwrap();
        let me = [plan::Declared { name: &name, owner: format!("ns/{name}"), spec: &spec }];
        if let Ok(d) = plan::desired(&name, &spec, &me) {
            let stream = d.stream.expect("a stream unless turned off");
            prop_assert!(stream.name.starts_with("RELAY_") && stream.name == d.stream_name);
            prop_assert!(!stream.name.contains('.'));
            prop_assert!(stream.max_bytes >= -1);
        }
    }
}
