//! NATS: seed URLs (`nats://`, `tls://`, credentials in the URL), a private CA, a credentials file.

use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;

use crate::{Error, read, redact};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_urls_are_a_list() {
        let n = Nats { urls: "nats://a:4222, nats://b:4222".into(), ..Default::default() };
        assert_eq!(n.addrs().unwrap().len(), 2);
        assert!(Nats::default().addrs().is_err());
    }
}
