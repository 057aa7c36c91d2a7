//! The binaries start and explain themselves. (Also: having an integration test here makes
//! `cargo test --workspace` build the relay binaries that `tests/` runs.)

use std::process::Command;

#[test]
fn relay_help_lists_every_setting_with_its_env_twin() {
    let out = Command::new(env!("CARGO_BIN_EXE_relay")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for env in [
        "RELAY_LISTEN",
        "RELAY_ADMIN_LISTEN",
        "RELAY_NATS_URL",
        "RELAY_REDIS_URL",
        "RELAY_POCKETBASE_URL",
        "RELAY_POCKETBASE_COLLECTION",
        "RELAY_UNDECLARED_CHANNELS",
    ] {
        assert!(help.contains(env), "--help does not mention {env}");
    }
}

#[test]
fn relayctl_without_a_token_says_how_to_get_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_relayctl"))
        .args(["publish", "chat", "hi"])
        .env_remove("RELAY_TOKEN")
        .env("RELAY_ADDR", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("error:"), "{err}");
}

#[test]
fn values_out_of_range_stop_the_relay_before_it_listens() {
    for (flag, value) in
        [("--heartbeat", "0s"), ("--stream-buffer", "0"), ("--auth-cache-ttl", "99999999999999999999h")]
    {
        let out = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args([flag, value, "--listen", "127.0.0.1:9", "--admin-listen", "127.0.0.1:9"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}
