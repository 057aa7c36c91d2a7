//! The operator against a real kube-apiserver and etcd, with real NATS and Redis: the CRD's
//! validation, create/update/delete with each policy, drift, NATS and Redis outages, and leader
//! election.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use operator::crd::RelayChannel;
use relay_channel::names;
use relay_tests::kube_api::{KubeApi, channel, install_crd, namespace, wait_ready};
use relay_tests::{OperatorProc, Stack, StackOptions, eventually, unique};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn relaychannels_are_validated_reconciled_updated_repaired_and_deleted() {
    let mut stack = Stack::with(StackOptions { relays: 0, ..Default::default() }).await;
    let kube = KubeApi::start(stack.dir()).await;
    let client = kube.client().await;
    install_crd(&client).await;
    namespace(&client, "team").await;
    let api: Api<RelayChannel> = Api::namespaced(client.clone(), "team");

    // The API server refuses what the schema forbids, with a message that says why.
    let bad: &[(serde_json::Value, &str)] = &[
        (serde_json::json!({"delivery": "multicast"}), "spec.delivery"),
        (serde_json::json!({"history": {"maxAge": "soon"}}), "spec.history.maxAge"),
        (serde_json::json!({"stream": {"replicas": 9}}), "spec.stream.replicas"),
        (serde_json::json!({"access": {"publish": "users"}}), "list them in access.publishUsers"),
        (serde_json::json!({"limits": {"maxMessageBytes": 0}}), "spec.limits.maxMessageBytes"),
        (serde_json::json!({"presence": {"joinLeave": true}}), "presence.joinLeave needs presence.enabled"),
        (serde_json::json!({"presence": {"enabled": true, "ttl": "soon"}}), "spec.presence.ttl"),
        (serde_json::json!({"limits": {"ephemeralPerSecondPerUser": -1}}), "spec.limits.ephemeralPerSecondPerUser"),
    ];
    let raw: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "team", &ApiResource::erase::<RelayChannel>(&()));
    for (spec, want) in bad {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "relay.dev/v1alpha1", "kind": "RelayChannel", "metadata": {"name": "bad"}, "spec": spec
        }))
        .unwrap();
        let err = raw.create(&PostParams::default(), &obj).await.unwrap_err();
        let kube::Error::Api(status) = err else { panic!("{err:?}") };
        assert_eq!(status.code, 422, "{spec}");
        assert!(status.message.contains(want), "{spec}: {}", status.message);
    }

    let kubeconfig = kube.kubeconfig().to_str().unwrap().to_owned();
    let _op = OperatorProc::start(
        &stack,
        &["--resync", "1s", "--lease-duration", "3s"],
        &[("KUBECONFIG", &kubeconfig), ("POD_NAME", "op-a"), ("OPERATOR_NAMESPACE", "default")],
    )
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());

    // Create.
    let (ch, kept) = (unique("chat"), unique("audit"));
    api.create(&PostParams::default(), &channel(&ch, serde_json::json!({"stream": {"maxMessages": 5000}})))
        .await
        .unwrap();
    api.create(
        &PostParams::default(),
        &channel(&kept, serde_json::json!({"delivery": "queue", "deletionPolicy": "Retain"})),
    )
    .await
    .unwrap();
    wait_ready(&api, &ch, "True", "Reconciled", 1).await;
    wait_ready(&api, &kept, "True", "Reconciled", 1).await;
    let rc = api.get(&ch).await.unwrap();
    assert_eq!(rc.status.unwrap().stream.unwrap().name, names::stream_name(&ch));
    assert!(rc.metadata.finalizers.unwrap_or_default().iter().any(|f| f == "relay.dev/cleanup"));
    let mut stream = js.get_stream(names::stream_name(&ch)).await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.max_messages, 5000);
    let queue = js.get_stream(names::stream_name(&kept)).await.unwrap();
    assert!(queue.consumer_info("relay-queue").await.is_ok(), "queue delivery has its durable consumer");
    let mut redis = stack.redis.connection().await;
    let raw: Option<String> = redis::AsyncCommands::get(&mut redis, names::settings_key(&ch)).await.unwrap();
    assert!(raw.unwrap().contains(&format!("team/{ch}")));

    // What a platform engineer sees.
    let out = tokio::process::Command::new("kubectl")
        .args(["--kubeconfig", &kubeconfig, "get", "rch", "-n", "team"])
        .output()
        .await
        .expect("kubectl");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kubectl: {}", String::from_utf8_lossy(&out.stderr));
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "DELIVERY", "READY", "MESSAGES", "AGE"], "{table}");
    assert!(table.lines().any(|l| l.starts_with(&ch) && l.contains("broadcast") && l.contains("True")), "{table}");

    // Update: the stream follows.
    let patch = serde_json::json!({"spec": {"stream": {"maxMessages": 7000}}});
    api.patch(&ch, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_ready(&api, &ch, "True", "Reconciled", 2).await;
    eventually(T, "stream updated", || {
        let js = js.clone();
        let ch = ch.clone();
        async move {
            js.get_stream(names::stream_name(&ch)).await.unwrap().info().await.unwrap().config.max_messages == 7000
        }
    })
    .await;

    // A change JetStream cannot make is refused, and said so.
    let patch = serde_json::json!({"spec": {"stream": {"storage": "memory"}}});
    api.patch(&ch, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_ready(&api, &ch, "False", "ChangeRefused", 3).await;
    let patch = serde_json::json!({"spec": {"stream": {"storage": "file"}}});
    api.patch(&ch, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_ready(&api, &ch, "True", "Reconciled", 4).await;

    // Drift: deleted behind the operator's back, put back on the next pass.
    js.delete_stream(names::stream_name(&ch)).await.unwrap();
    eventually(T, "stream restored", || {
        let js = js.clone();
        let ch = ch.clone();
        async move { js.get_stream(names::stream_name(&ch)).await.is_ok() }
    })
    .await;

    // NATS down: Ready=False with the reason; back to True when it returns.
    stack.nats.stop().await;
    wait_ready(&api, &ch, "False", "NatsUnavailable", 4).await;
    stack.nats.restart().await;
    wait_ready(&api, &ch, "True", "Reconciled", 4).await;
    // Redis down likewise.
    stack.redis.stop().await;
    wait_ready(&api, &ch, "False", "RedisUnavailable", 4).await;
    stack.redis.restart().await;
    wait_ready(&api, &ch, "True", "Reconciled", 4).await;

    // Events were recorded on changes of state.
    let events: Api<Event> = Api::namespaced(client.clone(), "team");
    let list = events.list(&ListParams::default().fields(&format!("involvedObject.name={ch}"))).await.unwrap();
    let reasons: Vec<_> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
    for want in ["Reconciled", "ChangeRefused", "NatsUnavailable", "RedisUnavailable"] {
        assert!(reasons.iter().any(|r| r == want), "no {want} event in {reasons:?}");
    }

    // Delete: stream and settings go, and the resource is released.
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());
    api.delete(&ch, &DeleteParams::default()).await.unwrap();
    api.delete(&kept, &DeleteParams::default()).await.unwrap();
    eventually(T, "resources gone", || async {
        api.get_opt(&ch).await.unwrap().is_none() && api.get_opt(&kept).await.unwrap().is_none()
    })
    .await;
    assert!(js.get_stream(names::stream_name(&ch)).await.is_err(), "Delete removes the stream");
    assert!(js.get_stream(names::stream_name(&kept)).await.is_ok(), "Retain keeps the stream");
    let mut redis = stack.redis.connection().await; // the earlier one died with the Redis restart
    let exists: i64 = redis::AsyncCommands::exists(&mut redis, names::settings_key(&kept)).await.unwrap();
    assert_eq!(exists, 0, "a retained channel is no longer declared");
}

#[tokio::test]
async fn two_operators_one_leads_and_the_other_takes_over_when_it_dies() {
    let stack = Stack::with(StackOptions { relays: 0, ..Default::default() }).await;
    let kube = KubeApi::start(stack.dir()).await;
    let client = kube.client().await;
    install_crd(&client).await;
    let kubeconfig = kube.kubeconfig().to_str().unwrap().to_owned();
    let start = |id: &'static str| {
        let kubeconfig = kubeconfig.clone();
        let stack = &stack;
        async move {
            OperatorProc::start(
                stack,
                &["--resync", "1s", "--lease-duration", "2s"],
                &[("KUBECONFIG", &kubeconfig), ("POD_NAME", id), ("OPERATOR_NAMESPACE", "default")],
            )
            .await
        }
    };
    let mut a = start("op-a").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let holder = || async {
        leases.get_opt("relay-operator").await.unwrap().and_then(|l| l.spec?.holder_identity).unwrap_or_default()
    };
    eventually(T, "op-a leads", || async { holder().await == "op-a" }).await;
    let b = start("op-b").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder().await, "op-a", "the leader keeps its lease while it renews");
    assert!(b.metrics().await.contains("relay_operator_leader 0"));

    a.kill().await;
    eventually(T, "op-b takes over", || async { holder().await == "op-b" }).await;
    let api: Api<RelayChannel> = Api::namespaced(client.clone(), "default");
    let ch = unique("after");
    api.create(&PostParams::default(), &channel(&ch, serde_json::json!({}))).await.unwrap();
    wait_ready(&api, &ch, "True", "Reconciled", 1).await;
    assert!(b.metrics().await.contains("relay_operator_leader 1"));
}

/// `spec.stream.enabled: false`: the tree goes without a JetStream stream (an old one is deleted;
/// with Retain anywhere in the tree, refused until removed by hand), the relay publishes without
/// one, and while a declaration in the tree uses queue delivery the stream stays.
#[tokio::test]
async fn a_tree_can_go_without_a_jetstream_stream() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let kube = KubeApi::start(stack.dir()).await;
    let client = kube.client().await;
    install_crd(&client).await;
    namespace(&client, "team").await;
    let api: Api<RelayChannel> = Api::namespaced(client.clone(), "team");
    let queue_off = serde_json::json!({"delivery": "queue", "stream": {"enabled": false}});
    let err = api.create(&PostParams::default(), &channel("jobs", queue_off)).await.unwrap_err();
    let kube::Error::Api(status) = err else { panic!("{err:?}") };
    assert!(status.message.contains("queue delivery needs the JetStream stream"), "{}", status.message);

    let kubeconfig = kube.kubeconfig().to_str().unwrap().to_owned();
    let _op = OperatorProc::start(
        &stack,
        &["--resync", "1s"],
        &[("KUBECONFIG", &kubeconfig), ("POD_NAME", "op-a"), ("OPERATOR_NAMESPACE", "default")],
    )
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());
    let exists = |root: &str| {
        let (js, name) = (js.clone(), names::stream_name(root));
        async move { js.get_stream(name).await.is_ok() }
    };
    let (feed, kept, work) = (unique("feed"), unique("kept"), unique("work"));
    let declarations = [
        (feed.clone(), serde_json::json!({"limits": {"publishPerSecondPerUser": 0}})),
        (kept.clone(), serde_json::json!({})),
        (format!("{kept}.news"), serde_json::json!({"deletionPolicy": "Retain"})),
        (work.clone(), serde_json::json!({})),
        (format!("{work}.jobs"), serde_json::json!({"delivery": "queue"})),
    ];
    for (name, spec) in &declarations {
        api.create(&PostParams::default(), &channel(name, spec.clone())).await.unwrap();
    }
    for (name, _) in &declarations {
        wait_ready(&api, name, "True", "Reconciled", 1).await;
    }
    assert!(exists(&feed).await);

    // Turned off: the stream goes, the status says so, and the relay publishes without it.
    let off = serde_json::json!({"spec": {"stream": {"enabled": false}}});
    api.patch(&feed, &PatchParams::default(), &Patch::Merge(&off)).await.unwrap();
    wait_ready(&api, &feed, "True", "Reconciled", 2).await;
    let status = api.get(&feed).await.unwrap().status.unwrap();
    assert!(status.stream.is_none(), "{status:?}");
    assert!(status.conditions[0].message.contains("no JetStream stream"), "{status:?}");
    assert!(!exists(&feed).await, "the stream was deleted");
    let alice = stack.pocketbase.create_user("alice").await;
    let mut c = stack.client(0).await;
    let mut sub = eventually_subscribed(&mut c, &alice.token, &feed).await;
    let sent = c.publish(&alice.token, &feed, "no stream needed").await.unwrap();
    assert_eq!(sub.messages(1, T).await, vec![sent]);
    tokio::time::sleep(Duration::from_millis(1500)).await; // past a resync
    assert!(!exists(&feed).await, "and none came back");

    // A nested declaration retains its data: the stream is not deleted behind its owner's back, and
    // relays keep publishing through it.
    api.patch(&kept, &PatchParams::default(), &Patch::Merge(&off)).await.unwrap();
    wait_ready(&api, &kept, "False", "ChangeRefused", 2).await;
    let message = api.get(&kept).await.unwrap().status.unwrap().conditions[0].message.clone();
    assert!(message.contains(&format!("nats stream rm {}", names::stream_name(&kept))), "{message}");
    assert!(exists(&kept).await);
    let mut redis = stack.redis.connection().await;
    let raw: String = redis::AsyncCommands::get(&mut redis, names::settings_key(&kept)).await.unwrap();
    let settings = relay_channel::ChannelSettings::from_json(&raw).unwrap();
    assert_eq!(settings.stream, Some(names::stream_name(&kept)), "still in force with its stream");

    // Queue delivery in the tree: the stream stays, and the declaration asking it to go is refused.
    api.patch(&work, &PatchParams::default(), &Patch::Merge(&off)).await.unwrap();
    wait_ready(&api, &work, "False", "Unsupported", 2).await;
    let message = api.get(&work).await.unwrap().status.unwrap().conditions[0].message.clone();
    assert!(message.contains(&format!("{work}.jobs uses queue delivery")), "{message}");
    assert!(exists(&work).await);
    wait_ready(&api, &format!("{work}.jobs"), "True", "Reconciled", 1).await;

    // Turned on again: the stream is made again.
    let on = serde_json::json!({"spec": {"stream": {"enabled": true}}});
    api.patch(&feed, &PatchParams::default(), &Patch::Merge(&on)).await.unwrap();
    wait_ready(&api, &feed, "True", "Reconciled", 3).await;
    assert!(exists(&feed).await);
    assert!(api.get(&feed).await.unwrap().status.unwrap().stream.is_some());
}

/// A stream on `ch` from its start, once the relay has the channel in force.
async fn eventually_subscribed(c: &mut relay_tests::Client, token: &str, ch: &str) -> relay_tests::Sub {
    for _ in 0..100 {
        match c.subscribe(token, &[(ch, Some(relay_tests::Position::SinceSeq(0)))]).await {
            Ok(mut sub) => {
                assert!(sub.recovery().await.recovered);
                return sub;
            }
            Err(e) if e.code() == tonic::Code::Unavailable => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e:?}"),
        }
    }
    panic!("{ch} never in force");
}
