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
    Nats, OperatorProc, Pki, PocketBase, Redis, RedisTopology, RelayProc, Server, Stack, StackOptions, TestUser,
    TlsProxy, declare_spec, relay_binary,
};

use std::net::TcpListener;
use std::time::Duration;

/// A port nobody listens on right now, never handed out before by this process. Picked below the
/// kernel's ephemeral range (32768 and up), where outgoing connections take their local ports, so
/// a server started a moment later does not find its port taken by some client's connection.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("ports lock");
    for _ in 0..10_000 {
        let port = rand::random_range(15_000..32_000u16);
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.push(port);
        return port;
    }
    panic!("no free port below 32000")
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
