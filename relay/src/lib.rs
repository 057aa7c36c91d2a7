//! The relay: a stateless gRPC / gRPC-web server for realtime channels.
//!
//! Module map:
//! - [`config`]: flags and their environment twins;
//! - [`auth`]: PocketBase token verification with a shared, single-flight cache;
//! - [`settings`]: per-channel settings from Redis, cached, invalidated by the operator;
//! - [`store`]: Redis history, `seq`/`ts` assignment, idempotency;
//! - [`hub`]: one NATS subscription per broadcast channel per replica, fanned out in seq order;
//! - [`order`]: the reorder buffer that puts live messages in seq order;
//! - [`rate`]: publish rate limits;
//! - [`rpc`]: the gRPC service, one module per RPC;
//! - [`server`]: the listeners (gRPC + gRPC-web, admin) and graceful shutdown;
//! - [`metrics`]: Prometheus metrics.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod error;
pub mod hub;
pub mod metrics;
pub mod order;
pub mod rate;
pub mod rpc;
pub mod server;
pub mod settings;
pub mod store;

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
    pub nats: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    pub hub: hub::Hub,
    pub rate: rate::RateLimiter,
    pub stream_slots: rpc::subscribe::StreamSlots,
    /// Cancelled on SIGTERM: streams end with UNAVAILABLE so clients go to another replica.
    pub shutdown: CancellationToken,
}

/// Unix time in nanoseconds.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}
