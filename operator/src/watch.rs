//! Drift and outages seen within seconds, not at the next resync: JetStream's advisories (a stream
//! deleted or updated, a consumer deleted) and a cheap check of the settings keys every two
//! seconds (one MGET of what the operator last wrote) become [`Trigger`]s on
//! [`Backends::triggers`], which the controller (or the standalone loop) reconciles at once. NATS
//! connection events arrive there too (see [`Backends::connect`]), and Redis going away or coming
//! back is noticed by the settings check. The periodic resync stays as the safety net.

use std::time::Duration;

use futures::StreamExt;
use relay_channel::names;

use crate::backends::{Backends, Trigger};

/// How often the settings keys are compared with what the operator wrote.
pub const SETTINGS_CHECK: Duration = Duration::from_secs(2);

/// Subjects of the JetStream advisories that mean a stream or consumer changed.
const ADVISORIES: [&str; 3] = [
    "$JS.EVENT.ADVISORY.STREAM.DELETED.>",
    "$JS.EVENT.ADVISORY.STREAM.UPDATED.>",
    "$JS.EVENT.ADVISORY.CONSUMER.DELETED.>",
];

/// Runs both watchers until the process ends.
pub async fn run(backends: Backends) {
    tokio::join!(advisories(backends.clone()), settings(backends));
}

/// JetStream advisories, as triggers for the stream's tree.
async fn advisories(backends: Backends) {
    let mut subs = Vec::new();
    for subject in ADVISORIES {
        match backends.nats.subscribe(subject).await {
            Ok(s) => subs.push(s),
            Err(e) => {
                tracing::warn!(%subject, error = %e, "cannot watch JetStream advisories; drift is found at the next resync")
            }
        }
    }
    let mut all = futures::stream::select_all(subs);
    while let Some(msg) = all.next().await {
        // ...STREAM.DELETED.<stream> or ...CONSUMER.DELETED.<stream>.<consumer>
        let tokens: Vec<&str> = msg.subject.split('.').collect();
        let Some(stream) = tokens.get(5) else { continue };
        if let Some(root) = stream.strip_prefix("RELAY_") {
            tracing::info!(%stream, advisory = %msg.subject, "stream or consumer changed; reconciling its channels");
            let _ = backends.triggers.send(Trigger::Tree(root.to_owned()));
        }
    }
}

/// Compares the settings keys with what was written; a difference triggers that channel, Redis
/// going away or coming back triggers everything.
async fn settings(backends: Backends) {
    let mut healthy = true;
    loop {
        tokio::time::sleep(SETTINGS_CHECK).await;
        let expected: Vec<(String, String)> =
            backends.written.lock().expect("written lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut conn = backends.redis.clone();
        let found: redis::RedisResult<Vec<Option<String>>> = if expected.is_empty() {
            redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| Vec::new())
        } else {
            let keys: Vec<String> = expected.iter().map(|(name, _)| names::settings_key(name)).collect();
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await
        };
        match found {
            Ok(found) => {
                if !healthy {
                    tracing::info!("Redis is back; reconciling everything");
                    let _ = backends.triggers.send(Trigger::All);
                }
                healthy = true;
                for ((name, want), got) in expected.iter().zip(found) {
                    if got.as_deref() != Some(want.as_str()) {
                        tracing::info!(channel = %name, "settings changed behind the operator's back; reconciling");
                        let _ = backends.triggers.send(Trigger::Channel(name.clone()));
                    }
                }
            }
            Err(e) => {
                if healthy {
                    tracing::warn!(error = %e, "Redis is unreachable; reconciling everything");
                    let _ = backends.triggers.send(Trigger::All);
                }
                healthy = false;
            }
        }
    }
}
