//! The relay: a stateless gRPC / gRPC-web server for realtime channels.
//!
//! Module map:
//! - [`config`]: flags and their environment twins;
//! - [`auth`]: PocketBase token verification with a shared, single-flight cache;
//! - [`settings`]: per-channel settings from Redis, cached, invalidated by the operator;
//! - [`store`]: Redis history, `seq`/`ts`/epoch assignment, idempotency;
//! - [`bus`]: NATS with deadlines and server-confirmed publishes;
//! - [`hub`]: one NATS subscription per broadcast channel per replica, fanned out in seq order;
//! - [`topics`]: one shared subscription per channel per replica (what `hub` and `live` hold);
//! - [`live`]: the same for live-only events (Join, Leave, ephemeral messages), coalesced;
//! - [`presence`]: who is subscribed where, in Redis, across replicas;
//! - [`order`]: ordering live messages, and markers where that is not possible;
//! - [`queue`]: at-least-once queue delivery with client acks (JetStream pull consumers);
//! - [`streams`]: the open Subscribe streams (ids, owners, caps) and [`route`]: calls about a
//!   stream held by another replica;
//! - [`republish`]: publishing again what was stored but did not reach NATS;
//! - [`rate`]: publish rate limits;
//! - [`rpc`]: the gRPC service, one module per RPC;
//! - [`server`]: the listeners (gRPC + gRPC-web, admin) and graceful shutdown;
//! - [`metrics`]: Prometheus metrics.
#![forbid(unsafe_code)]

pub mod auth;
pub mod bus;
pub mod canary;
pub mod config;
pub mod error;
pub mod hub;
pub mod live;
pub mod metrics;
pub mod order;
pub mod presence;
pub mod queue;
pub mod rate;
pub mod republish;
pub mod route;
pub mod rpc;
pub mod server;
pub mod settings;
pub mod store;
pub mod streams;
pub mod telemetry;
pub mod topics;

/// Generated from `proto/relay/v1/relay.proto`.
pub mod proto {
    tonic::include_proto!("relay.v1");
    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("relay_descriptor");
}

use tokio_util::sync::CancellationToken;

/// What every call shares.
pub struct Relay {
    pub config: config::Config,
    pub verifier: auth::Verifier,
    pub store: store::Store,
    pub settings: settings::SettingsCache,
    pub bus: bus::Bus,
    pub jetstream: async_nats::jetstream::Context,
    /// Fires after every NATS reconnect: live paths read what they may have missed.
    pub reconnected: tokio::sync::broadcast::Sender<()>,
    pub hub: hub::Hub,
    pub live: live::Live,
    pub presence: std::sync::Arc<presence::Presence>,
    pub rate: rate::RateLimiter,
    pub streams: streams::Streams,
    pub republish: std::sync::Arc<republish::Republisher>,
    /// Cancelled on SIGTERM: streams end with UNAVAILABLE so clients go to another replica.
    pub shutdown: CancellationToken,
    /// The data path's last canary rounds, for readiness.
    pub canary: canary::Canary,
}

impl Relay {
    /// Verifies the caller of a request (its `authorization` metadata).
    pub async fn authenticate<T>(&self, req: &tonic::Request<T>) -> error::Result<auth::Caller> {
        self.verifier.caller(req, self.peer(req)).await
    }

    /// The client's address: from `--client-ip-header` when set (the last entry of a list), else
    /// (or when the header is missing or not an address) the TCP peer, so that leaving the header
    /// out never escapes the per-address limits.
    pub fn peer<T>(&self, req: &tonic::Request<T>) -> Option<std::net::IpAddr> {
        let from_header = self.config.client_ip_header.as_ref().and_then(|header| {
            req.metadata()
                .get(header.as_str())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse().ok())
        });
        from_header.or_else(|| req.remote_addr().map(|a| a.ip()))
    }
}

/// Unix time in nanoseconds.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}
