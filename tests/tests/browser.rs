//! The web client in headless Chromium (Debian's), driven by playwright-core from npm, against the
//! real stack: two relay replicas serving the built page (`web/dist`), NATS, Redis, PocketBase.
//! The browser side lives in `web/tests/chat.e2e.test.mjs`; this test runs the stack and hands it
//! the addresses. Screenshots land in `target/artifacts/`.

use std::path::Path;
use std::process::Command;

use relay_tests::{Stack, StackOptions};

#[tokio::test]
async fn alice_and_bob_chat_in_two_browsers_across_replicas() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dist = root.join("web/dist");
    assert!(dist.join("index.html").exists(), "web/dist is missing: run `npm ci && npm run build` in web/");
    let stack = Stack::with(StackOptions::default().env("RELAY_WEB_DIR", dist.to_str().unwrap())).await;
    let (alice, bob) = (stack.pocketbase.create_user("alice").await, stack.pocketbase.create_user("bob").await);
    let artifacts = root.join("target/artifacts");
    let out = tokio::task::spawn_blocking({
        let (a, b) = (stack.relays[0].addr(), stack.relays[1].addr());
        let (pid_a, pb) = (stack.relays[0].pid().to_string(), stack.pocketbase.url());
        let web = root.join("web");
        move || {
            Command::new("node")
                .args(["--test", "tests/"])
                .current_dir(web)
                .env("RELAY_A", a)
                .env("RELAY_B", b)
                .env("RELAY_A_PID", pid_a)
                .env("PB_URL", pb)
                .env("ALICE_EMAIL", &alice.email)
                .env("ALICE_PASSWORD", &alice.password)
                .env("BOB_EMAIL", &bob.email)
                .env("BOB_PASSWORD", &bob.password)
                .env("ARTIFACTS", artifacts)
                .output()
                .expect("node (install Node.js)")
        }
    })
    .await
    .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "browser test failed:\n{report}");
    assert!(report.contains("# pass 1") && report.contains("# skipped 0"), "the browser test did not run:\n{report}");
}
