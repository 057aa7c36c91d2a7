//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas can run and one
//! acts. A replica takes the Lease when it is free or its holder stopped renewing it, renews it
//! every third of its duration, and gives up leading (the process exits, and Kubernetes restarts
//! it as a follower) when it cannot renew in time. Writes carry the resourceVersion they read, so
//! two candidates can never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into(), duration }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "leading");
                    crate::metrics::set_leader(true);
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews the Lease until a renewal fails for longer than two thirds of its duration (each
    /// attempt bounded, so a hanging API server cannot keep a leader that lost its lease); then
    /// returns, before a follower may take over.
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match tokio::time::timeout(self.duration / 3, self.try_acquire()).await {
                Ok(Ok(true)) => last_renewed = tokio::time::Instant::now(),
                Ok(Ok(false)) => break,
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the lease"),
                Err(_) => tracing::warn!("renewing the lease took too long"),
            }
            if last_renewed.elapsed() >= self.duration * 2 / 3 {
                break;
            }
        }
        crate::metrics::set_leader(false);
        tracing::warn!(lease = %self.name, "lost the lease");
    }

    /// One attempt: true when this replica holds the Lease afterwards.
    async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() && !expired(&spec, now) {
            return Ok(false);
        }
        let acquired = if ours { spec.acquire_time.map_or(now, |t| t.0) } else { now };
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        lease.spec = Some(self.spec(acquired, now, transitions));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}

/// Whether the holder failed to renew within the Lease's duration.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else { return true };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    renewed.0 + duration < now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_after_its_duration_without_renewal() {
        let now = Timestamp::now();
        let spec = |ago: i64| LeaseSpec {
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(ago))),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert!(!expired(&spec(5), now));
        assert!(expired(&spec(16), now));
        assert!(expired(&LeaseSpec::default(), now), "never renewed");
    }
}
