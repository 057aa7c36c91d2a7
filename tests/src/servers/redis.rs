//! redis-server with an append-only file; optionally TLS-only with an ACL user.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::{Pki, Server};

/// The ACL user and password of a TLS Redis (the default user is switched off).
pub const REDIS_USER: (&str, &str) = ("app", "app-secret");

/// redis-server, with an append-only file so a restart keeps data (as a production Redis would).
pub struct Redis {
    server: Server,
    tls: bool,
}

impl Redis {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, false).await
    }

    /// With `tls`: only a TLS port, the stack's PKI (`<dir>/tls`), and [`REDIS_USER`].
    pub async fn start_with(dir: &Path, tls: bool) -> Self {
        let command = if tls { tls_command } else { plain_command };
        Self { server: Server::start("redis-server", dir, command).await, tls }
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://{}:{}@127.0.0.1:{}", REDIS_USER.0, REDIS_USER.1, self.server.port)
        } else {
            format!("redis://127.0.0.1:{}", self.server.port)
        }
    }

    /// The CA to trust, when TLS is on.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| Pki::beside(&self.server.dir).ca)
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let settings = relay_connect::Redis { url: self.url(), ca_file: self.ca_file() };
        settings.client().unwrap().get_multiplexed_async_connection().await.unwrap()
    }
}

fn plain_command(port: u16, dir: &Path) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "yes"])
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

impl std::ops::Deref for Redis {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl std::ops::DerefMut for Redis {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}
