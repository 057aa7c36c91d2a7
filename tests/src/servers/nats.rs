//! nats-server with JetStream: one server (optionally with TLS and a user), or a cluster of three
//! with JetStream clustered (routes, server names, a store each).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::process::Command;

use super::{CommandLine, Pki, Server};
use crate::free_port;

/// The user and password of a TLS NATS.
pub const NATS_USER: (&str, &str) = ("relay", "relay-secret");

/// NATS: one server or a cluster.
pub struct Nats {
    nodes: Vec<Server>,
    tls: bool,
}

impl Nats {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, false).await
    }

    /// With `tls`: TLS with the stack's PKI (`<dir>/tls`) and [`NATS_USER`].
    pub async fn start_with(dir: &Path, tls: bool) -> Self {
        let command: CommandLine = if tls { Arc::new(tls_command) } else { Arc::new(plain_command) };
        Self { nodes: vec![Server::start("nats-server", dir, command).await], tls }
    }

    /// One server (with `tls`, see [`Nats::start_with`]), or a cluster of `n` without TLS.
    pub async fn start_nodes(dir: &Path, n: usize, tls: bool) -> Self {
        if n > 1 { Self::start_cluster(dir, n).await } else { Self::start_with(dir, tls).await }
    }

    /// A cluster of `n` servers with clustered JetStream.
    pub async fn start_cluster(dir: &Path, n: usize) -> Self {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let all = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let starts = routes.iter().enumerate().map(|(i, route)| {
            let (all, route) = (all.clone(), *route);
            let command: CommandLine = Arc::new(move |port, dir| {
                let mut cmd = plain_command(port, dir);
                cmd.args(["--server_name", &format!("n{i}"), "--cluster_name", "relay"]).args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{route}"),
                    "--routes",
                    &all,
                ]);
                cmd
            });
            let name = format!("nats-{i}");
            async move { Server::start(&name, dir, command).await }
        });
        Self { nodes: futures::future::join_all(starts).await, tls: false }
    }

    /// The URL clients use: every node's, with the user and password when TLS is on.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                if self.tls {
                    format!("tls://{}:{}@127.0.0.1:{}", NATS_USER.0, NATS_USER.1, n.port)
                } else {
                    format!("nats://127.0.0.1:{}", n.port)
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The CA to trust, when TLS is on.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| Pki::beside(self.nodes[0].dir()).ca)
    }

    /// A client of this server or cluster (trusting its CA when TLS is on).
    pub async fn client(&self) -> async_nats::Client {
        let settings = relay_connect::Nats { urls: self.url(), ca_file: self.ca_file(), creds_file: None };
        let options = settings.options("test").await.unwrap();
        settings.connect(options).await.unwrap()
    }

    /// One node of the cluster (the only one otherwise).
    pub fn node(&mut self, i: usize) -> &mut Server {
        &mut self.nodes[i]
    }

    pub fn pid(&self) -> u32 {
        self.nodes[0].pid()
    }

    /// Every running node's process (for measuring CPU and memory).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(Server::pid).filter(|p| *p != 0).collect()
    }

    /// SIGKILL to every node: NATS is gone.
    pub async fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop().await;
        }
    }

    /// Starts every node again on its port and data.
    pub async fn restart(&mut self) {
        futures::future::join_all(self.nodes.iter_mut().map(|n| n.restart())).await;
    }

    pub fn pause(&self) {
        self.nodes.iter().for_each(Server::pause);
    }

    pub fn resume(&self) {
        self.nodes.iter().for_each(Server::resume);
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
