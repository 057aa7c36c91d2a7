//! `loadgen`: runs one scenario against one system on this machine and prints its figures as one
//! JSON line (and a readable summary on stderr). `scripts/bench.sh` runs every combination and
//! writes `docs/benchmarks.md`.
//!
//! Systems: `relay` (`--replicas`, two by default, with NATS, Redis and PocketBase), `relay-sim` (the
//! relay's own Redis append and NATS publish called directly, no gRPC: the ceiling for the relay's
//! publish path), `nats` (raw core NATS, the ceiling for the broker hop), `centrifugo-memory` and
//! `centrifugo-redis` (Centrifugo v6 with each engine). Servers are started here, on loopback, from
//! the same harness the tests use.
//!
//! `--declared` declares the benchmark channels as `examples/channels/chat.yaml` does, with the
//! operator's own code: a JetStream stream captures them and every publish waits for its ack (the
//! path users run). `--pin` puts the servers on the first CPU and the load generator on the others,
//! so that the client's cost does not decide the result.
#![forbid(unsafe_code)]

mod centrifugo;
mod presence;
mod saturation;
mod scenario;
mod stats;
mod targets;

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use relay_channel::ChannelSettings;
use relay_tests::{Nats, Redis, RedisTopology, Stack, StackOptions};

use crate::scenario::{Load, Pids};
use crate::targets::{NatsTarget, RelayTarget, SimTarget, Target};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum System {
    Relay,
    RelaySim,
    Nats,
    CentrifugoMemory,
    CentrifugoRedis,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Scenario {
    /// One channel, one publisher, many subscribers.
    Fanout,
    /// Many channels, one publisher and two subscribers each.
    Channels,
    /// Closed-loop publishers as fast as acks come back.
    Throughput,
    /// Many idle subscriptions: memory per subscription.
    Idle,
    /// Many subscribers reconnecting at once with cursors.
    Reconnect,
    /// Many members (each a user and a connection) joining one channel with presence.
    Presence,
}

#[derive(Parser)]
#[command(name = "loadgen", about = "Load generator for the relay and its peers")]
struct Args {
    #[arg(long, value_enum)]
    system: System,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Subscribers (fanout: on the channel; idle and reconnect: in all).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Channels (channels scenario).
    #[arg(long, default_value_t = 1000)]
    channels: usize,
    /// Total publish rate, messages per second (fanout, channels).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Concurrent closed-loop publishers (throughput).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Measured duration, seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Members joining (presence scenario).
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Messages each subscriber misses in the reconnect scenario.
    #[arg(long, default_value_t = 20)]
    missed: usize,
    /// Relay replicas (relay system only).
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// NATS servers under the relay: 1, or a cluster of 3 (streams replicated three times).
    #[arg(long, default_value_t = 1)]
    nats_nodes: usize,
    /// Redis under the relay: single, cluster (3 masters, 3 replicas) or sentinel (a master, 2 replicas).
    #[arg(long, default_value = "single", value_parser = ["single", "cluster", "sentinel"])]
    redis: String,
    /// Replicas each publish waits for (Redis WAIT); by default every replica of its master.
    #[arg(long)]
    redis_wait_replicas: Option<u32>,
    /// Relay and relay-sim: the channels are declared with a JetStream stream, as
    /// examples/channels/chat.yaml declares them (without its per-user rate limit, replicated on
    /// every NATS node).
    #[arg(long)]
    declared: bool,
    /// Servers on CPU 0, the load generator on the other CPUs (needs `taskset` and two CPUs).
    #[arg(long)]
    pin: bool,
    /// Relay: publish with unary Publish calls, or through PublishStream calls (one per
    /// publishing connection), the path for services publishing at a high rate.
    #[arg(long, default_value = "unary", value_parser = ["unary", "stream"])]
    publish_path: String,
    /// Relay: subscriptions per HTTP/2 connection (1: each its own connection; more: streams
    /// multiplexed on shared connections, as a service or a gateway subscribing for many users).
    #[arg(long, default_value_t = 1)]
    streams_per_connection: usize,
    /// fanout and channels: search for the highest rate with everything delivered and p99 within
    /// 50 ms (short trials of --seconds each, doubling from --rate, then bisecting) and report it.
    #[arg(long)]
    saturate: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let dir = tempfile::Builder::new().prefix("relay-bench-").tempdir()?;
    // Whatever the system, its servers live until the end of `run`.
    let backends = Backends {
        nats_nodes: args.nats_nodes,
        redis: match args.redis.as_str() {
            "cluster" => RedisTopology::Cluster,
            "sentinel" => RedisTopology::Sentinel,
            _ => RedisTopology::Single,
        },
        wait_replicas: args.redis_wait_replicas,
        declared: args.declared,
        publish_streams: args.publish_path == "stream",
        streams_per_connection: args.streams_per_connection.max(1),
    };
    if args.pin {
        // Counted (and remembered) before this process is put on one CPU.
        let cpus = cpu_count();
        anyhow::ensure!(cpus >= 2, "--pin needs two CPUs, this machine has {cpus}");
        // Servers start on CPU 0 (they inherit this process's CPUs): each runtime (tokio, Go)
        // sizes itself to the one CPU it gets, as it would under a CPU limit. Pinning them only
        // once started left two worker threads time-sharing one CPU.
        taskset("0", std::process::id())?;
    }
    if let Scenario::Presence = args.scenario {
        let report = presence_scenario(&args, dir.path()).await?;
        return print(report, &args);
    }
    let (target, pids, _servers) = start(args.system, args.replicas, &backends, dir.path()).await?;
    let pinning = if args.pin { pin(&pids.server)? } else { "not pinned".to_owned() };
    let t = Arc::new(target);
    let duration = Duration::from_secs(args.seconds);
    let report = match args.scenario {
        Scenario::Fanout | Scenario::Channels => {
            let (name, channels, per_channel) = match args.scenario {
                Scenario::Fanout => ("fanout", 1, args.subscribers),
                _ => ("channels", args.channels, 2),
            };
            let load = Load { channels, per_channel, rate: args.rate, size: args.size, duration };
            if args.saturate {
                saturation::search(t, &pids, name, load).await?
            } else {
                scenario::open_loop(t, &pids, name, load).await?
            }
        }
        Scenario::Throughput => scenario::throughput(t, &pids, args.concurrency, args.size, duration).await?,
        Scenario::Idle => {
            let per_connection =
                if matches!(args.system, System::Relay) { args.streams_per_connection.max(1) } else { 1 };
            scenario::idle(t, &pids, args.subscribers, per_connection).await?
        }
        Scenario::Reconnect => scenario::reconnect_storm(t, &pids, args.subscribers, args.missed).await?,
        Scenario::Presence => unreachable!("run above"),
    };
    let mut report = report;
    report.pinning = pinning;
    print(report, &args)
}

/// Prints a report: a summary on stderr, the JSON line on stdout.
fn print(mut report: stats::Report, args: &Args) -> anyhow::Result<()> {
    report.declared = args.declared;
    if args.declared {
        report.system.push_str(" (declared)");
    }
    if args.publish_path == "stream" {
        report.system.push_str(" (publish stream)");
    }
    if args.streams_per_connection > 1 {
        report.system.push_str(&format!(" ({} streams per connection)", args.streams_per_connection));
    }
    if report.published > 0 {
        report.server_cpu_ms_per_1k = report.server.cpu_cores * report.seconds / report.published as f64 * 1e6;
    }
    eprintln!(
        "{} {}: {:.0} pub/s, {:.0} deliveries/s ({}/{}), latency p50 {:.2} ms p99 {:.2} ms, ack p50 {:.2} ms, errors {}, server CPU {:.2} cores RSS {:.0} MB {}",
        report.system,
        report.scenario,
        report.publish_per_s,
        report.delivered_per_s,
        report.delivered,
        report.expected,
        report.latency.p50_ms,
        report.latency.p99_ms,
        report.ack.p50_ms,
        report.errors,
        report.server.cpu_cores,
        report.server.rss_mb,
        report.note
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The presence scenario: its own setup (a user per member, presence on the channel).
async fn presence_scenario(args: &Args, dir: &std::path::Path) -> anyhow::Result<stats::Report> {
    let n = args.members;
    match args.system {
        System::Relay => {
            let options = StackOptions { relays: args.replicas.max(1), ..Default::default() }
                // Ten thousand new tokens from one address in seconds: lift the per-address limit.
                .env("RELAY_UNVERIFIED_TOKENS_PER_SECOND", "100000")
                .env("RUST_LOG", "warn");
            let stack = Stack::with(options).await;
            let spec = serde_json::json!({
                "presence": {"enabled": true, "joinLeave": true, "ttl": "60s"},
                "limits": {"publishPerSecondPerUser": 0},
            });
            stack.declare_spec(presence::CHANNEL, spec).await;
            let tokens = stack.pocketbase.create_users("m", n).await.into_iter().map(|(_, t)| t).collect();
            let front: Vec<u32> = stack.relays.iter().map(|r| r.pid()).collect();
            let mut server = front.clone();
            server.extend(stack.nats.pids());
            server.extend(stack.redis.pids());
            let pids = Pids { server, front };
            let pinning = if args.pin { pin(&pids.server)? } else { "not pinned".to_owned() };
            let crowd = presence::Crowd::Relay { addrs: stack.relays.iter().map(|r| r.addr()).collect(), tokens };
            let mut report = presence::run(crowd, "relay".into(), &pids, n, Some(&stack.redis.url())).await?;
            report.pinning = pinning;
            report.note = format!("{}; {} relay replicas", report.note, stack.relays.len());
            Ok(report)
        }
        System::CentrifugoMemory | System::CentrifugoRedis => {
            let redis = match args.system {
                System::CentrifugoRedis => Some(Redis::start(dir).await),
                _ => None,
            };
            let c = centrifugo::Centrifugo::start_with(dir, redis.as_ref().map(|r| r.url()), true).await?;
            let mut server = vec![c.pid()];
            server.extend(redis.as_ref().map(|r| r.pid()));
            let pids = Pids { server, front: vec![c.pid()] };
            let pinning = if args.pin { pin(&pids.server)? } else { "not pinned".to_owned() };
            let url = redis.as_ref().map(|r| r.url());
            let mut report = presence::run(presence::Crowd::Centrifugo(&c), c.name(), &pids, n, url.as_deref()).await?;
            report.pinning = pinning;
            Ok(report)
        }
        other => anyhow::bail!("the presence scenario runs against relay and centrifugo-*, not {other:?}"),
    }
}

/// Whatever keeps a system's servers alive (they stop when it drops).
type Servers = Box<dyn std::any::Any + Send>;

/// The NATS and Redis under the relay.
struct Backends {
    nats_nodes: usize,
    redis: RedisTopology,
    wait_replicas: Option<u32>,
    declared: bool,
    publish_streams: bool,
    streams_per_connection: usize,
}

/// The spec `--declared` uses: the example chat channel, without its per-user rate limit and its
/// presence, its stream on every NATS node (one copy on one server, three on a cluster of three).
fn declared_spec(nats_nodes: usize) -> anyhow::Result<serde_json::Value> {
    let resource: serde_json::Value = serde_saphyr::from_str(include_str!("../../examples/channels/chat.yaml"))?;
    let mut spec = resource["spec"].clone();
    spec["limits"]["publishPerSecondPerUser"] = 0.into();
    // The message scenarios compare with Centrifugo without presence; `presence` measures it.
    spec["presence"]["enabled"] = false.into();
    spec["presence"]["joinLeave"] = false.into();
    spec["stream"]["replicas"] = nats_nodes.into();
    Ok(spec)
}

/// Pins the servers' processes (every thread) to CPU 0 and this process to the others.
/// Puts every thread of process `pid` on `cpus`.
fn taskset(cpus: &str, pid: u32) -> anyhow::Result<()> {
    let out = std::process::Command::new("taskset").args(["-a", "-p", "-c", cpus, &pid.to_string()]).output()?;
    anyhow::ensure!(out.status.success(), "taskset {pid}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The servers (started on CPU 0 already) stay there, with every thread they made since; this
/// process moves to the other CPUs.
fn pin(servers: &[u32]) -> anyhow::Result<String> {
    let cpus = cpu_count();
    for pid in servers {
        taskset("0", *pid)?;
    }
    let load = if cpus == 2 { "1".to_owned() } else { format!("1-{}", cpus - 1) };
    taskset(&load, std::process::id())?;
    Ok(format!("servers started on CPU 0 (runtimes sized to it), load generator on CPU {load}"))
}

/// The machine's CPUs, as this process found them before `--pin` put it on one.
fn cpu_count() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

async fn start(
    system: System,
    replicas: usize,
    backends: &Backends,
    dir: &std::path::Path,
) -> anyhow::Result<(Target, Pids, Servers)> {
    Ok(match system {
        System::Relay => {
            let wait = backends.wait_replicas.unwrap_or(backends.redis.replicas_per_master());
            let options = StackOptions {
                relays: replicas.max(1),
                nats_nodes: backends.nats_nodes,
                redis: backends.redis,
                ..Default::default()
            };
            let stack = Stack::with(
                options
                    // Every simulated client uses one PocketBase user: lift the per-user stream cap.
                    .env("RELAY_MAX_STREAMS_PER_USER", "1000000")
                    .env("RELAY_REDIS_WAIT_REPLICAS", &wait.to_string())
                    .env("RUST_LOG", "warn"),
            )
            .await;
            if backends.declared {
                stack.declare_spec("bench", declared_spec(backends.nats_nodes)?).await;
            } else {
                let mut settings = ChannelSettings::default();
                settings.limits.publish_per_second_per_user = 0;
                stack.declare("bench", &settings).await;
            }
            let user = stack.pocketbase.create_user("bench").await;
            let addrs = stack.relays.iter().map(|r| r.addr()).collect();
            let front: Vec<u32> = stack.relays.iter().map(|r| r.pid()).collect();
            let mut server = front.clone();
            server.extend(stack.nats.pids());
            server.extend(stack.redis.pids());
            let target = Target::Relay(
                RelayTarget::new(addrs, user.token, backends.publish_streams, backends.streams_per_connection).await?,
            );
            (target, Pids { server, front }, Box::new(stack))
        }
        System::RelaySim => {
            let nats = Nats::start_nodes(dir, backends.nats_nodes, false).await;
            let redis = Redis::start_topology(dir, backends.redis, false).await;
            let target = SimTarget::new(&redis.settings(), &nats.url(), backends.declared).await?;
            if backends.declared {
                relay_tests::declare_spec(&nats, &redis, "bench", declared_spec(backends.nats_nodes)?).await;
            }
            let mut server = nats.pids();
            server.extend(redis.pids());
            let front = nats.pids();
            (Target::Sim(Box::new(target)), Pids { server, front }, Box::new((nats, redis)))
        }
        System::Nats => {
            let nats = Nats::start(dir).await;
            let target = Target::Nats(NatsTarget::new(&nats.url(), 10).await?);
            let pid = nats.pid();
            (target, Pids { server: vec![pid], front: vec![pid] }, Box::new(nats))
        }
        System::CentrifugoMemory | System::CentrifugoRedis => {
            let redis = match system {
                System::CentrifugoRedis => Some(Redis::start(dir).await),
                _ => None,
            };
            let c = centrifugo::Centrifugo::start(dir, redis.as_ref().map(|r| r.url())).await?;
            let mut server = vec![c.pid()];
            if let Some(r) = &redis {
                server.push(r.pid());
            }
            let pids = Pids { server, front: vec![c.pid()] };
            (Target::Centrifugo(Box::new(c)), pids, Box::new(redis))
        }
    })
}
