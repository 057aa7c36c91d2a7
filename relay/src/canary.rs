//! The data-path canary. A relay can be connected to NATS and get PONGs from Redis and still not
//! deliver: a subscription the server stopped feeding, a server that is paused or partitioned
//! while the socket stays open, a Redis that takes the connection but not the writes. So every
//! `--canary-interval` each relay sends a small message through its own data path and expects it
//! back within [`TIMEOUT`]:
//!
//! - **nats**: a publish on `_RELAY.canary.<replica>` (outside `events.>`: no client ever sees it),
//!   read back through this relay's own subscription to that subject;
//! - **redis**: `SET relay:_canary:<replica>` (expiring after a few intervals) and a read of it.
//!
//! The last round's outcome per leg is part of `/readyz`: a leg that did not come back makes the
//! relay unready within about one interval plus [`TIMEOUT`], saying which leg and why, and a log
//! line and `relay_canary_failures_total{leg}` say it too; the next round that comes back makes it
//! ready again. Cost per relay: one small NATS message and two Redis commands per interval.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::Relay;

/// How long one leg may take to come back.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The subject prefix: outside the channels' `events.>`.
pub const SUBJECT_PREFIX: &str = "_RELAY.canary";

/// The outcome of the last round per leg: None until it first ran, then Ok or why not.
#[derive(Default)]
pub struct Canary {
    nats: Mutex<Option<Result<(), String>>>,
    redis: Mutex<Option<Result<(), String>>>,
}

impl Canary {
    /// Ok when the last round of both legs came back; Err says which did not, and why. A leg that
    /// has not run yet (the first round is under way at start) does not count against readiness.
    pub fn verdict(&self) -> Result<(), String> {
        for (leg, state) in [("nats", &self.nats), ("redis", &self.redis)] {
            if let Some(Err(why)) = &*state.lock().expect("canary lock") {
                return Err(format!("{leg} canary: {why}"));
            }
        }
        Ok(())
    }

    fn record(&self, leg: &str, outcome: Result<Duration, String>) {
        let state = if leg == "nats" { &self.nats } else { &self.redis };
        crate::metrics::canary(leg, outcome.as_ref().map(|d| *d).map_err(|_| ()));
        let now = outcome.map(|_| ());
        let mut last = state.lock().expect("canary lock");
        // Say it once when a leg breaks or heals, not every round.
        match (&*last, &now) {
            (Some(Ok(())) | None, Err(why)) => tracing::warn!(leg, reason = %why, "data-path canary failed: not ready"),
            (Some(Err(_)), Ok(())) => tracing::info!(leg, "data-path canary back"),
            _ => {}
        }
        *last = Some(now);
    }
}

/// Runs rounds until shutdown.
pub async fn run(relay: Arc<Relay>) {
    let subject = format!("{SUBJECT_PREFIX}.{}", relay.streams.replica);
    let key = format!("relay:_canary:{}", relay.streams.replica);
    let interval = relay.config.canary_interval;
    let mut subscription: Option<async_nats::Subscriber> = None;
    let mut round: u64 = 0;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = relay.shutdown.cancelled() => return,
        }
        round += 1;
        let nats = nats_round(&relay, &subject, &mut subscription, round).await;
        relay.canary.record("nats", nats);
        let redis = redis_round(&relay, &key, round, interval).await;
        relay.canary.record("redis", redis);
    }
}

async fn nats_round(
    relay: &Relay,
    subject: &str,
    subscription: &mut Option<async_nats::Subscriber>,
    round: u64,
) -> Result<Duration, String> {
    let started = Instant::now();
    let deadline = started + TIMEOUT;
    if subscription.is_none() {
        let sub = tokio::time::timeout_at(deadline, relay.bus.subscribe(subject.to_owned(), None))
            .await
            .map_err(|_| "subscribing took too long".to_owned())?
            .map_err(|e| format!("cannot subscribe: {e}"))?;
        *subscription = Some(sub);
    }
    relay.bus.ensure_connected().map_err(|_| "not connected".to_owned())?;
    let payload = bytes::Bytes::from(round.to_string());
    tokio::time::timeout_at(deadline, relay.bus.client.publish(subject.to_owned(), payload))
        .await
        .map_err(|_| "the publish was not taken in time".to_owned())?
        .map_err(|e| format!("publish failed: {e}"))?;
    let sub = subscription.as_mut().expect("subscribed above");
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            // Earlier rounds that came back late are skipped.
            Ok(Some(m)) if m.payload.as_ref() == round.to_string().as_bytes() => return Ok(started.elapsed()),
            Ok(Some(_)) => continue,
            Ok(None) => {
                *subscription = None;
                return Err("the subscription ended".into());
            }
            Err(_) => {
                return Err(format!("the message did not come back through the subscription within {TIMEOUT:?}"));
            }
        }
    }
}

async fn redis_round(relay: &Relay, key: &str, round: u64, interval: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let ttl_ms = (interval * 5).as_millis().max(1000) as u64;
    let mut set = redis::cmd("SET");
    set.arg(key).arg(round).arg("PX").arg(ttl_ms);
    let write = async {
        relay.store.query::<()>(set).await?;
        let mut get = redis::cmd("GET");
        get.arg(key);
        relay.store.query::<Option<u64>>(get).await
    };
    match tokio::time::timeout(TIMEOUT, write).await {
        Ok(Ok(Some(n))) if n == round => Ok(started.elapsed()),
        Ok(Ok(other)) => Err(format!("wrote {round} and read back {other:?}")),
        Ok(Err(e)) => Err(format!("{e}")),
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
    }
}
