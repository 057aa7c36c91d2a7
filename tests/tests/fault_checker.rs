//! The randomized fault checker (`relay_tests::checker`) on a few fixed seeds: publishers,
//! broadcast and perUser subscribers and queue workers on two relays while relays, NATS and Redis
//! are killed, stalled and wiped; every acknowledged message must be delivered as promised or
//! marked. `CHECKER_SEEDS=1,2,3` and `CHECKER_SECS=25` change the run; `scripts/soak.sh` runs many.
//! A seed that once failed stays in the list.

use std::time::Duration;

use relay_tests::checker::{self, Config};

fn seeds() -> Vec<u64> {
    std::env::var("CHECKER_SEEDS")
        .map(|s| s.split(',').map(|x| x.trim().parse().expect("CHECKER_SEEDS: numbers")).collect())
        .unwrap_or_else(|_| vec![1, 2, 3])
}

fn seconds() -> u64 {
    std::env::var("CHECKER_SECS").map_or(25, |s| s.parse().expect("CHECKER_SECS: a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_lose_nothing_that_was_acknowledged() {
    let mut failed = Vec::new();
    for seed in seeds() {
        let report = checker::run(Config {
            seed,
            duration: Duration::from_secs(seconds()),
            relays: 2,
            faults: true,
            ..Default::default()
        })
        .await;
        println!("{}", report.summary());
        assert!(report.verdict.acknowledged > 100, "seed {seed}: too little was acknowledged to judge");
        if !report.verdict.violations.is_empty() {
            failed.push(seed);
        }
    }
    assert!(failed.is_empty(), "seeds with violations: {failed:?} (summaries above)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_faults_nothing_is_marked_and_nothing_is_delivered_twice() {
    let report = checker::run(Config {
        seed: 7,
        duration: Duration::from_secs(10),
        relays: 2,
        faults: false,
        ..Default::default()
    })
    .await;
    println!("{}", report.summary());
    let v = &report.verdict;
    assert!(v.violations.is_empty(), "{}", report.summary());
    assert_eq!(v.markers, 0, "{}", report.summary());
    assert!(v.queue_duplicates <= v.queue_abandons, "only abandoned messages come twice: {}", report.summary());
    assert_eq!(v.per_user_out_of_order, 0, "{}", report.summary());
}
