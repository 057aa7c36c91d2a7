//! Presence, join/leave and ephemeral messages on real servers, across two relay replicas.

use std::collections::BTreeMap;
use std::time::Duration;

use relay_channel::{AccessRule, ChannelSettings, PresenceSettings};
use relay_tests::{Event, Position, Stack, StackOptions, Sub, eventually, unique};
use tonic::Code;

const T: Duration = Duration::from_secs(10);
/// How long an ended stream still counts (the relay's `presence::GRACE`), with room for a pass.
const AFTER_GRACE: Duration = Duration::from_secs(9);

fn with_presence(ttl_secs: u64) -> ChannelSettings {
    let mut s = ChannelSettings {
        presence: PresenceSettings { enabled: true, join_leave: true, ttl_secs },
        ..Default::default()
    };
    s.limits.allow_ephemeral = true;
    s.limits.publish_per_second_per_user = 0;
    s
}

/// Join (+) and leave (-) events seen on `sub` for `within`, as "+user" / "-user".
async fn changes(sub: &mut Sub, within: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return seen;
        }
        match sub.try_next(left).await {
            None => return seen,
            Some(Err(s)) => panic!("stream ended: {s:?}"),
            Some(Ok(Event::Join(j))) => seen.push(format!("+{}", j.userid)),
            Some(Ok(Event::Leave(l))) => seen.push(format!("-{}", l.userid)),
            Some(Ok(Event::PresenceChanged(c))) => panic!("three users are no burst: {c:?}"),
            Some(Ok(_)) => {}
        }
    }
}

/// Waits for `event` on `sub` (skipping others); returns what came before it.
async fn until(sub: &mut Sub, event: &str, within: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut before = Vec::new();
    while tokio::time::Instant::now() < deadline {
        for e in changes_one(sub, deadline).await {
            if e == event {
                return before;
            }
            before.push(e);
        }
    }
    panic!("no {event} within {within:?}; saw {before:?}");
}

async fn changes_one(sub: &mut Sub, deadline: tokio::time::Instant) -> Vec<String> {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    changes(sub, left.min(Duration::from_millis(200))).await
}

/// user -> streams, from Presence.
async fn members(stack: &Stack, relay: usize, token: &str, ch: &str) -> BTreeMap<String, u32> {
    let list = stack.client(relay).await.presence(token, ch).await.expect("presence");
    list.into_iter().map(|m| (m.userid, m.streams)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_replicas_and_each_user_joins_and_leaves_once() {
    let stack = Stack::with(StackOptions { relays: 2, ..Default::default() }).await;
    let (alice, bob, carol) = tokio::join!(
        stack.pocketbase.create_user("alice"),
        stack.pocketbase.create_user("bob"),
        stack.pocketbase.create_user("carol")
    );
    let ch = unique("room");
    stack.declare(&ch, &with_presence(30)).await;

    // Carol watches from replica 0 and sees her own join first.
    let mut carol_sub = stack.client(0).await.subscribe(&carol.token, &[(&ch, None)]).await.unwrap();
    until(&mut carol_sub, &format!("+{}", carol.id), T).await;

    // Alice on both replicas, Bob on replica 1.
    let alice_0 = stack.client(0).await.subscribe(&alice.token, &[(&ch, None)]).await.unwrap();
    let alice_1 = stack.client(1).await.subscribe(&alice.token, &[(&ch, None)]).await.unwrap();
    let bob_sub = stack.client(1).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    let want: BTreeMap<String, u32> = [(alice.id.clone(), 2), (bob.id.clone(), 1), (carol.id.clone(), 1)].into();
    eventually(T, "both replicas list alice (2 streams), bob and carol", || async {
        members(&stack, 0, &carol.token, &ch).await == want && members(&stack, 1, &bob.token, &ch).await == want
    })
    .await;
    let stats = stack.client(1).await.presence_stats(&alice.token, &ch).await.unwrap();
    assert_eq!((stats.members, stats.streams), (3, 4));
    let list = stack.client(0).await.presence(&alice.token, &ch).await.unwrap();
    let a = list.iter().find(|m| m.userid == alice.id).unwrap();
    assert_eq!(a.username, "alice");
    let now = relay::now_nanos();
    assert!(a.since > now - 60_000_000_000 && a.since <= now + 1_000_000_000, "since {} now {now}", a.since);

    // Alice's second stream and Bob's reconnect to the other replica are no new join and no leave.
    drop(alice_0);
    drop(bob_sub);
    let bob_again = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    let mut seen = changes(&mut carol_sub, AFTER_GRACE).await;
    seen.sort();
    let mut want_seen = [format!("+{}", alice.id), format!("+{}", bob.id)];
    want_seen.sort();
    assert_eq!(seen, want_seen, "one join each (announced by either replica), no leave");
    let want: BTreeMap<String, u32> = [(alice.id.clone(), 1), (bob.id.clone(), 1), (carol.id.clone(), 1)].into();
    eventually(T, "alice down to one stream", || async { members(&stack, 1, &carol.token, &ch).await == want }).await;

    // Alice's last stream ends: one leave, seen on both replicas' streams.
    drop(alice_1);
    let before = until(&mut carol_sub, &format!("-{}", alice.id), AFTER_GRACE + T).await;
    assert!(before.is_empty(), "{before:?}");
    let seen = changes(&mut carol_sub, Duration::from_secs(2)).await;
    assert!(seen.is_empty(), "one leave only: {seen:?}");
    let want: BTreeMap<String, u32> = [(bob.id.clone(), 1), (carol.id.clone(), 1)].into();
    assert_eq!(members(&stack, 0, &carol.token, &ch).await, want);
    drop(bob_again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_members_leave_within_the_ttl_and_presence_survives_a_redis_flush() {
    let mut stack = Stack::with(StackOptions { relays: 2, ..Default::default() }).await;
    let (watcher, dave) = tokio::join!(stack.pocketbase.create_user("watcher"), stack.pocketbase.create_user("dave"));
    let ch = unique("room");
    let ttl = 5;
    stack.declare(&ch, &with_presence(ttl)).await;
    let mut watch = stack.client(0).await.subscribe(&watcher.token, &[(&ch, None)]).await.unwrap();
    let _dave_sub = stack.client(1).await.subscribe(&dave.token, &[(&ch, None)]).await.unwrap();
    until(&mut watch, &format!("+{}", dave.id), T).await;

    // Redis loses everything: each replica's next refresh (every third of the ttl) puts its
    // streams back, without joins (the settings come back first, as the operator would put them).
    let mut redis = stack.redis.connection().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut redis).await.unwrap();
    stack.declare(&ch, &with_presence(ttl)).await;
    eventually(T, "presence back after the flush", || async {
        stack.client(0).await.presence_stats(&watcher.token, &ch).await.is_ok_and(|s| (s.members, s.streams) == (2, 2))
    })
    .await;

    // Dave's replica dies without a word: he leaves once his entry expires (within the ttl).
    let killed = tokio::time::Instant::now();
    stack.relays[1].kill().await;
    let events = until(&mut watch, &format!("-{}", dave.id), Duration::from_secs(ttl + 8)).await;
    let took = killed.elapsed();
    assert!(events.iter().all(|e| e.starts_with('+')), "{events:?}");
    println!("dave left {took:?} after his relay was killed (ttl {ttl}s)");
    let want: BTreeMap<String, u32> = [(watcher.id.clone(), 1)].into();
    assert_eq!(members(&stack, 0, &watcher.token, &ch).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_messages_reach_open_streams_on_every_replica_and_never_history() {
    let stack = Stack::with(StackOptions { relays: 2, ..Default::default() }).await;
    let (alice, bob) = tokio::join!(stack.pocketbase.create_user("alice"), stack.pocketbase.create_user("bob"));
    let ch = unique("room");
    let mut settings = with_presence(30);
    settings.presence = PresenceSettings::default();
    stack.declare(&ch, &settings).await;
    let mut bob_sub = stack.client(1).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();

    let mut c = stack.client(0).await;
    let sent = c.publish_ephemeral(&alice.token, &ch, "alice is typing").await.unwrap();
    assert_eq!((sent.seq, sent.epoch.as_str(), sent.userid.as_str()), (0, "", alice.id.as_str()));
    let got = loop {
        match bob_sub.next(T).await.unwrap() {
            Event::Ephemeral(m) => break m,
            Event::Heartbeat | Event::Recovery(_) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        (got.text.as_str(), got.id.as_str(), got.seq, got.username.as_str()),
        ("alice is typing", sent.id.as_str(), 0, "alice")
    );

    // Never stored: history is empty, a stored message still gets seq 1, a late reader sees only it.
    let page = c.history(&alice.token, &ch, Some(Position::SinceSeq(0)), 10).await.unwrap();
    assert!(page.messages.is_empty(), "{page:?}");
    assert_eq!(c.publish(&alice.token, &ch, "hello").await.unwrap().seq, 1);
    let mut late = stack.client(1).await.subscribe(&bob.token, &[(&ch, Some(Position::SinceSeq(0)))]).await.unwrap();
    let texts: Vec<String> = late.messages(1, T).await.into_iter().map(|m| m.text).collect();
    assert_eq!(texts, ["hello"]);
    assert!(late.try_next(Duration::from_millis(500)).await.is_none_or(|e| !matches!(e, Ok(Event::Ephemeral(_)))));
    // Joins and leaves stay off where the channel does not ask for them.
    let seen = changes(&mut bob_sub, Duration::from_millis(500)).await;
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_ephemeral_refusals_say_why() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let (alice, mallory) = tokio::join!(stack.pocketbase.create_user("alice"), stack.pocketbase.create_user("mallory"));
    let mut c = stack.client(0).await;

    // A channel without presence or ephemeral messages.
    let plain = unique("plain");
    stack.declare(&plain, &ChannelSettings::default()).await;
    let e = c.publish_ephemeral(&alice.token, &plain, "typing").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("allowEphemeral"), "{}", e.message());
    let e = c.presence(&alice.token, &plain).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("presence.enabled"), "{}", e.message());
    let e = c.presence_stats(&alice.token, &plain).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // A channel only alice may read (and write): mallory sees no one and types nothing.
    let private = unique("private");
    let mut settings = with_presence(30);
    settings.access.subscribe = AccessRule::Users(vec![alice.id.clone()]);
    settings.access.publish = AccessRule::Users(vec![alice.id.clone()]);
    settings.limits.ephemeral_per_second_per_user = 3;
    stack.declare(&private, &settings).await;
    for e in [
        c.presence(&mallory.token, &private).await.unwrap_err(),
        c.presence_stats(&mallory.token, &private).await.map(|_| ()).unwrap_err(),
        c.publish_ephemeral(&mallory.token, &private, "typing").await.map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    for e in [
        c.presence("", &private).await.unwrap_err(),
        c.presence("not-a-token", &private).await.unwrap_err(),
        c.publish_ephemeral("", &private, "x").await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    let e = c.presence(&alice.token, "bad..id").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c.publish_ephemeral(&alice.token, &private, &"x".repeat(5000)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "ephemeral messages keep the size limit: {e:?}");

    // Their own rate limit, apart from stored publishes.
    let mut refused = 0;
    for _ in 0..10 {
        match c.publish_ephemeral(&alice.token, &private, "typing").await {
            Ok(_) => {}
            Err(e) if e.code() == Code::ResourceExhausted => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(refused >= 5, "at most a burst of 3 (and what refills) passes: {refused} refused");
    assert_eq!(c.publish(&alice.token, &private, "stored").await.unwrap().seq, 1, "stored publishes unaffected");
}

/// The presence module on its own against real Redis and NATS: ten thousand streams entered in a
/// few batched calls, a sample listed, all of them counted, all of them leaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_channel_is_counted_whole_listed_as_a_sample_and_entered_in_batches() {
    use relay::presence::{MAX_LISTED, Presence};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (nats, redis) = tokio::join!(relay_tests::Nats::start(dir.path()), relay_tests::Redis::start(dir.path()));
    let store = relay::store::Store::new(redis.connection().await).unwrap();
    let bus = relay::bus::Bus::new(nats.client().await, Arc::default());
    let presence = Arc::new(Presence::new(store, bus));
    let settings = PresenceSettings { enabled: true, join_leave: false, ttl_secs: 60 };
    let mut conn = redis.connection().await;
    // Script calls (round trips); the commands inside them count in total_commands_processed.
    let calls = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .map_or(0, |v| v.split(',').next().unwrap().parse().unwrap())
    };
    // Redis has the script from here on (a cold start answers NOSCRIPT to the first calls once).
    presence.stats("crowd", &settings).await.unwrap();
    let before = calls(redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap());
    let n = MAX_LISTED + 500;
    let entries: Vec<_> = (0..n)
        .map(|i| {
            let user = relay::auth::User { id: format!("u{i:05}"), name: format!("User {i}") };
            presence.enter("crowd", &settings, &format!("s{i}"), &user)
        })
        .collect();
    presence.flush().await;
    let after = calls(redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap());
    let stats = presence.stats("crowd", &settings).await.unwrap();
    assert_eq!((stats.members, stats.streams), (n as u64, n as u64));
    // One script call per 500 streams, not one per stream.
    assert!(after - before <= (n / 500 + 1) as u64, "{} script calls for {n} joins", after - before);

    let list = presence.members("crowd", &settings).await.unwrap();
    assert!(list.truncated);
    assert!(list.members.len() >= MAX_LISTED / 2 && list.members.len() <= MAX_LISTED + 1000, "{}", list.members.len());
    assert!(list.members.iter().all(|m| m.streams == 1 && m.name.starts_with("User ") && m.since_ms > 0));

    // Everyone leaves: after the grace, the sweep (at most a thousand per call) empties the channel.
    drop(entries);
    presence.flush().await;
    tokio::time::sleep(relay::presence::GRACE + Duration::from_millis(200)).await;
    for _ in 0..(n / 1000 + 1) {
        if presence.stats("crowd", &settings).await.unwrap().members == 0 {
            break;
        }
    }
    let stats = presence.stats("crowd", &settings).await.unwrap();
    assert_eq!((stats.members, stats.streams), (0, 0));
}

/// A crowd arriving at once: the streams already there get a burst of joins one by one, then
/// counts (PresenceChanged), not one event per user; every join is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_joining_at_once_is_coalesced_for_the_streams_already_there() {
    let options = StackOptions { relays: 1, ..Default::default() }.env("RELAY_UNVERIFIED_TOKENS_PER_SECOND", "100000");
    let stack = Stack::with(options).await;
    let watcher = stack.pocketbase.create_user("watcher").await;
    let ch = unique("hall");
    stack.declare(&ch, &with_presence(30)).await;
    let mut watch = stack.client(0).await.subscribe(&watcher.token, &[(&ch, None)]).await.unwrap();
    until(&mut watch, &format!("+{}", watcher.id), T).await;

    let n = 200;
    let crowd = stack.pocketbase.create_users("crowd", n).await;
    let c = stack.client(0).await;
    let subs = futures::future::join_all(crowd.iter().map(|(_, token)| {
        let (mut c, ch) = (c.clone(), ch.clone());
        async move { c.subscribe(token, &[(&ch, None)]).await.unwrap() }
    }))
    .await;

    let (mut one_by_one, mut counted) = (0u32, 0u32);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while one_by_one + counted < n as u32 && tokio::time::Instant::now() < deadline {
        match watch.try_next(Duration::from_millis(500)).await {
            Some(Ok(Event::Join(_))) => one_by_one += 1,
            Some(Ok(Event::PresenceChanged(c))) => {
                assert_eq!(c.left, 0);
                counted += c.joined;
            }
            Some(Ok(Event::Leave(l))) => panic!("nobody left: {l:?}"),
            Some(Err(s)) => panic!("{s:?}"),
            _ => {}
        }
    }
    println!("{n} joins: {one_by_one} one by one, {counted} counted");
    assert_eq!(one_by_one + counted, n as u32, "every join accounted for");
    assert!(counted > 0 && one_by_one < n as u32 / 2, "{one_by_one} one by one, {counted} counted");
    let stats = stack.client(0).await.presence_stats(&watcher.token, &ch).await.unwrap();
    assert_eq!((stats.members, stats.streams), (n as u32 + 1, n as u32 + 1));
    drop(subs);
}
