//! The `presence` scenario: `n` members (each a user of their own, with a connection of their own)
//! join one channel with presence and join/leave events, as fast as the load generator opens them.
//! Reported: how long until the system counts all of them (steady state), Redis commands per join
//! (every command the join phase cost Redis, the ones inside scripts included, divided by `n`),
//! join/leave events the members received (what a crowd costs the streams already there),
//! Presence (the member list) and PresenceStats (the counts) latency at steady state, and how long
//! until all are gone once they disconnect.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use relay::proto::relay_service_client::RelayServiceClient;
use relay::proto::subscribe_response::Event;
use relay::proto::{ChannelSubscription, PresenceRequest, PresenceStatsRequest, SubscribeRequest};
use serde::Serialize;
use tonic::transport::Channel;

use crate::centrifugo::Centrifugo;
use crate::scenario::Pids;
use crate::stats::{self, Percentiles, ProcSampler, Report};

pub const CHANNEL: &str = "bench";
/// Members joining at once.
const OPEN_CONCURRENCY: usize = 128;
/// The longest wait for a steady state (all counted, or all gone).
const PATIENCE: Duration = Duration::from_secs(180);
/// A count that has not moved for this long is the steady state, whatever it is.
const STALL: Duration = Duration::from_secs(15);

#[derive(Debug, Default, Serialize, Clone)]
pub struct PresenceFigures {
    pub members: usize,
    /// From the first join until every member's join call returned.
    pub joined_s: f64,
    /// From the first join until the system counts every member (or, when it never does, until
    /// its count stopped moving for [`STALL`]).
    pub steady_s: f64,
    /// Members the system counted at steady state (fewer than `members`: some were dropped).
    pub counted: u64,
    /// Members whose join failed (the server closed or refused their connection).
    pub join_errors: u64,
    /// Every Redis command of the join phase (scripts' own commands included) per member.
    pub redis_commands_per_join: Option<f64>,
    /// Join/leave events (and counts of them) members received while the crowd arrived, per member.
    pub events_per_member: f64,
    /// The member list at steady state, asked back to back (as a crowd of clients would).
    pub presence: Percentiles,
    /// The member list asked once a second (what a list costs when no answer can be reused).
    pub presence_spaced: Percentiles,
    pub listed: usize,
    /// The counts at steady state.
    pub presence_stats: Percentiles,
    /// From the members disconnecting until the system counts none.
    pub gone_s: f64,
}

/// The system under test, as the scenario drives it.
pub enum Crowd<'a> {
    Relay { addrs: Vec<String>, tokens: Vec<String> },
    Centrifugo(&'a Centrifugo),
}

impl Crowd<'_> {
    async fn join(&self, i: usize, events: Arc<AtomicU64>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        match self {
            Crowd::Relay { addrs, tokens } => {
                let channel = Channel::from_shared(addrs[i % addrs.len()].clone())?.connect().await?;
                let req = SubscribeRequest {
                    channels: vec![ChannelSubscription { channelid: CHANNEL.into(), cursor: None }],
                };
                let mut stream =
                    RelayServiceClient::new(channel).subscribe(authed(&tokens[i], req)).await?.into_inner();
                match stream.message().await? {
                    Some(r) if matches!(r.event, Some(Event::Started(_))) => {}
                    other => anyhow::bail!("expected StreamStarted, got {other:?}"),
                }
                Ok(tokio::spawn(async move {
                    while let Ok(Some(r)) = stream.message().await {
                        if matches!(r.event, Some(Event::Join(_) | Event::Leave(_) | Event::PresenceChanged(_))) {
                            events.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }))
            }
            Crowd::Centrifugo(c) => c.member(&format!("m{i}"), CHANNEL, events).await,
        }
    }

    /// (members, streams) as the system counts them.
    async fn stats(&self, client: &mut Option<RelayServiceClient<Channel>>) -> anyhow::Result<(u64, u64)> {
        match self {
            Crowd::Relay { tokens, .. } => {
                let client = relay_client(self, client).await?;
                let req = authed(&tokens[0], PresenceStatsRequest { channelid: CHANNEL.into() });
                let s = client.presence_stats(req).await?.into_inner();
                Ok((u64::from(s.members), u64::from(s.streams)))
            }
            Crowd::Centrifugo(c) => {
                let r = c.api("presence_stats", serde_json::json!({ "channel": CHANNEL })).await?;
                Ok((r["num_users"].as_u64().unwrap_or(0), r["num_clients"].as_u64().unwrap_or(0)))
            }
        }
    }

    /// How many members the list holds.
    async fn list(&self, client: &mut Option<RelayServiceClient<Channel>>) -> anyhow::Result<usize> {
        match self {
            Crowd::Relay { tokens, .. } => {
                let client = relay_client(self, client).await?;
                let req = authed(&tokens[0], PresenceRequest { channelid: CHANNEL.into() });
                Ok(client.presence(req).await?.into_inner().members.len())
            }
            Crowd::Centrifugo(c) => {
                let r = c.api("presence", serde_json::json!({ "channel": CHANNEL })).await?;
                Ok(r["presence"].as_object().map_or(0, |m| m.len()))
            }
        }
    }
}

async fn relay_client<'c>(
    crowd: &Crowd<'_>,
    client: &'c mut Option<RelayServiceClient<Channel>>,
) -> anyhow::Result<&'c mut RelayServiceClient<Channel>> {
    let Crowd::Relay { addrs, .. } = crowd else { anyhow::bail!("not the relay") };
    if client.is_none() {
        *client = Some(RelayServiceClient::new(Channel::from_shared(addrs[0].clone())?.connect().await?));
    }
    Ok(client.as_mut().expect("set above"))
}

fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    req
}

/// Every command Redis has run (scripts' own included).
async fn redis_commands(redis: Option<&str>) -> Option<u64> {
    let client = redis::Client::open(redis?).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO").arg("stats").query_async(&mut conn).await.ok()?;
    info.lines().find_map(|l| l.strip_prefix("total_commands_processed:")).and_then(|v| v.trim().parse().ok())
}

/// Polls until `done` holds of the counts, or they stop moving for [`STALL`]; returns the last
/// counts and when they last moved.
async fn wait_for(
    crowd: &Crowd<'_>,
    client: &mut Option<RelayServiceClient<Channel>>,
    done: impl Fn((u64, u64)) -> bool,
) -> anyhow::Result<((u64, u64), Instant)> {
    let deadline = Instant::now() + PATIENCE;
    let (mut last, mut moved) = (None, Instant::now());
    loop {
        let counts = crowd.stats(client).await?;
        if done(counts) {
            return Ok((counts, Instant::now()));
        }
        if last != Some(counts) {
            (last, moved) = (Some(counts), Instant::now());
        } else if moved.elapsed() >= STALL {
            return Ok((counts, moved));
        }
        anyhow::ensure!(Instant::now() < deadline, "no steady state within {PATIENCE:?}: counts {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(crowd: Crowd<'_>, name: String, pids: &Pids, n: usize, redis: Option<&str>) -> anyhow::Result<Report> {
    let mut client = None;
    let events = Arc::new(AtomicU64::new(0));
    let commands_before = redis_commands(redis).await;
    let sampler = (ProcSampler::start(pids.server.clone()), ProcSampler::start(pids.front.clone()));
    let started = Instant::now();
    let joins: Vec<anyhow::Result<tokio::task::JoinHandle<()>>> = futures::stream::iter(0..n)
        .map(|i| {
            let (crowd, events) = (&crowd, events.clone());
            async move { crowd.join(i, events).await.with_context(|| format!("member {i} joining")) }
        })
        .buffer_unordered(OPEN_CONCURRENCY)
        .collect()
        .await;
    let mut members = Vec::with_capacity(n);
    let mut join_errors = 0;
    for join in joins {
        match join {
            Ok(m) => members.push(m),
            Err(e) => {
                if join_errors == 0 {
                    eprintln!("{name}: {e:#} (counted, not fatal)");
                }
                join_errors += 1;
            }
        }
    }
    let joined_s = started.elapsed().as_secs_f64();
    let joined = members.len() as u64;
    let ((counted, _), steady) = wait_for(&crowd, &mut client, |(users, _)| users >= joined).await?;
    let steady_s = steady.duration_since(started).as_secs_f64();
    let (server, front) = (sampler.0.finish(), sampler.1.finish());
    let commands = match (commands_before, redis_commands(redis).await) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / n as f64),
        _ => None,
    };
    // Late events of the join phase still arrive; give them a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events_per_member = events.load(Ordering::Relaxed) as f64 / n as f64;

    let mut list_h = stats::histogram();
    let mut listed = 0;
    for _ in 0..100 {
        let t0 = Instant::now();
        listed = crowd.list(&mut client).await?;
        stats::record(&mut list_h, t0.elapsed());
    }
    let mut spaced_h = stats::histogram();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let t0 = Instant::now();
        crowd.list(&mut client).await?;
        stats::record(&mut spaced_h, t0.elapsed());
    }
    let mut stats_h = stats::histogram();
    for _ in 0..500 {
        let t0 = Instant::now();
        crowd.stats(&mut client).await?;
        stats::record(&mut stats_h, t0.elapsed());
    }

    let leaving = Instant::now();
    for m in &members {
        m.abort();
    }
    drop(members);
    let (_, gone) = wait_for(&crowd, &mut client, |(users, _)| users == 0).await?;
    let gone_s = gone.duration_since(leaving).as_secs_f64();

    let figures = PresenceFigures {
        members: n,
        joined_s,
        steady_s,
        counted,
        join_errors,
        redis_commands_per_join: commands,
        events_per_member,
        presence: Percentiles::from(&list_h),
        presence_spaced: Percentiles::from(&spaced_h),
        listed,
        presence_stats: Percentiles::from(&stats_h),
        gone_s,
    };
    eprintln!("{name} presence: {figures:?}");
    Ok(Report {
        system: name,
        scenario: "presence".into(),
        params: format!("{n} members, each its own user and connection, joining one channel with join/leave events"),
        seconds: steady_s,
        server,
        front,
        presence: Some(figures),
        note: "CPU and memory over the join phase".into(),
        ..Default::default()
    })
}
