//! Bad input, access rules, limits and undeclared channels: each refused with the right code and a
//! message, and the server keeps serving.

use std::time::Duration;

use relay_channel::{Access, AccessRule, ChannelSettings};
use relay_tests::{Position, Stack, StackOptions, unique};
use tonic::Code;

#[tokio::test]
async fn every_bad_input_is_invalid_argument_and_the_server_keeps_serving() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let mut c = stack.client(0).await;
    let long = "a".repeat(256);
    let bad_ids =
        ["chat.*", "chat.>", ">", "*", "chat..room", ".chat", "chat.", "chat room", "", long.as_str(), "chät"];
    for id in bad_ids {
        let e = c.publish(&alice.token, id, "hi").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "publish to {id:?}: {e:?}");
        assert!(e.message().contains("channelid"), "{}", e.message());
        let e = c.subscribe(&alice.token, &[(id, None)]).await.err().expect("subscribe refused");
        assert_eq!(e.code(), Code::InvalidArgument, "subscribe to {id:?}");
        let e = c.history(&alice.token, id, None, 10).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "history of {id:?}");
    }
    let ch = unique("ok");
    for (text, why) in [("", "empty"), (&*"x".repeat(4097), "4097")] {
        let e = c.publish(&alice.token, &ch, text).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{why}");
        assert!(e.message().contains("text"), "{}", e.message());
    }
    assert_eq!(c.publish(&alice.token, &ch, &"x".repeat(4096)).await.unwrap().seq, 1, "the limit itself is fine");

    let e = c.subscribe(&alice.token, &[]).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c.subscribe(&alice.token, &[(&ch, None), (&ch, None)]).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument, "a channel listed twice");
    let e = c.subscribe(&alice.token, &[(&ch, Some(Position::SinceTs(-5)))]).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument, "negative since_ts");
    let e = c.history(&alice.token, &ch, None, 5000).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "limit over the maximum");
    let e = c.publish_with_key(&alice.token, &ch, "hi", "has space").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Still serving.
    assert_eq!(c.publish(&alice.token, &ch, "still here").await.unwrap().seq, 2);
    assert!(stack.relays[0].ready().await);
}

#[tokio::test]
async fn access_rules_refuse_with_permission_denied() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let mut c = stack.client(0).await;

    // inbox: anyone may write to bob's inbox, only bob may read it.
    stack
        .declare(
            "inbox",
            &ChannelSettings {
                access: Access { publish: AccessRule::Authenticated, subscribe: AccessRule::Owner },
                ..Default::default()
            },
        )
        .await;
    let bobs = format!("inbox.{}", bob.id);
    c.publish(&alice.token, &bobs, "for bob").await.unwrap();
    let e = c.subscribe(&alice.token, &[(&bobs, None)]).await.err().unwrap();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(c.history(&alice.token, &bobs, None, 10).await.unwrap_err().code(), Code::PermissionDenied);
    let mut sub = c.subscribe(&bob.token, &[(&bobs, Some(Position::SinceSeq(0)))]).await.unwrap();
    sub.recovery().await;
    assert_eq!(sub.messages(1, Duration::from_secs(5)).await[0].text, "for bob");

    // announcements: only alice publishes.
    stack
        .declare(
            "announce",
            &ChannelSettings {
                access: Access {
                    publish: AccessRule::Users(vec![alice.id.clone()]),
                    subscribe: AccessRule::Authenticated,
                },
                ..Default::default()
            },
        )
        .await;
    c.publish(&alice.token, "announce", "hello all").await.unwrap();
    let e = c.publish(&bob.token, "announce", "me too").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains(&bob.id), "{}", e.message());
    // Sub-channels follow their parent's settings.
    assert_eq!(c.publish(&bob.token, "announce.eu", "me too").await.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test]
async fn publish_rate_and_stream_count_are_limited() {
    let stack =
        Stack::with(StackOptions { relays: 1, ..Default::default() }.env("RELAY_MAX_STREAMS_PER_USER", "3")).await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let mut c = stack.client(0).await;
    let ch = unique("limited");
    let mut settings = ChannelSettings::default();
    settings.limits.publish_per_second_per_user = 5;
    stack.declare(&ch, &settings).await;
    let mut ok = 0;
    let mut refused = None;
    for i in 0..20 {
        match c.publish(&alice.token, &ch, &format!("m{i}")).await {
            Ok(_) => ok += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the sixth publish within a second is refused");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("rate limit"), "{}", e.message());
    assert!((4..=6).contains(&ok), "about one second's worth passes: {ok}");
    // Another user has a bucket of their own.
    c.publish(&bob.token, &ch, "bob").await.unwrap();
    // The bucket refills.
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.publish(&alice.token, &ch, "later").await.unwrap();

    // Streams per user: three, then refused; closing one frees a slot.
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(c.subscribe(&alice.token, &[(&ch, None)]).await.unwrap());
    }
    let e = c.subscribe(&alice.token, &[(&ch, None)]).await.err().unwrap();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("too many streams"), "{}", e.message());
    c.subscribe(&bob.token, &[(&ch, None)]).await.expect("bob is not limited by alice's streams");
    drop(subs.pop());
    relay_tests::eventually(Duration::from_secs(5), "a slot frees up", || {
        let mut c = c.clone();
        let token = alice.token.clone();
        let ch = ch.clone();
        async move { c.subscribe(&token, &[(&ch, None)]).await.is_ok() }
    })
    .await;
}

#[tokio::test]
async fn undeclared_channels_are_not_found_when_denied_and_settings_changes_apply_without_restart() {
    let stack =
        Stack::with(StackOptions { relays: 1, ..Default::default() }.env("RELAY_UNDECLARED_CHANNELS", "deny")).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let mut c = stack.client(0).await;
    let ch = unique("team");
    let e = c.publish(&alice.token, &ch, "hi").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("RelayChannel"), "{}", e.message());
    assert_eq!(c.subscribe(&alice.token, &[(&ch, None)]).await.err().unwrap().code(), Code::NotFound);

    stack.declare(&ch, &ChannelSettings::default()).await;
    c.publish(&alice.token, &ch, "hi").await.unwrap();
    c.publish(&alice.token, &format!("{ch}.room1"), "sub-channel").await.unwrap();

    // Tighten the size limit: the relay learns at once (the operator's announcement).
    let mut settings = ChannelSettings::default();
    settings.limits.max_message_bytes = 4;
    stack.declare(&ch, &settings).await;
    relay_tests::eventually(Duration::from_secs(5), "the new limit applies", || {
        let mut c = c.clone();
        let (token, ch) = (alice.token.clone(), ch.clone());
        async move { c.publish(&token, &ch, "too long").await.is_err_and(|e| e.code() == Code::InvalidArgument) }
    })
    .await;
}

#[tokio::test]
async fn a_retried_publish_with_the_same_idempotency_key_is_stored_once() {
    let stack = Stack::with(StackOptions::default()).await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let ch = unique("idem");
    let first = stack.client(0).await.publish_with_key(&alice.token, &ch, "once", "key-1").await.unwrap();
    // Retried on the other replica: same stored message.
    let again = stack.client(1).await.publish_with_key(&alice.token, &ch, "once", "key-1").await.unwrap();
    assert_eq!(first, again);
    // Another user's key is their own.
    let bobs = stack.client(1).await.publish_with_key(&bob.token, &ch, "bob", "key-1").await.unwrap();
    assert_eq!(bobs.seq, 2);
    let page = stack.client(0).await.history(&alice.token, &ch, None, 10).await.unwrap();
    assert_eq!(page.messages.len(), 2);
}
