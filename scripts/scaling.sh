#!/usr/bin/env bash
# Measures the relay on clustered backends (the table in docs/scaling.md): publishes/s and
# deliveries/s with one NATS server or a cluster of three (the channel's JetStream stream on every
# node), and one Redis or a Redis Cluster of three masters (each append waiting for its replica),
# then what each node failure costs clients (tests/examples/failover.rs).
#   scripts/scaling.sh              # about ten minutes
#   SECONDS_PER_RUN=5 FAILOVER_RUNS=1 scripts/scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >/dev/null
cargo build --release -q -p relay -p operator -p relay-bench --bins
cargo build --release -q -p relay-tests --example failover
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
secs=${SECONDS_PER_RUN:-10}
out=target/scaling
mkdir -p "$out"

echo "| NATS | Redis | scenario | publishes/s | deliveries/s | latency p50 / p99 | server CPU (cores) |"
echo "|---|---|---|---|---|---|---|"
for nats in 1 3; do
  for redis in single cluster; do
    for scenario in "throughput --concurrency 64" "channels --channels 1000 --rate 2000"; do
      json=$(target/release/loadgen --system relay --declared --nats-nodes "$nats" --redis "$redis" \
        --scenario $scenario --seconds "$secs" 2>"$out/last.err" | tail -1) || { echo "failed: $(tail -3 "$out/last.err")" >&2; continue; }
      python3 - "$nats" "$redis" "${scenario%% *}" "$json" <<'PY'
import json, sys
nats, redis, scenario, raw = sys.argv[1:]
r = json.loads(raw)
redis = {"single": "1 server", "cluster": "Cluster, 3 masters"}[redis]
nats = "1 server" if nats == "1" else "cluster of 3"
print(f"| {nats} | {redis} | {scenario} | {r['publish_per_s']:.0f} | {r['delivered_per_s']:.0f} | "
      f"{r['latency']['p50_ms']:.1f} / {r['latency']['p99_ms']:.1f} ms | {r['server']['cpu_cores']:.2f} |")
PY
    done
  done
done
echo
target/release/examples/failover
