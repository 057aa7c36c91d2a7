//! Faults, one at a time, chosen by a seeded generator: a relay killed (SIGKILL) and started again,
//! a relay or NATS stalled (SIGSTOP, then SIGCONT), NATS or Redis killed and started again (Redis
//! keeps an append-only file, fsynced on every write), and Redis losing everything (FLUSHALL).
//!
//! On clusters the faults are the nodes': one NATS node of three killed, the Redis Cluster master
//! of a busy channel's slot killed (its replica is promoted) or the slot moved to another master,
//! and the Sentinel master failed over or killed. Replication is asynchronous in Redis: a promoted
//! replica may lack the last writes, which streams must then be told about.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Config;
use super::history::Fault;
use crate::{RedisTopology, Stack, eventually};

/// The channels whose slots and masters the cluster faults aim at.
const BUSY: [&str; 3] = ["bc", "pu", "q"];

#[derive(Clone, Copy, Debug)]
enum Kind {
    KillRelay(usize),
    PauseRelay(usize),
    KillNats,
    PauseNats,
    KillRedis,
    FlushRedis,
    KillNatsNode(usize),
    KillRedisMasterOf(&'static str),
    MoveSlotOf(&'static str),
    SentinelFailover,
    KillSentinelMaster,
}

impl Kind {
    /// The kind without its target.
    fn family(&self) -> u8 {
        match self {
            Kind::KillRelay(_) => 0,
            Kind::PauseRelay(_) => 1,
            Kind::KillNats => 2,
            Kind::PauseNats => 3,
            Kind::KillRedis => 4,
            Kind::FlushRedis => 5,
            Kind::KillNatsNode(_) => 6,
            Kind::KillRedisMasterOf(_) => 7,
            Kind::MoveSlotOf(_) => 8,
            Kind::SentinelFailover => 9,
            Kind::KillSentinelMaster => 10,
        }
    }
}

fn pick(rng: &mut StdRng, config: &Config) -> Kind {
    let relay = rng.random_range(0..config.relays);
    let roll = rng.random_range(0..100);
    let busy = BUSY[rng.random_range(0..BUSY.len())];
    let node = rng.random_range(0..config.nats_nodes);
    match (config.redis, config.nats_nodes > 1) {
        (RedisTopology::Cluster, clustered_nats) => match roll {
            0..15 => Kind::KillRelay(relay),
            15..25 => Kind::PauseRelay(relay),
            25..50 if clustered_nats => Kind::KillNatsNode(node),
            25..50 => Kind::KillNats,
            50..75 => Kind::KillRedisMasterOf(busy),
            _ => Kind::MoveSlotOf(busy),
        },
        (RedisTopology::Sentinel, _) => match roll {
            0..20 => Kind::KillRelay(relay),
            20..30 => Kind::PauseRelay(relay),
            30..65 => Kind::SentinelFailover,
            _ => Kind::KillSentinelMaster,
        },
        (RedisTopology::Single, true) => match roll {
            0..20 => Kind::KillRelay(relay),
            20..30 => Kind::PauseRelay(relay),
            30..80 => Kind::KillNatsNode(node),
            _ => Kind::KillRedis,
        },
        (RedisTopology::Single, false) => match roll {
            0..25 => Kind::KillRelay(relay),
            25..40 => Kind::PauseRelay(relay),
            40..57 => Kind::KillNats,
            57..67 => Kind::PauseNats,
            67..90 => Kind::KillRedis,
            _ => Kind::FlushRedis,
        },
    }
}

/// Injects faults until told to stop; then heals everything and returns what it did.
pub async fn run(
    stack: &mut Stack,
    config: &Config,
    seed: u64,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    let clustered = config.nats_nodes > 1 || config.redis != RedisTopology::Single;
    let mut round: Vec<Kind> = Vec::new();
    loop {
        let calm = Duration::from_millis(rng.random_range(1_500..4_000));
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(calm) => {}
        }
        let kind = match clustered {
            // On clusters every kind of fault comes once (in a seeded order) before any twice.
            true => {
                if round.is_empty() {
                    round = (0..64).map(|_| pick(&mut rng, config)).collect();
                    round.sort_by_key(Kind::family);
                    round.dedup_by_key(|k| k.family());
                    round.shuffle(&mut rng);
                }
                round.pop().expect("a fault")
            }
            false => pick(&mut rng, config),
        };
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
        Kind::KillNatsNode(i) => {
            let node = stack.nats.node(i);
            node.stop().await;
            tokio::time::sleep(outage).await;
            node.restart().await;
        }
        Kind::KillRedisMasterOf(channel) => stack.redis.kill_master_of(channel, outage).await,
        Kind::MoveSlotOf(channel) => stack.redis.move_slot_of(channel).await,
        Kind::SentinelFailover => stack.redis.sentinel_failover().await,
        Kind::KillSentinelMaster => stack.redis.kill_sentinel_master(outage).await,
    }
}
