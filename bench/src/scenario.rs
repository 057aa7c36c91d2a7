//! The scenarios. Each opens its subscribers first (each with a connection of its own, as separate
//! clients), then measures; publishers are open-loop at a target rate with a bound on in-flight
//! publishes (past capacity an unbounded open loop collapses instead of levelling off), except
//! `throughput`, which is closed-loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, watch};

use crate::stats::{self, Percentiles, ProcSampler, Report, now_ns};
use crate::targets::{Deliveries, Shared, payload};

/// Subscriptions opened at once while setting up.
const OPEN_CONCURRENCY: usize = 64;
/// Publishes in flight at most, in the open-loop scenarios.
const MAX_IN_FLIGHT: usize = 256;

/// Which processes to measure.
pub struct Pids {
    pub server: Vec<u32>,
    pub front: Vec<u32>,
}

pub fn channel(i: usize) -> String {
    format!("bench.c{i}")
}

/// Opens `per_channel` subscriptions on each of `channels` channels.
async fn open(t: &Shared, channels: usize, per_channel: usize) -> anyhow::Result<Vec<Deliveries>> {
    let mut out = Vec::with_capacity(channels * per_channel);
    let mut pending = FuturesUnordered::new();
    let mut jobs = (0..channels).flat_map(|c| std::iter::repeat_n(c, per_channel));
    loop {
        while pending.len() < OPEN_CONCURRENCY {
            let Some(c) = jobs.next() else { break };
            let t = t.clone();
            pending.push(async move { t.subscribe(&channel(c), None).await });
        }
        match pending.next().await {
            Some(r) => out.push(r?),
            None => return Ok(out),
        }
    }
}

/// Counts deliveries and their latency until told to stop.
fn drain(
    subs: Vec<Deliveries>,
    stop: watch::Receiver<bool>,
    delivered: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Histogram<u64>>> {
    subs.into_iter()
        .map(|mut s| {
            let (mut stop, delivered) = (stop.clone(), delivered.clone());
            tokio::spawn(async move {
                let mut h = stats::histogram();
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        d = s.next() => match d {
                            Some(d) => {
                                stats::record(&mut h, Duration::from_nanos((now_ns() - d.sent_ns).max(0) as u64));
                                delivered.fetch_add(1, Ordering::Relaxed);
                            }
                            None => break,
                        }
                    }
                }
                h
            })
        })
        .collect()
}

async fn merge(handles: Vec<tokio::task::JoinHandle<Histogram<u64>>>) -> Histogram<u64> {
    let mut all = stats::histogram();
    for h in handles {
        if let Ok(h) = h.await {
            let _ = all.add(h);
        }
    }
    all
}

/// An open-loop load: `rate` messages per second over `channels` channels for `duration`, with
/// `per_channel` subscribers on each.
#[derive(Clone, Copy)]
pub struct Load {
    pub channels: usize,
    pub per_channel: usize,
    pub rate: f64,
    pub size: usize,
    pub duration: Duration,
}

/// Runs a [`Load`]. Used by `fanout` and `channels`.
pub async fn open_loop(t: Shared, pids: &Pids, name: &str, load: Load) -> anyhow::Result<Report> {
    let Load { channels, per_channel, rate, size, duration } = load;
    let subs = open(&t, channels, per_channel).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop) = watch::channel(false);
    let readers = drain(subs, stop, delivered.clone());
    let sampler = (ProcSampler::start(pids.server.clone()), ProcSampler::start(pids.front.clone()));

    let errors = Arc::new(AtomicU64::new(0));
    let acks = Arc::new(std::sync::Mutex::new(stats::histogram()));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut published = 0u64;
    let mut skipped = 0u64;
    let mut tasks = Vec::new();
    while started.elapsed() < duration {
        tick.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let (t, errors, acks) = (t.clone(), errors.clone(), acks.clone());
        let ch = channel(published as usize % channels);
        published += 1;
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            match t.publish(&ch, payload(size)).await {
                Ok(()) => stats::record(&mut acks.lock().expect("acks"), t0.elapsed()),
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let published_ok = published - errors.load(Ordering::Relaxed);
    let expected = published_ok * per_channel as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (server, front) = (sampler.0.finish(), sampler.1.finish());
    let _ = stop_tx.send(true);
    let latency = merge(readers).await;
    let acks = acks.lock().expect("acks").clone();
    Ok(Report {
        system: t.name(),
        scenario: name.into(),
        params: format!("{channels} channel(s) x {per_channel} subscribers, {rate:.0} msg/s, {size} B, {duration:?}"),
        seconds,
        published: published_ok,
        publish_per_s: published_ok as f64 / duration.as_secs_f64(),
        delivered: delivered.load(Ordering::Relaxed),
        expected,
        delivered_per_s: delivered.load(Ordering::Relaxed) as f64 / seconds,
        errors: errors.load(Ordering::Relaxed),
        latency: Percentiles::from(&latency),
        ack: Percentiles::from(&acks),
        server,
        front,
        note: if skipped > 0 {
            format!("{skipped} publishes skipped: {MAX_IN_FLIGHT} in flight")
        } else {
            String::new()
        },
        ..Default::default()
    })
}

/// Closed loop: `concurrency` publishers as fast as acks come back, one channel, two subscribers.
pub async fn throughput(
    t: Shared,
    pids: &Pids,
    concurrency: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let subs = open(&t, 1, 2).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop) = watch::channel(false);
    let readers = drain(subs, stop, delivered.clone());
    let sampler = (ProcSampler::start(pids.server.clone()), ProcSampler::start(pids.front.clone()));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move {
                let (mut h, mut errors) = (stats::histogram(), 0u64);
                while started.elapsed() < duration {
                    let t0 = Instant::now();
                    match t.publish(&channel(0), payload(size)).await {
                        Ok(()) => stats::record(&mut h, t0.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (h, errors)
            })
        })
        .collect();
    let (mut acks, mut errors) = (stats::histogram(), 0);
    for w in workers {
        let (h, e) = w.await?;
        let _ = acks.add(h);
        errors += e;
    }
    let published = acks.len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while delivered.load(Ordering::Relaxed) < published * 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (server, front) = (sampler.0.finish(), sampler.1.finish());
    let _ = stop_tx.send(true);
    let latency = merge(readers).await;
    Ok(Report {
        system: t.name(),
        scenario: "throughput".into(),
        params: format!("1 channel x 2 subscribers, {concurrency} publishers closed-loop, {size} B, {duration:?}"),
        seconds,
        published,
        publish_per_s: published as f64 / duration.as_secs_f64(),
        delivered: delivered.load(Ordering::Relaxed),
        expected: published * 2,
        delivered_per_s: delivered.load(Ordering::Relaxed) as f64 / seconds,
        errors,
        latency: Percentiles::from(&latency),
        ack: Percentiles::from(&acks),
        server,
        front,
        ..Default::default()
    })
}

/// Opens `n` idle subscriptions (100 channels) and reports the front's memory per subscription.
/// `per_connection`: subscriptions sharing one connection (relay only; 1 for the others).
pub async fn idle(t: Shared, pids: &Pids, n: usize, per_connection: usize) -> anyhow::Result<Report> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: u64 = pids.front.iter().map(|p| stats::rss_bytes(*p)).sum();
    let started = Instant::now();
    let subs = open(&t, 100, n / 100).await?;
    let opened = subs.len();
    let open_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sampler = (ProcSampler::start(pids.server.clone()), ProcSampler::start(pids.front.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: u64 = pids.front.iter().map(|p| stats::rss_bytes(*p)).sum();
    let report = Report {
        system: t.name(),
        scenario: "idle".into(),
        params: if per_connection > 1 {
            format!("{opened} idle subscriptions over 100 channels, {per_connection} per connection")
        } else {
            format!("{opened} idle subscriptions over 100 channels, each its own connection")
        },
        seconds: open_s,
        server: sampler.0.finish(),
        front: sampler.1.finish(),
        kib_per_idle_subscription: Some((after.saturating_sub(before)) as f64 / 1024.0 / opened as f64),
        note: format!("opened in {open_s:.1}s; CPU measured while idle"),
        ..Default::default()
    };
    drop(subs);
    Ok(report)
}

/// `n` subscribers saw `before` messages, disconnect, miss `missed`, and reconnect at once with
/// their cursors. Latency is each subscriber's time from reconnecting to holding all it missed.
pub async fn reconnect_storm(t: Shared, pids: &Pids, n: usize, missed: usize) -> anyhow::Result<Report> {
    if !t.resumes() {
        return Ok(Report {
            system: t.name(),
            scenario: "reconnect".into(),
            note: "not applicable: core NATS keeps no history to resume from".into(),
            ..Default::default()
        });
    }
    let ch = channel(0);
    let mut subs = open(&t, 1, n).await?;
    t.publish(&ch, payload(64)).await?;
    let mut cursor = 0;
    for s in &mut subs {
        let d =
            tokio::time::timeout(Duration::from_secs(10), s.next()).await?.ok_or_else(|| anyhow::anyhow!("ended"))?;
        cursor = d.position.unwrap_or(0);
    }
    drop(subs);
    for _ in 0..missed {
        t.publish(&ch, payload(64)).await?;
    }
    let sampler = (ProcSampler::start(pids.server.clone()), ProcSampler::start(pids.front.clone()));
    let started = Instant::now();
    let catch_ups: Vec<_> = (0..n)
        .map(|_| {
            let (t, ch) = (t.clone(), ch.clone());
            tokio::spawn(async move {
                let t0 = Instant::now();
                let mut s = t.subscribe(&ch, Some(cursor)).await?;
                for _ in 0..missed {
                    tokio::time::timeout(Duration::from_secs(30), s.next())
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("ended"))?;
                }
                anyhow::Ok(t0.elapsed())
            })
        })
        .collect();
    let (mut h, mut errors) = (stats::histogram(), 0);
    for c in catch_ups {
        match c.await? {
            Ok(d) => stats::record(&mut h, d),
            Err(_) => errors += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        system: t.name(),
        scenario: "reconnect".into(),
        params: format!("{n} subscribers reconnect at once with cursors, {missed} missed messages each"),
        seconds,
        delivered: h.len() * missed as u64,
        expected: (n * missed) as u64,
        delivered_per_s: (h.len() * missed as u64) as f64 / seconds,
        errors,
        latency: Percentiles::from(&h),
        server: sampler.0.finish(),
        front: sampler.1.finish(),
        note: format!("all caught up in {seconds:.2}s; latency = reconnect to caught up"),
        ..Default::default()
    })
}
