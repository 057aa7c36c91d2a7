//! Nothing acknowledged is lost, nothing is skipped silently: one test per way it used to happen.
//! (Queue delivery's own cases are in `queue.rs`.)

use std::time::Duration;

use relay::proto::Message;
use relay_channel::{ChannelSettings, Delivery, WireMessage};
use relay_tests::{Event, Position, Stack, StackOptions, Sub, at, unique};
use tonic::Code;

const T: Duration = Duration::from_secs(10);

fn unlimited(delivery: Delivery) -> ChannelSettings {
    let mut s = ChannelSettings { delivery, ..Default::default() };
    s.limits.publish_per_second_per_user = 0;
    s
}

/// Events until `n` messages arrived: (markers as (recovered, epoch), messages).
async fn read(sub: &mut Sub, n: usize) -> (Vec<(bool, String)>, Vec<Message>) {
    let (mut markers, mut messages) = (Vec::new(), Vec::new());
    while messages.len() < n {
        match sub.next(T).await {
            Ok(Event::Message(m)) => messages.push(m),
            Ok(Event::Recovery(r)) => markers.push((r.recovered, r.epoch)),
            Ok(Event::Heartbeat) => {}
            Ok(other) => panic!("an event these channels do not have: {other:?}"),
            Err(s) => panic!("stream ended with {s:?} after {} messages", messages.len()),
        }
    }
    (markers, messages)
}

/// Sleeps until the wall clock (which Redis's `ts` follows on this machine) passes `ns`.
async fn sleep_until_unix(ns: i64) {
    let left = ns - relay::now_nanos();
    if left > 0 {
        tokio::time::sleep(Duration::from_nanos(left as u64)).await;
    }
}

fn seqs(ms: &[Message]) -> Vec<u64> {
    ms.iter().map(|m| m.seq).collect()
}

/// Raw NATS publish of a relay wire message (what another replica would send), bypassing Redis.
async fn inject(stack: &Stack, m: &WireMessage) {
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    nats.publish(format!("events.{}", m.channelid), m.to_json().into()).await.unwrap();
    nats.flush().await.unwrap();
}

fn wire(ch: &str, epoch: &str, seq: u64) -> WireMessage {
    WireMessage {
        channelid: ch.into(),
        userid: "someone".into(),
        username: String::new(),
        text: format!("injected {seq}"),
        ts: relay::now_nanos(),
        seq,
        id: format!("injected-{seq}"),
        epoch: epoch.into(),
    }
}

/// Finding 2: a channel whose history is lost starts a new epoch; open streams say so and keep
/// delivering, and a client resuming with a cursor of the old epoch is told and sent the new one.
#[tokio::test]
async fn a_channel_whose_history_is_lost_starts_a_new_epoch_and_streams_say_so() {
    let stack = Stack::start().await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let ch = unique("reset");
    stack.declare(&ch, &unlimited(Delivery::Broadcast)).await;
    let mut live = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    live.recovery().await;
    let mut c = stack.client(1).await;
    let mut first = Vec::new();
    for i in 0..5 {
        first.push(c.publish(&alice.token, &ch, &format!("before {i}")).await.unwrap());
    }
    let (_, got) = read(&mut live, 5).await;
    assert_eq!(got, first);
    let old_epoch = first[0].epoch.clone();
    assert!(!old_epoch.is_empty(), "messages carry their epoch");

    // Redis loses the channel (a restart without persistence, a lagging replica promoted).
    let mut redis = stack.redis.connection().await;
    let _: () = redis::cmd("DEL")
        .arg(relay_channel::names::meta_key(&ch))
        .arg(relay_channel::names::history_key(&ch))
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut after = Vec::new();
    for i in 0..3 {
        after.push(c.publish(&alice.token, &ch, &format!("after {i}")).await.unwrap());
    }
    assert_eq!(seqs(&after), [1, 2, 3], "seq starts again");
    let new_epoch = after[0].epoch.clone();
    assert_ne!(new_epoch, old_epoch);
    let (markers, got) = read(&mut live, 3).await;
    assert_eq!(markers, [(false, new_epoch.clone())], "the open stream is told, not muted");
    assert_eq!(got, after);

    // Resuming with a cursor of the old epoch: recovered=false, then the new epoch from its start.
    let cursor = at(Position::SinceSeq(5), &old_epoch);
    let mut resumed = stack.client(0).await.subscribe_at(&bob.token, &[(&ch, Some(cursor.clone()))]).await.unwrap();
    let r = resumed.recovery().await;
    assert!(!r.recovered && r.epoch == new_epoch, "{r:?}");
    assert_eq!(resumed.messages(3, T).await, after);
    let page = c.history_at(&alice.token, &ch, Some(cursor), 10).await.unwrap();
    assert!(!page.recovered && page.epoch == new_epoch);
    assert_eq!(page.messages, after);
    // A cursor of the current epoch resumes normally.
    let mut current = c.subscribe_at(&bob.token, &[(&ch, Some(at(Position::SinceSeq(2), &new_epoch)))]).await.unwrap();
    assert!(current.recovery().await.recovered);
    assert_eq!(current.messages(1, T).await, after[2..]);

    // The whole Redis is lost (FLUSHALL): the same again, through a replica that had cached state.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut redis).await.unwrap();
    stack.declare(&ch, &unlimited(Delivery::Broadcast)).await;
    let again = c.publish(&alice.token, &ch, "after flush").await.unwrap();
    assert_eq!(again.seq, 1);
    let (markers, got) = read(&mut live, 1).await;
    assert_eq!(markers, [(false, again.epoch.clone())]);
    assert_eq!(got, [again]);
}

/// Finding 3: history pages past messages that expired but were not trimmed yet.
#[tokio::test]
async fn history_pages_past_expired_messages_that_are_not_trimmed_yet() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("aging");
    let mut settings = unlimited(Delivery::Broadcast);
    settings.history.max_age_secs = 4;
    settings.history.max_messages = 10_000;
    stack.declare(&ch, &settings).await;
    let mut c = stack.client(0).await;
    let mut last_old = 0;
    for i in 0..300 {
        last_old = c.publish(&alice.token, &ch, &format!("old {i}")).await.unwrap().ts;
    }
    sleep_until_unix(last_old + 1_500_000_000).await;
    let mut fresh = Vec::new();
    for i in 0..100 {
        fresh.push(c.publish(&alice.token, &ch, &format!("fresh {i}")).await.unwrap());
    }
    // The old 300 expire (and the fresh, 1.5 s younger, not yet); no publish comes to trim them.
    sleep_until_unix(last_old + 4_500_000_000).await;
    let page = c.history(&alice.token, &ch, Some(Position::SinceSeq(0)), 100).await.unwrap();
    assert_eq!(seqs(&page.messages), seqs(&fresh), "the retained messages, not an empty page");
    assert!(!page.more && !page.recovered, "nothing after them; the cursor is older than retention");
    let page = c.history(&alice.token, &ch, Some(Position::SinceSeq(0)), 60).await.unwrap();
    assert_eq!(seqs(&page.messages), seqs(&fresh[..60]));
    assert!(page.more, "`more` counts what was read, not what was dropped");
    let newest = c.history(&alice.token, &ch, None, 500).await.unwrap();
    assert_eq!(seqs(&newest.messages), seqs(&fresh));
    let mut sub = c.subscribe(&alice.token, &[(&ch, Some(Position::SinceSeq(0)))]).await.unwrap();
    assert!(!sub.recovery().await.recovered);
    assert_eq!(seqs(&sub.messages(100, T).await), seqs(&fresh), "catch-up skips only what expired");
}

/// Finding 4: the age trim removes only what is outside retention.
#[tokio::test]
async fn the_age_trim_keeps_every_message_inside_retention() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("trim");
    let mut settings = unlimited(Delivery::Broadcast);
    settings.history.max_age_secs = 3;
    settings.history.max_messages = 10_000;
    stack.declare(&ch, &settings).await;
    let mut c = stack.client(0).await;
    let mut last_old = 0;
    for i in 0..200 {
        last_old = c.publish(&alice.token, &ch, &format!("old {i}")).await.unwrap().ts;
    }
    sleep_until_unix(last_old + 1_000_000_000).await;
    let mut kept = Vec::new();
    for i in 0..50 {
        kept.push(c.publish(&alice.token, &ch, &format!("kept {i}")).await.unwrap());
    }
    // The first 200 are now outside retention (far more than one 128-entry batch), the 50 inside.
    sleep_until_unix(last_old + 3_300_000_000).await;
    kept.push(c.publish(&alice.token, &ch, "trigger").await.unwrap());
    let mut redis = stack.redis.connection().await;
    let len: usize =
        redis::cmd("XLEN").arg(relay_channel::names::history_key(&ch)).query_async(&mut redis).await.unwrap();
    assert_eq!(len, 51, "the trim removed the 200 old entries and only them");
    let page = c.history(&alice.token, &ch, Some(Position::SinceSeq(200)), 100).await.unwrap();
    assert_eq!(seqs(&page.messages), seqs(&kept));
    assert!(page.recovered);
}

/// Finding 5: while NATS is away, publishes fail fast (none is answered OK), Subscribe fails
/// instead of hanging, other channels are not held up, and SIGTERM still ends the process.
#[tokio::test]
async fn a_nats_outage_fails_callers_fast_and_never_acks_what_nats_did_not_take() {
    let mut stack = Stack::with(
        StackOptions { relays: 1, ..Default::default() }
            .env("RELAY_SHUTDOWN_GRACE", "2s")
            .env("RUST_LOG", "info,h2=debug,hyper=debug"),
    )
    .await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("dark");
    stack.declare(&ch, &unlimited(Delivery::Broadcast)).await;
    let mut c = stack.client(0).await;
    c.publish(&alice.token, &ch, "warm up").await.unwrap();
    stack.nats.stop().await;
    // Far more than async-nats queues (2,048) while disconnected: none may come back OK.
    let started = std::time::Instant::now();
    let outcomes = futures::future::join_all((0..3000).map(|i| {
        let (mut c, token, ch) = (c.clone(), alice.token.clone(), ch.clone());
        async move { tokio::time::timeout(Duration::from_secs(20), c.publish(&token, &ch, &format!("m{i}"))).await }
    }))
    .await;
    assert_eq!(stack.relays[0].exited(), None, "the relay died");
    let ok = outcomes.iter().filter(|o| matches!(o, Ok(Ok(_)))).count();
    let hung = outcomes.iter().filter(|o| o.is_err()).count();
    assert_eq!((ok, hung), (0, 0), "while NATS is down no publish is acked and none hangs");
    let other: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok()?.as_ref().err())
        .filter(|s| s.code() != Code::Unavailable)
        .collect();
    assert!(other.is_empty(), "{} not UNAVAILABLE, e.g. {:?}", other.len(), other.first());
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    // Several broadcast subscribes at once, on different channels: each fails on its own deadline.
    let subs =
        futures::future::join_all(
            (0..5).map(|_| {
                let (mut c, token) = (c.clone(), alice.token.clone());
                async move {
                    tokio::time::timeout(Duration::from_secs(15), c.subscribe(&token, &[(&unique("x"), None)])).await
                }
            }),
        )
        .await;
    assert!(subs.iter().all(|s| matches!(s, Ok(Err(e)) if e.code() == Code::Unavailable)));
    // Told to stop while NATS is away, the relay still leaves within its grace period.
    let exit = tokio::time::timeout(Duration::from_secs(10), stack.relays[0].terminate()).await;
    assert!(exit.is_ok(), "the relay did not exit within 10s of SIGTERM while NATS was down");
}

/// Finding 5, the other half: a NATS that stalls (SIGSTOP) neither acks publishes nor loses them:
/// the relay answers UNAVAILABLE and publishes them when NATS comes back, without a client retry.
#[tokio::test]
async fn a_publish_stored_while_nats_stalls_reaches_subscribers_once_nats_returns() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let ch = unique("stall");
    stack.declare(&ch, &unlimited(Delivery::PerUser)).await;
    let mut sub = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    sub.recovery().await;
    let mut c = stack.client(0).await;
    let first = c.publish(&alice.token, &ch, "before").await.unwrap();
    assert_eq!(sub.messages(1, T).await, [first]);
    stack.nats.pause();
    let e = tokio::time::timeout(Duration::from_secs(15), c.publish(&alice.token, &ch, "during"))
        .await
        .expect("no hang")
        .unwrap_err();
    stack.nats.resume();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("retry with the same idempotency key"), "{}", e.message());
    let got = sub.messages(1, T).await;
    assert_eq!((got[0].seq, got[0].text.as_str()), (2, "during"), "published again by the relay");
}

/// Finding 6: perUser streams drop copies (a retried publish is sent to NATS again) and put
/// messages that arrive out of order back in order.
#[tokio::test]
async fn per_user_streams_drop_copies_and_reorder() {
    let stack = Stack::start().await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let ch = unique("inbox");
    stack.declare(&ch, &unlimited(Delivery::PerUser)).await;
    let mut sub = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    sub.recovery().await;
    let mut c = stack.client(1).await;
    let m1 = c.publish_with_key(&alice.token, &ch, "once", "k1").await.unwrap();
    let again = c.publish_with_key(&alice.token, &ch, "once", "k1").await.unwrap();
    assert_eq!(again, m1, "the retry is answered with the stored message");
    assert_eq!(sub.messages(1, T).await, std::slice::from_ref(&m1));
    // Two replicas publish n+1 before n reaches this stream.
    let (m3, m2) = (wire(&ch, &m1.epoch, 3), wire(&ch, &m1.epoch, 2));
    inject(&stack, &m3).await;
    inject(&stack, &m2).await;
    assert_eq!(seqs(&sub.messages(2, T).await), [2, 3], "in order");
    match sub.try_next(Duration::from_millis(500)).await {
        None | Some(Ok(Event::Heartbeat)) => {}
        other => panic!("nothing else expected, got {other:?}"),
    }
}

/// Finding 7: a live gap that history cannot fill is marked, not skipped silently.
#[tokio::test]
async fn a_live_gap_history_cannot_fill_is_marked() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let ch = unique("holes");
    stack.declare(&ch, &unlimited(Delivery::Broadcast)).await;
    let mut sub = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    sub.recovery().await;
    let m1 = stack.client(0).await.publish(&alice.token, &ch, "one").await.unwrap();
    // Seq 4 arrives; 2 and 3 are in no history (lost on the way, trimmed, whatever).
    inject(&stack, &wire(&ch, &m1.epoch, 4)).await;
    let (markers, got) = read(&mut sub, 2).await;
    assert_eq!(seqs(&got), [1, 4]);
    assert_eq!(markers, [(false, m1.epoch.clone())], "the skip is said");
}

/// Finding 7: a `since_ts` cursor finds its place without reading the history before it.
#[tokio::test]
async fn a_since_ts_cursor_reads_only_what_it_returns() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("long");
    // Fill history straight through the append script's keys would skip the relay: publish for real.
    let mut settings = unlimited(Delivery::Broadcast);
    settings.history.max_messages = 20_000;
    stack.declare(&ch, &settings).await;
    let c = stack.client(0).await;
    let text = "x".repeat(200);
    futures::future::join_all((0..8).map(|_| {
        let (mut c, token, ch, text) = (c.clone(), alice.token.clone(), ch.clone(), text.clone());
        async move {
            for _ in 0..1000 {
                c.publish(&token, &ch, &text).await.unwrap();
            }
        }
    }))
    .await;
    let mut redis = stack.redis.connection().await;
    let out_bytes = |info: String| -> u64 {
        info.lines().find_map(|l| l.strip_prefix("total_net_output_bytes:")).unwrap().trim().parse().unwrap()
    };
    let before = out_bytes(redis::cmd("INFO").arg("stats").query_async(&mut redis).await.unwrap());
    let page = c.clone().history(&alice.token, &ch, Some(Position::SinceTs(1)), 1).await.unwrap();
    let after = out_bytes(redis::cmd("INFO").arg("stats").query_async(&mut redis).await.unwrap());
    assert_eq!((page.messages.len(), page.more), (1, true));
    assert_eq!(page.messages[0].seq, 1);
    // 8,000 entries of 200+ bytes are 1.6 MB; one page of one is a few hundred bytes.
    assert!(after - before < 64 * 1024, "Redis sent {} bytes for one message", after - before);
}

/// Finding 7: publishes right through a NATS restart all reach a broadcast stream, the last ones
/// included (the hub re-reads history only after the server has its subscription again).
#[tokio::test]
async fn publishes_through_a_nats_restart_all_arrive_the_last_included() {
    let mut stack = Stack::start().await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let ch = unique("flap");
    stack.declare(&ch, &unlimited(Delivery::Broadcast)).await;
    let mut sub = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    sub.recovery().await;
    let mut acked = Vec::new();
    let mut c = stack.client(1).await;
    for round in 0..3 {
        stack.nats.restart().await;
        // Publish as soon as the publishing replica can, while the other may still be reconnecting.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut sent = 0;
        while sent < 5 {
            match c.publish(&alice.token, &ch, &format!("r{round} m{sent}")).await {
                Ok(m) => {
                    acked.push(m);
                    sent += 1;
                }
                Err(e) if e.code() == Code::Unavailable => {
                    assert!(tokio::time::Instant::now() < deadline, "{e:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    let (markers, got) = read(&mut sub, acked.len()).await;
    assert!(markers.is_empty(), "nothing was lost: {markers:?}");
    assert_eq!(seqs(&got), seqs(&acked));
}
