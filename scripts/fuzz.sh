#!/usr/bin/env bash
# Runs the request fuzzer against a fresh relay for a while and prints what it sent and saw:
#   scripts/fuzz.sh [minutes=10] [seed=random]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >/dev/null
cargo build --release --workspace --bins
cargo run --release -q -p relay-tests --example fuzz -- "$@"
