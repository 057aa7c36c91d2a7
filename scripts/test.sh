#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the integration tests against real
# nats-server, redis-server and PocketBase (started by the tests themselves on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Generated files must match their source.
cargo run -q -p operator --bin crdgen | diff -u crds/relaychannel.yaml - \
  || { echo "crds/relaychannel.yaml drifted from operator/src/crd.rs: regenerate it with cargo run -p operator --bin crdgen > crds/relaychannel.yaml" >&2; exit 1; }
cargo test --workspace
