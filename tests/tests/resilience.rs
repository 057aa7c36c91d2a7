//! Failures: a replica killed mid-stream, NATS and Redis restarted under live clients, SIGTERM,
//! slow consumers, retention. Nothing acknowledged is lost.

use std::time::Duration;

use relay::proto::Message;
use relay_channel::ChannelSettings;
use relay_tests::{Client, Event, Position, Stack, StackOptions, eventually, unique};
use tonic::Code;

const T: Duration = Duration::from_secs(10);

/// Publishes `n` messages, retrying each until acknowledged (as a careful client does, with an
/// idempotency key so a retry is stored once); returns the acknowledged messages.
async fn publish_all(c: &mut Client, token: &str, ch: &str, prefix: &str, n: usize) -> Vec<Message> {
    let mut acked = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}-{i}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match c.publish_with_key(token, ch, &key, &key).await {
                Ok(m) => {
                    acked.push(m);
                    break;
                }
                Err(e) if e.code() == Code::Unavailable || e.code() == Code::Unknown => {
                    assert!(tokio::time::Instant::now() < deadline, "publish never recovered: {e:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("publish {key}: {e:?}"),
            }
        }
    }
    acked
}

/// Reads messages until every acknowledged seq arrived; checks order and uniqueness on the way.
async fn assert_receives(sub: &mut relay_tests::Sub, acked: &[Message], after: u64) -> u64 {
    let want: std::collections::BTreeSet<u64> = acked.iter().map(|m| m.seq).filter(|s| *s > after).collect();
    let mut last = after;
    let mut seen = std::collections::BTreeSet::new();
    while !want.is_subset(&seen) {
        match sub.next(T).await {
            Ok(Event::Message(m)) => {
                assert!(m.seq > last, "seq {} after {last}: out of order or duplicate", m.seq);
                last = m.seq;
                seen.insert(m.seq);
            }
            Ok(_) => {}
            Err(s) => panic!("stream ended with {s:?}; still missing {:?}", want.difference(&seen).collect::<Vec<_>>()),
        }
    }
    last
}

#[tokio::test]
async fn a_client_whose_replica_is_killed_resumes_on_the_other_and_loses_nothing() {
    let mut stack = Stack::start().await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let ch = unique("failover");
    let mut settings = ChannelSettings::default();
    settings.limits.publish_per_second_per_user = 0;
    stack.declare(&ch, &settings).await;

    let mut sub = stack.client(0).await.subscribe(&bob.token, &[(&ch, Some(Position::SinceSeq(0)))]).await.unwrap();
    sub.recovery().await;
    let mut publisher = stack.client(1).await;
    let first = publish_all(&mut publisher, &alice.token, &ch, "a", 50).await;
    let mut last = assert_receives(&mut sub, &first, 0).await;

    // Kill bob's replica while messages keep coming.
    let (token, ch2) = (alice.token.clone(), ch.clone());
    let background = tokio::spawn(async move { publish_all(&mut publisher, &token, &ch2, "b", 100).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    stack.relays[0].kill().await;
    // The stream ends (transport error); bob reads what he already had.
    loop {
        match sub.try_next(T).await {
            Some(Ok(Event::Message(m))) => {
                assert_eq!(m.seq, last + 1);
                last = m.seq;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    // Resume on the other replica from the last seq seen.
    let mut sub = stack.client(1).await.subscribe(&bob.token, &[(&ch, Some(Position::SinceSeq(last)))]).await.unwrap();
    assert!(sub.recovery().await.recovered);
    let second = background.await.unwrap();
    assert_receives(&mut sub, &second, last).await;
}

/// Two replicas with Bob streaming a channel on replica 0 and Alice publishing on replica 1, five
/// messages already through: the starting point of an outage test.
struct LiveChannel {
    stack: Stack,
    alice: relay_tests::TestUser,
    bob: relay_tests::TestUser,
    ch: String,
    sub: relay_tests::Sub,
    publisher: Client,
    last: u64,
}

impl LiveChannel {
    async fn start(name: &str) -> Self {
        let stack = Stack::start().await;
        let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
        let ch = unique(name);
        let mut sub = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
        sub.recovery().await;
        let mut publisher = stack.client(1).await;
        let before = publish_all(&mut publisher, &alice.token, &ch, "before", 5).await;
        let last = assert_receives(&mut sub, &before, 0).await;
        Self { stack, alice, bob, ch, sub, publisher, last }
    }

    /// Publishes five more and checks the open stream gets them after what it had.
    async fn still_delivers(&mut self) -> Vec<Message> {
        let after = publish_all(&mut self.publisher, &self.alice.token, &self.ch, "after", 5).await;
        assert_receives(&mut self.sub, &after, self.last).await;
        after
    }
}

#[tokio::test]
async fn nats_restarted_under_live_clients_and_service_recovers_by_itself() {
    let mut live = LiveChannel::start("natsdown").await;
    let stack = &mut live.stack;
    stack.nats.stop().await;
    eventually(T, "relays notice NATS is gone", || async { !stack.relays[0].ready().await }).await;
    stack.nats.restart().await;
    eventually(T, "relays reconnect", || async { stack.relays[0].ready().await && stack.relays[1].ready().await })
        .await;

    // The same stream keeps working, and new ones too.
    live.still_delivers().await;
    let (ch, bob) = (&live.ch, &live.bob);
    let mut fresh =
        live.stack.client(1).await.subscribe(&bob.token, &[(ch, Some(Position::SinceSeq(0)))]).await.unwrap();
    fresh.recovery().await;
    assert_eq!(fresh.messages(10, T).await.len(), 10);
}

#[tokio::test]
async fn redis_restarted_under_live_clients_and_service_recovers_by_itself() {
    let mut live = LiveChannel::start("redisdown").await;
    let stack = &mut live.stack;
    stack.redis.stop().await;
    let e = live.publisher.publish(&live.alice.token, &live.ch, "while down").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    eventually(T, "not ready without Redis", || async { !stack.relays[1].ready().await }).await;
    stack.redis.restart().await;
    eventually(T, "ready again", || async { stack.relays[1].ready().await }).await;

    let after = live.still_delivers().await;
    assert_eq!(after[0].seq, 6, "seq continues (Redis keeps its data across a restart)");
}

#[tokio::test]
async fn sigterm_ends_streams_with_unavailable_and_the_process_exits_cleanly() {
    let mut stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let bob = stack.pocketbase.create_user("bob").await;
    let ch = unique("term");
    let mut sub = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    sub.recovery().await;
    let relay = &mut stack.relays[0];
    let (status, exit) = tokio::join!(sub.ending(T), relay.terminate());
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("reconnect"), "{}", status.message());
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test]
async fn idle_streams_get_heartbeats() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }.env("RELAY_HEARTBEAT", "200ms")).await;
    let bob = stack.pocketbase.create_user("bob").await;
    let mut sub = stack.client(0).await.subscribe(&bob.token, &[(&unique("quiet"), None)]).await.unwrap();
    sub.recovery().await;
    assert_eq!(sub.next(Duration::from_secs(2)).await.unwrap(), Event::Heartbeat);
    assert_eq!(sub.next(Duration::from_secs(2)).await.unwrap(), Event::Heartbeat);
}

#[tokio::test]
async fn a_cursor_older_than_retention_is_reported_not_skipped() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("short");
    let mut settings = ChannelSettings::default();
    settings.history.max_age_secs = 1;
    stack.declare(&ch, &settings).await;
    let mut c = stack.client(0).await;
    for i in 0..3 {
        c.publish(&alice.token, &ch, &format!("old{i}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let fresh = c.publish(&alice.token, &ch, "fresh").await.unwrap();

    let mut sub = c.subscribe(&alice.token, &[(&ch, Some(Position::SinceSeq(1)))]).await.unwrap();
    let rec = sub.recovery().await;
    assert!(!rec.recovered, "seq 2 and 3 are gone: the stream must say so");
    assert_eq!(sub.messages(1, T).await, vec![fresh.clone()]);
    // A cursor within retention is recovered.
    let mut sub = c.subscribe(&alice.token, &[(&ch, Some(Position::SinceSeq(3)))]).await.unwrap();
    assert!(sub.recovery().await.recovered);
    assert_eq!(sub.messages(1, T).await, vec![fresh]);
    // A seq from the future (a Redis that lost its data) is not trusted either.
    let mut sub = c.subscribe(&alice.token, &[(&ch, Some(Position::SinceSeq(999)))]).await.unwrap();
    assert!(!sub.recovery().await.recovered);
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_with_resource_exhausted() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }.env("RELAY_STREAM_BUFFER", "16")).await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let ch = unique("firehose");
    let mut settings = ChannelSettings::default();
    settings.limits.publish_per_second_per_user = 0;
    settings.limits.max_message_bytes = 65536;
    stack.declare(&ch, &settings).await;
    let mut sub = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    sub.recovery().await;
    // Bob stops reading; 40 MB go by.
    let mut c = stack.client(0).await;
    let text = "x".repeat(60_000);
    let publishes = futures::future::join_all((0..8).map(|_| {
        let (mut c, token, ch, text) = (c.clone(), alice.token.clone(), ch.clone(), text.clone());
        async move {
            for _ in 0..85 {
                c.publish(&token, &ch, &text).await.unwrap();
            }
        }
    }));
    publishes.await;
    let status = sub.ending(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("slow consumer"), "{}", status.message());
    // The relay is fine.
    c.publish(&alice.token, &ch, "ok").await.unwrap();
}

#[tokio::test]
async fn history_pages_oldest_first_with_cursor_and_limit() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("pages");
    let mut settings = ChannelSettings::default();
    settings.limits.publish_per_second_per_user = 0;
    stack.declare(&ch, &settings).await;
    let mut c = stack.client(0).await;
    let sent = publish_all(&mut c, &alice.token, &ch, "h", 25).await;

    let newest = c.history(&alice.token, &ch, None, 10).await.unwrap();
    assert_eq!(newest.messages, sent[15..].to_vec(), "no cursor: the newest, oldest first");
    assert!(newest.more);
    let mut all = Vec::new();
    let mut cursor = 0;
    loop {
        let page = c.history(&alice.token, &ch, Some(Position::SinceSeq(cursor)), 10).await.unwrap();
        all.extend(page.messages.iter().cloned());
        cursor = all.last().unwrap().seq;
        if !page.more {
            break;
        }
    }
    assert_eq!(all, sent);
    let by_ts = c.history(&alice.token, &ch, Some(Position::SinceTs(sent[20].ts)), 100).await.unwrap();
    assert_eq!(by_ts.messages, sent[21..].to_vec());
    assert!(!by_ts.more);
    let none = c.history(&alice.token, &unique("empty"), None, 10).await.unwrap();
    assert!(none.messages.is_empty() && !none.more);
}

#[tokio::test]
async fn calls_while_nats_is_down_fail_with_unavailable_instead_of_hanging() {
    let mut stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let mut c = stack.client(0).await;
    c.history(&alice.token, "warmup", None, 1).await.unwrap();
    stack.nats.stop().await;
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(15), c.subscribe(&alice.token, &[(&unique("dark"), None)]))
        .await
        .expect("subscribe must not hang while NATS is down")
        .err()
        .expect("refused");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    stack.nats.restart().await;
    eventually(T, "subscribing works again", || {
        let (mut c, token) = (c.clone(), alice.token.clone());
        async move { c.subscribe(&token, &[(&unique("light"), None)]).await.is_ok() }
    })
    .await;
}
