//! Standalone mode, for people without a cluster and for the local stack: the same reconciler over
//! a folder of `RelayChannel` YAML files, checked every resync and at once when [`crate::watch`]
//! sees drift or an outage. A file that disappears is cleaned up according to its last
//! `deletionPolicy`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use kube::ResourceExt;

use crate::backends::Backends;
use crate::crd::RelayChannel;
use crate::reconcile;

/// Reads every `*.yaml` / `*.yml` file of `dir`; a file may hold several documents.
pub fn load(dir: &Path) -> Result<Vec<RelayChannel>, String> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if !matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let docs: Vec<RelayChannel> =
            serde_saphyr::from_multiple(&text).map_err(|e| format!("{}: not a RelayChannel: {e}", path.display()))?;
        out.extend(docs);
    }
    Ok(out)
}

/// Reconciles the folder until `shutdown` resolves.
pub async fn run(backends: Backends, dir: &Path, resync: Duration, shutdown: impl Future<Output = ()>) {
    let mut known: HashMap<String, RelayChannel> = HashMap::new();
    let mut triggers = backends.triggers.subscribe();
    tokio::spawn(crate::watch::run(backends.clone()));
    tokio::pin!(shutdown);
    loop {
        pass(&backends, dir, &mut known).await;
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(resync) => {}
            _ = triggers.recv() => {
                // One pass covers every trigger that came meanwhile.
                while triggers.try_recv().is_ok() {}
            }
        }
    }
}

/// One pass over the folder.
pub async fn pass(backends: &Backends, dir: &Path, known: &mut HashMap<String, RelayChannel>) {
    let channels = match load(dir) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "standalone: skipping this pass");
            return;
        }
    };
    let mut seen = HashMap::new();
    let all: Vec<&RelayChannel> = channels.iter().collect();
    let declared = reconcile::declared(&all);
    for rc in &channels {
        let _timer = crate::metrics::reconcile_timer();
        let verdict = reconcile::apply(backends, rc, &declared).await;
        crate::metrics::channel_ready(&rc.namespace().unwrap_or_default(), &rc.name_any(), Some(verdict.ready));
        // A file applied before, unchanged: what had to change was drift.
        let drift = known.get(&reconcile::owner(rc)).is_some_and(|before| before.spec == rc.spec);
        crate::metrics::changes_applied(verdict.changes, if drift { "drift" } else { "spec" });
        if verdict.ready {
            tracing::debug!(channel = %rc.name_any(), "ready");
        } else {
            crate::metrics::reconcile_error(&verdict.reason);
            tracing::warn!(channel = %rc.name_any(), reason = %verdict.reason, message = %verdict.message, "not ready");
        }
        seen.insert(reconcile::owner(rc), rc.clone());
    }
    let gone: Vec<_> =
        known.iter().filter(|(k, _)| !seen.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    for (owner, gone) in gone {
        match reconcile::cleanup(backends, &gone, &declared).await {
            Ok(()) => {
                crate::metrics::channel_ready(&gone.namespace().unwrap_or_default(), &gone.name_any(), None);
                tracing::info!(%owner, policy = ?gone.spec.deletion_policy, "removed")
            }
            Err(e) => {
                tracing::warn!(%owner, error = %e, "cleanup failed; retrying next pass");
                seen.insert(owner, gone);
            }
        }
    }
    *known = seen;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_channels_load_and_plan() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/channels");
        let channels = load(&dir).unwrap();
        let names: Vec<_> = channels.iter().map(|c| c.name_any()).collect();
        assert_eq!(names, ["chat.announcements", "chat", "inbox", "jobs"]);
        let all: Vec<&RelayChannel> = channels.iter().collect();
        let declared = reconcile::declared(&all);
        for rc in &channels {
            crate::plan::desired(&rc.name_any(), &rc.spec, &declared).unwrap();
        }
    }

    #[test]
    fn a_bad_file_is_reported_with_its_path() {
        let dir = std::env::temp_dir().join(format!("relay-standalone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad.yaml"), "kind: RelayChannel\nspec: [1, 2]\n").unwrap();
        let err = load(&dir).unwrap_err();
        assert!(err.contains("bad.yaml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
