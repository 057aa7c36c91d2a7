//! The systems under test, behind one interface: subscribe to a channel (optionally from a cursor)
//! and publish to it. Each payload starts with its send time in nanoseconds, so every delivery
//! yields a publish-to-delivery latency.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use futures::{Stream, StreamExt};
use relay::proto::relay_service_client::RelayServiceClient;
use relay::proto::{
    ChannelSubscription, Cursor, PublishRequest, PublishStreamRequest, SubscribeRequest, cursor::Position,
    publish_stream_response, subscribe_response::Event,
};
use tonic::transport::Channel;

use crate::centrifugo::Centrifugo;
use crate::stats::now_ns;

/// One message as a subscriber saw it.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    pub sent_ns: i64,
    /// The resume position (relay seq, Centrifugo offset); None where the system has none.
    pub position: Option<u64>,
}

pub type Deliveries = Pin<Box<dyn Stream<Item = Delivered> + Send>>;

/// A payload of `size` bytes that starts with the send time.
pub fn payload(size: usize) -> String {
    let mut p = format!("{} ", now_ns());
    while p.len() < size {
        p.push('x');
    }
    p
}

pub fn sent_ns(text: &str) -> i64 {
    text.split(' ').next().and_then(|t| t.parse().ok()).unwrap_or(0)
}

pub enum Target {
    Relay(RelayTarget),
    Nats(NatsTarget),
    Sim(Box<SimTarget>),
    Centrifugo(Box<Centrifugo>),
}

impl Target {
    pub fn name(&self) -> String {
        match self {
            Target::Relay(_) => "relay".into(),
            Target::Nats(_) => "nats (raw)".into(),
            Target::Sim(_) => "relay-sim".into(),
            Target::Centrifugo(c) => c.name(),
        }
    }

    /// Subscribes with a connection of its own (as separate clients would).
    pub async fn subscribe(&self, channel: &str, after: Option<u64>) -> anyhow::Result<Deliveries> {
        match self {
            Target::Relay(r) => r.subscribe(channel, after).await,
            Target::Nats(n) => n.subscribe(channel).await,
            Target::Sim(s) => s.subscribe(channel).await,
            Target::Centrifugo(c) => c.subscribe(channel, after).await,
        }
    }

    pub async fn publish(&self, channel: &str, text: String) -> anyhow::Result<()> {
        match self {
            Target::Relay(r) => r.publish(channel, text).await,
            Target::Nats(n) => n.publish(channel, text).await,
            Target::Sim(s) => s.publish(channel, text).await,
            Target::Centrifugo(c) => c.publish(channel, text).await,
        }
    }

    /// Whether a subscriber can resume from a position (the reconnect scenario).
    pub fn resumes(&self) -> bool {
        !matches!(self, Target::Nats(_) | Target::Sim(_))
    }
}

/// The relay: subscribers spread over the replicas, each on its own HTTP/2 connection.
pub struct RelayTarget {
    pub addrs: Vec<String>,
    pub token: String,
    publishers: Vec<RelayServiceClient<Channel>>,
    /// With `--publish-path stream`: PublishStream calls that every publish goes through.
    streams: Vec<PublishStream>,
    next: AtomicUsize,
    /// Subscriptions per connection, and the shared connections (by index) when more than one.
    per_connection: usize,
    shared: Mutex<HashMap<usize, Channel>>,
}

/// One PublishStream call shared by many publishers: each request gets a ref, and a reader task
/// hands each answer to the publisher waiting for that ref.
struct PublishStream {
    requests: tokio::sync::mpsc::UnboundedSender<PublishStreamRequest>,
    waiting: Arc<std::sync::Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Option<String>>>>>,
    next_ref: std::sync::atomic::AtomicU64,
}

impl PublishStream {
    async fn open(client: &mut RelayServiceClient<Channel>, token: &str) -> anyhow::Result<Self> {
        let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut req = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
        let mut answers = client.publish_stream(req).await?.into_inner();
        let waiting: Arc<std::sync::Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Option<String>>>>> = Arc::default();
        let demux = waiting.clone();
        tokio::spawn(async move {
            while let Ok(Some(answer)) = answers.message().await {
                let error = match answer.result {
                    Some(publish_stream_response::Result::Error(e)) => Some(format!("{}: {}", e.code, e.message)),
                    _ => None,
                };
                if let Some(tx) = demux.lock().expect("waiting").remove(&answer.r#ref) {
                    let _ = tx.send(error);
                }
            }
            // The call ended: whoever still waits gets an error (their sender is dropped).
            demux.lock().expect("waiting").clear();
        });
        Ok(Self { requests, waiting, next_ref: std::sync::atomic::AtomicU64::new(1) })
    }

    async fn publish(&self, channel: &str, text: String) -> anyhow::Result<()> {
        let r#ref = self.next_ref.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.lock().expect("waiting").insert(r#ref, tx);
        let publish =
            PublishRequest { channelid: channel.into(), text, idempotency_key: String::new(), ephemeral: false };
        self.requests.send(PublishStreamRequest { r#ref, publish: Some(publish) })?;
        match rx.await {
            Ok(None) => Ok(()),
            Ok(Some(error)) => anyhow::bail!("publish refused: {error}"),
            Err(_) => anyhow::bail!("the publish stream ended"),
        }
    }
}

impl RelayTarget {
    /// `streams`: publish through PublishStream calls (one per publishing connection) rather than
    /// unary Publish.
    pub async fn new(addrs: Vec<String>, token: String, streams: bool, per_connection: usize) -> anyhow::Result<Self> {
        let mut publishers = Vec::new();
        // A few connections per replica for publishing: requests multiplex over each.
        for addr in addrs.iter().cycle().take(addrs.len() * 4) {
            publishers.push(RelayServiceClient::new(connect(addr).await?));
        }
        let mut calls = Vec::new();
        if streams {
            for client in &mut publishers {
                calls.push(PublishStream::open(client, &token).await?);
            }
        }
        Ok(Self {
            addrs,
            token,
            publishers,
            streams: calls,
            next: AtomicUsize::new(0),
            per_connection,
            shared: Mutex::default(),
        })
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert("authorization", format!("Bearer {}", self.token).parse().expect("ascii token"));
        req
    }

    async fn subscribe(&self, channel: &str, after: Option<u64>) -> anyhow::Result<Deliveries> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = i / self.per_connection;
        let addr = &self.addrs[conn % self.addrs.len()];
        let conn_channel = if self.per_connection == 1 {
            connect(addr).await?
        } else {
            let known = self.shared.lock().expect("connections").get(&conn).cloned();
            match known {
                Some(c) => c,
                None => {
                    let c = connect(addr).await?;
                    self.shared.lock().expect("connections").entry(conn).or_insert(c).clone()
                }
            }
        };
        let mut client = RelayServiceClient::new(conn_channel);
        let cursor = after.map(|s| Cursor { position: Some(Position::SinceSeq(s)), epoch: String::new() });
        let req = SubscribeRequest { channels: vec![ChannelSubscription { channelid: channel.into(), cursor }] };
        let mut stream = client.subscribe(self.request(req)).await?.into_inner();
        // StreamStarted, then the recovery marker once the live subscription is in place.
        match stream.message().await? {
            Some(r) if matches!(r.event, Some(Event::Started(_))) => {}
            other => anyhow::bail!("expected StreamStarted, got {other:?}"),
        }
        match stream.message().await? {
            Some(r) if matches!(r.event, Some(Event::Recovery(_))) => {}
            other => anyhow::bail!("expected a recovery marker, got {other:?}"),
        }
        Ok(Box::pin(stream.filter_map(|item| async move {
            match item.ok()?.event? {
                Event::Message(m) => Some(Delivered { sent_ns: sent_ns(&m.text), position: Some(m.seq) }),
                _ => None,
            }
        })))
    }

    async fn publish(&self, channel: &str, text: String) -> anyhow::Result<()> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if !self.streams.is_empty() {
            return self.streams[i % self.streams.len()].publish(channel, text).await;
        }
        let mut client = self.publishers[i % self.publishers.len()].clone();
        let req = PublishRequest { channelid: channel.into(), text, idempotency_key: String::new(), ephemeral: false };
        client.publish(self.request(req)).await?;
        Ok(())
    }
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(addr.to_owned())?.connect().await.with_context(|| format!("connecting to {addr}"))
}

/// Raw NATS: the ceiling for the broker hop. Subscribers share `connections` client connections.
pub struct NatsTarget {
    clients: Vec<async_nats::Client>,
    publisher: async_nats::Client,
    next: AtomicUsize,
}

impl NatsTarget {
    pub async fn new(url: &str, connections: usize) -> anyhow::Result<Self> {
        let mut clients = Vec::new();
        for _ in 0..connections {
            clients.push(async_nats::ConnectOptions::new().subscription_capacity(1 << 16).connect(url).await?);
        }
        Ok(Self { clients, publisher: async_nats::connect(url).await?, next: AtomicUsize::new(0) })
    }

    async fn subscribe(&self, channel: &str) -> anyhow::Result<Deliveries> {
        let client = &self.clients[self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len()];
        let sub = client.subscribe(relay_channel::names::subject(channel)).await?;
        client.flush().await?;
        Ok(Box::pin(
            sub.map(|m| Delivered { sent_ns: sent_ns(std::str::from_utf8(&m.payload).unwrap_or("")), position: None }),
        ))
    }

    async fn publish(&self, channel: &str, text: String) -> anyhow::Result<()> {
        self.publisher.publish(relay_channel::names::subject(channel), text.into()).await?;
        Ok(())
    }
}

/// Shared so scenario tasks can hold it.
pub type Shared = Arc<Target>;

/// The relay-sim ceiling: the relay's own publish work (its Redis append script, then the NATS
/// publish confirmed by the server, or acked by JetStream for a declared stream) called directly,
/// with no gRPC, auth or settings in front. Subscribers read NATS as the relays do.
pub struct SimTarget {
    store: relay::store::Store,
    bus: relay::bus::Bus,
    jetstream: bool,
    subscribers: NatsTarget,
}

impl SimTarget {
    pub async fn new(redis: &relay_connect::Redis, nats_url: &str, jetstream: bool) -> anyhow::Result<Self> {
        let store = relay::store::Store::new(redis.connect()?)?;
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let events = generation.clone();
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |e| {
                let g = events.clone();
                async move { relay::bus::Bus::on_event(&g, &e) }
            })
            .connect(nats_url)
            .await?;
        let bus = relay::bus::Bus::new(client, generation);
        Ok(Self { store, bus, jetstream, subscribers: NatsTarget::new(nats_url, 10).await? })
    }

    async fn subscribe(&self, channel: &str) -> anyhow::Result<Deliveries> {
        let nats = &self.subscribers;
        let client = &nats.clients[nats.next.fetch_add(1, Ordering::Relaxed) % nats.clients.len()];
        let sub = client.subscribe(relay_channel::names::subject(channel)).await?;
        client.flush().await?;
        Ok(Box::pin(sub.filter_map(|m| async move {
            let m = relay_channel::WireMessage::from_json(&m.payload).ok()?;
            Some(Delivered { sent_ns: sent_ns(&m.text), position: Some(m.seq) })
        })))
    }

    async fn publish(&self, channel: &str, text: String) -> anyhow::Result<()> {
        let appended = self
            .store
            .append(relay::store::Append {
                channel,
                userid: "bench",
                username: "bench",
                text: &text,
                id: &uuid::Uuid::now_v7().to_string(),
                idempotency_key: None,
                max_messages: 1000,
                max_age_secs: 24 * 3600,
                idle_ttl_secs: None,
            })
            .await?;
        relay::republish::publish(&self.bus, &appended.message, self.jetstream).await?;
        Ok(())
    }
}
