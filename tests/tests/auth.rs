//! Token checks: missing, garbage and revoked tokens are UNAUTHENTICATED; PocketBase down is
//! UNAVAILABLE, never a wrong denial; the sender is always the verified user.

use std::time::Duration;

use relay_tests::{Stack, StackOptions, eventually, unique};
use tonic::Code;

#[tokio::test]
async fn missing_garbage_and_revoked_tokens_are_unauthenticated() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }.env("RELAY_AUTH_CACHE_TTL", "1s")).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let mut c = stack.client(0).await;
    let ch = unique("auth");
    let forged = {
        // A well-formed JWT that PocketBase did not sign.
        let parts: Vec<&str> = alice.token.split('.').collect();
        format!("{}.{}.{}", parts[0], parts[1], "AAAA")
    };
    for (token, what) in [("", "no token"), ("garbage", "garbage"), ("a.b.c", "not a JWT"), (forged.as_str(), "forged")]
    {
        let e = c.publish(token, &ch, "hi").await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        assert!(!e.message().is_empty());
        assert_eq!(c.subscribe(token, &[(&ch, None)]).await.err().unwrap().code(), Code::Unauthenticated, "{what}");
        assert_eq!(c.history(token, &ch, None, 1).await.unwrap_err().code(), Code::Unauthenticated, "{what}");
    }

    // The sender is the token's user, whatever the client might claim.
    let m = c.publish(&alice.token, &ch, "hi").await.unwrap();
    assert_eq!(m.userid, alice.id);

    // Revoked (password changed): refused once the cache entry runs out.
    stack.pocketbase.revoke_tokens(&alice).await;
    eventually(Duration::from_secs(5), "the revoked token is refused", || {
        let mut c = c.clone();
        let (token, ch) = (alice.token.clone(), ch.clone());
        async move { c.publish(&token, &ch, "hi").await.is_err_and(|e| e.code() == Code::Unauthenticated) }
    })
    .await;
}

#[tokio::test]
async fn pocketbase_down_is_unavailable_and_service_resumes_when_it_returns() {
    let mut stack =
        Stack::with(StackOptions { relays: 1, ..Default::default() }.env("RELAY_POCKETBASE_TIMEOUT", "1s")).await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let mut c = stack.client(0).await;
    let ch = unique("pb");
    c.publish(&alice.token, &ch, "cached").await.unwrap();

    stack.pocketbase.stop().await;
    // Bob's token was never checked: it cannot be verified now, and it must not be called invalid.
    let e = c.publish(&bob.token, &ch, "hi").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(e.message(), "authentication service unavailable; retry");
    // Alice's answer is cached: she keeps working through the outage.
    c.publish(&alice.token, &ch, "still cached").await.unwrap();

    stack.pocketbase.restart().await;
    c.publish(&bob.token, &ch, "back").await.unwrap();
}

#[tokio::test]
async fn concurrent_checks_of_one_token_share_one_call() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let c = stack.client(0).await;
    let ch = unique("flight");
    let calls = futures::future::join_all((0..20).map(|_| {
        let mut c = c.clone();
        let (token, ch) = (alice.token.clone(), ch.clone());
        async move { c.history(&token, &ch, None, 1).await }
    }))
    .await;
    assert!(calls.iter().all(Result::is_ok));
    let metrics = stack.relays[0].metrics().await;
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("relay_pocketbase_call_seconds_count "))
        .expect("pocketbase call histogram");
    assert_eq!(count.trim(), "1", "20 concurrent calls with one token asked PocketBase once");
}
