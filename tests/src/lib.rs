//! Test harness: real servers on free loopback ports in temp dirs, and relay processes built from
//! this workspace. Everything started here is killed when its handle drops.
//!
//! Servers come from the PATH (`nats-server`, `redis-server`, `pocketbase`); `scripts/install-deps.sh`
//! installs them. The relay binary is `target/<profile>/relay`, built by `cargo test --workspace`
//! (the relay package has integration tests of its own, so Cargo builds its binaries first).

pub mod checker;
mod client;
pub mod fuzz;
pub mod kube_api;
mod servers;

pub use client::{Client, Event, Sub, at};
pub use relay::proto::cursor::Position;
pub use servers::{
    Nats, OperatorProc, Pki, PocketBase, Redis, RelayProc, Server, Stack, StackOptions, TestUser, TlsProxy,
    relay_binary,
};

use std::net::TcpListener;
use std::time::Duration;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Polls `check` every 50ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A channel name unique within the test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}
