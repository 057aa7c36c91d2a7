//! TLS and credentials to every backend: a real nats-server with TLS and a user, a real
//! redis-server that only speaks TLS with an ACL user; relays and the operator trust a private CA.
//! A relay given the wrong CA refuses the servers, says so in its log and is not ready.

use std::time::Duration;

use relay_tests::{Pki, Stack, StackOptions, eventually, unique};

const T: Duration = Duration::from_secs(15);

#[tokio::test]
async fn relays_and_the_operator_work_over_tls_with_credentials() {
    let stack = Stack::with(StackOptions { tls: true, ..Default::default() }).await;
    assert!(stack.nats.url().starts_with("tls://relay:"), "{}", stack.nats.url());
    assert!(stack.redis.url().starts_with("rediss://app:"), "{}", stack.redis.url());
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    // The operator's code, over the same TLS and credentials: a stream and settings.
    let ch = unique("secure");
    stack.declare_spec(&ch, serde_json::json!({"limits": {"publishPerSecondPerUser": 0}})).await;
    let mut sub = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    sub.recovery().await;
    let sent = stack.client(1).await.publish(&alice.token, &ch, "over tls").await.unwrap();
    assert_eq!(sub.messages(1, T).await, vec![sent]);
    // The plain ports are not there: Redis has only its TLS port.
    assert!(
        redis::Client::open(format!("redis://127.0.0.1:{}", stack.redis.port()))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_relay_given_the_wrong_ca_refuses_the_servers_and_is_not_ready() {
    let stack = Stack::with(StackOptions { relays: 0, tls: true, ..Default::default() }).await;
    let pki = Pki::beside(&stack.dir().join("nats-server"));
    let wrong = pki.other_ca.to_str().unwrap();
    for (key, part) in [("RELAY_REDIS_CA_FILE", "redis"), ("RELAY_NATS_CA_FILE", "nats")] {
        let mut relay = stack.launch_relay(&[(key, wrong)]);
        eventually(T, "the relay answers its readiness probe", || async { relay.readiness().await.starts_with("503") })
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let readiness = relay.readiness().await;
        assert!(readiness.starts_with("503") && readiness.contains(part), "{key}: {readiness}");
        let log = relay.log();
        assert!(log.contains("not ready") && log.contains(part), "{key}: {log}");
        assert!(
            log.to_lowercase().contains("certificate") || readiness.to_lowercase().contains("certificate"),
            "{key}: the log or readiness says it is about the certificate:\n{readiness}\n{log}"
        );
        assert!(!log.contains("app-secret") && !log.contains("relay-secret"), "passwords in the log:\n{log}");
        assert_eq!(relay.exited(), None, "a wrong CA is an outage to wait out, not a crash");
        relay.kill().await;
    }
}

#[tokio::test]
async fn pocketbase_over_https_is_trusted_through_a_private_ca_and_refused_without_it() {
    let stack = Stack::with(StackOptions { relays: 0, tls: true, ..Default::default() }).await;
    let pki = Pki::beside(&stack.dir().join("nats-server"));
    let proxy = relay_tests::TlsProxy::start(&pki, stack.pocketbase.port).await;
    let https = format!("https://127.0.0.1:{}", proxy.port);
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("https");
    for (ca, works) in [(&pki.ca, true), (&pki.other_ca, false)] {
        let ca = ca.to_str().unwrap();
        let mut relay = stack.launch_relay(&[("RELAY_POCKETBASE_URL", &https), ("RELAY_POCKETBASE_CA_FILE", ca)]);
        eventually(T, "relay ready", || relay.ready()).await;
        let mut c = relay_tests::Client::connect(&relay.addr()).await;
        match c.publish(&alice.token, &ch, "over https").await {
            Ok(m) => assert!(works, "trusted a certificate its CA did not sign: {m:?}"),
            Err(e) => {
                assert!(!works, "{e:?}");
                assert_eq!(e.code(), tonic::Code::Unavailable);
                assert_eq!(e.message(), "authentication service unavailable; retry");
                eventually(T, "the log says why", || async { relay.log().contains("backend unavailable") }).await;
            }
        }
        relay.kill().await;
    }
}
