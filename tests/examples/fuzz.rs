//! The request fuzzer for as long as you like against a fresh relay (NATS, Redis, PocketBase real):
//! prints requests sent, statuses seen, memory and file descriptors before and after, panics.
//!
//! `scripts/fuzz.sh [minutes] [seed]`

use std::time::Duration;

use relay_tests::{Stack, StackOptions, fuzz};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers: minutes, seed")).collect();
    let minutes = args.first().copied().unwrap_or(10);
    let seed = args.get(1).copied().unwrap_or_else(|| rand::random::<u32>() as u64);
    let stack =
        Stack::with(StackOptions { relays: 1, ..Default::default() }.env("RELAY_UNDECLARED_CHANNELS", "allow")).await;
    let users = vec![stack.pocketbase.create_user("fz1").await, stack.pocketbase.create_user("fz2").await];
    let report = fuzz::run(&stack.relays[0], &users, seed, Duration::from_secs(minutes * 60), 32).await;
    println!("fuzz: {minutes} min, seed {seed}: {}", report.summary());
    if !report.problems().is_empty() {
        std::process::exit(1);
    }
}
