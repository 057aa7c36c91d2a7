//! Faults, one at a time, chosen by a seeded generator: a relay killed (SIGKILL) and started again,
//! a relay or NATS stalled (SIGSTOP, then SIGCONT), NATS or Redis killed and started again (Redis
//! keeps an append-only file, fsynced on every write), and Redis losing everything (FLUSHALL).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

use super::history::Fault;
use crate::{Stack, eventually};

#[derive(Clone, Copy, Debug)]
enum Kind {
    KillRelay(usize),
    PauseRelay(usize),
    KillNats,
    PauseNats,
    KillRedis,
    FlushRedis,
}

fn pick(rng: &mut StdRng, relays: usize) -> Kind {
    let relay = rng.random_range(0..relays);
    match rng.random_range(0..100) {
        0..25 => Kind::KillRelay(relay),
        25..40 => Kind::PauseRelay(relay),
        40..57 => Kind::KillNats,
        57..67 => Kind::PauseNats,
        67..90 => Kind::KillRedis,
        _ => Kind::FlushRedis,
    }
}

/// Injects faults until told to stop; then heals everything and returns what it did.
pub async fn run(stack: &mut Stack, seed: u64, started: Instant, mut stop: watch::Receiver<bool>) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    loop {
        let calm = Duration::from_millis(rng.random_range(1_500..4_000));
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(calm) => {}
        }
        let kind = pick(&mut rng, stack.relays.len());
        let outage = Duration::from_millis(rng.random_range(300..2_500));
        let start = started.elapsed();
        inject(stack, kind, outage).await;
        faults.push(Fault { kind: format!("{kind:?} for {outage:?}"), start, end: started.elapsed() });
    }
    faults
}

async fn inject(stack: &mut Stack, kind: Kind, outage: Duration) {
    match kind {
        Kind::KillRelay(i) => {
            stack.relays[i].kill().await;
            tokio::time::sleep(outage).await;
            stack.relays[i].restart().await;
            let relay = &stack.relays[i];
            eventually(Duration::from_secs(30), "restarted relay ready", || relay.ready()).await;
        }
        Kind::PauseRelay(i) => {
            stack.relays[i].pause();
            tokio::time::sleep(outage).await;
            stack.relays[i].resume();
        }
        Kind::KillNats => {
            stack.nats.stop().await;
            tokio::time::sleep(outage).await;
            stack.nats.restart().await;
        }
        Kind::PauseNats => {
            stack.nats.pause();
            tokio::time::sleep(outage).await;
            stack.nats.resume();
        }
        Kind::KillRedis => {
            stack.redis.stop().await;
            tokio::time::sleep(outage).await;
            stack.redis.restart().await;
        }
        Kind::FlushRedis => {
            let mut conn = stack.redis.connection().await;
            let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("FLUSHALL");
        }
    }
}
