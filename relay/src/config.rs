//! The relay's configuration: every flag has an environment twin (DESIGN.md, "Configuration").

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// What to do with a channel that no `RelayChannel` declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Undeclared {
    /// Refuse with NOT_FOUND (clusters).
    Deny,
    /// Serve it with default settings (local development).
    Allow,
}

/// Relay server settings.
#[derive(Clone, Debug, Parser)]
#[command(name = "relay", version, about = "Realtime channels: gRPC and gRPC-web relay")]
pub struct Config {
    /// gRPC and gRPC-web listen address.
    #[arg(long, env = "RELAY_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Admin listen address: /metrics, /healthz, /readyz.
    #[arg(long, env = "RELAY_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    #[arg(long, env = "RELAY_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    #[arg(long, env = "RELAY_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[arg(long, env = "RELAY_POCKETBASE_URL", default_value = "http://127.0.0.1:8090")]
    pub pocketbase_url: String,
    /// The PocketBase auth collection whose tokens are accepted.
    #[arg(long, env = "RELAY_POCKETBASE_COLLECTION", default_value = "users")]
    pub pocketbase_collection: String,
    #[arg(long, env = "RELAY_UNDECLARED_CHANNELS", value_enum, default_value = "deny")]
    pub undeclared_channels: Undeclared,
    /// How long a verified token is trusted without asking PocketBase again (capped by its `exp`).
    #[arg(long, env = "RELAY_AUTH_CACHE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub auth_cache_ttl: Duration,
    /// How long a call to PocketBase may take before the relay answers UNAVAILABLE.
    #[arg(long, env = "RELAY_POCKETBASE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub pocketbase_timeout: Duration,
    /// How long channel settings are cached (changes announced by the operator apply at once).
    #[arg(long, env = "RELAY_SETTINGS_TTL", default_value = "30s", value_parser = parse_duration)]
    pub settings_ttl: Duration,
    /// Heartbeat interval on idle Subscribe streams.
    #[arg(long, env = "RELAY_HEARTBEAT", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Open Subscribe streams one user may hold on one replica.
    #[arg(long, env = "RELAY_MAX_STREAMS_PER_USER", default_value_t = 32)]
    pub max_streams_per_user: usize,
    /// Messages queued for one Subscribe stream before it is cut off as a slow consumer.
    #[arg(long, env = "RELAY_STREAM_BUFFER", default_value_t = 1024)]
    pub stream_buffer: usize,
    /// Origins allowed to call gRPC-web from a browser ("*" for any).
    #[arg(long, env = "RELAY_CORS_ORIGINS", default_value = "*", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// How long in-flight publishes may take to finish on SIGTERM.
    #[arg(long, env = "RELAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Folder of a built web client to serve on the gRPC port (`GET /`); off when unset.
    #[arg(long, env = "RELAY_WEB_DIR")]
    pub web_dir: Option<std::path::PathBuf>,
    /// Log format.
    #[arg(long, env = "RELAY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Parses `250ms`, `15s`, `5m`, `24h` or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (num, unit) = raw.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{raw:?} is not a duration like 250ms, 15s, 5m or 24h"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{raw:?}: unknown unit {unit:?}; use ms, s, m or h")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::parse_from(["relay"]);
        assert_eq!(c.listen.to_string(), "0.0.0.0:50051");
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.pocketbase_url, "http://127.0.0.1:8090");
        assert_eq!(c.pocketbase_collection, "users");
        assert_eq!(c.undeclared_channels, Undeclared::Deny);
    }
}
