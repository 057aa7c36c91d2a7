//! The relay's configuration: every flag has an environment twin (DESIGN.md, "Configuration").
//!
//! Every value is checked when the process starts: a value out of range is refused with the flag's
//! name and the range allowed, and the process exits with code 2 before anything listens. Flags
//! that may hold secrets (URLs with passwords) never show their environment value in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
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

/// How Redis is deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RedisMode {
    Standalone,
    /// Redis Cluster: the URLs are seeds.
    Cluster,
    /// A master found through Sentinel: the URLs are sentinels.
    Sentinel,
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
    /// NATS seed URLs, comma-separated: nats:// or tls://, user and password in the URL.
    #[arg(long, env = "RELAY_NATS_URL", default_value = "nats://127.0.0.1:4222", hide_env_values = true)]
    pub nats_url: String,
    /// A private CA (PEM) to trust for NATS (turns TLS on).
    #[arg(long, env = "RELAY_NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
    /// A NATS credentials file (JWT and NKey seed).
    #[arg(long, env = "RELAY_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// redis:// or rediss:// (TLS); ACL user and password in the URL. Comma-separated cluster seeds
    /// or sentinels with --redis-mode cluster or sentinel.
    #[arg(long, env = "RELAY_REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis_url: String,
    /// How Redis is deployed.
    #[arg(long, env = "RELAY_REDIS_MODE", value_enum, default_value = "standalone")]
    pub redis_mode: RedisMode,
    /// Sentinel mode: the name the sentinels monitor the master under.
    #[arg(long, env = "RELAY_REDIS_MASTER_NAME")]
    pub redis_master_name: Option<String>,
    /// Replicas that must have a message before its publish is answered OK (Redis `WAIT` after
    /// each append). 0: the master's word is enough. With 1 or more, a failover to a replica loses
    /// nothing acknowledged (the most up-to-date replica is promoted); a publish whose replicas do
    /// not answer in `--redis-wait-timeout` is answered UNAVAILABLE, to retry with its idempotency key.
    #[arg(long, env = "RELAY_REDIS_WAIT_REPLICAS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub redis_wait_replicas: u32,
    /// At most 2 s: longer would run into the Redis response deadline.
    #[arg(long, env = "RELAY_REDIS_WAIT_TIMEOUT", default_value = "500ms", value_parser = duration(10, 2_000))]
    pub redis_wait_timeout: Duration,
    /// A private CA (PEM) to trust for Redis (with a rediss:// URL).
    #[arg(long, env = "RELAY_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    #[arg(long, env = "RELAY_POCKETBASE_URL", default_value = "http://127.0.0.1:8090", hide_env_values = true)]
    pub pocketbase_url: String,
    /// A private CA (PEM) to trust for an https:// PocketBase.
    #[arg(long, env = "RELAY_POCKETBASE_CA_FILE")]
    pub pocketbase_ca_file: Option<PathBuf>,
    /// The PocketBase auth collection whose tokens are accepted.
    #[arg(long, env = "RELAY_POCKETBASE_COLLECTION", default_value = "users")]
    pub pocketbase_collection: String,
    #[arg(long, env = "RELAY_UNDECLARED_CHANNELS", value_enum, default_value = "deny")]
    pub undeclared_channels: Undeclared,
    /// How long a verified token is trusted without asking PocketBase again (capped by its `exp`);
    /// open streams are checked again this often. 1s to 24h.
    #[arg(long, env = "RELAY_AUTH_CACHE_TTL", default_value = "60s", value_parser = duration(1_000, 86_400_000))]
    pub auth_cache_ttl: Duration,
    /// Tokens the relay keeps verified answers for, at most.
    #[arg(long, env = "RELAY_AUTH_CACHE_SIZE", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    pub auth_cache_size: u64,
    /// Tokens never seen before that one client address may present per second (each costs a
    /// PocketBase call); a burst of five seconds' worth is allowed.
    #[arg(long, env = "RELAY_UNVERIFIED_TOKENS_PER_SECOND", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub unverified_tokens_per_second: u32,
    /// A request header that holds the client's address (set by your ingress, e.g. x-real-ip or
    /// x-forwarded-for, whose last entry is used); unset: the TCP peer address.
    #[arg(long, env = "RELAY_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
    /// How long a call to PocketBase may take before the relay answers UNAVAILABLE. 100ms to 60s.
    #[arg(long, env = "RELAY_POCKETBASE_TIMEOUT", default_value = "3s", value_parser = duration(100, 60_000))]
    pub pocketbase_timeout: Duration,
    /// How long channel settings are cached (changes announced by the operator apply at once).
    /// 100ms to 1h.
    #[arg(long, env = "RELAY_SETTINGS_TTL", default_value = "30s", value_parser = duration(100, 3_600_000))]
    pub settings_ttl: Duration,
    /// How often the data-path canary goes through NATS and Redis and back (`/readyz` fails while
    /// it does not come back within 2s). 500ms to 1m.
    #[arg(long, env = "RELAY_CANARY_INTERVAL", default_value = "2s", value_parser = duration(500, 60_000))]
    pub canary_interval: Duration,
    /// Heartbeat interval on idle Subscribe streams. 100ms to 1h.
    #[arg(long, env = "RELAY_HEARTBEAT", default_value = "15s", value_parser = duration(100, 3_600_000))]
    pub heartbeat: Duration,
    /// Open Subscribe streams one user may hold on one replica.
    #[arg(long, env = "RELAY_MAX_STREAMS_PER_USER", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_streams_per_user: u64,
    /// Messages queued for one Subscribe stream before it is cut off as a slow consumer.
    #[arg(long, env = "RELAY_STREAM_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub stream_buffer: u64,
    /// Origins allowed to call gRPC-web from a browser ("*" for any).
    #[arg(long, env = "RELAY_CORS_ORIGINS", default_value = "*", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// How long in-flight calls may take to finish on SIGTERM; the process leaves by then. 0s to 10m.
    #[arg(long, env = "RELAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration(0, 600_000))]
    pub shutdown_grace: Duration,
    /// Folder of a built web client to serve on the gRPC port (`GET /`); off when unset.
    #[arg(long, env = "RELAY_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "RELAY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Config {
    pub fn nats(&self) -> relay_connect::Nats {
        relay_connect::Nats {
            urls: self.nats_url.clone(),
            ca_file: self.nats_ca_file.clone(),
            creds_file: self.nats_creds_file.clone(),
        }
    }

    pub fn redis(&self) -> relay_connect::Redis {
        relay_connect::Redis {
            url: self.redis_url.clone(),
            ca_file: self.redis_ca_file.clone(),
            mode: match self.redis_mode {
                RedisMode::Standalone => relay_connect::RedisMode::Standalone,
                RedisMode::Cluster => relay_connect::RedisMode::Cluster,
                RedisMode::Sentinel => relay_connect::RedisMode::Sentinel,
            },
            master_name: self.redis_master_name.clone(),
        }
    }
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

/// The URL with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    relay_connect::redact(url)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn values_out_of_range_are_refused_with_the_flag_and_the_range() {
        for (flag, value) in [
            ("--heartbeat", "0s"),
            ("--heartbeat", "2h"),
            ("--stream-buffer", "0"),
            ("--max-streams-per-user", "0"),
            ("--auth-cache-ttl", "99999999999999999999h"),
            ("--auth-cache-ttl", "6000000000000000000h"),
            ("--pocketbase-timeout", "0ms"),
            ("--settings-ttl", "5d"),
            ("--shutdown-grace", "1h"),
            ("--unverified-tokens-per-second", "0"),
        ] {
            let err = Config::try_parse_from(["relay", flag, value]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{flag} {value}");
            let text = err.to_string();
            assert!(text.contains(flag), "{flag} {value}: {text}");
        }
        assert!(Config::try_parse_from(["relay", "--heartbeat", "250ms", "--stream-buffer", "16"]).is_ok());
    }
}
