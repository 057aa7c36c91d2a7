//! The web client in headless Chromium (Debian's), driven by playwright-core from npm, against the
//! real stack: two relay replicas serving the built page (`web/dist`), NATS, Redis, PocketBase.
//! The browser side lives in `web/tests/chat.e2e.test.mjs`; this test runs the stack and hands it
//! the addresses. Screenshots land in `target/artifacts/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use relay_tests::{Stack, StackOptions};

/// The chat: messages across replicas, a reload, a replica dying (`web/tests/chat.e2e.test.mjs`).
#[tokio::test]
async fn alice_and_bob_chat_in_two_browsers_across_replicas() {
    let stack = stack().await;
    run(&stack, "chat", &["alice", "bob"]).await;
}

/// Who is online, joins and leaves, typing, a replica dying (`web/tests/presence.e2e.test.mjs`), on a
/// `chat` channel with presence (a 5 s ttl) and ephemeral messages, as `examples/channels/chat.yaml`
/// declares it but for the ttl.
#[tokio::test]
async fn who_is_online_and_typing_in_three_browsers_across_replicas() {
    let stack = stack().await;
    let spec = serde_json::json!({
        "presence": {"enabled": true, "joinLeave": true, "ttl": "5s"},
        "limits": {"allowEphemeral": true},
    });
    stack.declare_spec("chat", spec).await;
    run(&stack, "presence", &["alice", "bob", "carol"]).await;
}

/// Two relays serving the built page, NATS, Redis, PocketBase.
async fn stack() -> Stack {
    let dist = root().join("web/dist");
    assert!(dist.join("index.html").exists(), "web/dist is missing: run `npm ci && npm run build` in web/");
    Stack::with(StackOptions::default().env("RELAY_WEB_DIR", dist.to_str().unwrap())).await
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One browser run at a time: the chat test measures delivery, two Chromiums would skew it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the browser tests with `E2E=<which>` (the others skip) for these users.
async fn run(stack: &Stack, which: &str, names: &[&str]) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut env = vec![
        ("E2E".to_owned(), which.to_owned()),
        ("RELAY_A".to_owned(), stack.relays[0].addr()),
        ("RELAY_B".to_owned(), stack.relays[1].addr()),
        ("RELAY_A_PID".to_owned(), stack.relays[0].pid().to_string()),
        ("PB_URL".to_owned(), stack.pocketbase.url()),
        ("ARTIFACTS".to_owned(), root().join("target/artifacts").to_string_lossy().into_owned()),
    ];
    for name in names {
        let user = stack.pocketbase.create_user(name).await;
        env.push((format!("{}_EMAIL", name.to_uppercase()), user.email));
        env.push((format!("{}_PASSWORD", name.to_uppercase()), user.password));
    }
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node").args(["--test", "tests/"]).current_dir(root().join("web")).envs(env).output()
    })
    .await
    .unwrap()
    .expect("node (install Node.js)");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "browser test {which} failed:\n{report}");
    assert!(report.contains("# pass 1"), "the browser test {which} did not run:\n{report}");
}
