//! Real servers for tests: nats-server with JetStream, redis-server, PocketBase, relay and operator
//! processes, and the stack that puts them together. One file per server.

mod nats;
mod pocketbase;
mod redis;
mod relay;
mod stack;
mod tls;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{eventually, free_port};

pub use nats::Nats;
pub use pocketbase::{PocketBase, TestUser};
pub use redis::Redis;
pub use redis::RedisTopology;
pub use relay::{OperatorProc, RelayProc, relay_binary};
pub use stack::{Stack, StackOptions, declare_spec};
pub use tls::{Pki, TlsProxy};

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

/// The command line of a server, given its port and data folder.
pub(crate) type CommandLine = std::sync::Arc<dyn Fn(u16, &Path) -> Command + Send + Sync>;

/// A server on a fixed port and data folder that a test can stop and start again, as an outage.
pub struct Server {
    pub port: u16,
    name: String,
    dir: PathBuf,
    proc: Option<Proc>,
    command: CommandLine,
}

impl Server {
    /// Starts `name` on a free port with its data in `<dir>/<name>`.
    pub(crate) async fn start(name: &str, dir: &Path, command: CommandLine) -> Self {
        Self::start_on(name, dir, free_port(), command).await
    }

    pub(crate) async fn start_on(name: &str, dir: &Path, port: u16, command: CommandLine) -> Self {
        let mut s = Self { port, name: name.to_owned(), dir: dir.join(name), proc: None, command };
        s.restart().await;
        s
    }

    /// The server's data folder.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        self.proc = Some(Proc::spawn(&self.name, &mut (self.command)(self.port, &self.dir), &log));
        wait_for_port(self.port, &self.name).await;
    }
}
