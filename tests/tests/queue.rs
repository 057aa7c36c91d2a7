//! Queue delivery, at least once: a message counts as delivered when a worker acks it. Workers that
//! die, stop acking or leave hand their messages on; nothing acknowledged to the publisher is lost.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use relay::proto::Message;
use relay_tests::{Client, Event, Stack, Sub, TestUser, eventually, unique};
use tonic::Code;

const T: Duration = Duration::from_secs(20);

/// A queue channel as the operator declares it.
async fn queue_channel(stack: &Stack, prefix: &str, ack_wait: &str, max_unacked: u32) -> String {
    let ch = unique(prefix);
    stack
        .declare_spec(
            &ch,
            serde_json::json!({
                "delivery": "queue",
                "limits": {"publishPerSecondPerUser": 0},
                "queue": {"ackWait": ack_wait, "maxUnackedPerStream": max_unacked},
            }),
        )
        .await;
    ch
}

async fn consumer(stack: &Stack, ch: &str, name: &str) -> PullConsumer {
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());
    js.get_consumer_from_stream(name, relay_channel::names::stream_name(ch)).await.unwrap()
}

/// Everything published is acked and nothing waits at the consumer.
async fn all_acked(stack: &Stack, ch: &str, name: &str, n: u64) {
    let c = consumer(stack, ch, name).await;
    eventually(T, "every message acked at the consumer", || {
        let mut c = c.clone();
        async move {
            let info = c.info().await.unwrap();
            info.num_ack_pending == 0 && info.num_pending == 0 && info.ack_floor.stream_sequence == n
        }
    })
    .await;
}

async fn publish(c: &mut Client, user: &TestUser, ch: &str, n: usize) {
    for i in 0..n {
        c.publish(&user.token, ch, &format!("job{i}")).await.unwrap();
    }
}

/// The next message of a stream, skipping heartbeats and markers; None when nothing comes in `within`.
async fn next_message(sub: &mut Sub, within: Duration) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sub.try_next(left).await {
            Some(Ok(Event::Message(m))) => return Some(m),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

/// What a worker did: seq -> redelivered count as received, for each message it acked; and the
/// message whose ack was cut off by the relay dying (the relay may have applied it first).
struct Worked {
    acked: BTreeMap<u64, u32>,
    cut_off: Option<u64>,
}

/// A worker: reads, "processes" for `work`, acks through `acker`; records what it acked.
async fn work(
    mut sub: Sub,
    mut acker: Client,
    user: TestUser,
    ch: String,
    work: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Worked {
    let mut acked = BTreeMap::new();
    while !*stop.borrow() {
        let Some(m) = next_message(&mut sub, Duration::from_millis(500)).await else { continue };
        assert!(m.needs_ack, "queue messages ask to be acked");
        tokio::time::sleep(work).await;
        match acker.ack(&user.token, &sub.id, &ch, &m.epoch, &[m.seq]).await {
            Ok(1) => {
                acked.insert(m.seq, m.redelivered);
            }
            Ok(_) => {} // handed to another worker meanwhile
            Err(_) => {
                // The relay holding the stream is gone, perhaps after it passed the ack on.
                return Worked { acked, cut_off: Some(m.seq) };
            }
        }
    }
    Worked { acked, cut_off: None }
}

#[tokio::test]
async fn a_worker_killed_mid_message_loses_nothing_its_messages_are_redelivered() {
    let mut stack = Stack::start().await;
    let (alice, w1, w2) = (
        stack.pocketbase.create_user("alice").await,
        stack.pocketbase.create_user("w1").await,
        stack.pocketbase.create_user("w2").await,
    );
    let ch = queue_channel(&stack, "jobs", "2s", 4).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let sub1 = stack.client(0).await.subscribe(&w1.token, &[(&ch, None)]).await.unwrap();
    let sub2 = stack.client(1).await.subscribe(&w2.token, &[(&ch, None)]).await.unwrap();
    let h1 = tokio::spawn(work(sub1, stack.client(0).await, w1, ch.clone(), Duration::from_millis(20), stop.clone()));
    let h2 = tokio::spawn(work(sub2, stack.client(1).await, w2, ch.clone(), Duration::from_millis(20), stop));

    const N: usize = 100;
    publish(&mut stack.client(1).await, &alice, &ch, N).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Replica 0 dies with messages on their way to worker 1 and in its hands.
    stack.relays[0].kill().await;
    all_acked(&stack, &ch, "relay-queue", N as u64).await;
    stop_tx.send(true).unwrap();
    let (w1, w2) = (h1.await.unwrap(), h2.await.unwrap());
    let (a1, a2) = (w1.acked, w2.acked);
    // JetStream counts every job acked (all_acked): one whose ack worker 1 sent as its relay died
    // was acked by that relay, or it would have come to worker 2 again.
    let acked: std::collections::BTreeSet<u64> = a1.keys().chain(a2.keys()).copied().chain(w1.cut_off).collect();
    assert_eq!(acked, (1..=N as u64).collect(), "every job acked by some worker (w1 {}, w2 {})", a1.len(), a2.len());
    assert!(!a1.is_empty(), "worker 1 worked before its relay died");
    assert!(a2.values().any(|r| *r > 0), "what worker 1 held came to worker 2 as a redelivery");
}

#[tokio::test]
async fn a_stream_holds_at_most_its_unacked_limit_and_gives_back_what_it_held_when_it_ends() {
    let stack = Stack::start().await;
    let (alice, lazy, busy) = (
        stack.pocketbase.create_user("alice").await,
        stack.pocketbase.create_user("lazy").await,
        stack.pocketbase.create_user("busy").await,
    );
    // A long ack wait: what comes back quickly comes back because the stream gave it back.
    let ch = queue_channel(&stack, "jobs", "120s", 3).await;
    let mut never_acks = stack.client(0).await.subscribe(&lazy.token, &[(&ch, None)]).await.unwrap();
    never_acks.recovery().await;
    publish(&mut stack.client(0).await, &alice, &ch, 20).await;
    let mut held = Vec::new();
    while let Some(m) = next_message(&mut never_acks, Duration::from_millis(800)).await {
        held.push(m.seq);
    }
    assert_eq!(held.len(), 3, "a stream that does not ack holds only its limit: {held:?}");

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let sub = stack.client(1).await.subscribe(&busy.token, &[(&ch, None)]).await.unwrap();
    let worker = tokio::spawn(work(sub, stack.client(1).await, busy, ch.clone(), Duration::ZERO, stop));
    // The busy worker gets everything else; then the lazy one leaves and its three come over.
    eventually(T, "17 acked by the busy worker", || async {
        consumer(&stack, &ch, "relay-queue").await.info().await.unwrap().num_ack_pending == 3
    })
    .await;
    drop(never_acks);
    all_acked(&stack, &ch, "relay-queue", 20).await;
    stop_tx.send(true).unwrap();
    let acked = worker.await.unwrap().acked;
    assert_eq!(acked.len(), 20);
    for seq in held {
        assert_eq!(acked.get(&seq), Some(&1), "seq {seq} was given back and delivered a second time");
    }
}

#[tokio::test]
async fn acks_reach_the_stream_through_any_replica_and_only_from_its_owner() {
    let stack = Stack::start().await;
    let (alice, w1, mallory) = (
        stack.pocketbase.create_user("alice").await,
        stack.pocketbase.create_user("w1").await,
        stack.pocketbase.create_user("mallory").await,
    );
    let ch = queue_channel(&stack, "jobs", "30s", 8).await;
    let mut sub = stack.client(0).await.subscribe(&w1.token, &[(&ch, None)]).await.unwrap();
    publish(&mut stack.client(0).await, &alice, &ch, 2).await;
    let (m1, m2) = (next_message(&mut sub, T).await.unwrap(), next_message(&mut sub, T).await.unwrap());
    // Through the other replica (an ingress sends unary calls anywhere).
    let mut other = stack.client(1).await;
    let e = other.ack(&mallory.token, &sub.id, &ch, "", &[m1.seq]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "someone else's stream: {e:?}");
    assert_eq!(other.ack(&w1.token, &sub.id, &ch, &m1.epoch, &[m1.seq]).await.unwrap(), 1);
    assert_eq!(other.ack(&w1.token, &sub.id, &ch, &m1.epoch, &[m1.seq]).await.unwrap(), 0, "acked already");
    assert_eq!(stack.client(0).await.ack(&w1.token, &sub.id, &ch, "", &[m2.seq, 999]).await.unwrap(), 1);
    for (stream, code) in [("nonsense", Code::InvalidArgument), ("zzzzzzzzzz-1", Code::NotFound)] {
        let e = other.ack(&w1.token, stream, &ch, "", &[1]).await.unwrap_err();
        assert_eq!(e.code(), code, "{stream}: {e:?}");
    }
    let e = other.ack(&w1.token, &sub.id, &ch, "not an epoch!", &[1]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    all_acked(&stack, &ch, "relay-queue", 2).await;
}

#[tokio::test]
async fn a_sub_channel_of_a_queue_channel_is_delivered_at_least_once_with_its_backlog() {
    let stack = Stack::start().await;
    let (alice, w1) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("w1").await);
    let ch = queue_channel(&stack, "jobs", "30s", 4).await;
    let sub_ch = format!("{ch}.eu");
    publish(&mut stack.client(0).await, &alice, &sub_ch, 5).await;
    let mut sub = stack.client(1).await.subscribe(&w1.token, &[(&sub_ch, None)]).await.unwrap();
    let mut acker = stack.client(0).await;
    for want in 1..=5u64 {
        let m = next_message(&mut sub, T).await.expect("backlog message");
        assert_eq!((m.channelid.as_str(), m.seq), (sub_ch.as_str(), want));
        acker.ack(&w1.token, &sub.id, &sub_ch, &m.epoch, &[m.seq]).await.unwrap();
    }
    all_acked(&stack, &ch, &relay_channel::names::queue_consumer(&sub_ch), 5).await;
}
