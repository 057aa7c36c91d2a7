//! The listeners and the process lifecycle: gRPC + gRPC-web on one port, admin on another, and a
//! graceful shutdown that tells clients to go elsewhere before the process leaves.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use http::HeaderName;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Config;
use crate::proto::relay_service_server::RelayServiceServer;
use crate::{Relay, auth, bus, hub, metrics, rate, route, rpc, settings, store, streams};

/// The HTTP/2 connection window the relay grants each client.
const CONNECTION_WINDOW: u32 = 8 << 20;

/// Bound listeners, so callers (and tests) learn the real ports before serving.
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let grpc = listen(config.listen).with_context(|| format!("binding {}", config.listen))?;
        let admin = listen(config.admin_listen).with_context(|| format!("binding {}", config.admin_listen))?;
        Ok(Self { grpc, admin })
    }
}

/// A listener with a deep accept backlog. The standard library's 128 overflowed when a thousand
/// clients reconnected at once (a replica went away), and the kernel's SYN retry added a full
/// second to their reconnect (measured with `loadgen --scenario reconnect`).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Connects to NATS and Redis (both lazily: the relay starts, not ready, while they are down) and
/// builds the shared state.
/// Redis connections for appends that wait for replicas.
const WRITERS: usize = 4;

pub async fn connect(config: Config) -> anyhow::Result<Arc<Relay>> {
    let mut store = store::Store::new(config.redis().connect()?)?;
    if config.redis_wait_replicas > 0 {
        let writers = (0..WRITERS).map(|_| config.redis().connect()).collect::<Result<Vec<_>, _>>()?;
        let replication = store::Replication::new(writers, config.redis_wait_replicas, config.redis_wait_timeout);
        store = store.with_replication(replication);
    }
    let (reconnected, _) = broadcast::channel(16);
    let events = reconnected.clone();
    let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = generation.clone();
    let nats_settings = config.nats();
    let options = nats_settings.options("relay").await?.event_callback(move |event| {
        let (events, counter) = (events.clone(), counter.clone());
        async move {
            tracing::info!(%event, "nats");
            bus::Bus::on_event(&counter, &event);
            if matches!(event, async_nats::Event::Connected) {
                let _ = events.send(());
            }
        }
    });
    let nats = nats_settings.connect(options).await?;
    let http = relay_connect::http(config.pocketbase_ca_file.as_deref(), config.pocketbase_timeout)?;
    let verifier = auth::Verifier::new(
        http,
        &config.pocketbase_url,
        &config.pocketbase_collection,
        auth::Limits {
            ttl: config.auth_cache_ttl,
            timeout: config.pocketbase_timeout,
            cache_size: config.auth_cache_size,
            misses_per_second: config.unverified_tokens_per_second,
        },
    );
    let bus = bus::Bus::new(nats.clone(), generation);
    Ok(Arc::new(Relay {
        settings: settings::SettingsCache::new(store.clone(), config.settings_ttl, config.undeclared_channels),
        hub: hub::Hub::new(bus.clone(), store.clone(), reconnected.clone()),
        live: crate::live::Live::new(bus.clone()),
        presence: Arc::new(crate::presence::Presence::new(store.clone(), bus.clone())),
        jetstream: bus.jetstream.clone(),
        rate: rate::RateLimiter::default(),
        streams: streams::Streams::new(config.max_streams_per_user as usize),
        republish: Arc::default(),
        shutdown: CancellationToken::new(),
        canary: Default::default(),
        reconnected,
        verifier,
        store,
        bus,
        config,
    }))
}

/// The largest request message the relay decodes.
const MAX_REQUEST_BYTES: usize = 1024 * 1024 + 64 * 1024;

/// Serves until `signal` resolves, then shuts down gracefully: readiness goes false, streams end
/// with UNAVAILABLE, in-flight calls get `shutdown_grace` to finish.
pub async fn serve(relay: Arc<Relay>, listeners: Listeners, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
    tokio::spawn(follow_settings_changes(relay.clone()));
    tokio::spawn(route::serve(relay.clone()));
    tokio::spawn(crate::canary::run(relay.clone()));
    tokio::spawn(relay.presence.clone().run(relay.shutdown.clone()));
    if relay.config.nats_ca_file.is_some() {
        let (bus, settings) = (relay.bus.clone(), relay.config.nats());
        tokio::spawn(async move { bus.diagnose(settings).await });
    }
    let republisher = relay.clone();
    tokio::spawn(async move { republisher.republish.run(republisher.bus.clone()).await });
    let admin = tokio::spawn(serve_admin(relay.clone(), listeners.admin));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RelayServiceServer<rpc::Service>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let mut app = tonic::service::Routes::new(health_service)
        .add_service(reflection)
        .add_service(
            RelayServiceServer::new(rpc::Service::new(relay.clone()))
                // The largest request anyone needs: a 1 MiB text (the CRD's highest maxMessageBytes)
                // with its ids. tonic's default (4 MiB) would let each request hold four times that.
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .into_axum_router()
        // gRPC-web -> gRPC for the services; plain gRPC passes through. Only for the services:
        // it answers 400 to any other HTTP/1.1 request, such as the web client's files.
        .layer(tonic_web::GrpcWebLayer::new());
    if let Some(dir) = &relay.config.web_dir {
        app = with_web_client(app, dir);
    }

    let stopping = CancellationToken::new();
    let grpc = {
        let stopping = stopping.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc);
        tonic::transport::Server::builder()
            // Browsers speak gRPC-web over HTTP/1.1; native clients HTTP/2, on the same port.
            .accept_http1(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            // h2 closes a connection (GOAWAY ENHANCE_YOUR_CALM, "too_many_data_frames") once the
            // small DATA frames it holds unread exceed half the connection window: a client with a
            // few thousand unary calls in flight on one connection hit it at the default 1 MiB
            // (test: a_nats_outage_fails_callers_fast...). Memory is spent only as data arrives.
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .tcp_nodelay(true)
            // CORS first: a preflight must be answered before gRPC-web translation.
            .layer(cors(&relay.config.cors_origins))
            .add_routes(app.into())
            .serve_with_incoming_shutdown(incoming, async move { stopping.cancelled().await })
    };
    let grpc = tokio::spawn(grpc);

    signal.await;
    tracing::info!("shutting down: not ready, ending streams, finishing in-flight calls");
    health.set_not_serving::<RelayServiceServer<rpc::Service>>().await;
    relay.shutdown.cancel();
    stopping.cancel();
    // Whatever the backends do, the process leaves within the grace period.
    let grace = relay.config.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    match tokio::time::timeout_at(deadline, grpc).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!(?grace, "calls still running after the grace period"),
    }
    admin.abort();
    // The streams that ended depart (and count a few seconds more, so their clients' reconnects
    // to other replicas are no leave and join).
    if tokio::time::timeout_at(deadline, relay.presence.flush()).await.is_err() {
        tracing::warn!("presence departures not sent before the grace period ended; they expire with their ttl");
    }
    if tokio::time::timeout_at(deadline, relay.bus.client.flush()).await.is_err() {
        tracing::warn!("NATS did not take what was queued for it before the grace period ended");
    }
    Ok(())
}

/// Serves the built web client for every request no gRPC service claims (`--web-dir`);
/// unknown paths get `index.html`, so the page's own routes work on reload.
fn with_web_client(app: axum::Router, dir: &std::path::Path) -> axum::Router {
    let files =
        tower_http::services::ServeDir::new(dir).fallback(tower_http::services::ServeFile::new(dir.join("index.html")));
    app.fallback_service(files)
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers(tower_http::cors::Any)
        .expose_headers(["grpc-status", "grpc-message", "grpc-status-details-bin"].map(HeaderName::from_static))
        .max_age(Duration::from_secs(3600))
}

/// Drops cached channel settings when the operator announces a change.
async fn follow_settings_changes(relay: Arc<Relay>) {
    use futures::StreamExt;
    let mut sub = match relay.bus.client.subscribe(relay_channel::names::SETTINGS_CHANGED_SUBJECT).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow settings changes; relying on the cache TTL");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        let name = String::from_utf8_lossy(&msg.payload);
        tracing::info!(channel = %name, "channel settings changed");
        relay.settings.invalidate(&name);
    }
}

async fn serve_admin(relay: Arc<Relay>, listener: TcpListener) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(|| async { metrics::render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(relay);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Ready while not shutting down, both NATS and Redis answer, and the data-path canary comes back.
async fn ready(State(relay): State<Arc<Relay>>) -> (StatusCode, String) {
    let verdict = readiness(&relay).await;
    // Say it in the log when readiness changes, with the reason (a probe repeats every few seconds).
    static LAST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().expect("readiness lock");
    let reason = verdict.as_ref().err().cloned().unwrap_or_else(|| "ready".into());
    if last.as_deref() != Some(reason.as_str()) {
        match &verdict {
            Ok(()) => tracing::info!("ready"),
            Err(why) => tracing::warn!(reason = %why, "not ready"),
        }
        *last = Some(reason.clone());
    }
    match verdict {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Ready while not shutting down, both NATS and Redis answer, and the canary's last round came
/// back; Err says which is not.
async fn readiness(relay: &Relay) -> Result<(), String> {
    if relay.shutdown.is_cancelled() {
        return Err("shutting down".into());
    }
    if !relay.bus.connected() {
        let why = relay.bus.problem().map(|p| format!(": {p}")).unwrap_or_default();
        return Err(format!("nats: not connected to {}{why}", relay_connect::redact(&relay.config.nats_url)));
    }
    match tokio::time::timeout(Duration::from_secs(1), relay.store.ping()).await {
        // Connected and answering; the canary says whether messages also go through.
        Ok(Ok(())) => relay.canary.verdict(),
        Ok(Err(e)) => Err(format!("redis at {}: {e}", relay_connect::redact(&relay.config.redis_url))),
        Err(_) => Err("redis: no answer within 1s".into()),
    }
}
