//! A randomized fault checker in the spirit of Jepsen: a seeded run of publishers, subscribers and
//! queue workers against real servers (NATS with JetStream, Redis with an append-only file,
//! PocketBase, relay replicas, the operator in standalone mode), with faults injected while they
//! work ([`nemesis`]); everything acknowledged and delivered is recorded ([`history`]) and judged
//! afterwards ([`check`]).
//!
//! A run is reproducible in what it decides (which channel, which replica, which fault, when) from
//! its seed; the servers' own timing is not, so a failing seed is kept as a test and run again.

pub mod check;
pub mod history;
mod nemesis;
mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Client, OperatorProc, RedisTopology, Stack, StackOptions, TestUser, eventually};
use history::{Fault, History, Mode};
use workload::{Target, World};

/// One run.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    /// How long clients work while faults happen.
    pub duration: Duration,
    pub relays: usize,
    pub faults: bool,
    /// NATS servers: 1, or a cluster of 3 (streams replicated three times, nodes killed).
    pub nats_nodes: usize,
    /// Redis Cluster: masters killed and slots moved; Sentinel: failovers and masters killed.
    pub redis: RedisTopology,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 1,
            duration: Duration::from_secs(25),
            relays: 2,
            faults: true,
            nats_nodes: 1,
            redis: RedisTopology::Single,
        }
    }
}

/// What a run found.
pub struct Report {
    pub config: Config,
    pub verdict: check::Verdict,
    pub faults: Vec<Fault>,
    /// Where the servers' logs are (kept when the run found a violation).
    pub dir: std::path::PathBuf,
}

/// The channels of a run, as RelayChannel manifests for the standalone operator.
const CHANNELS: &str = "\
apiVersion: relay.dev/v1alpha1
kind: RelayChannel
metadata: {name: bc, namespace: checker}
spec:
  history: {maxMessages: 300, maxAge: 1h}
  limits: {publishPerSecondPerUser: 0}
---
apiVersion: relay.dev/v1alpha1
kind: RelayChannel
metadata: {name: pu, namespace: checker}
spec:
  delivery: perUser
  history: {maxMessages: 5000, maxAge: 1h}
  limits: {publishPerSecondPerUser: 0}
---
apiVersion: relay.dev/v1alpha1
kind: RelayChannel
metadata: {name: q, namespace: checker}
spec:
  delivery: queue
  limits: {publishPerSecondPerUser: 0}
  queue: {ackWait: 3s, maxUnackedPerStream: 4}
";

/// How long the run may take to settle after publishing stops.
const SETTLE_MAX: Duration = Duration::from_secs(60);
/// Settled: nothing delivered or acked for this long.
const SETTLE_QUIET: Duration = Duration::from_secs(6);

/// Runs one seed to the end and judges it.
pub async fn run(config: Config) -> Report {
    // With replicas, an acknowledged publish must be on every replica of its master: whichever
    // one is promoted then has it. (Sentinel may promote a replica that lags; one of two is not enough.)
    let wait_replicas = config.redis.replicas_per_master().to_string();
    let options = StackOptions {
        relays: config.relays,
        nats_nodes: config.nats_nodes,
        redis: config.redis,
        ..Default::default()
    }
    .env("RELAY_REDIS_WAIT_REPLICAS", &wait_replicas)
    .env("RELAY_UNDECLARED_CHANNELS", "deny")
    .env("RELAY_SETTINGS_TTL", "2s")
    .env("RELAY_HEARTBEAT", "1s")
    .env("RELAY_SHUTDOWN_GRACE", "2s");
    let mut stack = Stack::with(options).await;
    let dir = stack.dir().join("channels");
    std::fs::create_dir_all(&dir).unwrap();
    // On a NATS cluster, every stream is replicated to all three nodes.
    let channels = match config.nats_nodes {
        1 => CHANNELS.to_owned(),
        n => CHANNELS.replace("spec:\n", &format!("spec:\n  stream: {{replicas: {n}}}\n")),
    };
    std::fs::write(dir.join("channels.yaml"), channels).unwrap();
    let _operator = OperatorProc::start(&stack, &["--standalone", dir.to_str().unwrap(), "--resync", "1s"], &[]).await;
    let users = create_users(&stack).await;
    declared(&stack).await;

    let (stop_publishing, publishing) = watch::channel(false);
    let (stop_reading, reading) = watch::channel(false);
    let (stop_faults, faults_stop) = watch::channel(false);
    let progress = Arc::new(AtomicU64::new(0));
    let pub_world = World {
        clients: stack.relays.iter().map(|r| Client::lazy(&r.addr())).collect(),
        started: Instant::now(),
        stop: publishing,
        published: Arc::new(Mutex::new(Vec::new())),
        attempted: Arc::new(Mutex::new(Default::default())),
        progress: progress.clone(),
    };
    let read_world = World { stop: reading, ..pub_world.clone() };
    let seed = config.seed;
    let mut publishers = Vec::new();
    for (i, name) in ["p0", "p1", "p2"].into_iter().enumerate() {
        let targets = vec![
            Target { channel: "bc".into(), weight: 60 },
            Target { channel: "pu".into(), weight: 20 },
            Target { channel: "q".into(), weight: 20 },
        ];
        let (w, user) = (pub_world.clone(), users[name].clone());
        publishers.push(tokio::spawn(workload::publisher(w, name.into(), user, targets, actor_seed(seed, i))));
    }
    let mut readers = Vec::new();
    let streams = [("s0", "bc", Mode::Broadcast), ("s1", "bc", Mode::Broadcast), ("s2", "bc", Mode::Broadcast)];
    let per_user = [("u0", "pu", Mode::PerUser), ("u1", "pu", Mode::PerUser)];
    for (i, (name, channel, mode)) in streams.into_iter().chain(per_user).enumerate() {
        let (w, user) = (read_world.clone(), users[name].clone());
        let s = actor_seed(seed, 10 + i);
        readers.push(tokio::spawn(workload::subscriber(w, name.into(), user, channel.into(), mode, s)));
    }
    for (i, name) in ["w0", "w1"].into_iter().enumerate() {
        let (w, user) = (read_world.clone(), users[name].clone());
        readers.push(tokio::spawn(workload::worker(w, name.into(), user, "q".into(), actor_seed(seed, 20 + i))));
    }

    // Faults while the clients work; then everything is healed.
    let started = pub_world.started;
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(config.duration).await;
        let _ = stop_faults.send(true);
    });
    let faults = if config.faults {
        nemesis::run(&mut stack, &config, actor_seed(seed, 99), started, faults_stop).await
    } else {
        let _ = stopper.await;
        Vec::new()
    };
    stop_publishing.send(true).unwrap();
    for p in publishers {
        p.await.expect("publisher");
    }
    settle(&progress).await;
    stop_reading.send(true).unwrap();
    let mut subscribers = Vec::new();
    for r in readers {
        subscribers.push(r.await.expect("subscriber"));
    }
    let history = History {
        published: pub_world.published.lock().unwrap().clone(),
        attempted: pub_world.attempted.lock().unwrap().clone(),
        subscribers,
        faults: faults.clone(),
    };
    let verdict = check::check(&history);
    if !verdict.violations.is_empty() {
        stack.keep_dir();
    }
    Report { config, verdict, faults, dir: stack.dir().to_owned() }
}

/// A seed of its own for each actor, derived from the run's.
fn actor_seed(seed: u64, actor: usize) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(actor as u64 + 1)
}

async fn create_users(stack: &Stack) -> BTreeMap<&'static str, TestUser> {
    let names = ["p0", "p1", "p2", "s0", "s1", "s2", "u0", "u1", "w0", "w1"];
    futures::future::join_all(names.iter().map(|n| async { (*n, stack.pocketbase.create_user(n).await) }))
        .await
        .into_iter()
        .collect()
}

/// Waits until the operator has declared the channels.
async fn declared(stack: &Stack) {
    let conn = stack.redis.connection().await;
    eventually(Duration::from_secs(30), "the operator declared the channels", || {
        let mut conn = conn.clone();
        async move {
            let keys = ["relay:{bc}:config", "relay:{pu}:config", "relay:{q}:config"];
            let found: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await.unwrap();
            found.iter().all(Option::is_some)
        }
    })
    .await;
}

/// Waits until nothing is delivered or acked for [`SETTLE_QUIET`] (at most [`SETTLE_MAX`]).
async fn settle(progress: &AtomicU64) {
    let until = Instant::now() + SETTLE_MAX;
    let (mut seen, mut since) = (progress.load(Ordering::Relaxed), Instant::now());
    while Instant::now() < until && since.elapsed() < SETTLE_QUIET {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = progress.load(Ordering::Relaxed);
        if now != seen {
            (seen, since) = (now, Instant::now());
        }
    }
}

impl Report {
    fn topology(&self) -> String {
        let mut out = String::new();
        if self.config.nats_nodes > 1 {
            let _ = write!(out, ", {} NATS nodes", self.config.nats_nodes);
        }
        match self.config.redis {
            RedisTopology::Single => {}
            RedisTopology::Cluster => out.push_str(", Redis Cluster"),
            RedisTopology::Sentinel => out.push_str(", Redis Sentinel"),
        }
        out
    }

    /// A few lines for the test log.
    pub fn summary(&self) -> String {
        let v = &self.verdict;
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for f in &self.faults {
            *kinds.entry(f.kind.split([' ', '(']).next().unwrap_or("").to_owned()).or_default() += 1;
        }
        let mut out = format!(
            "seed {} ({:?}, {} relays{}): {} acknowledged, {} deliveries checked, {} faults {:?}, {} markers ({} messages covered), {} queue duplicates ({} abandoned by workers), {} perUser out of order, {} violations",
            self.config.seed,
            self.config.duration,
            self.config.relays,
            self.topology(),
            v.acknowledged,
            v.deliveries_checked,
            self.faults.len(),
            kinds,
            v.markers,
            v.covered_by_markers,
            v.queue_duplicates,
            v.queue_abandons,
            v.per_user_out_of_order,
            v.violations.len()
        );
        for x in v.violations.iter().take(5) {
            let _ = write!(out, "\n\nVIOLATION: {}\n{}", x.what, x.context);
        }
        if !v.violations.is_empty() {
            let _ = write!(out, "\n\nfaults: {:#?}\nserver logs kept in {}", self.faults, self.dir.display());
        }
        out
    }
}
