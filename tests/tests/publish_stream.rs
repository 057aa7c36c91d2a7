//! PublishStream: many publishes over one call, each answered once with its ref, stored and
//! delivered as Publish's are; bad requests answered without ending the call; a token that stops
//! holding ends it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use relay::proto::{PublishRequest, PublishStreamRequest, publish_stream_response::Result as Answer};
use relay_channel::ChannelSettings;
use relay_tests::{Stack, StackOptions, unique};
use tonic::Code;

const T: Duration = Duration::from_secs(15);

fn request(r#ref: u64, channel: &str, text: &str) -> PublishStreamRequest {
    PublishStreamRequest {
        r#ref,
        publish: Some(PublishRequest {
            channelid: channel.into(),
            text: text.into(),
            idempotency_key: String::new(),
            ephemeral: false,
        }),
    }
}

#[tokio::test]
async fn many_publishes_over_one_call_are_each_answered_stored_and_delivered() {
    let stack = Stack::start().await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("bulk");
    let mut settings = ChannelSettings::default();
    settings.limits.publish_per_second_per_user = 0;
    stack.declare(&ch, &settings).await;
    let mut sub = stack.client(1).await.subscribe(&alice.token, &[(&ch, None)]).await.unwrap();
    sub.recovery().await;

    // More than one call runs at once (256), sent all at once; then two the relay refuses.
    const N: u64 = 1000;
    let mut requests: Vec<_> = (1..=N).map(|i| request(i, &ch, &format!("m{i}"))).collect();
    requests.push(request(N + 1, &ch, ""));
    requests.push(PublishStreamRequest { r#ref: N + 2, publish: None });
    let mut answers =
        stack.client(0).await.publish_stream(&alice.token, futures::stream::iter(requests)).await.unwrap();

    let first = answers.message().await.unwrap().unwrap();
    let Some(Answer::Started(started)) = first.result else { panic!("first answer: {first:?}") };
    assert!(!started.stream_id.is_empty());
    // Not read for a moment: the relay holds what it answered until the client reads.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut by_ref = BTreeMap::new();
    while let Some(answer) = tokio::time::timeout(T, answers.message()).await.expect("answers keep coming").unwrap() {
        assert!(by_ref.insert(answer.r#ref, answer.result.unwrap()).is_none(), "ref {} answered twice", answer.r#ref);
    }
    assert_eq!(by_ref.len() as u64, N + 2, "every request answered once");
    let mut seqs: Vec<u64> = (1..=N)
        .map(|i| match &by_ref[&i] {
            Answer::Message(m) => {
                assert_eq!(m.userid, alice.id);
                assert!(m.text.is_empty(), "the answer leaves out the text the client sent");
                m.seq
            }
            other => panic!("ref {i}: {other:?}"),
        })
        .collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, N, "each publish stored once");
    for bad in [N + 1, N + 2] {
        let Answer::Error(e) = &by_ref[&bad] else { panic!("ref {bad}: {:?}", by_ref[&bad]) };
        assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}");
        assert!(!e.message.is_empty());
    }

    // Delivered like any publish, in seq order, on the other replica.
    let got = sub.messages(N as usize, T).await;
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=N).collect::<Vec<_>>());
    for m in &got {
        let Answer::Message(answered) =
            by_ref.values().find(|a| matches!(a, Answer::Message(x) if x.seq == m.seq)).unwrap()
        else {
            unreachable!()
        };
        assert_eq!(answered.id, m.id);
        assert!(m.text.starts_with('m'));
    }
    // And in history.
    let page =
        stack.client(0).await.history(&alice.token, &ch, Some(relay_tests::Position::SinceSeq(0)), 10).await.unwrap();
    assert_eq!(page.messages.len(), 10);
}

#[tokio::test]
async fn a_publish_stream_refuses_bad_tokens_and_ends_when_its_user_is_deleted() {
    let stack = Stack::with(StackOptions::default().env("RELAY_AUTH_CACHE_TTL", "1s")).await;
    let ch = unique("bulk");

    let refused = stack.client(0).await.publish_stream("not-a-token", futures::stream::iter(vec![])).await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);

    let bob = stack.pocketbase.create_user("bob").await;
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let mut answers = stack.client(0).await.publish_stream(&bob.token, rx).await.unwrap();
    answers.message().await.unwrap().unwrap(); // started
    tx.unbounded_send(request(1, &ch, "hello")).unwrap();
    let answer = tokio::time::timeout(T, answers.message()).await.unwrap().unwrap().unwrap();
    assert!(matches!(answer.result, Some(Answer::Message(_))), "{answer:?}");

    // Bob is deleted: once the relay's cached answer for his token expires, the call ends, saying
    // why, though it sends nothing more.
    stack.pocketbase.delete_user(&bob).await;
    let ended = match tokio::time::timeout(T, answers.message()).await.expect("the call ends") {
        Ok(Some(answer)) => panic!("answered after the user was deleted: {answer:?}"),
        Ok(None) => panic!("ended without a status"),
        Err(status) => status,
    };
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    let _ = answers.next().await;
}

#[tokio::test]
async fn a_client_that_leaves_answers_unread_or_sends_oversized_requests_is_told_why() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("bulk");
    let mut settings = ChannelSettings::default();
    settings.limits.publish_per_second_per_user = 0;
    stack.declare(&ch, &settings).await;

    // More answers than the call and the client's HTTP/2 window hold, none read: after 10 s the
    // call ends, saying why.
    let channel = tonic::transport::Channel::from_shared(stack.relays[0].addr())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut client = relay::proto::relay_service_client::RelayServiceClient::new(channel);
    let requests: Vec<_> = (1..=3000).map(|i| request(i, &ch, "x")).collect();
    let mut call = tonic::Request::new(futures::stream::iter(requests));
    call.metadata_mut().insert("authorization", format!("Bearer {}", alice.token).parse().unwrap());
    let mut answers = client.publish_stream(call).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let ended = loop {
        match tokio::time::timeout(T, answers.message()).await.expect("the call ends") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    assert!(ended.message().contains("unread"), "{ended:?}");

    // A request larger than any channel allows is refused with a status, not decoded.
    let huge = request(1, &ch, &"x".repeat(2 * 1024 * 1024));
    let mut answers = stack.client(0).await.publish_stream(&alice.token, futures::stream::iter([huge])).await.unwrap();
    let ended = loop {
        match tokio::time::timeout(T, answers.message()).await.expect("the call ends") {
            Ok(Some(answer)) if matches!(answer.result, Some(Answer::Started(_))) => continue,
            Ok(other) => panic!("expected a status, got {other:?}"),
            Err(status) => break status,
        }
    };
    assert_ne!(ended.code(), Code::Ok, "{ended:?}");
    // The relay is fine, and so is the user's next call.
    stack.client(0).await.publish(&alice.token, &ch, "after").await.unwrap();
}
