//! A quick figure, not the benchmark suite: starts the real stack (NATS, Redis, PocketBase, two
//! relays), then 64 concurrent publishers on replica 0 push messages for 5 seconds into one
//! broadcast channel watched by two subscribers on replica 1. Prints publishes/s, deliveries/s and
//! publish latency percentiles.
//!
//! `cargo build --release -p relay --bins && cargo run --release -p relay-tests --example quick_bench`

use std::time::{Duration, Instant};

use relay_channel::ChannelSettings;
use relay_tests::{Event, Stack, unique};

const PUBLISHERS: usize = 64;
const RUN: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() {
    let stack = Stack::start().await;
    let user = stack.pocketbase.create_user("bench").await;
    let ch = unique("bench");
    let mut settings = ChannelSettings::default();
    settings.limits.publish_per_second_per_user = 0;
    settings.history.max_messages = 10_000;
    stack.declare(&ch, &settings).await;

    let mut counters = Vec::new();
    for _ in 0..2 {
        let mut sub = stack.client(1).await.subscribe(&user.token, &[(&ch, None)]).await.unwrap();
        counters.push(tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(Ok(ev)) = sub.try_next(Duration::from_secs(2)).await {
                if matches!(ev, Event::Message(_)) {
                    n += 1;
                }
            }
            n
        }));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..PUBLISHERS {
        let (mut c, token, ch) = (stack.client(0).await, user.token.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < RUN {
                let t = Instant::now();
                c.publish(&token, &ch, "0123456789abcdef0123456789abcdef").await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    let delivered: u64 = futures::future::join_all(counters).await.into_iter().map(Result::unwrap).sum();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!("publishers {PUBLISHERS}, subscribers 2, {:.1}s", elapsed.as_secs_f64());
    println!("publishes/s  {:.0}", lat.len() as f64 / elapsed.as_secs_f64());
    println!(
        "deliveries/s {:.0} ({} of {} expected)",
        delivered as f64 / elapsed.as_secs_f64(),
        delivered,
        lat.len() * 2
    );
    println!("publish latency p50 {:?} p99 {:?} p99.9 {:?}", pct(0.5), pct(0.99), pct(0.999));
}
