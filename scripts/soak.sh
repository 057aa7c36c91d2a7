#!/usr/bin/env bash
# Runs the randomized fault checker seed after seed for a while and prints what it checked:
#   scripts/soak.sh [minutes=30] [seconds per seed=60] [first seed=random]
# SOAK_TOPOLOGY=cluster|sentinel|all runs on a NATS cluster and Redis Cluster, on Sentinel, or each in turn.
# Each seed is a fresh stack (NATS, Redis, PocketBase, two relays, the operator) with relays, NATS
# and Redis killed, stalled and wiped while publishers, subscribers and queue workers run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >/dev/null
cargo build --release --workspace --bins
cargo run --release -q -p relay-tests --example soak -- "$@"
