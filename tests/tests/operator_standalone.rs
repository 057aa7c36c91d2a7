//! The operator in standalone mode (a folder of RelayChannel files) against real NATS and Redis,
//! with a relay that refuses undeclared channels: create, relays obey, drift is undone, update,
//! delete with each policy.

use std::time::Duration;

use relay_channel::{ChannelSettings, names};
use relay_tests::{OperatorProc, Stack, StackOptions, eventually, unique};
use tonic::Code;

const T: Duration = Duration::from_secs(15);

fn manifest(name: &str, max_bytes: u32, policy: &str) -> String {
    format!(
        "apiVersion: relay.dev/v1alpha1\nkind: RelayChannel\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  \
         history:\n    maxMessages: 500\n    maxAge: 1h\n  stream:\n    maxAge: 24h\n    maxMessages: 10000\n    maxBytes: 64Mi\n  \
         limits:\n    maxMessageBytes: {max_bytes}\n  deletionPolicy: {policy}\n"
    )
}

async fn settings(stack: &Stack, name: &str) -> Option<ChannelSettings> {
    let mut conn = stack.redis.connection().await;
    let raw: Option<String> = redis::AsyncCommands::get(&mut conn, names::settings_key(name)).await.unwrap();
    raw.map(|r| ChannelSettings::from_json(&r).unwrap())
}

async fn stream_exists(js: &async_nats::jetstream::Context, name: &str) -> bool {
    js.get_stream(names::stream_name(name)).await.is_ok()
}

#[tokio::test]
async fn standalone_operator_declares_channels_that_relays_obey_and_keeps_them_in_shape() {
    let stack =
        Stack::with(StackOptions { relays: 1, ..Default::default() }.env("RELAY_UNDECLARED_CHANNELS", "deny")).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let dir = stack.dir().join("channels");
    std::fs::create_dir_all(&dir).unwrap();
    let (ch, kept) = (unique("chat"), unique("audit"));
    std::fs::write(dir.join("chat.yaml"), manifest(&ch, 100, "Delete")).unwrap();
    std::fs::write(dir.join("audit.yaml"), manifest(&kept, 100, "Retain")).unwrap();
    std::fs::write(dir.join("README.txt"), "not a manifest").unwrap();
    let _op = OperatorProc::start(&stack, &["--standalone", dir.to_str().unwrap(), "--resync", "300ms"], &[]).await;
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());

    // Created with the spec's values.
    eventually(T, "settings written", || async { settings(&stack, &ch).await.is_some() }).await;
    let s = settings(&stack, &ch).await.unwrap();
    assert_eq!((s.history.max_messages, s.history.max_age_secs, s.limits.max_message_bytes), (500, 3600, 100));
    assert_eq!(s.stream.as_deref(), Some(names::stream_name(&ch).as_str()));
    assert_eq!(s.owner.as_deref(), Some(format!("demo/{ch}").as_str()));
    let mut stream = js.get_stream(names::stream_name(&ch)).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.subjects, [format!("events.{ch}"), format!("events.{ch}.>")]);
    assert_eq!((info.config.max_messages, info.config.max_bytes), (10_000, 64 << 20));
    assert_eq!(info.config.max_age, Duration::from_secs(24 * 3600));

    // Relays obey: the channel and its sub-channels exist, limits apply, publishes land in JetStream.
    let mut c = stack.client(0).await;
    eventually(T, "relay accepts the channel", || {
        let (mut c, token, ch) = (c.clone(), alice.token.clone(), ch.clone());
        async move { c.publish(&token, &ch, "hello").await.is_ok() }
    })
    .await;
    c.publish(&alice.token, &format!("{ch}.room1"), "sub-channel").await.unwrap();
    let e = c.publish(&alice.token, &ch, &"x".repeat(101)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(stream.info().await.unwrap().state.messages, 2, "both publishes are in the stream");

    // Drift: the stream and the settings are deleted behind the operator's back; both come back.
    js.delete_stream(names::stream_name(&ch)).await.unwrap();
    let mut conn = stack.redis.connection().await;
    let _: () = redis::AsyncCommands::del(&mut conn, names::settings_key(&ch)).await.unwrap();
    eventually(T, "stream and settings restored", || async {
        stream_exists(&js, &ch).await && settings(&stack, &ch).await.is_some()
    })
    .await;

    // Update: the relay follows without a restart.
    std::fs::write(dir.join("chat.yaml"), manifest(&ch, 200, "Delete")).unwrap();
    eventually(T, "the new limit applies", || {
        let (mut c, token, ch) = (c.clone(), alice.token.clone(), ch.clone());
        async move { c.publish(&token, &ch, &"x".repeat(150)).await.is_ok() }
    })
    .await;

    // Delete: stream, settings and history go; the relay no longer knows the channel.
    c.publish(&alice.token, &kept, "keep me").await.unwrap();
    std::fs::remove_file(dir.join("chat.yaml")).unwrap();
    std::fs::remove_file(dir.join("audit.yaml")).unwrap();
    eventually(T, "deleted", || async { !stream_exists(&js, &ch).await && settings(&stack, &ch).await.is_none() })
        .await;
    let history: i64 = redis::AsyncCommands::exists(&mut conn, names::history_key(&ch)).await.unwrap();
    let sub_history: i64 =
        redis::AsyncCommands::exists(&mut conn, names::history_key(&format!("{ch}.room1"))).await.unwrap();
    assert_eq!((history, sub_history), (0, 0), "Delete removes the history of the channel and its sub-channels");
    eventually(T, "relay refuses the deleted channel", || {
        let (mut c, token, ch) = (c.clone(), alice.token.clone(), ch.clone());
        async move { c.publish(&token, &ch, "hi").await.is_err_and(|e| e.code() == Code::NotFound) }
    })
    .await;
    // Retain: undeclared, but stream and history stay.
    eventually(T, "retained channel undeclared", || async { settings(&stack, &kept).await.is_none() }).await;
    assert!(stream_exists(&js, &kept).await, "Retain keeps the stream");
    let history: i64 = redis::AsyncCommands::exists(&mut conn, names::history_key(&kept)).await.unwrap();
    assert_eq!(history, 1, "Retain keeps the history");
}
