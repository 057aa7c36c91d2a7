//! Relay and operator processes built from this workspace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::{Proc, wait_for_port};
use crate::{Stack, free_port};

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

    /// The relay's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What `/readyz` says.
    pub async fn readiness(&self) -> String {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        match reqwest::get(url).await {
            Ok(r) => format!("{} {}", r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => format!("unreachable: {e}"),
        }
    }

    /// How the process ended, if it did.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.child.try_wait().ok().flatten()
    }

    /// Starts a relay with exactly this environment, without waiting.
    pub(crate) fn launch(env: Vec<(String, String)>, log: PathBuf) -> Self {
        let port = |key: &str| -> u16 {
            env.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.rsplit(':').next()?.parse().ok()).expect(key)
        };
        let (grpc_port, admin_port) = (port("RELAY_LISTEN"), port("RELAY_ADMIN_LISTEN"));
        let proc = Self::spawn(&env, &log);
        Self { grpc_port, admin_port, proc, env, log }
    }

    /// Starts a relay and waits until it is ready; what happened, with its log, if it exits first.
    pub(crate) async fn try_start(env: Vec<(String, String)>, log: PathBuf) -> Result<Self, String> {
        let mut relay = Self::launch(env, log);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !relay.ready().await {
            if let Some(status) = relay.exited() {
                let log = std::fs::read_to_string(&relay.log).unwrap_or_default();
                return Err(format!("the relay exited ({status}) before it was ready:\n{log}"));
            }
            assert!(tokio::time::Instant::now() < deadline, "the relay was not ready within 20s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(relay)
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
            .env("OPERATOR_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("RUST_LOG", "info,operator=debug")
            .envs(stack.redis.env("OPERATOR"))
            .args(args);
        if let Some(ca) = stack.nats.ca_file() {
            cmd.env("OPERATOR_NATS_CA_FILE", ca);
        }
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
