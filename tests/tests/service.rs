//! What operators and tools see of a relay: gRPC health, server reflection, the admin endpoints.

use std::time::Duration;

use futures::StreamExt;
use relay_tests::{Stack, StackOptions};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn health_reflection_metrics_and_probes() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let relay = &stack.relays[0];
    let channel = tonic::transport::Channel::from_shared(relay.addr()).unwrap().connect().await.unwrap();

    let mut health = HealthClient::new(channel.clone());
    let status =
        health.check(HealthCheckRequest { service: "relay.v1.RelayService".into() }).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = replies.next().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"relay.v1.RelayService") && names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let admin = format!("http://127.0.0.1:{}", relay.admin_port);
    assert_eq!(reqwest::get(format!("{admin}/healthz")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(format!("{admin}/readyz")).await.unwrap().status(), 200);
    let alice = stack.pocketbase.create_user("alice").await;
    stack.client(0).await.publish(&alice.token, "metrics", "count me").await.unwrap();
    let metrics = relay.metrics().await;
    assert!(metrics.contains(r#"relay_rpcs_total{method="Publish",code="Ok"} 1"#), "{metrics}");
    assert!(metrics.contains("relay_publish_seconds_bucket"), "{metrics}");
}

/// A NATS that hangs with its connections open (SIGSTOP): the relay still counts as connected
/// (the socket is fine), but nothing it publishes comes back. The data-path canary turns it
/// unready within seconds, says which leg broke, and ready again once NATS is back.
#[tokio::test]
async fn the_canary_turns_a_relay_unready_while_its_nats_path_is_stalled_and_ready_after() {
    let stack =
        Stack::with(StackOptions { relays: 1, ..Default::default() }.env("RELAY_CANARY_INTERVAL", "500ms")).await;
    let relay = &stack.relays[0];
    let readyz = format!("http://127.0.0.1:{}/readyz", relay.admin_port);
    relay_tests::eventually(Duration::from_secs(10), "ready", || relay.ready()).await;
    let metrics = relay.metrics().await;
    assert!(metrics.contains(r#"relay_canary_round_trip_seconds_count{leg="nats"}"#), "{metrics}");
    assert!(metrics.contains(r#"relay_canary_round_trip_seconds_count{leg="redis"}"#), "{metrics}");

    stack.nats.pause();
    let started = std::time::Instant::now();
    relay_tests::eventually(Duration::from_secs(15), "unready while NATS hangs", || async { !relay.ready().await })
        .await;
    let unready_after = started.elapsed();
    let answer = reqwest::get(&readyz).await.unwrap();
    assert_eq!(answer.status(), 503);
    let why = answer.text().await.unwrap();
    assert!(why.contains("nats canary"), "{why}");
    let metrics = relay.metrics().await;
    assert!(metrics.contains(r#"relay_canary_failures_total{leg="nats"}"#), "{metrics}");

    stack.nats.resume();
    let resumed = std::time::Instant::now();
    relay_tests::eventually(Duration::from_secs(30), "ready again", || relay.ready()).await;
    println!("unready {unready_after:?} after NATS hung; ready {:?} after it came back", resumed.elapsed());
}
