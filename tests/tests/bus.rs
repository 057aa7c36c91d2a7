//! The relay's NATS sending on a real server with JetStream: publishes of many tasks gathered into
//! shared rounds are each acked once, every caller's messages in its own order, and a round whose
//! sending task is dropped lets its other callers go at once instead of waiting out a deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use relay::bus::{Bus, Outgoing};

fn outgoing(caller: usize, n: usize) -> Outgoing {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{caller}-{n}").as_str());
    Outgoing {
        subject: format!("gather.c{}", caller % 7),
        headers: Some(headers),
        payload: format!("{caller} {n}").into(),
    }
}

async fn started() -> (tempfile::TempDir, relay_tests::Nats, Bus, jetstream::Context) {
    let dir = tempfile::tempdir().unwrap();
    let nats = relay_tests::Nats::start(dir.path()).await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config { name: "GATHER".into(), subjects: vec!["gather.>".into()], ..Default::default() })
        .await
        .unwrap();
    (dir, nats, Bus::new(client, Arc::default()), js)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_publishes_are_each_acked_once_in_each_callers_order() {
    let (_dir, _nats, bus, js) = started().await;
    let (callers, each) = (300, 3);
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let acks = bus.send((0..each).map(|n| outgoing(c, n)).collect(), true).await.unwrap();
                assert_eq!(acks.len(), each);
                let mut seqs = Vec::new();
                for ack in acks {
                    let ack = ack.await.unwrap();
                    assert!(!ack.duplicate);
                    seqs.push(ack.sequence);
                }
                seqs
            })
        })
        .collect();
    for (c, task) in tasks.into_iter().enumerate() {
        let seqs = task.await.unwrap();
        assert!(seqs.is_sorted(), "caller {c}'s messages were stored as {seqs:?}");
    }

    // The stream holds each message once, each caller's in its order.
    let consumer = js
        .get_stream("GATHER")
        .await
        .unwrap()
        .create_consumer(pull::Config { ack_policy: jetstream::consumer::AckPolicy::None, ..Default::default() })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(callers * each);
    let mut next: HashMap<usize, usize> = HashMap::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await.unwrap() {
        let text = String::from_utf8(m.unwrap().payload.to_vec()).unwrap();
        let (c, n) = text.split_once(' ').unwrap();
        let (c, n): (usize, usize) = (c.parse().unwrap(), n.parse().unwrap());
        let expected = next.entry(c).or_default();
        assert_eq!(n, *expected, "caller {c}'s message out of order or twice");
        *expected += 1;
    }
    assert_eq!(next.len(), callers);
    assert!(next.values().all(|&n| n == each));
    let info = js.get_stream("GATHER").await.unwrap().info().await.unwrap().state.messages;
    assert_eq!(info, (callers * each) as u64);
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_round_lets_its_callers_go_at_once() {
    let (_dir, _nats, bus, _js) = started().await;
    for round in 0..20 {
        // The first becomes the round's sender and yields; the others join it; the sender is
        // dropped before (or while) it sends.
        let first = tokio::spawn({
            let bus = bus.clone();
            async move { bus.send(vec![outgoing(round, 0)], true).await.map(|_| ()) }
        });
        let others: Vec<_> = (1..4)
            .map(|c| {
                let bus = bus.clone();
                tokio::spawn(async move { bus.send(vec![outgoing(round * 10 + c, 0)], true).await.map(|_| ()) })
            })
            .collect();
        tokio::task::yield_now().await;
        first.abort();
        for other in others {
            // Sent, or told it was not: well within the 5 s a stranded caller would wait.
            tokio::time::timeout(Duration::from_secs(2), other)
                .await
                .expect("a caller of a dropped round was left waiting")
                .unwrap()
                .ok();
        }
    }
    // The next round is not affected.
    bus.send(vec![outgoing(999, 0)], true).await.unwrap().pop().unwrap().await.unwrap();
}
