//! Connections to the backends, the same for the relay and the operator:
//!
//! - NATS: one or several seed URLs (`nats://` or `tls://`, user and password in the URL), a
//!   private CA (`--nats-ca-file`), a credentials file (`--nats-creds-file`);
//! - Redis: `redis://` or `rediss://` (ACL user and password in the URL) and a private CA
//!   (`--redis-ca-file`);
//! - PocketBase: `http://` or `https://` and a private CA (`--pocketbase-ca-file`).
//!
//! Secrets never reach a log line: [`redact`] takes passwords out of URLs.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;

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

/// How to reach NATS.
#[derive(Clone, Debug, Default)]
pub struct Nats {
    /// Comma-separated seed URLs.
    pub urls: String,
    pub ca_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
}

impl Nats {
    /// Connection options for a client named `name`; connects lazily and reconnects forever, so a
    /// process starts (not ready) while NATS is away.
    pub async fn options(&self, name: &str) -> Result<async_nats::ConnectOptions, Error> {
        let mut options = match &self.creds_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path).await.map_err(|e| {
                Error::Invalid { what: "--nats-creds-file", message: format!("{}: {e}", path.display()) }
            })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(path) = &self.ca_file {
            read("--nats-ca-file", path)?;
            options = options.add_root_certificates(path.clone()).require_tls(true);
        }
        // async-nats does not take credentials from the URL by itself.
        if let Some(addr) = self.addrs()?.into_iter().find(|a| a.username().is_some()) {
            let user = addr.username().unwrap_or_default().to_owned();
            options = match addr.password() {
                Some(pass) => options.user_and_password(user, pass.to_owned()),
                None => options.token(user),
            };
        }
        Ok(options.name(name).retry_on_initial_connect().max_reconnects(None))
    }

    /// The seed URLs, parsed.
    pub fn addrs(&self) -> Result<Vec<async_nats::ServerAddr>, Error> {
        let urls: Vec<&str> = self.urls.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        if urls.is_empty() {
            return Err(Error::Invalid { what: "--nats-url", message: "no URL given".into() });
        }
        urls.iter()
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| Error::Invalid { what: "--nats-url", message: format!("{}: {e}", redact(u)) })
            })
            .collect()
    }

    /// Why a TLS connection to the first NATS server fails, if it does (async-nats reports only
    /// "IO error"): reads the server's INFO line, then tries the TLS handshake with the configured
    /// CA. None when it succeeds or TLS is not configured.
    pub async fn diagnose_tls(&self) -> Option<String> {
        let ca = self.ca_file.as_ref()?;
        let addr = self.addrs().ok()?.into_iter().next()?;
        let (host, port) = (addr.host().to_owned(), addr.port());
        let attempt = async {
            use tokio::io::AsyncBufReadExt;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
            let mut reader = tokio::io::BufReader::new(tcp);
            let mut info = String::new();
            reader.read_line(&mut info).await.map_err(|e| e.to_string())?;
            let mut roots = rustls::RootCertStore::empty();
            let pem = read("--nats-ca-file", ca).map_err(|e| e.to_string())?;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            }
            let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
            let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(name, reader.into_inner())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("TLS with {host}:{port}: {e}")),
            Err(_) => Some(format!("TLS with {host}:{port}: no answer within 3s")),
        }
    }

    pub async fn connect(&self, options: async_nats::ConnectOptions) -> Result<async_nats::Client, Error> {
        let addrs = self.addrs()?;
        options
            .connect(addrs)
            .await
            .map_err(|e| Error::Invalid { what: "--nats-url", message: format!("{}: {e}", redact(&self.urls)) })
    }
}

/// How to reach Redis.
#[derive(Clone, Debug, Default)]
pub struct Redis {
    pub url: String,
    pub ca_file: Option<PathBuf>,
}

impl Redis {
    /// A client (it connects on first use).
    pub fn client(&self) -> Result<redis::Client, Error> {
        let invalid = |e: redis::RedisError| Error::Invalid {
            what: "--redis-url",
            message: format!("{}: {e}", redact(&self.url)),
        };
        match &self.ca_file {
            None => redis::Client::open(self.url.as_str()).map_err(invalid),
            Some(path) => {
                if !self.url.starts_with("rediss://") {
                    return Err(Error::Invalid { what: "--redis-ca-file", message: "needs a rediss:// URL".into() });
                }
                let root_cert = Some(read("--redis-ca-file", path)?);
                let certs = redis::TlsCertificates { client_tls: None, root_cert };
                redis::Client::build_with_tls(self.url.as_str(), certs).map_err(invalid)
            }
        }
    }
}

/// An HTTP client for PocketBase with a deadline per call and, optionally, a private CA.
pub fn http(ca_file: Option<&Path>, timeout: Duration) -> Result<reqwest::Client, Error> {
    let mut builder = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).pool_max_idle_per_host(32);
    if let Some(path) = ca_file {
        let pem = read("--pocketbase-ca-file", path)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::Invalid {
            what: "--pocketbase-ca-file",
            message: format!("{}: {e}", path.display()),
        })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| Error::Invalid { what: "--pocketbase-url", message: e.to_string() })
}

/// The URL with any password replaced by `***` (also in comma-separated lists).
pub fn redact(urls: &str) -> String {
    urls.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_owned() };
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    // A lone token (`nats://token@host`) is a secret too.
    let hidden = if userinfo.contains(':') { format!("{user}:***") } else { "***".to_owned() };
    let path = path.map(|p| format!("/{p}")).unwrap_or_default();
    format!("{scheme}://{hidden}@{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("rediss://app:s3cret@redis:6380/0", "rediss://app:***@redis:6380/0"),
            ("rediss://:s3cret@redis:6380", "rediss://:***@redis:6380"),
            ("nats://tok3n@nats:4222", "nats://***@nats:4222"),
            ("tls://a:b@n1:4222,tls://a:b@n2:4222", "tls://a:***@n1:4222,tls://a:***@n2:4222"),
            ("http://pb:8090/x", "http://pb:8090/x"),
            ("not a url", "not a url"),
            ("nats://u:p@ss@host", "nats://u:***@host"),
        ];
        for (raw, want) in cases {
            assert_eq!(redact(raw), want, "{raw}");
        }
    }

    #[test]
    fn nats_urls_are_a_list() {
        let n = Nats { urls: "nats://a:4222, nats://b:4222".into(), ..Default::default() };
        assert_eq!(n.addrs().unwrap().len(), 2);
        assert!(Nats::default().addrs().is_err());
    }

    #[test]
    fn a_redis_ca_needs_rediss_and_a_readable_file() {
        let r = Redis { url: "redis://x:1".into(), ca_file: Some("/nonexistent".into()) };
        assert!(matches!(r.client(), Err(Error::Invalid { what: "--redis-ca-file", .. })));
        let r = Redis { url: "rediss://x:1".into(), ca_file: Some("/nonexistent/ca.pem".into()) };
        assert!(matches!(r.client(), Err(Error::File { .. })));
    }
}
