//! The operator on a real kube-apiserver with real NATS, Redis and a relay: nested declarations
//! that coexist in any order, cleanup that never touches another declaration's data, channels
//! refused while their declaration is not in force, honest reasons, drift repaired and outages
//! reported in seconds (the resync here is a minute, so only the event-driven path can be that
//! fast), conflicts that resolve as soon as the owner goes.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use kube::api::{Api, DeleteParams, PostParams};
use operator::crd::RelayChannel;
use relay_channel::names;
use relay_tests::kube_api::{KubeApi, channel, install_crd, namespace, ready, wait_ready};
use relay_tests::{OperatorProc, Stack, StackOptions, TestUser, eventually};
use tonic::Code;

const T: Duration = Duration::from_secs(30);

/// NATS, Redis, PocketBase, one relay that refuses undeclared channels, a kube-apiserver with the
/// CRD and namespace `team`, and an operator resyncing every `resync`.
struct Cluster {
    stack: Stack,
    api: Api<RelayChannel>,
    client: kube::Client,
    _kube: KubeApi,
    _operator: OperatorProc,
}

async fn cluster(resync: &str) -> Cluster {
    let stack =
        Stack::with(StackOptions { relays: 1, ..Default::default() }.env("RELAY_UNDECLARED_CHANNELS", "deny")).await;
    let kube = KubeApi::start(stack.dir()).await;
    let client = kube.client().await;
    install_crd(&client).await;
    namespace(&client, "team").await;
    let kubeconfig = kube.kubeconfig().to_str().unwrap().to_owned();
    let operator = OperatorProc::start(
        &stack,
        &["--resync", resync, "--leader-election", "false"],
        &[("KUBECONFIG", &kubeconfig), ("POD_NAME", "op")],
    )
    .await;
    let api = Api::namespaced(client.clone(), "team");
    Cluster { stack, api, client, _kube: kube, _operator: operator }
}

impl Cluster {
    async fn create(&self, name: &str, spec: serde_json::Value) {
        self.api.create(&PostParams::default(), &channel(name, spec)).await.unwrap();
    }

    async fn js(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(self.stack.nats.url()).await.unwrap())
    }

    async fn exists(&self, key: &str) -> bool {
        let mut redis = self.stack.redis.connection().await;
        redis::AsyncCommands::exists::<_, i64>(&mut redis, key).await.unwrap() == 1
    }

    async fn publish(
        &self,
        user: &TestUser,
        channel: &str,
        text: &str,
    ) -> Result<relay::proto::Message, tonic::Status> {
        let mut c = self.stack.client(0).await;
        // Settings reach relays with the operator's announcement; allow for it.
        let mut last = None;
        for _ in 0..40 {
            match c.publish(&user.token, channel, text).await {
                Err(e) if e.code() == Code::NotFound => last = Some(e),
                other => return other,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap())
    }
}

#[tokio::test]
async fn nested_declarations_coexist_in_any_order_and_deleting_one_never_touches_another() {
    let c = cluster("60s").await;
    let (alice, admin) = (c.stack.pocketbase.create_user("alice").await, c.stack.pocketbase.create_user("admin").await);
    // The sub-channel is declared first, with stricter rules; then its parent.
    c.create("hall.vip", serde_json::json!({"access": {"publish": "users", "publishUsers": [admin.id]}})).await;
    wait_ready(&c.api, "hall.vip", "True", "Reconciled", 1).await;
    c.create("hall", serde_json::json!({"stream": {"maxAge": "24h"}})).await;
    wait_ready(&c.api, "hall", "True", "Reconciled", 1).await;
    let js = c.js().await;
    let mut stream = js.get_stream("RELAY_hall").await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.subjects, ["events.hall", "events.hall.>"], "one stream for the tree");
    assert_eq!(config.max_age, Duration::from_secs(86400), "with the shallowest declaration's settings");
    assert!(js.get_stream("RELAY_hall_vip").await.is_err(), "no overlapping stream");
    eventually(T, "hall.vip stays ready", || async { ready(&c.api, "hall.vip").await.is_some_and(|r| r.0 == "True") })
        .await;

    // The stricter rules are the ones in force for hall.vip; the parent's for the rest.
    let e = c.publish(&alice, "hall.vip", "let me in").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    c.publish(&admin, "hall.vip", "welcome").await.unwrap();
    c.publish(&admin, "hall.vip.lounge", "sub-tree of hall.vip").await.unwrap();
    c.publish(&alice, "hall", "hello hall").await.unwrap();
    c.publish(&alice, "hall.corner", "sub-channel of hall").await.unwrap();

    // Deleting the parent removes its data and only its data.
    c.api.delete("hall", &DeleteParams::default()).await.unwrap();
    eventually(T, "hall is gone", || async { c.api.get_opt("hall").await.unwrap().is_none() }).await;
    for key in [names::settings_key("hall.vip"), names::history_key("hall.vip"), names::history_key("hall.vip.lounge")]
    {
        assert!(c.exists(&key).await, "{key} must survive the deletion of hall");
    }
    for key in [names::settings_key("hall"), names::history_key("hall"), names::history_key("hall.corner")] {
        assert!(!c.exists(&key).await, "{key} belongs to hall and goes with it");
    }
    let stream = js.get_stream("RELAY_hall").await.expect("the tree's stream stays while hall.vip needs it");
    let subjects: Vec<String> = {
        use futures::StreamExt;
        let mut s = stream.info_with_subjects("events.>").await.unwrap();
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            out.push(item.unwrap().0);
        }
        out.sort();
        out
    };
    assert_eq!(subjects, ["events.hall.vip", "events.hall.vip.lounge"], "hall's messages purged, hall.vip's kept");
    assert_eq!(ready(&c.api, "hall.vip").await.map(|r| r.0), Some("True".into()));
    c.publish(&admin, "hall.vip", "still here").await.unwrap();

    // The other order: parent first.
    c.create("room", serde_json::json!({})).await;
    c.create("room.vip", serde_json::json!({"access": {"publish": "users", "publishUsers": [admin.id]}})).await;
    wait_ready(&c.api, "room", "True", "Reconciled", 1).await;
    wait_ready(&c.api, "room.vip", "True", "Reconciled", 1).await;
    assert_eq!(c.publish(&alice, "room.vip", "no").await.unwrap_err().code(), Code::PermissionDenied);
    // The last declaration of a tree takes the stream with it.
    c.api.delete("hall.vip", &DeleteParams::default()).await.unwrap();
    eventually(T, "RELAY_hall deleted with the tree's last declaration", || async {
        js.get_stream("RELAY_hall").await.is_err()
    })
    .await;
}

#[tokio::test]
async fn a_declaration_not_in_force_refuses_its_channel_instead_of_lending_it_its_parents_rules() {
    let c = cluster("60s").await;
    let alice = c.stack.pocketbase.create_user("alice").await;
    c.create("lobby", serde_json::json!({"stream": {"maxAge": "24h"}})).await;
    wait_ready(&c.api, "lobby", "True", "Reconciled", 1).await;
    c.publish(&alice, "lobby.stage", "under lobby's rules").await.unwrap();
    // A nested declaration asking for a stream of its own cannot have one: refused, saying whom to
    // change, and its channel is not served under lobby's rules meanwhile.
    c.create("lobby.stage", serde_json::json!({"stream": {"maxAge": "1h"}, "access": {"publish": "owner"}})).await;
    wait_ready(&c.api, "lobby.stage", "False", "Unsupported", 1).await;
    let rc = c.api.get("lobby.stage").await.unwrap();
    let message = rc.status.unwrap().conditions[0].message.clone();
    assert!(message.contains("lobby") && message.contains("spec.stream"), "{message}");
    let e = c.stack.client(0).await.publish(&alice.token, "lobby.stage", "sneak in").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("not in force"), "{}", e.message());
    // Fixed: in force, with its own (stricter) rules.
    let fix = serde_json::json!({"spec": {"stream": null}});
    c.api.patch("lobby.stage", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&fix)).await.unwrap();
    wait_ready(&c.api, "lobby.stage", "True", "Reconciled", 2).await;
    let e = c.publish(&alice, "lobby.stage", "owner only").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

#[tokio::test]
async fn short_ages_single_node_limits_and_zero_limits_get_honest_answers() {
    let c = cluster("1s").await;
    // A minute of stream retention: the duplicate window follows it.
    c.create("brief", serde_json::json!({"stream": {"maxAge": "1m"}, "history": {"maxAge": "500ms"}})).await;
    wait_ready(&c.api, "brief", "True", "Reconciled", 1).await;
    let mut s = c.js().await.get_stream("RELAY_brief").await.unwrap();
    assert_eq!(s.info().await.unwrap().config.duplicate_window, Duration::from_secs(60));
    let mut redis = c.stack.redis.connection().await;
    let raw: String = redis::AsyncCommands::get(&mut redis, names::settings_key("brief")).await.unwrap();
    let settings = relay_channel::ChannelSettings::from_json(&raw).unwrap();
    assert_eq!(settings.history.max_age_secs, 1, "500ms is a second, not 'keep forever'");

    // Three replicas on a single server: a spec to change, not a NATS outage.
    c.create("triple", serde_json::json!({"stream": {"replicas": 3}})).await;
    wait_ready(&c.api, "triple", "False", "Unsupported", 1).await;
    let rc = c.api.get("triple").await.unwrap();
    assert!(rc.status.unwrap().conditions[0].message.contains("replicas"));

    // No limit written as 0: stored as JetStream stores it, so passes do not keep updating it.
    c.create("unbounded", serde_json::json!({"stream": {"maxMessages": 0}})).await;
    wait_ready(&c.api, "unbounded", "True", "Reconciled", 1).await;
    tokio::time::sleep(Duration::from_secs(4)).await; // several resyncs
    let log = std::fs::read_to_string(c.stack.dir().join(format!("operator-{}.log", c._operator.admin_port))).unwrap();
    let updates = log.matches("updated stream RELAY_unbounded").count();
    assert_eq!(updates, 0, "the stream was updated {updates} times with nothing to change");
}

/// Waits for `check` and says how long it took.
async fn took<F, Fut>(what: &str, check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    eventually(T, what, check).await;
    let spent = started.elapsed();
    println!("# {what}: {spent:.2?}");
    spent
}

#[tokio::test]
async fn drift_is_repaired_and_outages_reported_within_seconds_not_at_the_next_resync() {
    let mut c = cluster("60s").await;
    c.create("watched", serde_json::json!({"delivery": "queue", "stream": {"maxMessages": 5000}})).await;
    wait_ready(&c.api, "watched", "True", "Reconciled", 1).await;
    let js = c.js().await;
    let key = names::settings_key("watched");
    let limit = Duration::from_secs(10); // far below the 60 s resync

    js.delete_stream("RELAY_watched").await.unwrap();
    let t = took("a deleted stream is back", || async { js.get_stream("RELAY_watched").await.is_ok() }).await;
    assert!(t < limit);
    let consumer = names::queue_consumer("watched");
    eventually(T, "its consumer too", || async {
        js.get_stream("RELAY_watched").await.unwrap().consumer_info(&consumer).await.is_ok()
    })
    .await;
    // Counted as drift, not as a spec change.
    let metrics = c._operator.metrics().await;
    let drift = metrics
        .lines()
        .find(|l| l.starts_with(r#"relay_operator_changes_applied_total{cause="drift"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(drift.is_some_and(|n| n >= 1.0), "{metrics}");

    let mut redis = c.stack.redis.connection().await;
    let () = redis::AsyncCommands::del(&mut redis, &key).await.unwrap();
    let t = took("a deleted settings key is back", || async { c.exists(&key).await }).await;
    assert!(t < limit);

    let mut config = js.get_stream("RELAY_watched").await.unwrap().info().await.unwrap().config.clone();
    config.max_messages = 42;
    js.update_stream(config).await.unwrap();
    let t = took("an edited stream is put back", || async {
        js.get_stream("RELAY_watched").await.unwrap().info().await.unwrap().config.max_messages == 5000
    })
    .await;
    assert!(t < limit);

    js.get_stream("RELAY_watched").await.unwrap().delete_consumer(&consumer).await.unwrap();
    let t = took("a deleted queue consumer is back", || async {
        js.get_stream("RELAY_watched").await.unwrap().consumer_info(&consumer).await.is_ok()
    })
    .await;
    assert!(t < limit);

    c.stack.nats.stop().await;
    let t = took("status says NATS is down", || async {
        ready(&c.api, "watched").await.is_some_and(|r| r.1 == "NatsUnavailable")
    })
    .await;
    assert!(t < limit);
    c.stack.nats.restart().await;
    let t =
        took("status recovers with NATS", || async { ready(&c.api, "watched").await.is_some_and(|r| r.0 == "True") })
            .await;
    assert!(t < limit);

    c.stack.redis.stop().await;
    let t = took("status says Redis is down", || async {
        ready(&c.api, "watched").await.is_some_and(|r| r.1 == "RedisUnavailable")
    })
    .await;
    assert!(t < limit);
    c.stack.redis.restart().await;
    let t =
        took("status recovers with Redis", || async { ready(&c.api, "watched").await.is_some_and(|r| r.0 == "True") })
            .await;
    assert!(t < limit);
}

#[tokio::test]
async fn a_waiting_declaration_takes_over_as_soon_as_the_owner_goes() {
    let c = cluster("60s").await;
    namespace(&c.client, "other").await;
    let other: Api<RelayChannel> = Api::namespaced(c.client.clone(), "other");
    c.create("shared", serde_json::json!({})).await;
    wait_ready(&c.api, "shared", "True", "Reconciled", 1).await;
    other.create(&PostParams::default(), &channel("shared", serde_json::json!({}))).await.unwrap();
    wait_ready(&other, "shared", "False", "Conflict", 1).await;
    c.api.delete("shared", &DeleteParams::default()).await.unwrap();
    let t = took("the other namespace's declaration takes the channel", || async {
        ready(&other, "shared").await.is_some_and(|r| r.0 == "True")
    })
    .await;
    assert!(t < Duration::from_secs(15), "{t:?}");
}

#[tokio::test]
async fn the_crd_applies_without_warnings() {
    let stack = Stack::with(StackOptions { relays: 0, ..Default::default() }).await;
    let kube = KubeApi::start(stack.dir()).await;
    let crd = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/relaychannel.yaml");
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kube.kubeconfig())
        .args(["apply", "-f", crd])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Warning"), "kubectl apply warned: {stderr}");
}
