//! nats-server with JetStream; optionally with TLS and a user and password.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::{Pki, Server};

/// The user and password of a TLS NATS.
pub const NATS_USER: (&str, &str) = ("relay", "relay-secret");

/// nats-server with JetStream.
pub struct Nats {
    server: Server,
    tls: bool,
}

impl Nats {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, false).await
    }

    /// With `tls`: TLS with the stack's PKI (`<dir>/tls`) and [`NATS_USER`].
    pub async fn start_with(dir: &Path, tls: bool) -> Self {
        let command = if tls { tls_command } else { plain_command };
        Self { server: Server::start("nats-server", dir, command).await, tls }
    }

    /// The URL clients use (with the user and password when TLS is on).
    pub fn url(&self) -> String {
        if self.tls {
            format!("tls://{}:{}@127.0.0.1:{}", NATS_USER.0, NATS_USER.1, self.server.port)
        } else {
            format!("nats://127.0.0.1:{}", self.server.port)
        }
    }

    /// The CA to trust, when TLS is on.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| Pki::beside(&self.server.dir).ca)
    }

    /// A client of this server (trusting its CA when TLS is on).
    pub async fn client(&self) -> async_nats::Client {
        let settings = relay_connect::Nats { urls: self.url(), ca_file: self.ca_file(), creds_file: None };
        let options = settings.options("test").await.unwrap();
        settings.connect(options).await.unwrap()
    }
}

fn plain_command(port: u16, dir: &Path) -> Command {
    let mut cmd = Command::new("nats-server");
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]).arg(dir);
    cmd
}

fn tls_command(port: u16, dir: &Path) -> Command {
    let pki = Pki::beside(dir);
    let mut cmd = plain_command(port, dir);
    cmd.arg("--tls").arg("--tlscert").arg(pki.cert).arg("--tlskey").arg(pki.key);
    cmd.args(["--user", NATS_USER.0, "--pass", NATS_USER.1]);
    cmd
}

impl std::ops::Deref for Nats {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl std::ops::DerefMut for Nats {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}
