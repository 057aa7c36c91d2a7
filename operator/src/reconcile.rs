//! One reconcile of one `RelayChannel`, shared by the Kubernetes controller and standalone mode:
//! plan (pure), apply (effects), and a verdict that becomes the Ready condition.

use kube::ResourceExt;

use crate::backends::{BackendError, Backends};
use crate::crd::{DeletionPolicy, RelayChannel, StreamStatus};
use crate::plan;

/// The outcome of a reconcile, as the Ready condition tells it.
#[derive(Debug)]
pub struct Verdict {
    pub ready: bool,
    /// PascalCase: Reconciled, InvalidSpec, Conflict, ChangeRefused, NatsUnavailable, RedisUnavailable.
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
}

/// `<namespace>/<name>`: who owns the channel in NATS and Redis.
pub fn owner(rc: &RelayChannel) -> String {
    format!("{}/{}", rc.namespace().unwrap_or_else(|| "default".into()), rc.name_any())
}

/// Plans and applies; never fails, the verdict says what happened.
pub async fn apply(backends: &Backends, rc: &RelayChannel) -> Verdict {
    let name = rc.name_any();
    let desired = match plan::desired(&name, &rc.spec) {
        Ok(d) => d,
        Err(e) => return Verdict::not_ready("InvalidSpec", e.to_string()),
    };
    match backends.apply(&name, &owner(rc), &desired).await {
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
        Err(e) => {
            let reason = match e {
                BackendError::Nats(_) => "NatsUnavailable",
                BackendError::Redis(_) => "RedisUnavailable",
            };
            Verdict { backend_error: Some(e), ..Verdict::not_ready(reason, String::new()) }
        }
    }
    .with_error_message()
}

impl Verdict {
    fn with_error_message(mut self) -> Self {
        if let Some(e) = &self.backend_error {
            self.message = e.to_string();
        }
        self
    }
}

/// Removes what the resource declared, keeping data under `deletionPolicy: Retain`.
pub async fn cleanup(backends: &Backends, rc: &RelayChannel) -> Result<(), BackendError> {
    let delete_data = rc.spec.deletion_policy == DeletionPolicy::Delete;
    backends.cleanup(&rc.name_any(), &owner(rc), delete_data).await
}
