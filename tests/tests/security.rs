//! Security and trust: open streams stay authorized, unauthenticated clients cost next to nothing,
//! limits hold for sub-channels, nothing internal leaks to clients, bad configuration is refused.

use std::time::Duration;

use relay_channel::{AccessRule, ChannelSettings, WireMessage};
use relay_tests::{Event, Stack, StackOptions, Sub, eventually, unique};
use tonic::Code;

const T: Duration = Duration::from_secs(15);

/// Reads past messages and heartbeats until the stream ends; returns the ending status.
async fn ending(sub: &mut Sub, within: Duration) -> tonic::Status {
    sub.ending(within).await
}

#[tokio::test]
async fn a_user_deleted_or_locked_out_while_streaming_is_cut_off() {
    let stack = Stack::with(StackOptions::default().env("RELAY_AUTH_CACHE_TTL", "1s")).await;
    let (alice, bob, carol) = (
        stack.pocketbase.create_user("alice").await,
        stack.pocketbase.create_user("bob").await,
        stack.pocketbase.create_user("carol").await,
    );
    let ch = unique("watch");
    let mut bobs = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    let mut carols = stack.client(1).await.subscribe(&carol.token, &[(&ch, None)]).await.unwrap();
    bobs.recovery().await;
    carols.recovery().await;
    stack.client(1).await.publish(&alice.token, &ch, "still here?").await.unwrap();
    assert_eq!(bobs.messages(1, T).await.len(), 1);

    // Bob's record is deleted; Carol's password changes: both streams end, saying why.
    stack.pocketbase.delete_user(&bob).await;
    stack.pocketbase.revoke_tokens(&carol).await;
    for sub in [&mut bobs, &mut carols] {
        let status = ending(sub, T).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("stream ended"), "{}", status.message());
    }
}

#[tokio::test]
async fn a_stream_outlives_its_token_only_when_refreshed() {
    let stack = Stack::with(StackOptions::default()).await;
    // PocketBase's shortest token life.
    stack.pocketbase.set_token_duration(10).await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let ch = unique("long");
    let mut lapsing = stack.client(0).await.subscribe(&alice.token, &[(&ch, None)]).await.unwrap();
    let mut kept = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    assert!(kept.token_expires > 0 && kept.token_expires <= relay::now_nanos() / 1_000_000_000 + 11);
    lapsing.recovery().await;
    kept.recovery().await;
    // Bob refreshes his token through PocketBase and hands it to his stream, through the other
    // replica (the call is routed to the stream's).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fresh = stack.pocketbase.login(&bob.email, &bob.password).await;
    let expires = stack.client(1).await.refresh_token(&fresh, &kept.id).await.unwrap();
    assert!(expires > kept.token_expires);
    // Someone else's token cannot be put on Bob's stream.
    let e = stack.client(1).await.refresh_token(&alice.token, &kept.id).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let status = ending(&mut lapsing, T).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{}", status.message());
    // Bob's stream goes on past his first token's expiry.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = stack.client(1).await.publish(&fresh, &ch, "still listening").await.unwrap();
    assert_eq!(kept.messages(1, T).await, vec![m]);
}

#[tokio::test]
async fn streams_end_when_their_access_is_taken_away_or_their_channel_undeclared() {
    let stack = Stack::with(StackOptions::default().env("RELAY_UNDECLARED_CHANNELS", "deny")).await;
    let (bob, carol) = (stack.pocketbase.create_user("bob").await, stack.pocketbase.create_user("carol").await);
    let (room, gone) = (unique("room"), unique("gone"));
    let mut settings = ChannelSettings::default();
    settings.access.subscribe = AccessRule::Users(vec![bob.id.clone(), carol.id.clone()]);
    stack.declare(&room, &settings).await;
    stack.declare(&gone, &ChannelSettings::default()).await;
    let mut bobs = stack.client(0).await.subscribe(&bob.token, &[(&room, None)]).await.unwrap();
    let mut carols = stack.client(1).await.subscribe(&carol.token, &[(&room, None), (&gone, None)]).await.unwrap();
    bobs.recovery().await;

    // Carol is taken off the list: her stream ends, Bob's goes on.
    settings.access.subscribe = AccessRule::Users(vec![bob.id.clone()]);
    stack.declare(&room, &settings).await;
    let status = ending(&mut carols, T).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(&room), "{}", status.message());
    assert!(matches!(bobs.try_next(Duration::from_millis(500)).await, None | Some(Ok(Event::Heartbeat))));

    // The RelayChannel is deleted (the operator removes its settings and says so).
    let mut redis = stack.redis.connection().await;
    let _: () = redis::AsyncCommands::del(&mut redis, relay_channel::names::settings_key(&room)).await.unwrap();
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    nats.publish(relay_channel::names::SETTINGS_CHANGED_SUBJECT, room.clone().into()).await.unwrap();
    nats.flush().await.unwrap();
    let status = ending(&mut bobs, T).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let _ = gone;
}

/// The relay process's open file descriptors and resident memory.
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    (fds, rss_kb)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test]
async fn garbage_tokens_by_the_thousand_cost_next_to_nothing() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let pid = stack.relays[0].pid();
    let c = stack.client(0).await;
    let (fds_before, rss_before) = usage(pid);
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
    // JWT-shaped, a future exp, each different; callers give up after a millisecond.
    let started = std::time::Instant::now();
    futures::future::join_all((0..16).map(|conn| {
        let mut c = c.clone();
        async move {
            for i in 0..1250 {
                let token = format!(
                    "{}.{}.sig",
                    b64(r#"{"alg":"HS256"}"#),
                    b64(&format!(r#"{{"id":"x{conn}-{i}","exp":4000000000}}"#))
                );
                let _ = tokio::time::timeout(Duration::from_millis(1), c.publish(&token, "chat", "hi")).await;
            }
        }
    }))
    .await;
    let spent = started.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let metrics = stack.relays[0].metrics().await;
    let calls = metric(&metrics, "relay_pocketbase_call_seconds_count");
    let (fds_after, rss_after) = usage(pid);
    println!(
        "20,000 garbage tokens in {spent:?}: {calls} PocketBase calls, memory {rss_before} -> {rss_after} kB, fds {fds_before} -> {fds_after}"
    );
    // 20 new tokens per second per address, 100 at once: a few hundred calls at most, not 20,000.
    let allowed = 100.0 + 20.0 * spent.as_secs_f64() + 20.0;
    assert!(calls <= allowed, "{calls} PocketBase calls for 20,000 garbage tokens in {spent:?} (allowed {allowed})");
    assert!(fds_after <= fds_before + 40, "file descriptors {fds_before} -> {fds_after}");
    assert!(rss_after < rss_before + 64 * 1024, "memory {rss_before} kB -> {rss_after} kB");
    // A real user from the same address still gets through.
    let alice = stack.pocketbase.create_user("alice").await;
    c.clone().publish(&alice.token, &unique("ok"), "fine").await.unwrap();
}

#[tokio::test]
async fn an_absurd_expiry_is_refused_without_a_panic() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
    let mut c = stack.client(0).await;
    for exp in ["9223372036854775808", "18446744073709551615", "99999999999999999999"] {
        let token = format!("{}.{}.sig", b64("{}"), b64(&format!(r#"{{"exp":{exp}}}"#)));
        let e = c.publish(&token, "chat", "hi").await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "exp {exp}: {e:?}");
    }
    let log = std::fs::read_to_string(stack.dir().join(format!("relay-{}.log", stack.relays[0].grpc_port))).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn the_publish_rate_is_per_declared_channel_and_junk_sub_channels_expire() {
    let stack =
        Stack::with(StackOptions { relays: 1, ..Default::default() }.env("RELAY_UNDECLARED_CHANNELS", "deny")).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("chat");
    let mut settings = ChannelSettings::default();
    settings.limits.publish_per_second_per_user = 5;
    stack.declare(&ch, &settings).await;
    let mut c = stack.client(0).await;
    let mut accepted = 0;
    for i in 0..40 {
        match c.publish(&alice.token, &format!("{ch}.junk{i}"), "spam").await {
            Ok(_) => accepted += 1,
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}"),
        }
    }
    assert!(accepted <= 6, "{accepted} of 40 publishes to fresh sub-channels passed a limit of 5/s");
    let mut redis = stack.redis.connection().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(relay_channel::names::meta_key(&format!("{ch}.junk0")))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 0, "a sub-channel's keys expire (ttl {ttl})");
    let ttl: i64 =
        redis::cmd("TTL").arg(relay_channel::names::meta_key(&ch)).query_async(&mut redis).await.unwrap_or(-2);
    assert!(ttl == -2 || ttl == -1, "the declared channel's own keys do not");
}

#[tokio::test]
async fn clients_never_read_internal_addresses_and_help_never_prints_secrets() {
    let mut stack =
        Stack::with(StackOptions { relays: 1, ..Default::default() }.env("RELAY_POCKETBASE_TIMEOUT", "500ms")).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let mut c = stack.client(0).await;
    let ch = unique("leak");
    c.publish(&alice.token, &ch, "warm").await.unwrap();
    stack.pocketbase.stop().await;
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
    let unknown = format!("{}.{}.sig", b64("{}"), b64(r#"{"id":"z","exp":4000000000}"#));
    let e = c.publish(&unknown, &ch, "hi").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(e.message(), "authentication service unavailable; retry");
    stack.redis.stop().await;
    let e = c.publish(&alice.token, &ch, "hi").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    for leak in ["127.0.0.1", "redis", "pocketbase", "os error", "://"] {
        assert!(!e.message().to_lowercase().contains(leak), "{leak:?} in {:?}", e.message());
    }
    let log = std::fs::read_to_string(stack.dir().join(format!("relay-{}.log", stack.relays[0].grpc_port))).unwrap();
    assert!(log.contains("backend unavailable"), "the detail goes to the log");

    let out = std::process::Command::new(relay_tests::relay_binary())
        .arg("--help")
        .env("RELAY_REDIS_URL", "rediss://app:hunter2@redis:6380")
        .env("RELAY_NATS_URL", "nats://relay:swordfish@nats:4222")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(!help.contains("hunter2") && !help.contains("swordfish"), "{help}");
}

#[tokio::test]
async fn a_hostile_message_on_nats_does_not_end_a_channel() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let ch = unique("poison");
    let mut sub = stack.client(0).await.subscribe(&bob.token, &[(&ch, None)]).await.unwrap();
    sub.recovery().await;
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let other = WireMessage {
        channelid: "somewhere.else".into(),
        userid: "x".into(),
        username: String::new(),
        text: "x".into(),
        ts: 1,
        seq: u64::MAX,
        id: "x".into(),
        epoch: "zzzzzzzzzzzzzzzz".into(),
    };
    for payload in [b"not json".to_vec(), vec![0xff; 70_000], b"{}".to_vec(), other.to_json()] {
        nats.publish(format!("events.{ch}"), payload.into()).await.unwrap();
    }
    nats.flush().await.unwrap();
    let m = stack.client(0).await.publish(&alice.token, &ch, "after the junk").await.unwrap();
    assert_eq!(sub.messages(1, T).await, vec![m]);
    eventually(T, "the relay is still ready", || stack.relays[0].ready()).await;
}
