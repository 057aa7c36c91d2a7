//! Prometheus metrics, served on the admin port at `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label pairs of a metric family.
type Labels = Vec<(String, String)>;

struct Metrics {
    registry: Registry,
    rpcs: Family<Vec<(String, String)>, Counter>,
    publish_seconds: Histogram,
    auth_call_seconds: Histogram,
    deliveries: Counter,
    dropped: Family<Vec<(String, String)>, Counter>,
    markers: Family<Vec<(String, String)>, Counter>,
    redeliveries: Counter,
    streams: Gauge,
    topics: Gauge,
    canary_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    canary_failures: Family<Vec<(String, String)>, Counter>,
    canary_ok: Family<Labels, Gauge>,
    delivery_seconds: Histogram,
    auth_lookups: Family<Labels, Counter>,
    backend_errors: Family<Labels, Counter>,
    presence_changes: Family<Labels, Counter>,
    live_events: Family<Labels, Counter>,
    append_batch: Histogram,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| init(new()))
}

/// Every label set that is known in advance starts at zero, so that dashboards and alerts (a
/// `rate()` or `increase()` over a series that does not exist yet gives nothing) see it from the
/// start, and every family is in `/metrics` before its first event.
fn init(m: Metrics) -> Metrics {
    let label = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
    for method in [
        "Publish",
        "PublishStream",
        "PublishStream.Publish",
        "Subscribe",
        "History",
        "Ack",
        "RefreshToken",
        "Presence",
        "PresenceStats",
    ] {
        drop(m.rpcs.get_or_create(&vec![("method".into(), method.into()), ("code".into(), "Ok".into())]));
    }
    for reason in [
        "slow_consumer",
        "unverified_token_rate",
        "republish_queue_full",
        "republish_gave_up",
        "not_a_relay_message",
        "wrong_channel",
        "live_event_skipped",
    ] {
        drop(m.dropped.get_or_create(&label("reason", reason)));
    }
    for reason in [
        crate::order::reason::NEW_EPOCH,
        crate::order::reason::REWOUND,
        crate::order::reason::EXPIRED,
        crate::order::reason::UNREADABLE,
        crate::order::reason::STALE_EPOCH,
    ] {
        drop(m.markers.get_or_create(&label("reason", reason)));
    }
    for leg in ["nats", "redis"] {
        drop(m.canary_failures.get_or_create(&label("leg", leg)));
        drop(m.canary_seconds.get_or_create(&label("leg", leg)));
        drop(m.canary_ok.get_or_create(&label("leg", leg)));
    }
    for result in ["hit", "miss"] {
        drop(m.auth_lookups.get_or_create(&label("result", result)));
    }
    for backend in ["message bus", "history store", "authentication service", "relay"] {
        drop(m.backend_errors.get_or_create(&label("backend", backend)));
    }
    for kind in ["join", "leave"] {
        drop(m.presence_changes.get_or_create(&label("kind", kind)));
    }
    for kind in ["join", "leave", "ephemeral", "coalesced"] {
        drop(m.live_events.get_or_create(&label("kind", kind)));
    }
    m
}

fn new() -> Metrics {
    {
        let mut registry = Registry::with_prefix("relay");
        let rpcs = Family::default();
        registry.register("rpcs", "Finished calls by method and gRPC code", rpcs.clone());
        let publish_seconds = Histogram::new(exponential_buckets(0.0002, 2.0, 16));
        registry.register("publish_seconds", "Publish latency: token check to reply", publish_seconds.clone());
        let auth_call_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 12));
        registry.register(
            "pocketbase_call_seconds",
            "Calls to PocketBase auth-refresh (cache misses)",
            auth_call_seconds.clone(),
        );
        let deliveries = Counter::default();
        registry.register("deliveries", "Messages written to Subscribe streams", deliveries.clone());
        let dropped = Family::default();
        registry.register("dropped_messages", "Messages not delivered, by reason", dropped.clone());
        let markers = Family::default();
        registry.register("recovery_markers", "recovered=false markers sent mid-stream, by reason", markers.clone());
        let redeliveries = Counter::default();
        registry.register(
            "queue_redeliveries",
            "Queue messages delivered again (not acked in time)",
            redeliveries.clone(),
        );
        let streams = Gauge::default();
        registry.register("streams", "Open Subscribe streams", streams.clone());
        let topics = Gauge::default();
        registry.register("topics", "Channels with a broadcast subscription on this replica", topics.clone());
        let canary_seconds = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0002, 2.0, 16))
        });
        registry.register(
            "canary_round_trip_seconds",
            "Data-path canary round trips, by leg (nats: through this relay's own subscription; redis: write and read back)",
            canary_seconds.clone(),
        );
        let canary_failures = Family::default();
        registry.register(
            "canary_failures",
            "Canary rounds that did not come back in time, by leg",
            canary_failures.clone(),
        );
        let canary_ok = Family::default();
        registry.register(
            "canary_ok",
            "1 while the last canary round of a leg came back, 0 while it did not (what /readyz says)",
            canary_ok.clone(),
        );
        let delivery_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "delivery_seconds",
            "Publish to delivery of live messages (broadcast and perUser): from when a message was stored to when it was handed to a stream (Redis's clock against this relay's)",
            delivery_seconds.clone(),
        );
        let auth_lookups = Family::default();
        registry.register(
            "auth_cache_lookups",
            "Token checks by result (hit: answered from the cache; miss: a PocketBase call or a wait for one)",
            auth_lookups.clone(),
        );
        let backend_errors = Family::default();
        registry.register(
            "backend_errors",
            "Calls answered UNAVAILABLE because a backend failed, by backend (message bus, history store, authentication service)",
            backend_errors.clone(),
        );
        let presence_changes = Family::default();
        registry.register(
            "presence_changes",
            "Users joining (first stream) and leaving (last stream ended or expired) channels, as this replica's presence updates found them",
            presence_changes.clone(),
        );
        let live_events = Family::default();
        registry.register(
            "live_events",
            "Live events (join, leave, ephemeral) this replica received for its streams; coalesced: joins and leaves folded into PresenceChanged",
            live_events.clone(),
        );
        let append_batch = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        registry.register(
            "append_batch_messages",
            "Messages per history append call: concurrent publishes to one channel share a call",
            append_batch.clone(),
        );
        Metrics {
            append_batch,
            presence_changes,
            live_events,
            registry,
            delivery_seconds,
            auth_lookups,
            backend_errors,
            canary_seconds,
            canary_failures,
            canary_ok,
            rpcs,
            publish_seconds,
            auth_call_seconds,
            deliveries,
            dropped,
            markers,
            redeliveries,
            streams,
            topics,
        }
    }
}

/// Counts a finished call.
pub fn rpc(method: &str, code: tonic::Code) {
    metrics().rpcs.get_or_create(&vec![("method".into(), method.into()), ("code".into(), format!("{code:?}"))]).inc();
}

pub fn canary(leg: &str, outcome: Result<Duration, ()>) {
    let labels = vec![("leg".to_owned(), leg.to_owned())];
    metrics().canary_ok.get_or_create(&labels).set(i64::from(outcome.is_ok()));
    match outcome {
        Ok(d) => metrics().canary_seconds.get_or_create(&labels).observe(d.as_secs_f64()),
        Err(()) => {
            metrics().canary_failures.get_or_create(&labels).inc();
        }
    }
}

pub fn auth_lookup(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics().auth_lookups.get_or_create(&vec![("result".into(), result.into())]).inc();
}

pub fn backend_error(backend: &str) {
    metrics().backend_errors.get_or_create(&vec![("backend".into(), backend.into())]).inc();
}

pub fn observe_publish(d: Duration) {
    metrics().publish_seconds.observe(d.as_secs_f64());
}

pub fn append_batch(messages: usize) {
    metrics().append_batch.observe(messages as f64);
}

pub fn observe_auth_call(d: Duration) {
    metrics().auth_call_seconds.observe(d.as_secs_f64());
}

/// One message handed to a Subscribe stream; `live_ts`, for a live message, is when it was stored
/// (Unix nanoseconds, Redis's clock), so the histogram holds publish-to-delivery latency.
pub fn delivered(live_ts: Option<i64>) {
    metrics().deliveries.inc();
    if let Some(ts) = live_ts {
        let age = (crate::now_nanos() - ts).max(0) as f64 / 1e9;
        metrics().delivery_seconds.observe(age);
    }
}

/// Counts a message that was not delivered, by reason.
pub fn dropped(reason: &str) {
    metrics().dropped.get_or_create(&vec![("reason".into(), reason.into())]).inc();
}

/// Counts a marker (messages may be missing), by reason.
pub fn marker(reason: &str) {
    metrics().markers.get_or_create(&vec![("reason".into(), reason.into())]).inc();
}

pub fn presence_changes(kind: &str, n: usize) {
    metrics().presence_changes.get_or_create(&vec![("kind".into(), kind.into())]).inc_by(n as u64);
}

pub fn live_event(kind: &str) {
    metrics().live_events.get_or_create(&vec![("kind".into(), kind.into())]).inc();
}

pub fn redelivered() {
    metrics().redeliveries.inc();
}

pub fn streams() -> &'static Gauge {
    &metrics().streams
}

pub fn topics() -> &'static Gauge {
    &metrics().topics
}

/// The text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    encode(&mut out, &metrics().registry).expect("writing to a String cannot fail");
    out
}
