//! `relay`: serves gRPC and gRPC-web on `--listen` and `/metrics`, `/healthz`, `/readyz` on
//! `--admin-listen`. Runs with no arguments on the defaults of DESIGN.md.
#![forbid(unsafe_code)]

use clap::Parser;
use relay::config::Config;
use relay::server;

/// jemalloc: glibc's malloc took an eighth of the relay's CPU under publish load (many small,
/// short-lived allocations per call, freed on other threads): about 10% more publishes per core.
/// mimalloc gained as much but added 20 KiB to each idle stream's resident memory; jemalloc none.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube and async-nats bring ring, reqwest brings aws-lc-rs: pick one before any TLS is set up.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = Config::parse();
    let instance = std::env::var("POD_NAME").unwrap_or_else(|_| format!("relay-{}", std::process::id()));
    relay::telemetry::init(&config.log_format, &instance)?;
    let listeners = server::Listeners::bind(&config).await?;
    tracing::info!(grpc = %listeners.grpc.local_addr()?, admin = %listeners.admin.local_addr()?, "relay listening");
    let relay = server::connect(config).await?;
    let served = server::serve(relay, listeners, shutdown_signal()).await;
    relay::telemetry::shutdown();
    served
}

/// SIGTERM (what Kubernetes sends) or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
