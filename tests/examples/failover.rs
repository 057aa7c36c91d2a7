//! What a node failure costs clients, measured: for each failure of a clustered backend, a publisher
//! sends a message every 10 ms through one relay (retrying with its idempotency key until
//! acknowledged) while a subscriber on the other relay reads live; the failure comes after 3 s.
//! Printed per failure: the longest wait for a publish acknowledgement, the longest pause in
//! deliveries, messages acknowledged, and how many of those never arrived (must be 0) and markers.
//!
//! `cargo run --release -p relay-tests --example failover [failure ...]` where a failure is one of
//! nats-node, redis-master, slot-move, sentinel-failover, sentinel-master (default: all). Each runs
//! `FAILOVER_RUNS` times (default 3) on a fresh stack; times are printed as the range seen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_tests::{Client, Event, Position, RedisTopology, Stack, StackOptions};
use tokio::time::Instant;

const FAILURES: [&str; 5] = ["nats-node", "redis-master", "slot-move", "sentinel-failover", "sentinel-master"];
const CHANNEL: &str = "orders";
/// How long after a failure is healed publishes may take to be acknowledged again before the
/// run gives up watching (the table then shows the whole window).
const RECOVERY: Duration = Duration::from_secs(30);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    println!(
        "| failure | longest wait for a publish ack | longest pause in deliveries | acknowledged | never delivered | markers |"
    );
    println!("|---|---|---|---|---|---|");
    let runs: usize = std::env::var("FAILOVER_RUNS").map_or(3, |r| r.parse().expect("FAILOVER_RUNS: a number"));
    for failure in FAILURES.iter().filter(|f| wanted.is_empty() || wanted.iter().any(|w| w == *f)) {
        let mut all = Vec::new();
        for _ in 0..runs {
            all.push(measure(failure).await);
        }
        let range = |f: fn(&Measured) -> Duration| {
            let secs: Vec<f64> = all.iter().map(|m| f(m).as_secs_f64()).collect();
            let (lo, hi) = secs.iter().fold((f64::MAX, 0f64), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
            if (hi - lo) < 0.005 { format!("{hi:.2} s") } else { format!("{lo:.2}-{hi:.2} s") }
        };
        println!(
            "| {failure} | {} | {} | {} | {} | {} |",
            range(|m| m.publish_wait),
            range(|m| m.delivery_pause),
            all.iter().map(|m| m.acknowledged).sum::<usize>(),
            all.iter().map(|m| m.missing).sum::<usize>(),
            all.iter().map(|m| m.markers).sum::<usize>()
        );
    }
}

struct Measured {
    publish_wait: Duration,
    delivery_pause: Duration,
    acknowledged: usize,
    missing: usize,
    markers: usize,
}

async fn measure(failure: &str) -> Measured {
    let (nats_nodes, redis) = match failure {
        "nats-node" => (3, RedisTopology::Single),
        "redis-master" | "slot-move" => (1, RedisTopology::Cluster),
        _ => (1, RedisTopology::Sentinel),
    };
    let options = StackOptions { nats_nodes, redis, ..Default::default() }
        .env("RELAY_REDIS_WAIT_REPLICAS", &redis.replicas_per_master().to_string())
        .env("RUST_LOG", "warn");
    let mut stack = Stack::with(options).await;
    let user = stack.pocketbase.create_user("failover").await;
    let spec = serde_json::json!({"stream": {"replicas": nats_nodes}, "limits": {"publishPerSecondPerUser": 0}});
    stack.declare_spec(CHANNEL, spec).await;

    let stop = Arc::new(tokio::sync::Notify::new());
    // seq -> when it was delivered (first time), and the markers seen.
    let delivered: Arc<Mutex<(BTreeMap<u64, Instant>, usize)>> = Arc::default();
    let reader = tokio::spawn(subscriber(stack.relays[1].addr(), user.token.clone(), delivered.clone(), stop.clone()));
    let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let writer = tokio::spawn(publisher(stack.relays[0].addr(), user.token.clone(), acked.clone(), stop.clone()));

    tokio::time::sleep(Duration::from_secs(3)).await;
    let fault_at = Instant::now();
    match failure {
        "nats-node" => {
            // The node leading the stream: its replica group elects another leader.
            let outcome = stack.declare_spec(CHANNEL, serde_json::json!({"stream": {"replicas": 3}})).await;
            let leader = outcome.stream.and_then(|s| s.leader).unwrap_or_else(|| "n0".into());
            let i: usize = leader.trim_start_matches('n').parse().unwrap_or(0);
            stack.nats.node(i).stop().await;
        }
        "redis-master" => stack.redis.kill_master_of(CHANNEL, Duration::from_secs(1)).await,
        "slot-move" => stack.redis.move_slot_of(CHANNEL).await,
        "sentinel-failover" => stack.redis.sentinel_failover().await,
        _ => stack.redis.kill_sentinel_master(Duration::from_secs(1)).await,
    }
    let healed = Instant::now();
    // Watched for at least 8 s from the fault and 4 s from the heal, and until publishes are
    // acknowledged again (for at most RECOVERY after the heal).
    let watch_until = (fault_at + Duration::from_secs(8)).max(healed + Duration::from_secs(4));
    tokio::time::sleep_until(watch_until).await;
    while Instant::now() < healed + RECOVERY && acked.lock().unwrap().last().is_none_or(|(_, t)| *t < healed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.notify_waiters();
    writer.await.unwrap();
    let end = Instant::now();
    let acked = acked.lock().unwrap().clone();
    // Give the subscriber time to receive the last ones.
    tokio::time::sleep(Duration::from_secs(3)).await;
    reader.abort();

    let (seen, markers) = delivered.lock().unwrap().clone();
    let after = |t: &Instant| *t >= fault_at;
    let ack_times: Vec<Instant> = acked.iter().map(|(_, t)| *t).collect();
    let publish_wait = longest_gap(ack_times.iter().filter(|t| after(t)).copied(), fault_at, end);
    let mut delivery_times: Vec<Instant> = seen.values().copied().collect();
    delivery_times.sort();
    let delivery_pause = longest_gap(delivery_times.into_iter().filter(after), fault_at, end);
    let missing = acked.iter().filter(|(seq, _)| !seen.contains_key(seq)).count();
    Measured { publish_wait, delivery_pause, acknowledged: acked.len(), missing, markers }
}

/// The longest interval between `from` and the times that follow, between consecutive ones, and
/// from the last one to `end` (a publisher that never recovers shows the whole window).
fn longest_gap(times: impl Iterator<Item = Instant>, from: Instant, end: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in times {
        longest = longest.max(t.saturating_duration_since(last));
        last = last.max(t);
    }
    // The last 100 ms are the publisher's own pace, not an outage.
    longest.max(end.saturating_duration_since(last).saturating_sub(Duration::from_millis(100)))
}

/// Publishes every 10 ms, each until acknowledged, recording (seq, acknowledged at).
async fn publisher(
    addr: String,
    token: String,
    acked: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut client = Client::lazy(&addr);
    let stopped = stop.notified();
    tokio::pin!(stopped);
    for i in 0.. {
        let key = format!("m{i}");
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                r = client.publish_with_key(&token, CHANNEL, &key, &key) => match r {
                    Ok(m) => {
                        acked.lock().unwrap().push((m.seq, Instant::now()));
                        break;
                    }
                    Err(e) => {
                        if std::env::var_os("FAILOVER_VERBOSE").is_some() {
                            eprintln!("publish {key}: {:?} {}", e.code(), e.message());
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                },
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads live, resuming after the last seq whenever the stream ends.
async fn subscriber(
    addr: String,
    token: String,
    delivered: Arc<Mutex<(BTreeMap<u64, Instant>, usize)>>,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut client = Client::lazy(&addr);
    let mut last = 0;
    loop {
        let mut sub = match client.subscribe(&token, &[(CHANNEL, Some(Position::SinceSeq(last)))]).await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut first = true;
        while let Some(event) = sub.try_next(Duration::from_secs(30)).await {
            match event {
                Ok(Event::Message(m)) => {
                    last = last.max(m.seq);
                    delivered.lock().unwrap().0.entry(m.seq).or_insert_with(Instant::now);
                }
                Ok(Event::Recovery(r)) => {
                    // The first marker of a stream is its start; later ones mark gaps.
                    if !first || !r.recovered {
                        delivered.lock().unwrap().1 += 1;
                    }
                    first = false;
                }
                // Live-only events: the channel has none, and they are not messages.
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = &stop;
    }
}
