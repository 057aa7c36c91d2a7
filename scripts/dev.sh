#!/usr/bin/env bash
# Starts the whole system locally, on loopback, in the foreground (Ctrl-C stops everything):
# NATS with JetStream, Redis, PocketBase (users alice and bob), the operator (standalone mode, over
# examples/channels/), two relay replicas.
# State lives in .stack/ (delete it for a clean start).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/install-deps.sh
cargo build --release -p relay -p operator --bins
(cd web && npm run build --silent)

state="$root/.stack"
mkdir -p "$state"/{nats,redis,pocketbase,logs}
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo; echo "stopping..."
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 1 100); do port_free "$1" || return 0; sleep 0.1; done; echo "$2 did not start; see $state/logs" >&2; exit 1; }
for p in 4222 6379 8090 50051 50052 9090 9091 9092; do
  port_free "$p" || { echo "port $p is in use: stop what holds it (an earlier dev.sh?) and retry" >&2; exit 1; }
done

nats-server -a 127.0.0.1 -p 4222 -js -sd "$state/nats" >"$state/logs/nats.log" 2>&1 & pids+=($!)
redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly yes --dir "$state/redis" >"$state/logs/redis.log" 2>&1 & pids+=($!)
pocketbase superuser upsert admin@relay.local admin-password-123 --dir "$state/pocketbase" >/dev/null
pocketbase serve --http 127.0.0.1:8090 --dir "$state/pocketbase" >"$state/logs/pocketbase.log" 2>&1 & pids+=($!)
wait_port 4222 nats-server; wait_port 6379 redis-server; wait_port 8090 pocketbase

pb=http://127.0.0.1:8090
admin=$(curl -sf -X POST "$pb/api/collections/_superusers/auth-with-password" -H 'content-type: application/json' \
  -d '{"identity":"admin@relay.local","password":"admin-password-123"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
for u in alice bob; do
  curl -s -o /dev/null -X POST "$pb/api/collections/users/records" -H "Authorization: $admin" -H 'content-type: application/json' \
    -d "{\"email\":\"$u@example.com\",\"password\":\"$u-password\",\"passwordConfirm\":\"$u-password\",\"name\":\"$u\"}" || true
done

OPERATOR_ADMIN_LISTEN=127.0.0.1:9092 OPERATOR_STANDALONE_DIR="$root/examples/channels" OPERATOR_RESYNC=5s \
  target/release/operator >"$state/logs/operator.log" 2>&1 & pids+=($!)
wait_port 9092 operator

for i in 0 1; do
  RELAY_LISTEN=127.0.0.1:$((50051 + i)) RELAY_ADMIN_LISTEN=127.0.0.1:$((9090 + i)) \
  RELAY_UNDECLARED_CHANNELS=allow RELAY_WEB_DIR="$root/web/dist" \
    target/release/relay >"$state/logs/relay-$i.log" 2>&1 & pids+=($!)
done
wait_port 50051 relay-0; wait_port 50052 relay-1

cat <<TXT

Relay is up (logs in .stack/logs).

  Chat in the browser: open http://127.0.0.1:50051/?relays=http://127.0.0.1:50051,http://127.0.0.1:50052
  in two windows and log in as alice@example.com / alice-password and bob@example.com / bob-password.

  relays      gRPC + gRPC-web  127.0.0.1:50051 and 127.0.0.1:50052   admin (/metrics /readyz) :9090 and :9091
  PocketBase  http://127.0.0.1:8090/_/  (admin@relay.local / admin-password-123)
  NATS        nats://127.0.0.1:4222 (JetStream on)     Redis  redis://127.0.0.1:6379
  operator    reconciles examples/channels/*.yaml (chat, chat.announcements, inbox, jobs); admin :9092
              other channel names are served with default settings (RELAY_UNDECLARED_CHANNELS=allow)
  users       alice@example.com / alice-password       bob@example.com / bob-password

Try it in two more terminals:
  export PATH=\$PWD/target/release:\$PATH
  export RELAY_TOKEN=\$(relayctl login bob@example.com bob-password)
  relayctl subscribe chat --since-seq 0                          # bob listens on replica 1

  export RELAY_TOKEN=\$(target/release/relayctl login alice@example.com alice-password)
  target/release/relayctl --relay http://127.0.0.1:50052 publish chat "hi bob"   # alice sends via replica 2

Ctrl-C stops everything.
TXT
wait -n "${pids[@]}"
echo "a process exited; see .stack/logs" >&2
