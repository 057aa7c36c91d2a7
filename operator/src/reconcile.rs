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
    /// Changes made to NATS or Redis by this reconcile.
    pub changes: usize,
}

impl Verdict {
    pub fn status(&self) -> &'static str {
        if self.ready { "True" } else { "False" }
    }

    fn not_ready(reason: &str, message: String) -> Self {
        Self { ready: false, reason: reason.into(), message, stream: None, backend_error: None, changes: 0 }
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

/// Every resource that owns its name, as planning sees it. Two resources of one name (in two
/// namespaces) cannot both declare the channel: the older one owns it, whatever order they are
/// reconciled in and whatever Redis says; the other is `Conflict` and plays no part in planning
/// or cleanup. Creation times have one-second resolution, so within one second the one already
/// accepted (not marked `Conflict`, not new) keeps the name, then the first by namespace.
pub fn declared(all: &[impl std::ops::Deref<Target = RelayChannel>]) -> Vec<Declared<'_>> {
    type Key = (Option<k8s_openapi::jiff::Timestamp>, bool, Option<String>);
    let key = |rc: &RelayChannel| -> Key {
        let waiting = rc.status.as_ref().is_none_or(|s| {
            s.conditions.iter().all(|c| c.type_ != "Ready")
                || s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "Conflict")
        });
        (rc.metadata.creation_timestamp.as_ref().map(|t| t.0), waiting, rc.metadata.namespace.clone())
    };
    let mut owners: std::collections::BTreeMap<&str, &RelayChannel> = std::collections::BTreeMap::new();
    for rc in all.iter().map(|rc| &**rc) {
        let name = rc.metadata.name.as_deref().unwrap_or_default();
        if owners.get(name).is_none_or(|current| key(rc) < key(current)) {
            owners.insert(name, rc);
        }
    }
    owners
        .into_values()
        .map(|rc| Declared { name: rc.metadata.name.as_deref().unwrap_or_default(), owner: owner(rc), spec: &rc.spec })
        .collect()
}

/// Plans and applies; never fails, the verdict says what happened. `all`: every RelayChannel
/// (for the tree's stream).
pub async fn apply(backends: &Backends, rc: &RelayChannel, all: &[Declared<'_>]) -> Verdict {
    let name = rc.name_any();
    let owner = owner(rc);
    if let Some(other) = all.iter().find(|d| d.name == name && d.owner != owner) {
        return Verdict::not_ready(
            "Conflict",
            format!("channel {name} is already declared by RelayChannel {} (the older of the two)", other.owner),
        );
    }
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
            let changes = out.changes.len();
            for change in &out.changes {
                tracing::info!(channel = %name, %change, "applied");
            }
            if let Some(conflict) = out.conflict {
                return Verdict { changes, ..Verdict::not_ready("Conflict", conflict) };
            }
            let stream = out.stream;
            let settings = relay_channel::names::settings_key(&name);
            match out.blocked {
                Some(why) => Verdict { stream, changes, ..Verdict::not_ready("ChangeRefused", why) },
                None => Verdict {
                    ready: true,
                    reason: "Reconciled".into(),
                    message: match &desired.stream {
                        Some(s) => format!("stream {} and settings {settings} match the spec", s.name),
                        None => format!("settings {settings} match the spec (no JetStream stream)"),
                    },
                    stream,
                    backend_error: None,
                    changes,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RelayChannelSpec, RelayChannelStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn rc(namespace: &str, created: &str, reason: Option<&str>) -> RelayChannel {
        let mut rc = RelayChannel::new("shared", serde_json::from_str::<RelayChannelSpec>("{}").unwrap());
        rc.metadata.namespace = Some(namespace.into());
        rc.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
        rc.status = reason.map(|reason| RelayChannelStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if reason == "Reconciled" { "True" } else { "False" }.into(),
                reason: reason.into(),
                message: String::new(),
                last_transition_time: Time(created.parse().unwrap()),
                observed_generation: Some(1),
            }],
            ..Default::default()
        });
        rc
    }

    fn owner_of(all: &[RelayChannel]) -> String {
        let all: Vec<&RelayChannel> = all.iter().collect();
        let declared = declared(&all);
        assert_eq!(declared.len(), 1);
        declared[0].owner.clone()
    }

    #[test]
    fn the_older_declaration_owns_the_name_in_either_order() {
        let old = rc("zeta", "2026-01-01T00:00:00Z", None);
        let young = rc("alpha", "2026-01-01T00:00:05Z", Some("Reconciled"));
        assert_eq!(owner_of(&[old.clone(), young.clone()]), "zeta/shared");
        assert_eq!(owner_of(&[young, old]), "zeta/shared");
    }

    #[test]
    fn within_one_second_the_accepted_declaration_keeps_the_name() {
        let owner = rc("team", "2026-01-01T00:00:00Z", Some("NatsUnavailable"));
        let waiting = rc("other", "2026-01-01T00:00:00Z", Some("Conflict"));
        let new = rc("another", "2026-01-01T00:00:00Z", None);
        assert_eq!(owner_of(&[waiting.clone(), owner.clone(), new.clone()]), "team/shared");
        assert_eq!(owner_of(&[new.clone(), waiting.clone()]), "another/shared", "then the first by namespace");
    }
}
