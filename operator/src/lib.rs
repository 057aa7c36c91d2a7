//! The Relay operator: reconciles `RelayChannel` resources into NATS JetStream streams and
//! consumers and Redis channel settings.
//!
//! Module map:
//! - [`crd`]: the resource types (the CRD is generated from them by the `crdgen` binary);
//! - [`plan`]: pure functions from a spec to the desired JetStream and Redis state, and from
//!   desired vs observed to actions; table-tested;
//! - [`backends`]: the effects on NATS and Redis;
//! - [`reconcile`]: one reconcile (plan, apply, verdict), shared by both modes;
//! - [`controller`]: the Kubernetes controller (finalizer, status, events, backoff);
//! - [`leader`]: Lease-based leader election;
//! - [`standalone`]: the same reconciler over a folder of YAML files, without a cluster;
//! - [`watch`]: drift and outages within seconds (JetStream advisories, a settings check);
//! - [`admin`] and [`metrics`]: `/metrics`, `/healthz`, `/readyz`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backends;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod standalone;
pub mod watch;

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Backend(#[from] backends::BackendError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("RelayChannel has no namespace")]
    NotNamespaced,
}

impl Error {
    /// The `kind` label of the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Backend(backends::BackendError::Nats(_)) => "nats",
            Error::Backend(backends::BackendError::Redis(_)) => "redis",
            Error::Backend(backends::BackendError::Refused { .. }) => "refused",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer",
            },
            Error::NotNamespaced => "spec",
        }
    }
}
