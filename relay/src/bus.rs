//! NATS as the relay uses it: every call on a request path has a deadline, and "published" means
//! the server has it.
//!
//! async-nats queues commands while it reconnects and stops draining them when its queue is full,
//! and `flush()` only means "written to the socket". So:
//! - calls fail fast with UNAVAILABLE while the connection is not up, and every await is bounded;
//! - [`Bus::confirm`] waits for a round trip to the server (a request nobody answers: the server
//!   says "no responders" after it processed everything the client sent before). Concurrent
//!   callers share one round trip. A publish or subscribe followed by a confirm is known to the
//!   server; a confirm that spans a reconnect fails, since what was written to the old connection
//!   may be lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use tokio::sync::{Notify, watch};

use crate::error::{Error, Result};

/// How long a NATS call on a request path may take.
pub const NATS_TIMEOUT: Duration = Duration::from_secs(5);
/// A subject nobody subscribes to: requests to it come back "no responders" from the server.
const BARRIER_SUBJECT: &str = "_RELAY.barrier";

/// The relay's NATS connection with deadlines and server-confirmed delivery.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    /// One JetStream context for the process: making one spawns a task and a queue for its acks,
    /// which per publish cost a task hand-off each.
    pub jetstream: async_nats::jetstream::Context,
    /// Bumped on every connect and disconnect: a confirm that sees it change cannot vouch for
    /// what was sent before.
    generation: Arc<AtomicU64>,
    rounds: Arc<Rounds>,
    /// Why connecting fails, when the relay could find out (a TLS certificate refused).
    problem: Arc<std::sync::Mutex<Option<String>>>,
}

struct Rounds {
    /// The round that will cover what is sent from now on.
    next: std::sync::Mutex<u64>,
    wake: Notify,
    /// (last finished round, last failed round).
    done: watch::Sender<(u64, u64)>,
}

impl Bus {
    /// Wraps a client; `generation` must be bumped by the client's event callback on every
    /// connect and disconnect (see [`Bus::on_event`]).
    pub fn new(client: async_nats::Client, generation: Arc<AtomicU64>) -> Self {
        let rounds =
            Arc::new(Rounds { next: std::sync::Mutex::new(1), wake: Notify::new(), done: watch::channel((0, 0)).0 });
        tokio::spawn(run_rounds(client.clone(), rounds.clone()));
        let jetstream = async_nats::jetstream::new(client.clone());
        Self { client, jetstream, generation, rounds, problem: Arc::default() }
    }

    /// Why connecting fails, if known.
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().expect("bus lock").clone()
    }

    /// Looks into why NATS stays away while it does (async-nats says only "IO error"): a TLS
    /// handshake with the configured CA, every few seconds, logged when the reason changes.
    pub async fn diagnose(&self, settings: relay_connect::Nats) {
        loop {
            let problem = if self.connected() { None } else { settings.diagnose_tls().await };
            let changed = {
                let mut current = self.problem.lock().expect("bus lock");
                let changed = *current != problem;
                current.clone_from(&problem);
                changed
            };
            if let (true, Some(p)) = (changed, &problem) {
                tracing::error!(problem = %p, "cannot connect to NATS");
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    /// For the client's event callback: counts connects and disconnects.
    pub fn on_event(generation: &AtomicU64, event: &async_nats::Event) {
        if matches!(event, async_nats::Event::Connected | async_nats::Event::Disconnected) {
            generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// UNAVAILABLE unless connected: nothing is queued for a server that is not there.
    /// The largest message the server takes (what it announced when this connection began).
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    pub fn ensure_connected(&self) -> Result<()> {
        if self.connected() { Ok(()) } else { Err(Error::unavailable("nats", "not connected")) }
    }

    /// The current connection generation, to hand to [`Bus::confirm_since`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Publishes (with `headers`, if any) and waits until the server has the message.
    pub async fn publish_confirmed(
        &self,
        subject: String,
        headers: Option<async_nats::HeaderMap>,
        payload: bytes::Bytes,
    ) -> Result<()> {
        self.ensure_connected()?;
        let generation = self.generation();
        match headers {
            Some(headers) => {
                bounded("nats publish", self.client.publish_with_headers(subject, headers, payload)).await?;
            }
            None => bounded("nats publish", self.client.publish(subject, payload)).await?,
        }
        self.confirm_since(generation).await
    }

    /// Waits until the server has processed everything this client sent so far, on the connection
    /// of `generation`.
    pub async fn confirm_since(&self, generation: u64) -> Result<()> {
        let want = {
            let next = self.rounds.next.lock().expect("bus lock");
            *next
        };
        self.rounds.wake.notify_one();
        let mut done = self.rounds.done.subscribe();
        let outcome = tokio::time::timeout(NATS_TIMEOUT, done.wait_for(|(finished, _)| *finished >= want)).await;
        let failed = match outcome {
            Ok(Ok(state)) => state.1 >= want,
            Ok(Err(_)) | Err(_) => true,
        };
        if failed {
            return Err(Error::unavailable("nats", format!("the server did not confirm within {NATS_TIMEOUT:?}")));
        }
        if self.generation() != generation {
            return Err(Error::unavailable("nats", "the connection was replaced before the server confirmed"));
        }
        Ok(())
    }

    /// [`Bus::confirm_since`] the current generation.
    pub async fn confirm(&self) -> Result<()> {
        self.ensure_connected()?;
        self.confirm_since(self.generation()).await
    }

    /// A core subscription the server is known to have.
    pub async fn subscribe(&self, subject: String, queue_group: Option<String>) -> Result<async_nats::Subscriber> {
        self.ensure_connected()?;
        let generation = self.generation();
        let sub = match queue_group {
            Some(group) => bounded("nats subscribe", self.client.queue_subscribe(subject, group)).await?,
            None => bounded("nats subscribe", self.client.subscribe(subject)).await?,
        };
        self.confirm_since(generation).await?;
        Ok(sub)
    }
}

/// Runs one barrier round at a time, as long as someone waits for one.
async fn run_rounds(client: async_nats::Client, rounds: Arc<Rounds>) {
    loop {
        rounds.wake.notified().await;
        let round = {
            let mut next = rounds.next.lock().expect("bus lock");
            let round = *next;
            *next += 1;
            round
        };
        if rounds.done.borrow().0 >= round {
            continue;
        }
        let ok = match tokio::time::timeout(NATS_TIMEOUT, client.request(BARRIER_SUBJECT, bytes::Bytes::new())).await {
            Ok(Err(e)) => e.kind() == RequestErrorKind::NoResponders,
            Ok(Ok(_)) | Err(_) => false,
        };
        rounds.done.send_modify(|(finished, failed)| {
            *finished = round;
            if !ok {
                *failed = round;
            }
        });
    }
}

/// Awaits a NATS call for at most [`NATS_TIMEOUT`].
pub async fn bounded<T, E: std::fmt::Display>(
    what: &'static str,
    call: impl Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(NATS_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::unavailable(what, e.to_string())),
        Err(_) => Err(Error::unavailable(what, format!("no answer within {NATS_TIMEOUT:?}"))),
    }
}
