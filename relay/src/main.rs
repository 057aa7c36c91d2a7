//! `relay`: serves gRPC and gRPC-web on `--listen` and `/metrics`, `/healthz`, `/readyz` on
//! `--admin-listen`. Runs with no arguments on the defaults of DESIGN.md.
#![forbid(unsafe_code)]

use clap::Parser;
use relay::config::Config;
use relay::server;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube and async-nats bring ring, reqwest brings aws-lc-rs: pick one before any TLS is set up.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = Config::parse();
    init_tracing(&config.log_format);
    let listeners = server::Listeners::bind(&config).await?;
    tracing::info!(grpc = %listeners.grpc.local_addr()?, admin = %listeners.admin.local_addr()?, "relay listening");
    let relay = server::connect(config).await?;
    server::serve(relay, listeners, shutdown_signal()).await
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// SIGTERM (what Kubernetes sends) or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
