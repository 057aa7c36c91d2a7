//! redis-server with an append-only file (fsync always): one server (optionally TLS-only with an
//! ACL user), a Redis Cluster of three masters and three replicas, or a master with two replicas
//! and three sentinels.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use relay_connect::redis::Conn;
use tokio::process::Command;

use super::{CommandLine, Pki, Server};
use crate::{eventually, free_port};

/// The ACL user and password of a TLS Redis (the default user is switched off).
pub const REDIS_USER: (&str, &str) = ("app", "app-secret");
/// The name sentinels monitor the master under.
pub const MASTER_NAME: &str = "relaymaster";

/// How the test Redis is deployed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisTopology {
    #[default]
    Single,
    /// Three masters, three replicas.
    Cluster,
    /// A master, two replicas, three sentinels.
    Sentinel,
}

impl RedisTopology {
    /// How many replicas each master has.
    pub fn replicas_per_master(self) -> u32 {
        match self {
            RedisTopology::Single => 0,
            RedisTopology::Cluster => 1,
            RedisTopology::Sentinel => 2,
        }
    }
}

/// Redis in one of its topologies.
pub struct Redis {
    nodes: Vec<Server>,
    sentinels: Vec<Server>,
    topology: RedisTopology,
    tls: bool,
}

impl Redis {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, false).await
    }

    /// With `tls`: only a TLS port, the stack's PKI (`<dir>/tls`), and [`REDIS_USER`].
    pub async fn start_with(dir: &Path, tls: bool) -> Self {
        let command: CommandLine = if tls { Arc::new(tls_command) } else { Arc::new(plain_command) };
        let node = Server::start("redis-server", dir, command).await;
        Self { nodes: vec![node], sentinels: Vec::new(), topology: RedisTopology::Single, tls }
    }

    pub async fn start_topology(dir: &Path, topology: RedisTopology, tls: bool) -> Self {
        match topology {
            RedisTopology::Single => Self::start_with(dir, tls).await,
            RedisTopology::Cluster => Self::start_cluster(dir).await,
            RedisTopology::Sentinel => Self::start_sentinel(dir).await,
        }
    }

    async fn start_cluster(dir: &Path) -> Self {
        let command: CommandLine = Arc::new(|port, dir| {
            // The cluster bus port is picked once per node and kept across restarts (the default,
            // port + 10000, could fall where outgoing connections take their ports).
            std::fs::create_dir_all(dir).unwrap();
            let file = dir.join("cluster-port");
            let bus = std::fs::read_to_string(&file).ok().and_then(|s| s.parse::<u16>().ok()).unwrap_or_else(|| {
                let p = free_port();
                std::fs::write(&file, p.to_string()).unwrap();
                p
            });
            let mut cmd = plain_command(port, dir);
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1500",
            ]);
            cmd.arg("--cluster-port").arg(bus.to_string());
            // A replica may always take over, however long ago it last heard from its master (the
            // tests kill masters right after a resync).
            cmd.args(["--cluster-replica-validity-factor", "0"]);
            cmd
        });
        let nodes = futures::future::join_all((0..6).map(|i| {
            let command = command.clone();
            async move { Server::start(&format!("redis-{i}"), dir, command).await }
        }))
        .await;
        let mut create = std::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create.args(["--cluster-replicas", "1", "--cluster-yes"]).output().expect("redis-cli");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let redis = Self { nodes, sentinels: Vec::new(), topology: RedisTopology::Cluster, tls: false };
        redis.wait_cluster_ok().await;
        redis.wait_replicas_synced().await;
        redis
    }

    /// Waits until every running node says the cluster is ok.
    pub async fn wait_cluster_ok(&self) {
        let ports: Vec<u16> = self.nodes.iter().filter(|n| n.pid() != 0).map(|n| n.port).collect();
        eventually(Duration::from_secs(30), "the Redis Cluster is ok", || {
            let ports = ports.clone();
            async move {
                ports.iter().all(|p| {
                    let out = std::process::Command::new("redis-cli")
                        .args(["-p", &p.to_string(), "cluster", "info"])
                        .output();
                    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                })
            }
        })
        .await;
    }

    async fn start_sentinel(dir: &Path) -> Self {
        let master = Server::start("redis-master", dir, Arc::new(plain_command)).await;
        let master_port = master.port;
        let replica: CommandLine = Arc::new(move |port, dir| {
            let mut cmd = plain_command(port, dir);
            cmd.args(["--replicaof", "127.0.0.1", &master_port.to_string()]);
            cmd
        });
        let mut nodes = vec![master];
        for i in 0..2 {
            nodes.push(Server::start(&format!("redis-replica-{i}"), dir, replica.clone()).await);
        }
        let sentinel: CommandLine = Arc::new(move |port, dir| {
            std::fs::create_dir_all(dir).unwrap();
            let conf = dir.join("sentinel.conf");
            if !conf.exists() {
                let text = format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\nsentinel failover-timeout {MASTER_NAME} 3000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir.display()
                );
                std::fs::write(&conf, text).unwrap();
            }
            let mut cmd = Command::new("redis-server");
            cmd.arg(conf).arg("--sentinel");
            cmd
        });
        let mut sentinels = Vec::new();
        for i in 0..3 {
            sentinels.push(Server::start_on(&format!("sentinel-{i}"), dir, free_port(), sentinel.clone()).await);
        }
        let redis = Self { nodes, sentinels, topology: RedisTopology::Sentinel, tls: false };
        redis.wait_replicas_synced().await;
        redis
    }

    /// Waits until every master that has replicas sees each of them in sync (`state=online`):
    /// until then a `WAIT` for one replica cannot succeed.
    pub async fn wait_replicas_synced(&self) {
        let ports = self.live_ports();
        eventually(Duration::from_secs(30), "Redis replicas in sync", || {
            let ports = ports.clone();
            async move {
                for port in ports {
                    let Ok(info) = cli(port, &["info", "replication"]).await else { return false };
                    if info.contains("role:master")
                        && info.lines().any(|l| l.starts_with("slave") && !l.contains("state=online"))
                    {
                        return false;
                    }
                    if info.contains("role:slave") && !info.contains("master_link_status:up") {
                        return false;
                    }
                }
                true
            }
        })
        .await;
    }

    pub fn topology(&self) -> RedisTopology {
        self.topology
    }

    /// What clients are given: the server, the cluster's nodes, or the sentinels.
    pub fn url(&self) -> String {
        let servers = if self.topology == RedisTopology::Sentinel { &self.sentinels } else { &self.nodes };
        servers
            .iter()
            .map(|n| {
                if self.tls {
                    format!("rediss://{}:{}@127.0.0.1:{}", REDIS_USER.0, REDIS_USER.1, n.port)
                } else {
                    format!("redis://127.0.0.1:{}", n.port)
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The environment a relay needs for this topology (prefix `RELAY` or `OPERATOR`).
    pub fn env(&self, prefix: &str) -> Vec<(String, String)> {
        let mut env = vec![(format!("{prefix}_REDIS_URL"), self.url())];
        match self.topology {
            RedisTopology::Single => {}
            RedisTopology::Cluster => env.push((format!("{prefix}_REDIS_MODE"), "cluster".into())),
            RedisTopology::Sentinel => {
                env.push((format!("{prefix}_REDIS_MODE"), "sentinel".into()));
                env.push((format!("{prefix}_REDIS_MASTER_NAME"), MASTER_NAME.into()));
            }
        }
        if let Some(ca) = self.ca_file() {
            env.push((format!("{prefix}_REDIS_CA_FILE"), ca.to_str().unwrap().to_owned()));
        }
        env
    }

    /// The CA to trust, when TLS is on.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| Pki::beside(self.nodes[0].dir()).ca)
    }

    /// How a client reaches this Redis.
    pub fn settings(&self) -> relay_connect::Redis {
        relay_connect::Redis {
            url: self.url(),
            ca_file: self.ca_file(),
            mode: match self.topology {
                RedisTopology::Single => relay_connect::RedisMode::Standalone,
                RedisTopology::Cluster => relay_connect::RedisMode::Cluster,
                RedisTopology::Sentinel => relay_connect::RedisMode::Sentinel,
            },
            master_name: (self.topology == RedisTopology::Sentinel).then(|| MASTER_NAME.to_owned()),
        }
    }

    /// A connection for the test itself.
    pub async fn connection(&self) -> Conn {
        self.settings().connect().unwrap()
    }

    /// The first node's port (the only node of a single Redis).
    pub fn port(&self) -> u16 {
        self.nodes[0].port
    }

    pub fn pid(&self) -> u32 {
        self.nodes[0].pid()
    }

    /// Every running node's and sentinel's process (for measuring CPU and memory).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().chain(&self.sentinels).map(Server::pid).filter(|p| *p != 0).collect()
    }

    /// A data node: a cluster node, or for sentinel the master (0) and replicas.
    pub fn node(&mut self, i: usize) -> &mut Server {
        &mut self.nodes[i]
    }

    pub fn nodes(&self) -> &[Server] {
        &self.nodes
    }

    /// SIGKILL to every data node: Redis is gone (sentinels stay).
    pub async fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop().await;
        }
    }

    /// Starts every data node again on its port and data.
    pub async fn restart(&mut self) {
        futures::future::join_all(self.nodes.iter_mut().map(|n| n.restart())).await;
        if self.topology == RedisTopology::Cluster {
            self.wait_cluster_ok().await;
        }
    }
}

/// One node as `CLUSTER NODES` lists it.
#[derive(Clone, Debug)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// Marked failed (`fail`) or unreachable (`fail?`) by the node asked.
    pub failing: bool,
    /// Slot ranges it serves (masters).
    pub slots: Vec<(u16, u16)>,
}

/// `redis-cli -p <port> <args>`, its output.
async fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || text.starts_with("ERR") || text.starts_with("(error)") {
        return Err(format!("redis-cli -p {port} {args:?}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(text)
}

/// Operations on the Redis Cluster and Sentinel topologies, for failure tests.
impl Redis {
    fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.pid() != 0).map(|n| n.port).collect()
    }

    /// The cluster as a live node sees it.
    pub async fn cluster_nodes(&self) -> Vec<ClusterNode> {
        for port in self.live_ports() {
            let Ok(text) = cli(port, &["cluster", "nodes"]).await else { continue };
            return text
                .lines()
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let port = f.get(1)?.split('@').next()?.rsplit(':').next()?.parse().ok()?;
                    let flags = f.get(2)?;
                    let slots = f
                        .iter()
                        .skip(8)
                        .filter(|s| !s.starts_with('['))
                        .filter_map(|s| match s.split_once('-') {
                            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                            None => s.parse().ok().map(|x| (x, x)),
                        })
                        .collect();
                    Some(ClusterNode {
                        id: f[0].to_owned(),
                        port,
                        master: flags.contains("master"),
                        failing: flags.contains("fail"),
                        slots,
                    })
                })
                .collect();
        }
        panic!("no live Redis Cluster node answers CLUSTER NODES")
    }

    /// The hash slot of a channel's keys.
    pub async fn slot_of(&self, channel: &str) -> u16 {
        let port = self.live_ports()[0];
        cli(port, &["cluster", "keyslot", &format!("{{{channel}}}")]).await.unwrap().parse().unwrap()
    }

    /// The master serving `slot` now (by its port).
    pub async fn master_of(&self, slot: u16) -> Option<ClusterNode> {
        self.cluster_nodes()
            .await
            .into_iter()
            .find(|n| n.master && !n.failing && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
    }

    fn index_of(&self, port: u16) -> usize {
        self.nodes.iter().position(|n| n.port == port).expect("a node of this Redis")
    }

    /// Kills the master of `channel`'s slot, waits until its replica serves the slot, keeps the
    /// old master down for `outage`, then starts it again (it comes back as a replica).
    pub async fn kill_master_of(&mut self, channel: &str, outage: Duration) {
        let slot = self.slot_of(channel).await;
        let Some(master) = self.master_of(slot).await else { return };
        let i = self.index_of(master.port);
        self.nodes[i].stop().await;
        eventually(Duration::from_secs(30), "a replica took over the slot", || async {
            self.master_of(slot).await.is_some_and(|m| m.port != master.port)
        })
        .await;
        tokio::time::sleep(outage).await;
        self.nodes[i].restart().await;
        self.wait_cluster_ok().await;
        self.wait_replicas_synced().await;
    }

    /// Moves `channel`'s slot, keys and all, to another master, the way `redis-cli --cluster
    /// reshard` does (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE): clients meet ASK and MOVED.
    pub async fn move_slot_of(&self, channel: &str) {
        let slot = self.slot_of(channel).await;
        let nodes = self.cluster_nodes().await;
        let Some(src) =
            nodes.iter().find(|n| n.master && !n.failing && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        else {
            return;
        };
        let Some(dst) = nodes.iter().find(|n| n.master && !n.failing && n.id != src.id && !n.slots.is_empty()) else {
            return;
        };
        let slot_s = slot.to_string();
        cli(dst.port, &["cluster", "setslot", &slot_s, "importing", &src.id]).await.unwrap();
        cli(src.port, &["cluster", "setslot", &slot_s, "migrating", &dst.id]).await.unwrap();
        loop {
            let keys = cli(src.port, &["cluster", "getkeysinslot", &slot_s, "100"]).await.unwrap();
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let dst_port = dst.port.to_string();
            let mut args = vec!["migrate", "127.0.0.1", &dst_port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            cli(src.port, &args).await.unwrap();
        }
        for n in nodes.iter().filter(|n| n.master && !n.failing) {
            cli(n.port, &["cluster", "setslot", &slot_s, "node", &dst.id]).await.unwrap();
        }
        eventually(Duration::from_secs(30), "every node sees the slot moved", || async {
            self.master_of(slot).await.is_some_and(|m| m.id == dst.id)
        })
        .await;
    }

    /// The master the sentinels name now (its port).
    pub async fn sentinel_master(&self) -> u16 {
        for s in self.sentinels.iter().filter(|s| s.pid() != 0) {
            if let Ok(text) = cli(s.port, &["sentinel", "get-master-addr-by-name", MASTER_NAME]).await
                && let Some(port) = text.lines().nth(1).and_then(|p| p.trim().parse().ok())
            {
                return port;
            }
        }
        panic!("no sentinel names the master")
    }

    /// Asks the sentinels for a failover (the master steps down for a replica) and waits for it.
    pub async fn sentinel_failover(&self) {
        let before = self.sentinel_master().await;
        // Refused while a replica is still syncing after an earlier fault: try again until one takes.
        eventually(Duration::from_secs(30), "the sentinels fail over", || async {
            let _ = cli(self.sentinels[0].port, &["sentinel", "failover", MASTER_NAME]).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.sentinel_master().await != before
        })
        .await;
    }

    /// Kills the master the sentinels name, waits until they promote a replica, keeps it down for
    /// `outage`, then starts it again (the sentinels make it a replica).
    pub async fn kill_sentinel_master(&mut self, outage: Duration) {
        let before = self.sentinel_master().await;
        let i = self.index_of(before);
        self.nodes[i].stop().await;
        eventually(Duration::from_secs(30), "the sentinels promote a replica", || async {
            self.sentinel_master().await != before
        })
        .await;
        tokio::time::sleep(outage).await;
        self.nodes[i].restart().await;
        self.wait_replicas_synced().await;
    }
}

fn plain_command(port: u16, dir: &Path) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "yes"])
        // A replica's first sync starts at once (the default waits 5 s for more replicas to share it).
        .args(["--repl-diskless-sync-delay", "0"])
        .args(["--appendfsync", "always", "--dir"])
        .arg(dir);
    cmd
}

fn tls_command(port: u16, dir: &Path) -> Command {
    let pki = Pki::beside(dir);
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port.to_string(), "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "always", "--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(pki.cert)
        .arg("--tls-key-file")
        .arg(pki.key)
        .arg("--tls-ca-cert-file")
        .arg(pki.ca)
        .args(["--user", "default", "off"])
        .args(["--user", REDIS_USER.0, "on", &format!(">{}", REDIS_USER.1), "~*", "&*", "+@all"])
        .arg("--dir")
        .arg(dir);
    cmd
}
