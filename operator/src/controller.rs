//! The Kubernetes controller: watches `RelayChannel`s and reconciles each through the finalizer
//! helper into [`crate::reconcile::apply`] / [`crate::reconcile::cleanup`], then writes status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::utils::Predicate;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Resource, ResourceExt};

use crate::backends::{Backends, Trigger};
use crate::crd::{RelayChannel, RelayChannelStatus};
use crate::reconcile::{self, Verdict};
use crate::{Error, metrics};
use kube::runtime::reflector::{ObjectRef, Store};

/// The finalizer that holds a `RelayChannel` until its stream and settings are cleaned up.
pub const FINALIZER: &str = "relay.dev/cleanup";
/// Server-side apply field manager for status.
pub const MANAGER: &str = "relay-operator";

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub backends: Backends,
    pub recorder: Recorder,
    /// How often a healthy channel is checked again (the safety net behind [`crate::watch`]).
    pub resync: Duration,
    /// Every RelayChannel, as the controller's watch sees them (nested declarations share streams).
    pub store: Store<RelayChannel>,
    /// Consecutive failures per object, for backoff.
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the controller until SIGTERM/SIGINT: reconciles on changes of the resources, on drift and
/// outages that [`crate::watch`] sees, and every `resync`.
pub async fn run(client: kube::Client, backends: Backends, resync: Duration, identity: &str) {
    let api = Api::<RelayChannel>::all(client.clone());
    // Only spec changes (generation; deletion bumps it too) and finalizer changes reconcile: a
    // status write (stream figures move with traffic) must not start another reconcile.
    let (store, writer) = reflector::store();
    let objects = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation.combine(predicates::finalizers), Default::default());
    let controller = Controller::for_stream(objects, store.clone()).shutdown_on_signal();
    let reporter = Reporter { controller: MANAGER.into(), instance: Some(identity.to_owned()) };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        backends: backends.clone(),
        resync,
        store: store.clone(),
        failures: Mutex::default(),
    });
    tokio::spawn(crate::watch::run(backends.clone()));
    let (all, some) = triggers(&backends, store);
    controller
        .reconcile_all_on(all)
        .reconcile_on(some)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// The watch's triggers, as the controller takes them: everything, or the resources named.
fn triggers(
    backends: &Backends,
    store: Store<RelayChannel>,
) -> (
    impl futures::Stream<Item = ()> + Send + 'static,
    impl futures::Stream<Item = ObjectRef<RelayChannel>> + Send + 'static,
) {
    let events = |rx: tokio::sync::broadcast::Receiver<Trigger>| {
        futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(t) => Some((t, rx)),
                // Missed some: look at everything.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some((Trigger::All, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            }
        })
    };
    let all = events(backends.triggers.subscribe()).filter_map(|t| async move { (t == Trigger::All).then_some(()) });
    let some = events(backends.triggers.subscribe())
        .map(move |t| {
            let matches = |rc: &RelayChannel| {
                let name = rc.metadata.name.as_deref().unwrap_or_default();
                match &t {
                    Trigger::All => false,
                    Trigger::Tree(root) => relay_channel::names::root(name) == root,
                    Trigger::Channel(channel) => name == channel,
                }
            };
            let refs: Vec<ObjectRef<RelayChannel>> =
                store.state().iter().filter(|rc| matches(rc)).map(|rc| ObjectRef::from_obj(rc.as_ref())).collect();
            futures::stream::iter(refs)
        })
        .flatten();
    (all, some)
}

/// Thin top level: a span, a timer, and the finalizer dispatch.
#[tracing::instrument(skip_all, fields(channel = %rc.name_any(), namespace = rc.namespace().unwrap_or_default()))]
async fn reconcile(rc: Arc<RelayChannel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = metrics::reconcile_timer();
    let ns = rc.namespace().ok_or(Error::NotNamespaced)?;
    let key = format!("{ns}/{}", rc.name_any());
    let api: Api<RelayChannel> = Api::namespaced(ctx.client.clone(), &ns);
    let ctx2 = ctx.clone();
    let result = finalizer(&api, FINALIZER, rc, |event| async move {
        match event {
            Finalizer::Apply(rc) => apply(&rc, &ctx2).await,
            Finalizer::Cleanup(rc) => cleanup(&rc, &ctx2).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.failures.lock().expect("failures lock").remove(&key);
    }
    result
}

async fn apply(rc: &RelayChannel, ctx: &Context) -> Result<Action, Error> {
    let all = ctx.store.state();
    let verdict = reconcile::apply(&ctx.backends, rc, &reconcile::declared(&all)).await;
    metrics::channel_ready(&rc.namespace().unwrap_or_default(), &rc.name_any(), Some(verdict.ready));
    // Changes to a spec already applied in full (Ready for this generation) were drift: someone or
    // something changed the backends. A spec edited during an outage is not applied until after.
    let drift = rc
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True" && c.observed_generation == rc.metadata.generation);
    metrics::changes_applied(verdict.changes, if drift { "drift" } else { "spec" });
    write_status(rc, ctx, &verdict).await?;
    match verdict.backend_error {
        // An outage: retried with backoff.
        Some(e) => Err(Error::Backend(e)),
        // Waiting for a declaration of the same name that is being deleted: its finalizer runs
        // before it leaves the cache, so look again shortly rather than at the next resync.
        None if verdict.reason == "Conflict"
            && all.iter().any(|o| o.metadata.name == rc.metadata.name && o.metadata.deletion_timestamp.is_some()) =>
        {
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        // Only a change of the spec (which triggers a reconcile by itself) can fix a refusal.
        None if !verdict.ready => Ok(Action::requeue(jitter(reconcile::REFUSED_RETRY))),
        None => Ok(Action::requeue(jitter(ctx.resync))),
    }
}

async fn cleanup(rc: &RelayChannel, ctx: &Context) -> Result<Action, Error> {
    // Data is deleted on what the API server says now, not on the watch's cache: a declaration
    // created a moment ago must be seen, or its data would go too.
    let all = Api::<RelayChannel>::all(ctx.client.clone()).list(&Default::default()).await?.items;
    reconcile::cleanup(&ctx.backends, rc, &reconcile::declared(&all.iter().collect::<Vec<_>>()))
        .await
        .map_err(Error::Backend)?;
    metrics::channel_ready(&rc.namespace().unwrap_or_default(), &rc.name_any(), None);
    publish_event(
        ctx,
        rc,
        EventType::Normal,
        "Deleted",
        format!("removed per deletionPolicy {:?}", rc.spec.deletion_policy),
    )
    .await;
    Ok(Action::await_change())
}

/// Writes observedGeneration, the Ready condition and stream figures; emits an event when Ready's
/// status or reason changes.
async fn write_status(rc: &RelayChannel, ctx: &Context, v: &Verdict) -> Result<(), Error> {
    let previous = rc.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")).cloned();
    let changed = previous.as_ref().is_none_or(|p| p.status != v.status() || p.reason != v.reason);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let condition = Condition {
        type_: "Ready".into(),
        status: v.status().into(),
        reason: v.reason.clone(),
        message: v.message.clone(),
        observed_generation: rc.meta().generation,
        last_transition_time: match (&previous, changed) {
            (Some(p), false) => p.last_transition_time.clone(),
            _ => now,
        },
    };
    let status = RelayChannelStatus {
        observed_generation: rc.meta().generation,
        conditions: vec![condition],
        // Reconciled says what the stream is (none, when turned off); other verdicts keep the last figures.
        stream: match v.ready {
            true => v.stream.clone(),
            false => v.stream.clone().or_else(|| rc.status.as_ref().and_then(|s| s.stream.clone())),
        },
    };
    let api: Api<RelayChannel> = Api::namespaced(ctx.client.clone(), &rc.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "apiVersion": "relay.dev/v1alpha1", "kind": "RelayChannel", "status": status });
    api.patch_status(&rc.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    if changed {
        let type_ = if v.ready { EventType::Normal } else { EventType::Warning };
        publish_event(ctx, rc, type_, &v.reason, v.message.clone()).await;
    }
    Ok(())
}

async fn publish_event(ctx: &Context, rc: &RelayChannel, type_: EventType, reason: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &rc.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an event");
    }
}

/// Counts the error and retries with exponential backoff and jitter.
fn error_policy(rc: Arc<RelayChannel>, error: &Error, ctx: Arc<Context>) -> Action {
    metrics::reconcile_error(error.metric_label());
    let key = format!("{}/{}", rc.namespace().unwrap_or_default(), rc.name_any());
    let attempt = {
        let mut failures = ctx.failures.lock().expect("failures lock");
        let n = failures.entry(key).or_default();
        *n = n.saturating_add(1);
        *n
    };
    tracing::warn!(channel = %rc.name_any(), %error, attempt, "reconcile failed; retrying");
    Action::requeue(jitter(backoff(attempt)))
}

/// 500ms, 1s, 2s, ... capped at 60s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.saturating_sub(1).min(7))).min(Duration::from_secs(60))
}

/// ±20%, so retries of many objects do not arrive together.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let secs: Vec<f64> = (1..=10).map(|a| backoff(a).as_secs_f64()).collect();
        assert_eq!(secs[..4], [0.5, 1.0, 2.0, 4.0]);
        assert!(secs.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(backoff(30), Duration::from_secs(60));
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10)).as_secs_f64();
            assert!((8.0..12.0).contains(&j));
        }
    }
}
