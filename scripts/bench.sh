#!/usr/bin/env bash
# Runs every benchmark scenario against the relay, Centrifugo (memory and Redis engines) and raw
# NATS on this machine, in one run, then writes docs/benchmarks.md and docs/benchmarks.png.
# Each figure is the median of RUNS runs (3 by default), alternated between the systems; the
# servers run on CPU 0 and loadgen on the others. Takes about 60 minutes. Not part of the tests
# (a smoke run of loadgen is).
#   scripts/bench.sh            # everything
#   SECONDS_PER_RUN=5 RUNS=1 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/install-deps.sh >/dev/null
cargo build --release -q -p relay -p relay-bench --bins

# Centrifugo v6, built from its Go module into the same cache as the test binaries.
CENTRIFUGO_VERSION=6.9.1
export CENTRIFUGO_BIN=${CENTRIFUGO_BIN:-$HOME/.cache/relay-test-bins/centrifugo-$CENTRIFUGO_VERSION}
if [ ! -x "$CENTRIFUGO_BIN" ]; then
  echo "building Centrifugo $CENTRIFUGO_VERSION (first time only)" >&2
  work=$(mktemp -d)
  (cd "$work" && go mod init tools >/dev/null 2>&1 \
    && GOFLAGS=-mod=mod go get "github.com/centrifugal/centrifugo/v6@v$CENTRIFUGO_VERSION" >/dev/null 2>&1 \
    && go build -ldflags "-X github.com/centrifugal/centrifugo/v6/internal/build.Version=$CENTRIFUGO_VERSION" \
         -o "$CENTRIFUGO_BIN" github.com/centrifugal/centrifugo/v6)
  rm -rf "$work"
fi
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib

# Ten thousand idle connections need file descriptors on both ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

secs=${SECONDS_PER_RUN:-10}
out=target/bench
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"
commands="$out/commands.txt"
: >"$commands"
runs=${RUNS:-3}
# Servers on CPU 0, loadgen on the others: the client's own cost does not decide the result.
pin=$( [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null && echo --pin || true)
publishing=(relay "relay --declared" "relay --declared --publish-path stream" relay-sim "relay-sim --declared"
  centrifugo-memory centrifugo-redis nats)
connecting=(relay centrifugo-memory centrifugo-redis nats)
scenarios=(
  "fanout --subscribers 1000 --rate 100 --seconds $secs"
  "channels --channels 1000 --rate 2000 --seconds $secs"
  "throughput --concurrency 64 --seconds $secs"
  "channels --channels 1000 --rate 2000 --saturate --seconds 5"
  "fanout --subscribers 1000 --rate 100 --saturate --seconds 5"
  "idle --subscribers 10000"
  "idle --subscribers 10000 --streams-per-connection 100"
  "reconnect --subscribers 1000 --missed 20"
  "presence --members 10000"
)
for scenario in "${scenarios[@]}"; do
  case $scenario in
    *--streams-per-connection*) systems=(relay) ;;
    # Raw NATS' subscribers share 10 connections: the relay's row beside it does the same.
    fanout*--saturate*) systems=(relay "relay --streams-per-connection 100" "relay --declared" "relay --declared --publish-path stream" centrifugo-memory centrifugo-redis nats) ;;
    *--saturate*) systems=(relay "relay --declared" "relay --declared --publish-path stream" centrifugo-memory centrifugo-redis nats) ;;
    idle*|reconnect*) systems=("${connecting[@]}") ;;
    presence*) systems=(relay centrifugo-memory centrifugo-redis) ;;
    *) systems=("${publishing[@]}") ;;
  esac
  # A saturation search is many trials already: once per system.
  scenario_runs=$runs
  case $scenario in *--saturate*) scenario_runs=1 ;; esac
  # Runs alternate between the systems, so that a slow minute of the machine hits them all.
  for run in $(seq "$scenario_runs"); do
    for system in "${systems[@]}"; do
      cmd="target/release/loadgen $pin --system $system --scenario $scenario"
      [ "$run" = 1 ] && echo "$cmd" >>"$commands"
      echo "[$run/$scenario_runs] $cmd" >&2
      if ! $cmd >>"$results" 2>"$out/last.err"; then
        echo "  failed: $(tail -3 "$out/last.err")" >&2
      else
        tail -1 "$out/last.err" >&2
      fi
    done
  done
done
python3 scripts/bench_report.py "$results" "$commands" docs/benchmarks.md docs/benchmarks.png
echo "wrote docs/benchmarks.md and docs/benchmarks.png" >&2
