//! Real servers for tests: nats-server with JetStream, redis-server, PocketBase and relay replicas.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::{eventually, free_port};

/// A child process, killed (SIGKILL) on drop.
pub(crate) struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    pub(crate) fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Self {
        // Appended to: a server restarted by a test keeps one log.
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e} (run scripts/install-deps.sh)"));
        Self { name: name.to_owned(), child }
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or_else(|| panic!("{} has exited", self.name))
    }

    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, ...).
    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{sig} {}", self.name);
    }

    /// Sends SIGTERM and waits for the exit.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within 20s of SIGTERM", self.name))
            .expect("wait")
    }
}

async fn wait_for_port(port: u16, what: &str) {
    eventually(Duration::from_secs(15), &format!("{what} listening on {port}"), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
}

/// A server on a fixed port and data folder that a test can stop and start again, as an outage.
pub struct Server {
    pub port: u16,
    name: &'static str,
    dir: PathBuf,
    proc: Option<Proc>,
    /// The command line, given the port and the data folder.
    command: fn(u16, &Path) -> Command,
}

impl Server {
    async fn start(name: &'static str, dir: &Path, command: fn(u16, &Path) -> Command) -> Self {
        let mut s = Self { port: free_port(), name, dir: dir.join(name), proc: None, command };
        s.restart().await;
        s
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, |p| p.pid())
    }

    /// SIGKILL: the server is gone, as in a crash.
    pub async fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill().await;
        }
    }

    /// SIGSTOP: the server hangs (connections open, nothing answered), as a stalled machine does.
    pub fn pause(&self) {
        if let Some(p) = &self.proc {
            p.signal("STOP");
        }
    }

    /// SIGCONT after [`Server::pause`].
    pub fn resume(&self) {
        if let Some(p) = &self.proc {
            p.signal("CONT");
        }
    }

    /// Starts (again) on the same port and data folder.
    pub async fn restart(&mut self) {
        self.stop().await;
        std::fs::create_dir_all(&self.dir).expect("server data folder");
        let log = self.dir.join(format!("../{}.log", self.name));
        self.proc = Some(Proc::spawn(self.name, &mut (self.command)(self.port, &self.dir), &log));
        wait_for_port(self.port, self.name).await;
    }
}

/// nats-server with JetStream.
pub struct Nats(pub Server);

impl Nats {
    pub async fn start(dir: &Path) -> Self {
        Self(
            Server::start("nats-server", dir, |port, dir| {
                let mut cmd = Command::new("nats-server");
                cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]).arg(dir);
                cmd
            })
            .await,
        )
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.0.port)
    }
}

impl std::ops::Deref for Nats {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

impl std::ops::DerefMut for Nats {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.0
    }
}

/// redis-server, with an append-only file so a restart keeps data (as a production Redis would).
pub struct Redis(pub Server);

impl Redis {
    pub async fn start(dir: &Path) -> Self {
        Self(
            Server::start("redis-server", dir, |port, dir| {
                let mut cmd = Command::new("redis-server");
                cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "yes"])
                    .args(["--appendfsync", "always", "--dir"])
                    .arg(dir);
                cmd
            })
            .await,
        )
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.0.port)
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }
}

impl std::ops::Deref for Redis {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

impl std::ops::DerefMut for Redis {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.0
    }
}

/// A PocketBase user with a fresh token.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: String,
    pub email: String,
    pub password: String,
    pub token: String,
}

/// PocketBase with a superuser; creates users on demand.
pub struct PocketBase {
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
    admin_token: String,
    http: reqwest::Client,
}

const ADMIN_EMAIL: &str = "admin@relay.test";
const ADMIN_PASSWORD: &str = "admin-password-123";

impl PocketBase {
    pub async fn start(dir: &Path) -> Self {
        let dir = dir.join("pocketbase");
        let status = Command::new("pocketbase")
            .args(["superuser", "upsert", ADMIN_EMAIL, ADMIN_PASSWORD, "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .await
            .expect("pocketbase superuser upsert (run scripts/install-deps.sh)");
        assert!(status.success(), "pocketbase superuser upsert failed");
        let mut pb =
            Self { port: free_port(), dir, proc: None, admin_token: String::new(), http: reqwest::Client::new() };
        pb.restart().await;
        let reply: serde_json::Value = pb
            .post(
                "/api/collections/_superusers/auth-with-password",
                None,
                serde_json::json!({"identity": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
            )
            .await;
        pb.admin_token = reply["token"].as_str().expect("admin token").to_owned();
        pb
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill().await;
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        let mut cmd = Command::new("pocketbase");
        cmd.args(["serve", "--http", &format!("127.0.0.1:{}", self.port), "--dir"]).arg(&self.dir);
        self.proc = Some(Proc::spawn("pocketbase", &mut cmd, &self.dir.join("../pocketbase.log")));
        let url = format!("{}/api/health", self.url());
        let http = self.http.clone();
        eventually(Duration::from_secs(15), "pocketbase health", || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
    }

    async fn post(&self, path: &str, token: Option<&str>, body: serde_json::Value) -> serde_json::Value {
        let mut req = self.http.post(format!("{}{path}", self.url())).json(&body);
        if let Some(t) = token {
            req = req.header("Authorization", t);
        }
        let reply = req.send().await.expect("pocketbase call");
        let status = reply.status();
        let body: serde_json::Value = reply.json().await.expect("pocketbase json");
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    /// Creates a user and logs it in.
    pub async fn create_user(&self, name: &str) -> TestUser {
        let email = format!("{name}-{:06x}@relay.test", rand::random::<u32>() & 0xffffff);
        let password = format!("{name}-password");
        let body = serde_json::json!({"email": email, "password": password, "passwordConfirm": password, "name": name});
        let record = self.post("/api/collections/users/records", Some(&self.admin_token), body).await;
        let id = record["id"].as_str().expect("user id").to_owned();
        let token = self.login(&email, &password).await;
        TestUser { id, email, password, token }
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let reply = self
            .post(
                "/api/collections/users/auth-with-password",
                None,
                serde_json::json!({"identity": email, "password": password}),
            )
            .await;
        reply["token"].as_str().expect("token").to_owned()
    }

    /// Deletes the user's record: PocketBase then refuses its tokens.
    pub async fn delete_user(&self, user: &TestUser) {
        let reply = self
            .http
            .delete(format!("{}/api/collections/users/records/{}", self.url(), user.id))
            .header("Authorization", &self.admin_token)
            .send()
            .await
            .expect("pocketbase delete");
        assert!(reply.status().is_success(), "deleting a user: {}", reply.status());
    }

    /// How long tokens of the users collection live from now on (PocketBase's default: 7 days).
    pub async fn set_token_duration(&self, secs: u64) {
        let reply = self
            .http
            .patch(format!("{}/api/collections/users", self.url()))
            .header("Authorization", &self.admin_token)
            .json(&serde_json::json!({"authToken": {"duration": secs}}))
            .send()
            .await
            .expect("pocketbase patch collection");
        assert!(reply.status().is_success(), "setting the token duration: {}", reply.status());
    }

    /// Changes the user's password: PocketBase then refuses every token issued before.
    pub async fn revoke_tokens(&self, user: &TestUser) {
        let password = format!("{}-rotated", user.password);
        let body = serde_json::json!({"password": password, "passwordConfirm": password});
        let reply = self
            .http
            .patch(format!("{}/api/collections/users/records/{}", self.url(), user.id))
            .header("Authorization", &self.admin_token)
            .json(&body)
            .send()
            .await
            .expect("pocketbase patch");
        assert!(reply.status().is_success(), "revoking tokens: {}", reply.status());
    }
}

/// One relay process, restartable on the same ports.
pub struct RelayProc {
    pub grpc_port: u16,
    pub admin_port: u16,
    proc: Proc,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl RelayProc {
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGKILL: the replica dies mid-whatever.
    pub async fn kill(&mut self) {
        self.proc.kill().await;
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.proc.terminate().await
    }

    /// How the process ended, if it did.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.child.try_wait().ok().flatten()
    }

    fn spawn(env: &[(String, String)], log: &Path) -> Proc {
        let mut cmd = Command::new(relay_binary());
        cmd.env_clear();
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn("relay", &mut cmd, log)
    }

    /// Kills the process if it runs and starts it again on the same ports; returns without waiting
    /// for readiness (see [`RelayProc::ready`]).
    pub async fn restart(&mut self) {
        self.proc.kill().await;
        self.proc = Self::spawn(&self.env, &self.log);
    }

    /// SIGSTOP / SIGCONT: a replica that stalls and comes back.
    pub fn pause(&self) {
        self.proc.signal("STOP");
    }

    pub fn resume(&self) {
        self.proc.signal("CONT");
    }

    pub async fn ready(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        reqwest::get(url).await.is_ok_and(|r| r.status().is_success())
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin_port)).await.unwrap().text().await.unwrap()
    }
}

/// What a test stack looks like.
#[derive(Clone)]
pub struct StackOptions {
    pub relays: usize,
    /// Extra environment for every relay (`RELAY_*`).
    pub env: Vec<(String, String)>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self { relays: 2, env: Vec::new() }
    }
}

impl StackOptions {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
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
        let mut dir = tempfile::Builder::new().prefix("relay-test-").tempdir().expect("temp dir");
        // RELAY_TEST_KEEP=1 keeps every server's data and logs for a look after the test.
        if std::env::var_os("RELAY_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let (nats, redis, pocketbase) =
            tokio::join!(Nats::start(dir.path()), Redis::start(dir.path()), PocketBase::start(dir.path()));
        let mut stack = Self { nats, redis, pocketbase, relays: Vec::new(), options, dir };
        for _ in 0..stack.options.relays {
            let r = stack.spawn_relay().await;
            stack.relays.push(r);
        }
        stack
    }

    /// Starts one more relay replica and waits until it is ready.
    pub async fn spawn_relay(&self) -> RelayProc {
        let (grpc_port, admin_port) = (free_port(), free_port());
        let log = self.dir.path().join(format!("relay-{grpc_port}.log"));
        let mut env: Vec<(String, String)> = [
            ("RELAY_LISTEN", format!("127.0.0.1:{grpc_port}")),
            ("RELAY_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
            ("RELAY_NATS_URL", self.nats.url()),
            ("RELAY_REDIS_URL", self.redis.url()),
            ("RELAY_POCKETBASE_URL", self.pocketbase.url()),
            ("RELAY_UNDECLARED_CHANNELS", "allow".to_owned()),
            ("RUST_LOG", "info,relay=debug".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(self.options.env.iter().cloned());
        let proc = RelayProc::spawn(&env, &log);
        let mut relay = RelayProc { grpc_port, admin_port, proc, env, log };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !relay.ready().await {
            if let Some(status) = relay.exited() {
                let log = std::fs::read_to_string(&relay.log).unwrap_or_default();
                panic!("the relay exited ({status}) before it was ready:\n{log}");
            }
            assert!(tokio::time::Instant::now() < deadline, "the relay was not ready within 20s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        relay
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
        let nats = async_nats::connect(self.nats.url()).await.unwrap();
        nats.publish(relay_channel::names::SETTINGS_CHANGED_SUBJECT, name.to_owned().into()).await.unwrap();
        nats.flush().await.unwrap();
    }

    /// Declares a channel the way the operator does, with the operator's own code: a JetStream
    /// stream (and a queue consumer for `delivery: queue`) and the settings relays read. `spec` is a
    /// RelayChannel spec as JSON.
    pub async fn declare_spec(&self, name: &str, spec: serde_json::Value) -> operator::backends::Outcome {
        let spec: operator::crd::RelayChannelSpec = serde_json::from_value(spec).expect("a RelayChannel spec");
        let desired = operator::plan::desired(name, &spec).expect("a valid spec");
        let nats = relay_connect::Nats { urls: self.nats.url(), ..Default::default() };
        let redis = relay_connect::Redis { url: self.redis.url(), ca_file: None };
        let backends = operator::backends::Backends::connect(&nats, &redis).await.unwrap();
        backends.apply(name, &format!("test/{name}"), &desired).await.expect("operator apply")
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

/// `target/<profile>/<name>`: next to the running binary, or to its `deps/` or `examples/` folder.
pub(crate) fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("binary path");
    let mut dir = exe.parent().expect("binary folder");
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir = dir.parent().expect("target/<profile>");
    }
    let bin = dir.join(name);
    assert!(bin.exists(), "{} is missing: build it with `cargo build --workspace --bins`", bin.display());
    // `cargo test -p relay-tests` does not rebuild the relay or the operator: refuse to test a stale one.
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name).join("src");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).expect("binary mtime");
    if let Some(newer) = newest(&sources).filter(|(t, _)| *t > built) {
        panic!("{} is older than {}: run `cargo build --workspace --bins`", bin.display(), newer.1.display());
    }
    bin
}

/// The most recently modified file under `dir` (recursively), if `dir` exists.
fn newest(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let candidate = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok().map(|t| (t, path))
        };
        if let Some(c) = candidate
            && best.as_ref().is_none_or(|b| c.0 > b.0)
        {
            best = Some(c);
        }
    }
    best
}

pub fn relay_binary() -> PathBuf {
    workspace_binary("relay")
}

/// An operator process.
pub struct OperatorProc {
    pub admin_port: u16,
    proc: Proc,
}

impl OperatorProc {
    /// Starts `operator` with NATS and Redis of `stack`, extra `args` and `env`.
    pub async fn start(stack: &Stack, args: &[&str], env: &[(&str, &str)]) -> Self {
        let admin_port = free_port();
        let log = stack.dir().join(format!("operator-{admin_port}.log"));
        let mut cmd = Command::new(workspace_binary("operator"));
        cmd.env_clear()
            .env("OPERATOR_NATS_URL", stack.nats.url())
            .env("OPERATOR_REDIS_URL", stack.redis.url())
            .env("OPERATOR_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("RUST_LOG", "info,operator=debug")
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let op = Self { admin_port, proc: Proc::spawn("operator", &mut cmd, &log) };
        wait_for_port(admin_port, "operator admin").await;
        op
    }

    pub async fn kill(&mut self) {
        self.proc.kill().await;
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin_port)).await.unwrap().text().await.unwrap()
    }
}
