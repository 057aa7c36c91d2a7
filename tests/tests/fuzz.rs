//! The request fuzzer (`relay_tests::fuzz`) against a real relay: a short fixed-seed pass here
//! (`FUZZ_SECS`, `FUZZ_SEED` to change it); `scripts/fuzz.sh MINUTES` runs it for longer.

use std::time::Duration;

use relay_tests::{Stack, StackOptions, fuzz};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_requests_get_proper_statuses_and_leave_nothing_behind() {
    let secs = std::env::var("FUZZ_SECS").map_or(12, |s| s.parse().expect("FUZZ_SECS"));
    let seed = std::env::var("FUZZ_SEED").map_or(1, |s| s.parse().expect("FUZZ_SEED"));
    let stack =
        Stack::with(StackOptions { relays: 1, ..Default::default() }.env("RELAY_UNDECLARED_CHANNELS", "allow")).await;
    // `fz` and its sub-channels keep presence and take ephemeral messages; other names are
    // undeclared (served with defaults: neither).
    let mut settings = relay_channel::ChannelSettings {
        presence: relay_channel::PresenceSettings { enabled: true, join_leave: true, ttl_secs: 5 },
        ..Default::default()
    };
    settings.limits.allow_ephemeral = true;
    stack.declare("fz", &settings).await;
    let users = vec![stack.pocketbase.create_user("fz1").await, stack.pocketbase.create_user("fz2").await];
    let report = fuzz::run(&stack.relays[0], &users, seed, Duration::from_secs(secs), 16).await;
    println!("{}", report.summary());
    assert!(report.requests > 500, "{}", report.summary());
    assert!(report.statuses.len() >= 5, "the fuzzer reaches several outcomes: {}", report.summary());
    assert!(report.problems().is_empty(), "seed {seed}: {}", report.summary());
}
