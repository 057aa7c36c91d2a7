#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the integration tests against real
# nats-server, redis-server and PocketBase (started by the tests themselves on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
