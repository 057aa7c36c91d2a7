//! Prometheus metrics, served on the admin port at `/metrics`.

use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<Vec<(String, String)>, Counter>,
    duration: Histogram,
    leader: Gauge,
    changes: Family<Vec<(String, String)>, Counter>,
    ready: Family<Vec<(String, String)>, Gauge>,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("relay_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        let errors = Family::default();
        registry.register("reconcile_errors", "Failed reconciles by kind", errors.clone());
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("reconcile_duration_seconds", "Reconcile duration", duration.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica leads", leader.clone());
        let changes = Family::default();
        registry.register(
            "changes_applied",
            "Changes made to NATS or Redis to match a declaration, by cause: spec (new or edited) or drift (repaired)",
            changes.clone(),
        );
        for cause in ["spec", "drift"] {
            drop(changes.get_or_create(&vec![("cause".into(), cause.into())]));
        }
        let ready = Family::default();
        registry.register(
            "channel_ready",
            "1 while a RelayChannel is Ready, 0 while it is not, by channel_namespace and channel (its name)",
            ready.clone(),
        );
        // Known error kinds start at zero, so that alerts see them before the first error.
        for kind in ["kube", "nats", "redis", "refused", "finalizer", "spec"] {
            drop(errors.get_or_create(&vec![("kind".into(), kind.into())]));
        }
        Metrics { registry, reconciles, errors, duration, leader, changes, ready }
    })
}

/// Counts a reconcile and observes its duration when dropped.
pub struct Timer(Instant);

impl Drop for Timer {
    fn drop(&mut self) {
        metrics().duration.observe(self.0.elapsed().as_secs_f64());
    }
}

pub fn reconcile_timer() -> Timer {
    metrics().reconciles.inc();
    Timer(Instant::now())
}

pub fn reconcile_error(kind: &str) {
    metrics().errors.get_or_create(&vec![("kind".into(), kind.into())]).inc();
}

pub fn changes_applied(n: usize, cause: &str) {
    if n > 0 {
        metrics().changes.get_or_create(&vec![("cause".into(), cause.into())]).inc_by(n as u64);
    }
}

/// The Ready condition of one channel; `None` when it is gone.
pub fn channel_ready(namespace: &str, name: &str, ready: Option<bool>) {
    // Not `namespace`: Prometheus puts the scraped pod's own namespace there.
    let labels = vec![("channel_namespace".to_owned(), namespace.to_owned()), ("channel".to_owned(), name.to_owned())];
    match ready {
        Some(r) => {
            metrics().ready.get_or_create(&labels).set(i64::from(r));
        }
        None => {
            metrics().ready.remove(&labels);
        }
    }
}

pub fn set_leader(leading: bool) {
    metrics().leader.set(i64::from(leading));
}

pub fn render() -> String {
    let mut out = String::new();
    encode(&mut out, &metrics().registry).expect("writing to a String cannot fail");
    out
}
