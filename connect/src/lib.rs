//! Connections to the backends, the same for the relay and the operator:
//!
//! - NATS: one or several seed URLs (`nats://` or `tls://`, user and password in the URL), a
//!   private CA (`--nats-ca-file`), a credentials file (`--nats-creds-file`);
//! - Redis: `redis://` or `rediss://` (ACL user and password in the URL) and a private CA
//!   (`--redis-ca-file`);
//! - PocketBase: `http://` or `https://` and a private CA (`--pocketbase-ca-file`).
//!
//! Secrets never reach a log line: [`redact`] takes passwords out of URLs.
//!
//! Modules: [`nats`], [`redis`] (standalone, Redis Cluster or Sentinel behind one connection
//! type), [`http`], [`redact`].
#![forbid(unsafe_code)]

mod http;
mod nats;
mod redact;
pub mod redis;

use std::path::{Path, PathBuf};

pub use http::http;
pub use nats::Nats;
pub use redact::redact;
pub use redis::{Redis, RedisMode};

/// A backend could not be set up from its settings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: cannot read {path}: {source}")]
    File { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::File { what, path: path.to_owned(), source })
}
