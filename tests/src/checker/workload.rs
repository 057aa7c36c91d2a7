//! The clients of a checker run, each driven by its own seeded generator: publishers that retry
//! with their idempotency key until acknowledged, subscribers that resume with their cursor
//! (epoch and seq) on a random replica, and queue workers that ack what they process (and now and
//! then drop their stream holding a message, as a crashing worker would).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;

use super::history::{Mode, Published, Seen, Subscriber};
use crate::{Client, Event, Position, TestUser, at};

/// What every actor shares.
#[derive(Clone)]
pub struct World {
    /// One lazily connecting client per relay replica.
    pub clients: Vec<Client>,
    pub started: Instant,
    pub stop: watch::Receiver<bool>,
    pub published: Arc<Mutex<Vec<Published>>>,
    pub attempted: Arc<Mutex<HashSet<String>>>,
    /// Bumped on every message delivered and every ack: the run settles when it stops moving.
    pub progress: Arc<std::sync::atomic::AtomicU64>,
}

impl World {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn moved(&self) {
        self.progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A channel a publisher writes to, with its weight.
pub struct Target {
    pub channel: String,
    pub weight: u32,
}

/// Publishes to the targets until told to stop.
pub async fn publisher(world: World, name: String, user: TestUser, targets: Vec<Target>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let total: u32 = targets.iter().map(|t| t.weight).sum();
    let mut n = 0u64;
    while !world.stopped() {
        let mut pick = rng.random_range(0..total);
        let target = targets.iter().find(|t| {
            let hit = pick < t.weight;
            pick = pick.saturating_sub(t.weight);
            hit
        });
        let channel = target.expect("a target").channel.clone();
        let key = format!("{name}-{n}");
        n += 1;
        world.attempted.lock().unwrap().insert(key.clone());
        // Retried with the same key (on any replica) until acknowledged, or given up.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let mut c = world.clients[rng.random_range(0..world.clients.len())].clone();
            let attempt =
                tokio::time::timeout(Duration::from_secs(10), c.publish_with_key(&user.token, &channel, &key, &key));
            match attempt.await {
                Ok(Ok(m)) => {
                    world.published.lock().unwrap().push(Published {
                        key: key.clone(),
                        channel: channel.clone(),
                        epoch: m.epoch,
                        seq: m.seq,
                        id: m.id,
                        at: world.now(),
                    });
                    break;
                }
                Ok(Err(s)) if !retryable(s.code()) => panic!("{name}: publish {key} refused: {s:?}"),
                _ => tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await,
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..60))).await;
    }
}

/// What a fault may answer; anything else is a bug.
fn retryable(code: Code) -> bool {
    // NOT_FOUND: the channel's settings were lost with Redis's data until the operator restores them.
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::NotFound | Code::Internal
    )
}

/// A broadcast or perUser subscriber: one stream at a time, resumed with its cursor on a random
/// replica, sometimes ending its stream by itself to move.
pub async fn subscriber(
    world: World,
    name: String,
    user: TestUser,
    channel: String,
    mode: Mode,
    seed: u64,
) -> Subscriber {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Subscriber { name: name.clone(), mode, channel: channel.clone(), events: Vec::new() };
    let mut pos: Option<(String, u64)> = None;
    while !world.stopped() {
        let relay = rng.random_range(0..world.clients.len());
        out.events.push((world.now(), Seen::Start { relay, cursor: pos.clone() }));
        let cursor = match &pos {
            Some((epoch, seq)) => at(Position::SinceSeq(*seq), epoch),
            None => at(Position::SinceSeq(0), ""),
        };
        let mut c = world.clients[relay].clone();
        let opened =
            tokio::time::timeout(Duration::from_secs(8), c.subscribe_at(&user.token, &[(&channel, Some(cursor))]))
                .await;
        let mut sub = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(s)) if !retryable(s.code()) => panic!("{name}: subscribe refused: {s:?}"),
            other => {
                let why = match other {
                    Ok(Err(s)) => format!("could not subscribe: {:?}: {}", s.code(), s.message()),
                    _ => "could not subscribe in time".to_owned(),
                };
                out.events.push((world.now(), Seen::End { why }));
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..500))).await;
                continue;
            }
        };
        let leave_at = Instant::now() + Duration::from_millis(rng.random_range(2_000..12_000));
        let why = loop {
            if world.stopped() {
                break "stopped".to_owned();
            }
            if Instant::now() >= leave_at {
                break "moving to another replica".to_owned();
            }
            // Heartbeats come every second: three seconds of silence is a dead connection.
            match sub.try_next(Duration::from_secs(3)).await {
                None => break "silent".to_owned(),
                Some(Err(s)) => break format!("{:?}: {}", s.code(), s.message()),
                // The checker's channels keep no presence and take no ephemeral messages.
                Some(Ok(e @ (Event::Join(_) | Event::Leave(_) | Event::Ephemeral(_) | Event::PresenceChanged(_)))) => {
                    break format!("an event the channel does not have: {e:?}");
                }
                Some(Ok(Event::Heartbeat)) => {}
                Some(Ok(Event::Recovery(r))) => {
                    if !r.epoch.is_empty() && pos.as_ref().is_none_or(|(e, _)| *e != r.epoch) {
                        // A new epoch: its seqs start again.
                        pos = Some((r.epoch.clone(), 0));
                    }
                    out.events
                        .push((world.now(), Seen::Marker { recovered: r.recovered, epoch: r.epoch, reason: r.reason }));
                }
                Some(Ok(Event::Message(m))) => {
                    let newer = match &pos {
                        Some((e, s)) => *e != m.epoch || m.seq > *s,
                        None => true,
                    };
                    if newer {
                        pos = Some((m.epoch.clone(), m.seq));
                    }
                    world.moved();
                    out.events.push((
                        world.now(),
                        Seen::Message {
                            epoch: m.epoch,
                            seq: m.seq,
                            id: m.id,
                            text: m.text,
                            redelivered: m.redelivered,
                        },
                    ));
                }
            }
        };
        out.events.push((world.now(), Seen::End { why }));
    }
    out
}

/// A queue worker: processes (a few milliseconds), acks through a random replica (the call is
/// routed to the stream's), and now and then drops its stream while holding a message.
pub async fn worker(world: World, name: String, user: TestUser, channel: String, seed: u64) -> Subscriber {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Subscriber { name: name.clone(), mode: Mode::Queue, channel: channel.clone(), events: Vec::new() };
    while !world.stopped() {
        let relay = rng.random_range(0..world.clients.len());
        out.events.push((world.now(), Seen::Start { relay, cursor: None }));
        let mut c = world.clients[relay].clone();
        let opened = tokio::time::timeout(Duration::from_secs(8), c.subscribe(&user.token, &[(&channel, None)])).await;
        let mut sub = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(s)) if !retryable(s.code()) => panic!("{name}: subscribe refused: {s:?}"),
            other => {
                let why = match other {
                    Ok(Err(s)) => format!("could not subscribe: {:?}: {}", s.code(), s.message()),
                    _ => "could not subscribe in time".to_owned(),
                };
                out.events.push((world.now(), Seen::End { why }));
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..500))).await;
                continue;
            }
        };
        let leave_at = Instant::now() + Duration::from_millis(rng.random_range(4_000..15_000));
        let why = loop {
            if world.stopped() {
                break "stopped".to_owned();
            }
            if Instant::now() >= leave_at {
                break "moving to another replica".to_owned();
            }
            let m = match sub.try_next(Duration::from_secs(3)).await {
                None => break "silent".to_owned(),
                Some(Err(s)) => break format!("{:?}: {}", s.code(), s.message()),
                Some(Ok(Event::Message(m))) => m,
                Some(Ok(_)) => continue,
            };
            out.events.push((
                world.now(),
                Seen::Message {
                    epoch: m.epoch.clone(),
                    seq: m.seq,
                    id: m.id,
                    text: m.text,
                    redelivered: m.redelivered,
                },
            ));
            if rng.random_bool(0.02) {
                out.events.push((world.now(), Seen::Abandoned { epoch: m.epoch, seq: m.seq }));
                break "abandoned a message".to_owned();
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
            let mut acker = world.clients[rng.random_range(0..world.clients.len())].clone();
            let sent = world.now();
            let acked = tokio::time::timeout(
                Duration::from_secs(8),
                acker.ack(&user.token, &sub.id, &channel, &m.epoch, &[m.seq]),
            )
            .await;
            let acked = match acked {
                Ok(r) => r.map_err(|s| format!("{:?}: {}", s.code(), s.message())),
                Err(_) => Err("timed out".to_owned()),
            };
            let failed = acked.is_err();
            world.moved();
            out.events.push((world.now(), Seen::Acked { epoch: m.epoch, seq: m.seq, acked, sent }));
            if failed {
                break "ack failed".to_owned();
            }
        };
        out.events.push((world.now(), Seen::End { why }));
    }
    out
}
