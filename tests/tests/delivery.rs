//! Publish and subscribe across replicas: broadcast, catch-up, the history/live handoff, perUser
//! and queue delivery.

use std::collections::HashSet;
use std::time::Duration;

use relay_channel::{ChannelSettings, Delivery};
use relay_tests::{Event, Position, Stack, unique};

const T: Duration = Duration::from_secs(10);

/// Reads two streams that share a channel's messages until both go quiet; returns the seqs seen
/// (each at most once, across both) and how many each stream got.
async fn drain_shares(subs: [&mut relay_tests::Sub; 2]) -> (HashSet<u64>, [usize; 2]) {
    let mut seen = HashSet::new();
    let mut per = [0usize; 2];
    for (i, sub) in subs.into_iter().enumerate() {
        while let Some(Ok(ev)) = sub.try_next(Duration::from_millis(700)).await {
            if let Event::Message(m) = ev {
                assert!(seen.insert(m.seq), "seq {} delivered twice", m.seq);
                per[i] += 1;
            }
        }
    }
    (seen, per)
}

/// Settings with the given delivery and no publish rate limit.
fn unlimited(delivery: Delivery) -> ChannelSettings {
    let mut s = ChannelSettings { delivery, ..Default::default() };
    s.limits.publish_per_second_per_user = 0;
    s
}

#[tokio::test]
async fn a_message_published_on_one_replica_reaches_a_subscriber_on_the_other() {
    let stack = Stack::start().await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let ch = unique("chat");
    let mut sub = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    let rec = sub.recovery().await;
    assert!(rec.recovered);
    assert_eq!(rec.channelid, ch);

    let sent = stack.client(1).await.publish(&alice.token, &ch, "hello bob").await.unwrap();
    assert_eq!((sent.seq, sent.userid.as_str(), sent.channelid.as_str()), (1, alice.id.as_str(), ch.as_str()));
    assert_eq!(sent.username, "alice", "the sender's PocketBase name travels with the message");
    assert!(!sent.id.is_empty());
    let got = sub.messages(1, T).await;
    assert_eq!(got, vec![sent.clone()], "the subscriber sees exactly the stored message");

    // The wire payload on NATS keeps the seed's names: any NATS client can read it.
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let mut raw = nats.subscribe(format!("events.{ch}")).await.unwrap();
    nats.flush().await.unwrap();
    let second = stack.client(0).await.publish(&alice.token, &ch, "second").await.unwrap();
    let msg = tokio::time::timeout(T, futures::StreamExt::next(&mut raw)).await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(json["channelid"], ch.as_str());
    assert_eq!(json["userid"], alice.id.as_str());
    assert_eq!(json["text"], "second");
    assert_eq!(json["username"], "alice");
    assert_eq!(json["ts"].as_i64(), Some(second.ts));
    assert!(second.ts > sent.ts && second.seq == 2);
}

#[tokio::test]
async fn a_subscriber_catches_up_since_seq_and_since_ts() {
    let stack = Stack::start().await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("room");
    let mut c = stack.client(0).await;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(c.publish(&alice.token, &ch, &format!("m{i}")).await.unwrap());
    }
    let mut other = stack.client(1).await;
    let mut sub = other.subscribe(&alice.token, &[(&ch, Some(Position::SinceSeq(4)))]).await.unwrap();
    assert!(sub.recovery().await.recovered);
    assert_eq!(sub.messages(6, T).await, sent[4..].to_vec());

    let mut sub = other.subscribe(&alice.token, &[(&ch, Some(Position::SinceTs(sent[6].ts)))]).await.unwrap();
    assert!(sub.recovery().await.recovered);
    assert_eq!(sub.messages(3, T).await, sent[7..].to_vec());
    // Then live.
    let live = c.publish(&alice.token, &ch, "live").await.unwrap();
    assert_eq!(sub.messages(1, T).await, vec![live]);

    // Since 0: everything; since the last: nothing but live.
    let mut sub = other.subscribe(&alice.token, &[(&ch, Some(Position::SinceSeq(0)))]).await.unwrap();
    assert!(sub.recovery().await.recovered);
    assert_eq!(sub.messages(11, T).await.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=11).collect::<Vec<_>>());
}

#[tokio::test]
async fn messages_published_while_a_subscriber_joins_arrive_complete_in_order_once() {
    let stack = Stack::with(relay_tests::StackOptions::default().env("RELAY_STREAM_BUFFER", "4096")).await;
    let names: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
    let users: Vec<_> = futures::future::join_all(names.iter().map(|n| stack.pocketbase.create_user(n))).await;
    let ch = unique("burst");
    let mut settings = ChannelSettings::default();
    settings.limits.publish_per_second_per_user = 0;
    settings.history.max_messages = 10_000;
    stack.declare(&ch, &settings).await;

    // Four publishers, two per replica, 150 messages each: 600 in all, interleaved across replicas.
    const EACH: usize = 150;
    let mut publishers = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let mut c = stack.client(i % 2).await;
        let (token, ch) = (u.token.clone(), ch.clone());
        publishers.push(tokio::spawn(async move {
            for n in 0..EACH {
                c.publish(&token, &ch, &format!("{i}:{n}")).await.unwrap();
            }
        }));
    }
    // Join mid-burst, on each replica, from the start of the channel.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut subs = Vec::new();
    for r in 0..2 {
        subs.push(
            stack.client(r).await.subscribe(&users[0].token, &[(&ch, Some(Position::SinceSeq(0)))]).await.unwrap(),
        );
    }
    for p in publishers {
        p.await.unwrap();
    }
    let total = EACH * users.len();
    for mut sub in subs {
        assert!(sub.recovery().await.recovered);
        let got = sub.messages(total, Duration::from_secs(30)).await;
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "complete, in order, once");
        assert!(got.windows(2).all(|w| w[0].ts < w[1].ts), "ts strictly increasing");
        // Per publisher, its own order is kept.
        for i in 0..users.len() {
            let mine: Vec<_> =
                got.iter().filter(|m| m.text.starts_with(&format!("{i}:"))).map(|m| m.text.clone()).collect();
            assert_eq!(mine, (0..EACH).map(|n| format!("{i}:{n}")).collect::<Vec<_>>());
        }
        // Nothing more.
        match sub.try_next(Duration::from_millis(300)).await {
            None | Some(Ok(Event::Heartbeat)) => {}
            other => panic!("unexpected extra event {other:?}"),
        }
    }
}

#[tokio::test]
async fn per_user_delivery_reaches_each_user_once_whichever_replica_holds_the_stream() {
    let stack = Stack::start().await;
    let (alice, bob, carol) = (
        stack.pocketbase.create_user("alice").await,
        stack.pocketbase.create_user("bob").await,
        stack.pocketbase.create_user("carol").await,
    );
    let ch = unique("notify");
    stack.declare(&ch, &unlimited(Delivery::PerUser)).await;
    // Bob has a stream on each replica; Carol one.
    let mut bob0 = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    let mut bob1 = stack.client(1).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    let mut carol0 = stack.client(0).await.subscribe(&carol.token, &[(&ch, None)]).await.unwrap();
    for s in [&mut bob0, &mut bob1, &mut carol0] {
        s.recovery().await;
    }
    let mut c = stack.client(1).await;
    const N: usize = 40;
    for i in 0..N {
        c.publish(&alice.token, &ch, &format!("n{i}")).await.unwrap();
    }
    let carol_got = carol0.messages(N, T).await;
    assert_eq!(carol_got.len(), N);
    let (bob_seqs, per) = drain_shares([&mut bob0, &mut bob1]).await;
    assert_eq!(bob_seqs.len(), N, "bob gets every message once across his two streams");
    assert!(per[0] > 0 && per[1] > 0, "both of bob's streams share the load ({per:?})");
}

#[tokio::test]
async fn queue_delivery_hands_each_message_to_exactly_one_subscriber() {
    let stack = Stack::start().await;
    let (alice, w1, w2) = (
        stack.pocketbase.create_user("alice").await,
        stack.pocketbase.create_user("w1").await,
        stack.pocketbase.create_user("w2").await,
    );
    let ch = unique("jobs");
    stack.declare(&ch, &unlimited(Delivery::Queue)).await;
    let mut a = stack.client(0).await.subscribe(&w1.token, &[(&ch, None)]).await.unwrap();
    let mut b = stack.client(1).await.subscribe(&w2.token, &[(&ch, None)]).await.unwrap();
    a.recovery().await;
    b.recovery().await;
    const N: usize = 40;
    let mut c = stack.client(0).await;
    for i in 0..N {
        c.publish(&alice.token, &ch, &format!("job{i}")).await.unwrap();
    }
    let (seen, per) = drain_shares([&mut a, &mut b]).await;
    assert_eq!(seen.len(), N, "every job delivered once");
    assert!(per[0] > 0 && per[1] > 0, "both workers got jobs: {per:?}");
}

#[tokio::test]
async fn large_messages_page_within_a_byte_budget_and_one_the_bus_cannot_carry_is_refused_unstored() {
    let stack = Stack::start().await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("large");
    let mut settings = unlimited(Delivery::Broadcast);
    settings.limits.max_message_bytes = 1024 * 1024;
    stack.declare(&ch, &settings).await;
    let mut c = stack.client(0).await;
    let mut sent = Vec::new();
    for i in 0..6u8 {
        let text = char::from(b'a' + i).to_string().repeat(400 * 1024);
        sent.push(c.publish(&alice.token, &ch, &text).await.unwrap());
    }
    // Six 400 KiB messages are more than one history page holds: pages stop short and say so.
    let page = c.history(&alice.token, &ch, Some(Position::SinceSeq(0)), 100).await.unwrap();
    assert!(page.more && !page.messages.is_empty() && page.messages.len() < 6, "a page of {}", page.messages.len());
    // A stream reads on until it has them all, in order.
    let mut sub = c.subscribe(&alice.token, &[(&ch, Some(Position::SinceSeq(0)))]).await.unwrap();
    assert!(sub.recovery().await.recovered);
    assert_eq!(sub.messages(6, T).await, sent);

    // Within the channel's 1 MiB text limit, but control characters encode as six bytes each: more
    // than NATS takes. Refused before it is stored, not stored and then never delivered.
    let escaped = "\u{1}".repeat(300 * 1024);
    let err = c.publish(&alice.token, &ch, &escaped).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("message bus takes at most"), "{}", err.message());
    let page = c.history(&alice.token, &ch, Some(Position::SinceSeq(6)), 100).await.unwrap();
    assert!(page.messages.is_empty(), "nothing was stored");
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeats_and_a_busy_one_messages_instead() {
    let stack =
        Stack::with(relay_tests::StackOptions { relays: 1, ..Default::default() }.env("RELAY_HEARTBEAT", "2s")).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("beat");
    let mut sub = stack.client(0).await.subscribe(&alice.token, &[(&ch, None)]).await.unwrap();
    sub.recovery().await;
    let mut client = stack.client(0).await;
    // Idle: a heartbeat within two periods (the stream's start counts as traffic for the first),
    // then one every period: the heartbeat is not traffic that makes the next one unnecessary.
    for wait in [6, 3] {
        match sub.try_next(Duration::from_secs(wait)).await {
            Some(Ok(Event::Heartbeat)) => {}
            other => panic!("an idle stream got {other:?} instead of a heartbeat within {wait} s"),
        }
    }
    // Busy (a message every 200 ms, for two periods): messages only, no heartbeat between them.
    let publisher = tokio::spawn(async move {
        for i in 0..20 {
            client.publish(&alice.token, &ch, &format!("m{i}")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut messages = 0;
    while messages < 20 {
        match sub.try_next(T).await {
            Some(Ok(Event::Message(_))) => messages += 1,
            // The period that was idle when the publishing started may still end in a beat.
            Some(Ok(Event::Heartbeat)) if messages < 3 => {}
            other => panic!("a busy stream got {other:?} after {messages} messages"),
        }
    }
    publisher.await.unwrap();
}
