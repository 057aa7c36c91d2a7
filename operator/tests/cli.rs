//! The binaries start and explain themselves. (Also: having an integration test here makes
//! `cargo test --workspace` build the operator binaries that `tests/` runs.)

use std::process::Command;

#[test]
fn crdgen_prints_the_relaychannel_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_crdgen")).output().unwrap();
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    for want in
        ["name: relaychannels.relay.dev", "kind: RelayChannel", "- rch", "x-kubernetes-validations", "subresources"]
    {
        assert!(yaml.contains(want), "CRD lacks {want:?}");
    }
}

#[test]
fn operator_help_lists_its_settings() {
    let out = Command::new(env!("CARGO_BIN_EXE_operator")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for env in ["OPERATOR_NATS_URL", "OPERATOR_REDIS_URL", "OPERATOR_ADMIN_LISTEN", "OPERATOR_STANDALONE_DIR"] {
        assert!(help.contains(env), "--help does not mention {env}");
    }
}
