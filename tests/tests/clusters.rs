//! The relay on the engines users scale with: a 3-node NATS cluster with clustered JetStream, a
//! 6-node Redis Cluster, and Redis behind Sentinel; each node failure under live clients.

use std::time::Duration;

use relay_channel::ChannelSettings;
use relay_tests::checker::{self, Config};
use relay_tests::{Position, RedisTopology, Stack, StackOptions, unique};

const T: Duration = Duration::from_secs(10);

/// A channel without a rate limit, and a stream on relay 1 reading it from the start.
async fn channel_with_reader(stack: &Stack, token: &str, prefix: &str) -> (String, relay_tests::Sub) {
    channel_with_reader_for(stack, token, prefix, relay_channel::Delivery::Broadcast).await
}

async fn channel_with_reader_for(
    stack: &Stack,
    token: &str,
    prefix: &str,
    delivery: relay_channel::Delivery,
) -> (String, relay_tests::Sub) {
    let ch = unique(prefix);
    let mut settings = ChannelSettings { delivery, ..Default::default() };
    settings.limits.publish_per_second_per_user = 0;
    stack.declare(&ch, &settings).await;
    let mut sub = stack.client(1).await.subscribe(token, &[(&ch, Some(Position::SinceSeq(0)))]).await.unwrap();
    assert!(sub.recovery().await.recovered);
    (ch, sub)
}

/// Publishes with an idempotency key until it is acknowledged, as clients are told to: an attempt
/// answered UNAVAILABLE may still be stored and announced later, and its retry must not count
/// twice. Anything but UNAVAILABLE, or no acknowledgement within 30 s, fails the test.
async fn publish_until_acknowledged(
    c: &mut relay_tests::Client,
    token: &str,
    ch: &str,
    text: &str,
    key: &str,
) -> relay::proto::Message {
    let started = std::time::Instant::now();
    loop {
        match c.publish_with_key(token, ch, text, key).await {
            Ok(m) => return m,
            Err(e) if e.code() == tonic::Code::Unavailable && started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("publishing {key} never came back: {e:?}"),
        }
    }
}

async fn publish_and_receive(stack: &Stack) {
    let alice = stack.pocketbase.create_user("alice").await;
    let (ch, mut sub) = channel_with_reader(stack, &alice.token, "room").await;
    let mut c = stack.client(0).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(c.publish(&alice.token, &ch, &format!("m{i}")).await.unwrap());
    }
    assert_eq!(sub.messages(20, T).await, sent);
}

#[tokio::test]
async fn relays_publish_and_deliver_on_a_nats_cluster_and_a_redis_cluster() {
    let stack = Stack::with(StackOptions { nats_nodes: 3, redis: RedisTopology::Cluster, ..Default::default() }).await;
    publish_and_receive(&stack).await;
}

#[tokio::test]
async fn relays_publish_and_deliver_with_redis_behind_sentinel() {
    let stack = Stack::with(StackOptions { redis: RedisTopology::Sentinel, ..Default::default() }).await;
    publish_and_receive(&stack).await;
}

/// A seeded checker run on clusters: every kind of node failure at least once while publishers,
/// subscribers and workers run; every acknowledged message delivered once in order, or a marker.
async fn checker_on(seed: u64, seconds: u64, nats_nodes: usize, redis: RedisTopology) {
    let config = Config { seed, duration: Duration::from_secs(seconds), nats_nodes, redis, ..Default::default() };
    let report = checker::run(config).await;
    println!("{}", report.summary());
    assert!(report.verdict.violations.is_empty(), "{}", report.summary());
    assert!(report.verdict.acknowledged > 100, "too little work to judge: {}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_nats_nodes_and_redis_cluster_masters_die_and_slots_move() {
    checker_on(11, 30, 3, RedisTopology::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_through_sentinel_failovers() {
    checker_on(12, 30, 1, RedisTopology::Sentinel).await;
    // Found by the soak: a failover lost the durable mark, and a resuming stream was replayed
    // from the start of its epoch.
    checker_on(2002, 45, 1, RedisTopology::Sentinel).await;
}

#[tokio::test]
async fn a_replicated_stream_is_placed_on_three_nodes_and_its_leader_reported_and_moved() {
    let mut stack = Stack::with(StackOptions { nats_nodes: 3, ..Default::default() }).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("orders");
    let spec =
        serde_json::json!({"delivery": "queue", "stream": {"replicas": 3}, "limits": {"publishPerSecondPerUser": 0}});
    let outcome = stack.declare_spec(&ch, spec.clone()).await.stream.expect("a stream");
    assert_eq!(outcome.replicas, 3, "{outcome:?}");
    let leader = outcome.leader.clone().expect("a leader on a cluster");
    assert_eq!(outcome.placement.len(), 3, "{:?}", outcome.placement);
    assert_eq!(outcome.placement[0], leader);

    let mut c = stack.client(0).await;
    // A stream just made on a cluster may take a moment to take publishes.
    publish_until_acknowledged(&mut c, &alice.token, &ch, "before", "before").await;
    // The leader's node dies: the other two elect a new one and publishing goes on.
    let i: usize = leader.trim_start_matches('n').parse().unwrap();
    stack.nats.node(i).stop().await;
    let started = std::time::Instant::now();
    publish_until_acknowledged(&mut c, &alice.token, &ch, "after", "after").await;
    println!("publishing again {:?} after the stream leader's node died", started.elapsed());
    let outcome = stack.declare_spec(&ch, spec).await.stream.expect("a stream");
    let moved = outcome.leader.clone().expect("a new leader");
    assert_ne!(moved, leader, "{outcome:?}");
    assert!(outcome.placement.iter().any(|p| p.starts_with(&leader) && p.ends_with(')')), "{:?}", outcome.placement);
    assert_eq!(outcome.messages, 2);
}

#[tokio::test]
async fn a_publish_its_replicas_do_not_confirm_is_not_acknowledged_until_a_retry_is_confirmed() {
    let mut stack = Stack::with(
        StackOptions { redis: RedisTopology::Sentinel, ..Default::default() }.env("RELAY_REDIS_WAIT_REPLICAS", "2"),
    )
    .await;
    let alice = stack.pocketbase.create_user("alice").await;
    // perUser: its streams do not repair gaps from history, so they see the order of announcements.
    let (ch, mut sub) = channel_with_reader_for(&stack, &alice.token, "orders", relay_channel::Delivery::PerUser).await;
    let mut c = stack.client(0).await;
    let first = c.publish_with_key(&alice.token, &ch, "one", "k1").await.unwrap();
    assert_eq!(sub.messages(1, T).await, vec![first.clone()]);

    // One replica stalls: the next publish is stored on the master but not on both replicas.
    stack.redis.node(1).pause();
    let err = c.publish_with_key(&alice.token, &ch, "two", "k2").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("not yet on enough Redis replicas"), "{}", err.message());
    // Not announced, and not readable from history either.
    assert!(
        sub.try_next(Duration::from_millis(700)).await.is_none_or(|e| !matches!(e, Ok(relay_tests::Event::Message(_))))
    );
    let page = c.history(&alice.token, &ch, Some(Position::SinceSeq(0)), 10).await.unwrap();
    assert_eq!(page.messages.len(), 1, "only what replicas confirmed is read: {:?}", page.messages);

    // The replica is back. The next publish's durable mark covers the stored one, which goes out
    // first, so no stream sees the later one before it.
    stack.redis.node(1).resume();
    let third = publish_until_acknowledged(&mut c, &alice.token, &ch, "three", "k3").await;
    assert_eq!(third.seq, first.seq + 2);
    let delivered = sub.messages(2, T).await;
    assert_eq!(
        delivered.iter().map(|m| (m.seq, m.text.as_str())).collect::<Vec<_>>(),
        [(first.seq + 1, "two"), (third.seq, "three")]
    );
    // Its retry finds it stored and acknowledged.
    let second = publish_until_acknowledged(&mut c, &alice.token, &ch, "two", "k2").await;
    assert_eq!((second.seq, second.id.as_str()), (first.seq + 1, delivered[0].id.as_str()));
}
