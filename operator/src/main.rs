//! `operator`: reconciles RelayChannels from the Kubernetes API (with leader election), or from a
//! folder of YAML files with `--standalone DIR`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use operator::{admin, backends::Backends, controller, leader::Elector, standalone};

#[derive(Parser)]
#[command(name = "operator", version, about = "Reconciles RelayChannels into NATS JetStream and Redis")]
struct Config {
    /// NATS seed URLs, comma-separated: nats:// or tls://, user and password in the URL.
    #[arg(long, env = "OPERATOR_NATS_URL", default_value = "nats://127.0.0.1:4222", hide_env_values = true)]
    nats_url: String,
    /// A private CA (PEM) to trust for NATS (turns TLS on).
    #[arg(long, env = "OPERATOR_NATS_CA_FILE")]
    nats_ca_file: Option<PathBuf>,
    /// A NATS credentials file (JWT and NKey seed).
    #[arg(long, env = "OPERATOR_NATS_CREDS_FILE")]
    nats_creds_file: Option<PathBuf>,
    /// redis:// or rediss:// (TLS); ACL user and password in the URL.
    #[arg(long, env = "OPERATOR_REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    redis_url: String,
    /// A private CA (PEM) to trust for Redis (with a rediss:// URL).
    #[arg(long, env = "OPERATOR_REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,
    /// How Redis is deployed: standalone, cluster (the URLs are seeds) or sentinel (the URLs are
    /// sentinels).
    #[arg(long, env = "OPERATOR_REDIS_MODE", default_value = "standalone", value_parser = ["standalone", "cluster", "sentinel"])]
    redis_mode: String,
    /// Sentinel mode: the name the sentinels monitor the master under.
    #[arg(long, env = "OPERATOR_REDIS_MASTER_NAME")]
    redis_master_name: Option<String>,
    /// /metrics, /healthz, /readyz.
    #[arg(long, env = "OPERATOR_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    admin_listen: std::net::SocketAddr,
    /// Reconcile the RelayChannel YAML files of this folder instead of a cluster's.
    #[arg(long, env = "OPERATOR_STANDALONE_DIR")]
    standalone: Option<PathBuf>,
    /// How often every channel is checked again (drift made behind the operator's back is undone).
    /// 100ms to 24h.
    #[arg(long, env = "OPERATOR_RESYNC", default_value = "60s", value_parser = duration(100, 86_400_000))]
    resync: Duration,
    /// Run only while holding the Lease (off: every replica acts; only for a single replica).
    #[arg(long, env = "OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    #[arg(long, env = "OPERATOR_LEASE_NAME", default_value = "relay-operator")]
    lease_name: String,
    /// The Lease's namespace (in a pod: its own, from the downward API).
    #[arg(long, env = "OPERATOR_NAMESPACE", default_value = "default")]
    namespace: String,
    /// 1s to 10m.
    #[arg(long, env = "OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = duration(1_000, 600_000))]
    lease_duration: Duration,
    /// This replica's name in the Lease and in events (in a pod: its name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, env = "OPERATOR_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// A duration flag between `min_ms` and `max_ms` milliseconds.
fn duration(min_ms: u64, max_ms: u64) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |raw| {
        let d = relay_channel::duration::parse(raw)?;
        let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(max_ms));
        if d < min || d > max {
            return Err(format!("{raw:?} is out of range: allowed {min:?} to {max:?}"));
        }
        Ok(d)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log_format == "json" {
        builder.json().init()
    } else {
        builder.init()
    }

    let nats = relay_connect::Nats {
        urls: config.nats_url.clone(),
        ca_file: config.nats_ca_file.clone(),
        creds_file: config.nats_creds_file.clone(),
    };
    let redis = relay_connect::Redis {
        url: config.redis_url.clone(),
        ca_file: config.redis_ca_file.clone(),
        mode: config.redis_mode.parse().map_err(anyhow::Error::msg)?,
        master_name: config.redis_master_name.clone(),
    };
    let backends = Backends::connect(&nats, &redis).await.context("connecting to NATS and Redis")?;
    let listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding {}", config.admin_listen))?;
    tokio::spawn(admin::serve(listener, backends.clone()));

    if let Some(dir) = &config.standalone {
        tracing::info!(dir = %dir.display(), "standalone: reconciling RelayChannel files");
        standalone::run(backends, dir, config.resync, shutdown_signal()).await;
        return Ok(());
    }

    let client = kube::Client::try_default().await.context("connecting to Kubernetes")?;
    let identity = config.identity.clone().unwrap_or_else(|| format!("operator-{}", std::process::id()));
    if !config.leader_election {
        controller::run(client, backends, config.resync, &identity).await;
        return Ok(());
    }
    let elector = Elector::new(client.clone(), &config.namespace, &config.lease_name, &identity, config.lease_duration);
    tokio::select! {
        _ = shutdown_signal() => return Ok(()),
        _ = elector.acquire() => {}
    }
    tokio::select! {
        _ = controller::run(client, backends, config.resync, &identity) => Ok(()),
        _ = elector.hold() => anyhow::bail!("lost leadership; exiting so a follower takes over"),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
