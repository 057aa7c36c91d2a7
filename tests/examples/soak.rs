//! The fault checker for as long as you like: seed after seed (each a fresh stack with faults),
//! printing each run and the totals: seeds, faults injected, messages acknowledged and deliveries
//! checked, violations. Exits non-zero when a seed finds a violation (its servers' logs are kept;
//! add the seed to `tests/tests/fault_checker.rs`).
//!
//! `scripts/soak.sh [minutes] [seconds per seed] [first seed]`; `SOAK_TOPOLOGY=cluster` (three NATS
//! nodes and a Redis Cluster), `sentinel` (Redis behind Sentinel) or `all` (the three in turn) runs
//! on clustered backends with their node failures.

use std::time::{Duration, Instant};

use relay_tests::RedisTopology;
use relay_tests::checker::{self, Config};

/// The backends of the `n`th seed, per `SOAK_TOPOLOGY`.
fn topology(n: usize) -> (usize, RedisTopology) {
    let single = (1, RedisTopology::Single);
    let cluster = (3, RedisTopology::Cluster);
    let sentinel = (1, RedisTopology::Sentinel);
    match std::env::var("SOAK_TOPOLOGY").as_deref() {
        Ok("cluster") => cluster,
        Ok("sentinel") => sentinel,
        Ok("all") => [single, cluster, sentinel][n % 3],
        Ok("single") | Err(_) => single,
        Ok(other) => panic!("SOAK_TOPOLOGY={other}: use single, cluster, sentinel or all"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<u64> =
        std::env::args().skip(1).map(|a| a.parse().expect("numbers: minutes, seconds per seed, first seed")).collect();
    let minutes = args.first().copied().unwrap_or(30);
    let per_seed = args.get(1).copied().unwrap_or(60);
    let mut seed = args.get(2).copied().unwrap_or_else(|| rand::random::<u32>() as u64);
    let until = Instant::now() + Duration::from_secs(minutes * 60);
    let (mut seeds, mut faults, mut acknowledged, mut checked, mut markers, mut duplicates, mut failed) =
        (0, 0, 0, 0, 0, 0, Vec::new());
    while Instant::now() < until {
        let (nats_nodes, redis) = topology(seeds);
        let duration = Duration::from_secs(per_seed);
        let report = checker::run(Config { seed, duration, nats_nodes, redis, ..Default::default() }).await;
        println!("{}", report.summary());
        seeds += 1;
        faults += report.faults.len();
        acknowledged += report.verdict.acknowledged;
        checked += report.verdict.deliveries_checked;
        markers += report.verdict.markers;
        duplicates += report.verdict.queue_duplicates;
        if !report.verdict.violations.is_empty() {
            failed.push(seed);
        }
        seed += 1;
    }
    println!(
        "\nsoak: {minutes} min, {seeds} seeds, {faults} faults injected, {acknowledged} messages acknowledged, {checked} deliveries checked, {markers} markers, {duplicates} queue duplicates, {} seeds with violations {failed:?}",
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
