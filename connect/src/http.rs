//! PocketBase's HTTP client: a deadline per call and, optionally, a private CA.

use std::path::Path;
use std::time::Duration;

use crate::{Error, read};

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
