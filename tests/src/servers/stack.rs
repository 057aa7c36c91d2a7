//! NATS, Redis, PocketBase and relay replicas together.

use std::path::Path;

use tempfile::TempDir;

use super::{Nats, Pki, PocketBase, Redis, RedisTopology, RelayProc};
use crate::free_port;

/// What a test stack looks like.
#[derive(Clone)]
pub struct StackOptions {
    pub relays: usize,
    /// Extra environment for every relay (`RELAY_*`).
    pub env: Vec<(String, String)>,
    /// NATS and Redis with TLS (a test CA) and credentials; relays trust the CA.
    pub tls: bool,
    /// NATS servers: 1, or a cluster (3) with clustered JetStream.
    pub nats_nodes: usize,
    pub redis: RedisTopology,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self { relays: 2, env: Vec::new(), tls: false, nats_nodes: 1, redis: RedisTopology::Single }
    }
}

impl StackOptions {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// The gRPC port in a relay's environment.
fn env_port(env: &[(String, String)]) -> String {
    env.iter().find(|(k, _)| k == "RELAY_LISTEN").and_then(|(_, v)| v.rsplit(':').next()).unwrap_or("0").to_owned()
}

/// NATS, Redis, PocketBase and relay replicas, all on loopback.
pub struct Stack {
    pub nats: Nats,
    pub redis: Redis,
    pub pocketbase: PocketBase,
    pub relays: Vec<RelayProc>,
    options: StackOptions,
    dir: TempDir,
}

impl Stack {
    pub async fn start() -> Self {
        Self::with(StackOptions::default()).await
    }

    pub async fn with(options: StackOptions) -> Self {
        // The tests' own TLS clients need a crypto provider, as the relay's main installs one.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut dir = tempfile::Builder::new().prefix("relay-test-").tempdir().expect("temp dir");
        // RELAY_TEST_KEEP=1 keeps every server's data and logs for a look after the test.
        if std::env::var_os("RELAY_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        if options.tls {
            Pki::generate(&dir.path().join("tls"));
        }
        let (nats, redis, pocketbase) = tokio::join!(
            Nats::start_nodes(dir.path(), options.nats_nodes, options.tls),
            Redis::start_topology(dir.path(), options.redis, options.tls),
            PocketBase::start(dir.path())
        );
        let mut stack = Self { nats, redis, pocketbase, relays: Vec::new(), options, dir };
        for _ in 0..stack.options.relays {
            let r = stack.spawn_relay().await;
            stack.relays.push(r);
        }
        stack
    }

    /// Starts one more relay replica and waits until it is ready.
    pub async fn spawn_relay(&self) -> RelayProc {
        let mut attempts = 0;
        loop {
            let (grpc_port, admin_port) = (free_port(), free_port());
            let log = self.dir.path().join(format!("relay-{grpc_port}.log"));
            match RelayProc::try_start(self.relay_env(grpc_port, admin_port), log).await {
                Ok(relay) => return relay,
                // A port taken by another process between its pick and the relay's bind: new ports.
                Err(why) if why.contains("Address already in use") && attempts < 2 => attempts += 1,
                Err(why) => panic!("{why}"),
            }
        }
    }

    /// What every relay of this stack gets.
    fn relay_env(&self, grpc_port: u16, admin_port: u16) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("RELAY_LISTEN", format!("127.0.0.1:{grpc_port}")),
            ("RELAY_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
            ("RELAY_NATS_URL", self.nats.url()),
            ("RELAY_POCKETBASE_URL", self.pocketbase.url()),
            ("RELAY_UNDECLARED_CHANNELS", "allow".to_owned()),
            ("RUST_LOG", "info,relay=debug".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(ca) = self.nats.ca_file() {
            env.push(("RELAY_NATS_CA_FILE".to_owned(), ca.to_str().unwrap().to_owned()));
        }
        env.extend(self.redis.env("RELAY"));
        env.extend(self.options.env.iter().cloned());
        env
    }

    /// Starts one more relay with extra environment, without waiting for it to be ready (for a
    /// relay that must not become ready).
    pub fn launch_relay(&self, extra: &[(&str, &str)]) -> RelayProc {
        let mut env = self.relay_env(free_port(), free_port());
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let log = self.dir.path().join(format!("relay-{}.log", env_port(&env)));
        RelayProc::launch(env, log)
    }

    /// A client of replica `i`.
    pub async fn client(&self, i: usize) -> crate::Client {
        crate::Client::connect(&self.relays[i].addr()).await
    }

    /// Writes channel settings as the operator would, and tells the relays.
    pub async fn declare(&self, name: &str, settings: &relay_channel::ChannelSettings) {
        let mut conn = self.redis.connection().await;
        let _: () = redis::AsyncCommands::set(&mut conn, relay_channel::names::settings_key(name), settings.to_json())
            .await
            .unwrap();
        let nats = self.nats.client().await;
        nats.publish(relay_channel::names::SETTINGS_CHANGED_SUBJECT, name.to_owned().into()).await.unwrap();
        nats.flush().await.unwrap();
    }

    /// Declares a channel the way the operator does, with the operator's own code: a JetStream
    /// stream (and a queue consumer for `delivery: queue`) and the settings relays read. `spec` is a
    /// RelayChannel spec as JSON.
    pub async fn declare_spec(&self, name: &str, spec: serde_json::Value) -> operator::backends::Outcome {
        declare_spec(&self.nats, &self.redis, name, spec).await
    }

    /// Keeps the folder of data and logs after the stack is gone (for a failed run).
    pub fn keep_dir(&mut self) {
        self.dir.disable_cleanup(true);
    }

    /// The folder holding every server's data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Declares a channel the way the operator does, with the operator's own code (see
/// [`Stack::declare_spec`]), on any NATS and Redis.
pub async fn declare_spec(
    nats: &crate::Nats,
    redis: &crate::Redis,
    name: &str,
    spec: serde_json::Value,
) -> operator::backends::Outcome {
    let spec: operator::crd::RelayChannelSpec = serde_json::from_value(spec).expect("a RelayChannel spec");
    let owner = format!("test/{name}");
    let me = [operator::plan::Declared { name, owner: owner.clone(), spec: &spec }];
    let desired = operator::plan::desired(name, &spec, &me).expect("a valid spec");
    let nats = relay_connect::Nats { urls: nats.url(), ca_file: nats.ca_file(), creds_file: None };
    let redis = redis.settings();
    let backends = operator::backends::Backends::connect(&nats, &redis).await.unwrap();
    // It connects in the background (as the operator does); TLS takes a moment.
    crate::eventually(std::time::Duration::from_secs(10), "the operator's backends connected", || backends.reachable())
        .await;
    // Retried as the operator retries: a cluster may be electing a leader.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match backends.apply(name, &owner, &desired).await {
            Ok(outcome) => return outcome,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("operator apply: {e:?}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(e) => panic!("operator apply: {e:?}"),
        }
    }
}
