//! The history store on a real Redis: concurrent appends to a channel share script calls (group
//! commit) and still get strictly increasing seqs and timestamps, each stored once, in order; with
//! a replica that comes and goes (`--redis-wait-replicas`), what replicas did not confirm at first
//! is handed back to the next durable mark, on any relay, to be announced before its batch.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::future::join_all;
use relay::store::{After, Append, Read, Store};

/// evalsha calls Redis has served so far.
async fn script_calls(conn: &mut relay_connect::redis::Conn) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .map_or(0, |v| v.split(',').next().unwrap().parse().unwrap())
}

fn append<'a>(channel: &'a str, user: &'a str, text: &'a str, id: &'a str, key: Option<&'a str>) -> Append<'a> {
    Append {
        channel,
        userid: user,
        username: "User",
        text,
        id,
        idempotency_key: key,
        max_messages: 100_000,
        max_age_secs: 0,
        idle_ttl_secs: None,
    }
}

/// A Redis of its own (kept while the directory lives) and a store on it.
async fn started() -> (tempfile::TempDir, relay_tests::Redis, Store) {
    let dir = tempfile::tempdir().unwrap();
    let redis = relay_tests::Redis::start(dir.path()).await;
    let store = Store::new(redis.connection().await).unwrap();
    (dir, redis, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_script_calls_and_stay_in_order_each_stored_once() {
    let (_dir, redis, store) = started().await;
    let mut conn = redis.connection().await;
    // Redis has the script from here on.
    store.append(append("warmup", "u", "x", "w-1", None)).await.unwrap();
    let before = script_calls(&mut conn).await;

    // 3 channels x 600 appends at once; every tenth carries an idempotency key that another
    // append of the same channel repeats (same user, same key: a client's retry racing the original).
    let channels = ["a", "b", "c"];
    let per_channel = 600;
    let jobs: Vec<(String, String, String, Option<String>)> = channels
        .iter()
        .flat_map(|ch| {
            (0..per_channel).map(move |i| {
                let key = (i % 10 == 0 || i % 10 == 1).then(|| format!("k{}", i / 10));
                (ch.to_string(), format!("{ch}-text-{i}"), format!("{ch}-id-{i}"), key)
            })
        })
        .collect();
    let results = join_all(jobs.iter().map(|(ch, text, id, key)| {
        let store = store.clone();
        async move { store.append(append(ch, "alice", text, id, key.as_deref())).await.unwrap() }
    }))
    .await;
    let calls = script_calls(&mut conn).await - before;
    let total = jobs.len() as u64;
    assert!(calls * 4 <= total, "{calls} script calls for {total} appends: concurrent appends were not batched");

    for ch in channels {
        let mine: Vec<_> = jobs.iter().zip(&results).filter(|((c, ..), _)| c == ch).collect();
        // Each idempotency key stored once: both appends answer the same message.
        let mut by_key: HashMap<&str, Vec<&relay::store::Appended>> = HashMap::new();
        for ((_, _, _, key), r) in &mine {
            if let Some(k) = key {
                by_key.entry(k.as_str()).or_default().push(r);
            }
        }
        for (k, rs) in &by_key {
            assert_eq!(rs.len(), 2);
            assert_eq!((rs[0].message.seq, &rs[0].message.id), (rs[1].message.seq, &rs[1].message.id), "key {k}");
            assert_eq!(rs.iter().filter(|r| r.replayed).count(), 1, "key {k}: one stored, one replayed");
        }
        // Stored messages: seqs 1..=n exactly once, ts strictly increasing with seq, one epoch.
        let stored: BTreeMap<u64, &relay_channel::WireMessage> =
            mine.iter().filter(|(_, r)| !r.replayed).map(|(_, r)| (r.message.seq, &r.message)).collect();
        let n = (per_channel - per_channel / 10) as u64;
        assert_eq!(stored.len() as u64, n, "{ch}: every append but the repeats stored, each with its own seq");
        assert_eq!(stored.keys().copied().collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>(), "{ch}: no gaps");
        let ts: Vec<i64> = stored.values().map(|m| m.ts).collect();
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "{ch}: ts strictly increasing with seq");
        let epochs: std::collections::HashSet<&str> = stored.values().map(|m| m.epoch.as_str()).collect();
        assert_eq!(epochs.len(), 1);
        // Each answer is what it sent (a replay answers the original's text and id).
        for ((_, text, id, _), r) in &mine {
            if !r.replayed {
                assert_eq!((&r.message.text, &r.message.id), (text, id));
            }
        }
        // History holds exactly those, in order, with their fields.
        let page = store.read(ch, Read::After(After::Seq(0)), 10_000, Duration::ZERO).await.unwrap();
        assert_eq!(page.last_seq, n);
        let read: Vec<_> = page.messages.iter().map(|m| (m.seq, m.ts, m.id.clone(), m.text.clone())).collect();
        let want: Vec<_> = stored.values().map(|m| (m.seq, m.ts, m.id.clone(), m.text.clone())).collect();
        assert_eq!(read, want, "{ch}: history is what was answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_with_other_limits_go_in_their_own_batch_and_a_lost_history_starts_a_new_epoch() {
    let (_dir, redis, store) = started().await;
    // Half keep 5 messages, half 1,000: the queue splits where the limits change, and a batch never
    // applies one append's limits to another.
    let texts: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    let results = join_all(texts.iter().enumerate().map(|(i, text)| {
        let store = store.clone();
        let id = format!("id-{i}");
        async move {
            let mut a = append("limits", "bob", text, &id, None);
            a.max_messages = if i % 2 == 0 { 5 } else { 1000 };
            store.append(a).await.unwrap().message
        }
    }))
    .await;
    let mut seqs: Vec<u64> = results.iter().map(|m| m.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());

    // The channel's meta is lost (a Redis without persistence restarting): the next appends start
    // a new epoch at seq 1, in one batch or several.
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let old_epoch = results[0].epoch.clone();
    let after = join_all((0..50).map(|i| {
        let store = store.clone();
        async move {
            let (text, id) = (format!("n{i}"), format!("new-{i}"));
            store.append(append("limits", "bob", &text, &id, None)).await.unwrap().message
        }
    }))
    .await;
    let mut seqs: Vec<u64> = after.iter().map(|m| m.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    assert!(after.iter().all(|m| m.epoch == after[0].epoch && m.epoch != old_epoch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_reply_fails_its_own_publish_not_the_batch_stored_beside_it() {
    let (_dir, redis, store) = started().await;
    // An idempotency record someone else wrote, missing the fields a replay answers with.
    let mut conn = redis.connection().await;
    let key = relay_channel::names::idempotency_key("odd", "carol", "k-odd");
    let _: () = redis::cmd("HSET").arg(&key).arg("seq").arg(7).query_async(&mut conn).await.unwrap();
    let texts: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
    let results = join_all(texts.iter().enumerate().map(|(i, text)| {
        let store = store.clone();
        let id = format!("id-{i}");
        async move { store.append(append("odd", "carol", text, &id, (i == 50).then_some("k-odd"))).await }
    }))
    .await;
    for (i, r) in results.iter().enumerate() {
        if i == 50 {
            let e = r.as_ref().err().expect("the odd record's replay is refused");
            assert!(matches!(e, relay::error::Error::Unavailable { .. }), "{e:?}");
        } else {
            assert!(r.is_ok(), "publish {i}: {:?}", r.as_ref().err());
        }
    }
    let mut seqs: Vec<u64> = results.iter().flatten().map(|a| a.message.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=99).collect::<Vec<_>>());
}

/// A store that waits for one replica of `redis`, for at most 300 ms.
async fn waiting_for_a_replica(redis: &relay_tests::Redis) -> Store {
    let replication = relay::store::Replication::new(vec![redis.connection().await], 1, Duration::from_millis(300));
    Store::new(redis.connection().await).unwrap().with_replication(replication)
}

/// Makes `replica` a replica of `master` (or, with None, a master again) and waits until `master`
/// sees it in sync.
async fn replicate(replica: &relay_tests::Redis, master: Option<&relay_tests::Redis>) {
    let mut conn = replica.connection().await;
    let mut cmd = redis::cmd("REPLICAOF");
    match master {
        Some(m) => cmd.arg("127.0.0.1").arg(m.port()),
        None => cmd.arg("NO").arg("ONE"),
    };
    let _: () = cmd.query_async(&mut conn).await.unwrap();
    let Some(master) = master else { return };
    let conn = master.connection().await;
    relay_tests::eventually(Duration::from_secs(20), "the replica in sync", || {
        let mut conn = conn.clone();
        async move {
            let info: String = redis::cmd("INFO").arg("replication").query_async(&mut conn).await.unwrap_or_default();
            if !info.lines().any(|l| l.starts_with("slave0:") && l.contains("state=online")) {
                return false;
            }
            // And acknowledging writes (a WAIT behind one of ours).
            let _: () = redis::cmd("SET").arg("probe").arg(1).query_async(&mut conn).await.unwrap_or_default();
            redis::cmd("WAIT").arg(1).arg(1000).query_async::<u64>(&mut conn).await.is_ok_and(|n| n == 1)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_no_mark_covered_are_announced_before_the_batch_whose_mark_covers_them_on_any_relay() {
    let (_dir, redis, _) = started().await;
    let replica_dir = tempfile::tempdir().unwrap();
    let replica = relay_tests::Redis::start(replica_dir.path()).await;
    let (relay_a, relay_b) = (waiting_for_a_replica(&redis).await, waiting_for_a_replica(&redis).await);
    let ok = |a: &relay::store::Appended| (a.message.seq, a.replicated, a.covered.is_some());
    let mut conn = redis.connection().await;
    let pending = |ch: &str| redis::cmd("ZCARD").arg(relay_channel::names::pending_key(ch)).clone();

    // No replica: WAIT confirms nothing, so each append is stored, answered "not replicated" and
    // not announced.
    assert_eq!(ok(&relay_a.append(append("w", "u", "one", "id-1", None)).await.unwrap()), (1, false, false));
    assert_eq!(ok(&relay_a.append(append("w", "u", "two", "id-2", None)).await.unwrap()), (2, false, false));
    // Readers that read only what replicas hold see none of it.
    let page = relay_a.read("w", Read::After(After::Seq(0)), 100, Duration::ZERO).await.unwrap();
    assert!(page.messages.is_empty() && page.assigned_seq == 2, "{page:?}");

    // The replica catches up: the next append's mark covers both, on another relay too, and hands
    // them back to go out first, in order.
    replicate(&replica, Some(&redis)).await;
    let third = relay_b.append(append("w", "u", "three", "id-3", None)).await.unwrap();
    assert_eq!(ok(&third), (3, true, true));
    let covered = &third.covered.as_ref().unwrap().messages;
    let covered: Vec<_> = covered.iter().map(|m| (m.seq, m.id.as_str(), m.text.as_str(), m.ts > 0)).collect();
    assert_eq!(covered, vec![(1, "id-1", "one", true), (2, "id-2", "two", true)]);
    // Handed back once: the next mark has nothing to hand back.
    assert_eq!(ok(&relay_a.append(append("w", "u", "four", "id-4", None)).await.unwrap()), (4, true, false));
    assert_eq!(pending("w").query_async::<u64>(&mut conn).await.unwrap(), 0);

    // One that history no longer holds (a failover took it) is not handed back.
    replicate(&replica, None).await;
    assert_eq!(ok(&relay_a.append(append("w", "u", "five", "id-5", None)).await.unwrap()), (5, false, false));
    let _: () =
        redis::cmd("XDEL").arg(relay_channel::names::history_key("w")).arg("5-0").query_async(&mut conn).await.unwrap();
    replicate(&replica, Some(&redis)).await;
    assert_eq!(ok(&relay_b.append(append("w", "u", "six", "id-6", None)).await.unwrap()), (6, true, false));

    // A retry of one no mark covered announces it itself: it is not handed back to anyone else.
    replicate(&replica, None).await;
    let keyed = |text| append("w", "u", text, "id-7", Some("k7"));
    assert_eq!(ok(&relay_a.append(keyed("seven")).await.unwrap()), (7, false, false));
    replicate(&replica, Some(&redis)).await;
    let retried = relay_b.append(keyed("seven")).await.unwrap();
    assert_eq!((ok(&retried), retried.replayed), ((7, true, false), true));
    assert_eq!(ok(&relay_a.append(append("w", "u", "eight", "id-8", None)).await.unwrap()), (8, true, false));

    // One just appended whose mark has not run yet (its reply lost, its relay gone: here a pending
    // record put by hand beside an append that did not wait) goes out before the next one too.
    let plain = Store::new(redis.connection().await).unwrap();
    assert_eq!(plain.append(append("w", "u", "nine", "id-9", None)).await.unwrap().message.seq, 9);
    let _: () = redis::cmd("ZADD")
        .arg(relay_channel::names::pending_key("w"))
        .arg(9)
        .arg(9)
        .query_async(&mut conn)
        .await
        .unwrap();
    let tenth = relay_b.append(append("w", "u", "ten", "id-10", None)).await.unwrap();
    assert_eq!(tenth.covered.unwrap().messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![9]);
    assert_eq!(pending("w").query_async::<u64>(&mut conn).await.unwrap(), 0);

    // Many appends at once on two relays, all confirmed: whatever a mark hands back comes before its
    // batch, a batch's own messages are never handed back to it, and nothing stays pending.
    let texts: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    let results = join_all(texts.iter().enumerate().map(|(i, text)| {
        let store = if i % 2 == 0 { relay_a.clone() } else { relay_b.clone() };
        let id = format!("many-{i}");
        async move { store.append(append("many", "u", text, &id, None)).await.unwrap() }
    }))
    .await;
    for a in &results {
        assert!(a.replicated);
        let handed: Vec<u64> = a.covered.iter().flat_map(|c| c.messages.iter().map(|m| m.seq)).collect();
        assert!(handed.windows(2).all(|w| w[0] < w[1]) && handed.iter().all(|s| *s < a.message.seq), "{handed:?}");
    }
    assert_eq!(pending("many").query_async::<u64>(&mut conn).await.unwrap(), 0);
    let page = relay_a.read("w", Read::After(After::Seq(0)), 100, Duration::ZERO).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
}

/// Seeded: rounds of concurrent appends on two relays, some of them retries of unconfirmed ones,
/// while a replica comes and goes. What the relays would announce (each append's handed-back
/// messages, then its own once confirmed) is recorded, and after every round checked: everything
/// history holds up to the highest seq announced so far has been announced (what a perUser stream
/// resuming there relies on), and everything announced is what history holds at that seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_rounds_never_announce_a_later_message_before_an_earlier_one_history_keeps() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    for seed in [1u64, 2, 3] {
        let (_dir, redis, _) = started().await;
        let replica_dir = tempfile::tempdir().unwrap();
        let replica = relay_tests::Redis::start(replica_dir.path()).await;
        let relays = [waiting_for_a_replica(&redis).await, waiting_for_a_replica(&redis).await];
        let plain = Store::new(redis.connection().await).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut attached = false;
        // Idempotency keys answered "not replicated", to retry.
        let mut unconfirmed: Vec<(String, String)> = Vec::new();
        let mut announced: BTreeMap<u64, String> = BTreeMap::new();
        let mut next = 0;
        for round in 0..30 {
            if rng.random_bool(0.3) || round == 29 {
                attached = !attached || round == 29;
                replicate(&replica, attached.then_some(&redis)).await;
            }
            let jobs: Vec<(usize, String, String)> = (0..rng.random_range(1..=6))
                .map(|_| {
                    let relay = rng.random_range(0..2);
                    if !unconfirmed.is_empty() && rng.random_bool(0.3) {
                        let (key, text) = unconfirmed.swap_remove(rng.random_range(0..unconfirmed.len()));
                        (relay, key, text)
                    } else {
                        next += 1;
                        (relay, format!("k{next}"), format!("t{next}"))
                    }
                })
                .collect();
            let results = join_all(jobs.iter().map(|(relay, key, text)| {
                let store = relays[*relay].clone();
                async move { store.append(append("r", "u", text, &format!("id-{key}"), Some(key))).await }
            }))
            .await;
            for ((_, key, text), result) in jobs.into_iter().zip(results) {
                let a = result.unwrap_or_else(|e| panic!("seed {seed} round {round}: {e:?}"));
                for m in a.covered.iter().flat_map(|c| c.messages.iter()) {
                    announced.insert(m.seq, m.id.clone());
                }
                if a.replicated {
                    announced.insert(a.message.seq, a.message.id.clone());
                } else {
                    unconfirmed.push((key, text));
                }
            }
            let page = plain.read("r", Read::After(After::Seq(0)), 10_000, Duration::ZERO).await.unwrap();
            let top = announced.keys().next_back().copied().unwrap_or(0);
            for m in page.messages.iter().filter(|m| m.seq <= top) {
                assert_eq!(
                    announced.get(&m.seq),
                    Some(&m.id),
                    "seed {seed} round {round}: seq {} is in history but was not announced by the time {top} was",
                    m.seq
                );
            }
            let held: std::collections::HashSet<u64> = page.messages.iter().map(|m| m.seq).collect();
            assert!(
                announced.keys().all(|s| held.contains(s)),
                "seed {seed} round {round}: announced what history lacks"
            );
        }
        assert!(announced.len() > 20, "seed {seed}: too little announced to judge ({})", announced.len());
    }
}
