//! Redis as a standalone server, a Redis Cluster, or a master found through Sentinel, behind one
//! connection type ([`Conn`]) that every Redis command and script of the relay and the operator
//! goes through.
//!
//! - standalone: redis-rs's `ConnectionManager` (reconnects by itself);
//! - cluster (`--redis-mode cluster`, the URLs are seeds): redis-rs's cluster client, which follows
//!   MOVED and ASK during resharding and a replica promoted after a master fails. Every key of a
//!   channel carries its `{channel}` hash tag, so each script stays on one slot;
//! - sentinel (`--redis-mode sentinel`, the URLs are sentinels, `--redis-master-name`): the master
//!   the sentinels name, asked again after a connection fails or a write meets a replica
//!   (`READONLY`), so a failover is followed within seconds.
//!
//! Each connects on first use: a process starts (not ready) while Redis is away.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use crate::{Error, read, redact};

/// How Redis is deployed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisMode {
    #[default]
    Standalone,
    Cluster,
    Sentinel,
}

impl std::str::FromStr for RedisMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "standalone" => Ok(Self::Standalone),
            "cluster" => Ok(Self::Cluster),
            "sentinel" => Ok(Self::Sentinel),
            other => Err(format!("{other:?}: use standalone, cluster or sentinel")),
        }
    }
}

/// How to reach Redis.
#[derive(Clone, Debug, Default)]
pub struct Redis {
    /// One URL (standalone), cluster seeds or sentinels, comma-separated; `rediss://` for TLS, ACL
    /// user and password in the URL (for sentinel: the master's).
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub mode: RedisMode,
    /// Sentinel: the name the sentinels monitor the master under.
    pub master_name: Option<String>,
}

/// Connection and response deadlines, and how often a standalone connection retries.
const CONNECT: Duration = Duration::from_secs(2);
const RESPONSE: Duration = Duration::from_secs(3);

impl Redis {
    fn urls(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
    }

    fn invalid(&self, e: impl std::fmt::Display) -> Error {
        Error::Invalid { what: "--redis-url", message: format!("{}: {e}", redact(&self.url)) }
    }

    fn certificates(&self) -> Result<Option<redis::TlsCertificates>, Error> {
        let Some(path) = &self.ca_file else { return Ok(None) };
        if !self.urls().iter().all(|u| u.starts_with("rediss://")) {
            return Err(Error::Invalid { what: "--redis-ca-file", message: "needs rediss:// URLs".into() });
        }
        Ok(Some(redis::TlsCertificates { client_tls: None, root_cert: Some(read("--redis-ca-file", path)?) }))
    }

    /// A standalone client (it connects on first use).
    pub fn client(&self) -> Result<redis::Client, Error> {
        let url = *self.urls().first().ok_or_else(|| self.invalid("no URL given"))?;
        match self.certificates()? {
            None => redis::Client::open(url).map_err(|e| self.invalid(e)),
            Some(certs) => redis::Client::build_with_tls(url, certs).map_err(|e| self.invalid(e)),
        }
    }

    /// A connection in the configured mode, connecting on first use.
    pub fn connect(&self) -> Result<Conn, Error> {
        match self.mode {
            RedisMode::Standalone => {
                if self.urls().len() > 1 {
                    return Err(self.invalid("several URLs need --redis-mode cluster or sentinel"));
                }
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT))
                    .set_response_timeout(Some(RESPONSE))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                let manager =
                    ConnectionManager::new_lazy_with_config(self.client()?, config).map_err(|e| self.invalid(e))?;
                Ok(Conn(Inner::Single(manager)))
            }
            RedisMode::Cluster => {
                let mut builder =
                    ClusterClient::builder(self.urls()).connection_timeout(CONNECT).response_timeout(RESPONSE);
                if let Some(certs) = self.certificates()? {
                    builder = builder.certs(certs);
                }
                let client = builder.build().map_err(|e| self.invalid(e))?;
                Ok(Conn(Inner::Cluster(Arc::new(Lazy { client, conn: tokio::sync::Mutex::new(None) }))))
            }
            RedisMode::Sentinel => {
                let master = self.master_name.clone().ok_or_else(|| Error::Invalid {
                    what: "--redis-master-name",
                    message: "sentinel mode needs the master's name".into(),
                })?;
                let first = self.urls().first().copied().ok_or_else(|| self.invalid("no URL given"))?;
                let info = first.into_connection_info().map_err(|e| self.invalid(e))?;
                let mut node =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(info.redis_settings().clone());
                if first.starts_with("rediss://") {
                    node = node.set_tls_mode(redis::TlsMode::Secure);
                }
                let client = SentinelClient::build(self.urls(), master, Some(node), SentinelServerType::Master)
                    .map_err(|e| self.invalid(e))?;
                Ok(Conn(Inner::Sentinel(Arc::new(Sentinel {
                    client: tokio::sync::Mutex::new(client),
                    current: std::sync::Mutex::new(None),
                }))))
            }
        }
    }
}

/// A Redis connection in any mode; cheap to clone.
#[derive(Clone)]
pub struct Conn(Inner);

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(Arc<Lazy>),
    Sentinel(Arc<Sentinel>),
}

/// A cluster connection made on first use.
struct Lazy {
    client: ClusterClient,
    /// Held while connecting only: concurrent first calls share one connection.
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
}

impl Lazy {
    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(CONNECT * 2, self.client.get_async_connection()).await.map_err(|_| {
            redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "cluster connect timed out"))
        })??;
        *conn = Some(c.clone());
        Ok(c)
    }
}

/// The master the sentinels name, asked again when it fails.
struct Sentinel {
    /// Held while asking the sentinels only.
    client: tokio::sync::Mutex<SentinelClient>,
    current: std::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Sentinel {
    async fn get(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = self.current.lock().expect("sentinel lock").clone() {
            return Ok(c);
        }
        let mut client = self.client.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(c) = self.current.lock().expect("sentinel lock").clone() {
            return Ok(c);
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT))
            .set_response_timeout(Some(RESPONSE));
        let c = tokio::time::timeout(CONNECT * 3, client.get_async_connection_with_config(&config)).await.map_err(
            |_| {
                redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "sentinel connect timed out"))
            },
        )??;
        *self.current.lock().expect("sentinel lock") = Some(c.clone());
        Ok(c)
    }

    /// After an error that means the master moved or went away, forget the connection.
    fn settle<T>(&self, result: &redis::RedisResult<T>) {
        if let Err(e) = result
            && (e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.to_string().contains("READONLY"))
        {
            self.current.lock().expect("sentinel lock").take();
        }
    }
}

impl Conn {
    /// Runs `cmd`, then `WAIT replicas timeout` right behind it on the same connection to the node
    /// that serves `key` (one pipeline), and returns `cmd`'s reply and how many replicas have
    /// everything up to it. Sent together, the WAIT cannot land on another connection (a new
    /// master's, after a reconnect) and vouch for a write it never saw.
    pub async fn write_and_wait(
        &self,
        key: &str,
        cmd: &Cmd,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<(Value, i64)> {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd.clone()).cmd("WAIT").arg(replicas).arg(timeout.as_millis().max(1) as u64);
        let values: Vec<Value> = match &self.0 {
            Inner::Cluster(lazy) => {
                let route = redis::cluster_routing::Route::with_key(key, redis::cluster_routing::SlotAddr::Master);
                let routing = redis::cluster_routing::SingleNodeRoutingInfo::SpecificNode(route);
                lazy.get().await?.route_pipeline(pipe, 0, 2, routing).await?
            }
            _ => pipe.query_async(&mut self.clone()).await?,
        };
        let mut values = values.into_iter();
        let (Some(reply), Some(acked)) = (values.next(), values.next()) else {
            return Err(redis::RedisError::from((redis::ErrorKind::Client, "a pipeline of two gave fewer replies")));
        };
        let reply = reply.extract_error();
        // An error inside a pipeline's replies (READONLY from a demoted master) is not the
        // pipeline's own: tell the Sentinel connection all the same.
        if let Inner::Sentinel(s) = &self.0 {
            s.settle(&reply);
        }
        Ok((reply?, redis::from_redis_value(acked.extract_error()?)?))
    }

    /// The keys matching `pattern` on every node (one SCAN per master in a cluster).
    pub async fn scan(&self, pattern: &str) -> redis::RedisResult<Vec<String>> {
        let nodes = match &self.0 {
            Inner::Cluster(lazy) => {
                let mut conn = lazy.get().await?;
                let shards: Value = conn
                    .route_command(
                        redis::cmd("CLUSTER").arg("SLOTS").to_owned(),
                        redis::cluster_routing::RoutingInfo::SingleNode(
                            redis::cluster_routing::SingleNodeRoutingInfo::Random,
                        ),
                    )
                    .await?;
                masters(&shards)
            }
            _ => vec![None],
        };
        let mut keys = Vec::new();
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(500);
                let reply: (u64, Vec<String>) = match (&self.0, &node) {
                    (Inner::Cluster(lazy), Some((host, port))) => {
                        let mut conn = lazy.get().await?;
                        let routing = redis::cluster_routing::RoutingInfo::SingleNode(
                            redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                                host: host.clone(),
                                port: *port,
                            },
                        );
                        redis::from_redis_value(conn.route_command(cmd, routing).await?)?
                    }
                    _ => cmd.query_async(&mut self.clone()).await?,
                };
                keys.extend(reply.1);
                cursor = reply.0;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(keys)
    }
}

/// The masters' (host, port) from a `CLUSTER SLOTS` reply.
fn masters(slots: &Value) -> Vec<Option<(String, u16)>> {
    let mut out = Vec::new();
    if let Value::Array(ranges) = slots {
        for range in ranges {
            if let Value::Array(parts) = range
                && let Some(Value::Array(master)) = parts.get(2)
                && let (Some(host), Some(Value::Int(port))) = (master.first(), master.get(1))
            {
                let host = match host {
                    Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    Value::SimpleString(s) => s.clone(),
                    _ => continue,
                };
                let node = Some((host, *port as u16));
                if !out.contains(&node) {
                    out.push(node);
                }
            }
        }
    }
    out
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Inner::Single(c) => c.req_packed_command(cmd),
            Inner::Cluster(lazy) => {
                let lazy = lazy.clone();
                Box::pin(async move { lazy.get().await?.req_packed_command(cmd).await })
            }
            Inner::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let result = s.get().await?.req_packed_command(cmd).await;
                    s.settle(&result);
                    result
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Inner::Single(c) => c.req_packed_commands(cmd, offset, count),
            Inner::Cluster(lazy) => {
                let lazy = lazy.clone();
                Box::pin(async move { lazy.get().await?.req_packed_commands(cmd, offset, count).await })
            }
            Inner::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let result = s.get().await?.req_packed_commands(cmd, offset, count).await;
                    s.settle(&result);
                    result
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_their_requirements() {
        assert_eq!("cluster".parse::<RedisMode>(), Ok(RedisMode::Cluster));
        assert!("primary".parse::<RedisMode>().is_err());
        let two = Redis { url: "redis://a:1,redis://b:2".into(), ..Default::default() };
        assert!(two.connect().is_err(), "several URLs need a mode that takes several");
        let sentinel = Redis { url: "redis://s:26379".into(), mode: RedisMode::Sentinel, ..Default::default() };
        assert!(matches!(sentinel.connect(), Err(Error::Invalid { what: "--redis-master-name", .. })));
        let r = Redis { url: "redis://x:1".into(), ca_file: Some("/nonexistent".into()), ..Default::default() };
        assert!(matches!(r.client(), Err(Error::Invalid { what: "--redis-ca-file", .. })));
        let r = Redis { url: "rediss://x:1".into(), ca_file: Some("/nonexistent/ca.pem".into()), ..Default::default() };
        assert!(matches!(r.client(), Err(Error::File { .. })));
    }

    #[test]
    fn masters_come_from_cluster_slots() {
        let node = |port| Value::Array(vec![Value::BulkString(b"127.0.0.1".to_vec()), Value::Int(port)]);
        let range = |a, b, port| Value::Array(vec![Value::Int(a), Value::Int(b), node(port), node(port + 100)]);
        let slots = Value::Array(vec![range(0, 5000, 7000), range(5001, 10000, 7001), range(10001, 16383, 7000)]);
        assert_eq!(masters(&slots), [Some(("127.0.0.1".into(), 7000)), Some(("127.0.0.1".into(), 7001))]);
    }
}
