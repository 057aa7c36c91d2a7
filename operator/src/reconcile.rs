//! One reconcile of one `RelayChannel`, shared by the Kubernetes controller and standalone mode:
//! plan (pure), apply (effects), and a verdict that becomes the Ready condition.

use std::time::Duration;

use kube::ResourceExt;

use crate::backends::{BackendError, Backends};
use crate::crd::{DeletionPolicy, RelayChannel, StreamStatus};
use crate::plan::{self, Declared};

/// How soon a refusal that only a spec change can fix is tried again (the spec's change itself
/// triggers a reconcile at once).
pub const REFUSED_RETRY: Duration = Duration::from_secs(300);

/// The outcome of a reconcile, as the Ready condition tells it.
#[derive(Debug)]
pub struct Verdict {
    pub ready: bool,
    /// PascalCase: Reconciled, InvalidSpec, Conflict, Unsupported, ChangeRefused, NatsUnavailable,
    /// RedisUnavailable.
    pub reason: String,
    pub message: String,
    pub stream: Option<StreamStatus>,
    /// Set when a backend failed: the reconcile is retried with backoff.
    pub backend_error: Option<BackendError>,
}

impl Verdict {
    pub fn status(&self) -> &'static str {
        if self.ready { "True" } else { "False" }
    }

    fn not_ready(reason: &str, message: String) -> Self {
        Self { ready: false, reason: reason.into(), message, stream: None, backend_error: None }
    }

    /// Whether retrying soon may help (an outage), as opposed to waiting for a spec change.
    pub fn transient(&self) -> bool {
        self.backend_error.is_some()
    }
}

/// `<namespace>/<name>`: who owns the channel in NATS and Redis.
pub fn owner(rc: &RelayChannel) -> String {
    format!("{}/{}", rc.namespace().unwrap_or_else(|| "default".into()), rc.name_any())
}

/// Every resource as planning sees it.
pub fn declared(all: &[impl std::ops::Deref<Target = RelayChannel>]) -> Vec<Declared<'_>> {
    all.iter()
        .map(|rc| Declared { name: rc.metadata.name.as_deref().unwrap_or_default(), owner: owner(rc), spec: &rc.spec })
        .collect()
}

/// Plans and applies; never fails, the verdict says what happened. `all`: every RelayChannel
/// (for the tree's stream).
pub async fn apply(backends: &Backends, rc: &RelayChannel, all: &[Declared<'_>]) -> Verdict {
    let name = rc.name_any();
    let owner = owner(rc);
    let desired = match plan::desired(&name, &rc.spec, all) {
        Ok(d) => d,
        Err(e) => {
            if let Err(write) = backends.refuse(&name, &owner, e.reason()).await {
                return outage(write);
            }
            return Verdict::not_ready(e.reason(), e.to_string());
        }
    };
    match backends.apply(&name, &owner, &desired).await {
        Ok(out) => {
            for change in &out.changes {
                tracing::info!(channel = %name, %change, "applied");
            }
            if let Some(conflict) = out.conflict {
                return Verdict::not_ready("Conflict", conflict);
            }
            let stream = Some(out.stream);
            match out.blocked {
                Some(why) => Verdict { stream, ..Verdict::not_ready("ChangeRefused", why) },
                None => Verdict {
                    ready: true,
                    reason: "Reconciled".into(),
                    message: format!(
                        "stream {} and settings {} match the spec",
                        desired.stream.name,
                        relay_channel::names::settings_key(&name)
                    ),
                    stream,
                    backend_error: None,
                },
            }
        }
        Err(BackendError::Refused { reason, message }) => Verdict::not_ready(reason, message),
        Err(e) => outage(e),
    }
}

/// An outage: Ready=False with the backend's name, retried with backoff.
fn outage(e: BackendError) -> Verdict {
    let reason = match e {
        BackendError::Redis(_) => "RedisUnavailable",
        _ => "NatsUnavailable",
    };
    Verdict { message: e.to_string(), backend_error: Some(e), ..Verdict::not_ready(reason, String::new()) }
}

/// Removes what the resource declared, keeping data under `deletionPolicy: Retain`; `all` holds
/// every RelayChannel (this one is left out), whose data is never touched.
pub async fn cleanup(backends: &Backends, rc: &RelayChannel, all: &[Declared<'_>]) -> Result<(), BackendError> {
    let delete_data = rc.spec.deletion_policy == DeletionPolicy::Delete;
    let own = owner(rc);
    let remaining: Vec<Declared> = all.iter().filter(|d| d.owner != own).cloned().collect();
    backends.cleanup(&rc.name_any(), &own, delete_data, &remaining).await
}
