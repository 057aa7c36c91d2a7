#!/usr/bin/env bash
# Starts the whole system locally, on loopback, in the foreground (Ctrl-C stops everything):
# NATS with JetStream, Redis, PocketBase (users alice and bob), the operator (standalone mode, over
# examples/channels/), two relay replicas.
#   scripts/dev.sh             one NATS server and one Redis
#   scripts/dev.sh --cluster   a 3-node NATS cluster (clustered JetStream) and a 6-node Redis Cluster
#                              (3 masters, 3 replicas); relays wait for one replica per publish
# State lives in .stack/ (.stack-cluster/ with --cluster; delete it for a clean start).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cluster=false
case "${1:-}" in
  --cluster) cluster=true ;;
  "") ;;
  *) echo "usage: scripts/dev.sh [--cluster]" >&2; exit 2 ;;
esac
scripts/install-deps.sh
cargo build --release -p relay -p operator --bins
(cd web && npm run build --silent)

state="$root/.stack"
$cluster && state="$root/.stack-cluster"
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
ports=(4222 6379 8090 50051 50052 9090 9091 9092)
$cluster && ports=(4222 4223 4224 6222 6223 6224 7000 7001 7002 7003 7004 7005 17000 17001 17002 17003 17004 17005 8090 50051 50052 9090 9091 9092)
for p in "${ports[@]}"; do
  port_free "$p" || { echo "port $p is in use: stop what holds it (an earlier dev.sh?) and retry" >&2; exit 1; }
done

if $cluster; then
  routes=nats://127.0.0.1:6222,nats://127.0.0.1:6223,nats://127.0.0.1:6224
  for i in 0 1 2; do
    mkdir -p "$state/nats/n$i"
    nats-server -a 127.0.0.1 -p $((4222 + i)) -js -sd "$state/nats/n$i" --server_name "n$i" --cluster_name relay \
      --cluster "nats://127.0.0.1:$((6222 + i))" --routes "$routes" >"$state/logs/nats-$i.log" 2>&1 & pids+=($!)
  done
  for i in 0 1 2 3 4 5; do
    mkdir -p "$state/redis/$((7000 + i))"
    redis-server --bind 127.0.0.1 --port $((7000 + i)) --save "" --appendonly yes --dir "$state/redis/$((7000 + i))" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 --repl-diskless-sync-delay 0 \
      >"$state/logs/redis-$((7000 + i)).log" 2>&1 & pids+=($!)
  done
  for i in 0 1 2; do wait_port $((4222 + i)) "nats-server n$i"; done
  for i in 0 1 2 3 4 5; do wait_port $((7000 + i)) "redis-server $((7000 + i))"; done
  if ! redis-cli -p 7000 cluster info | grep -q cluster_state:ok; then
    redis-cli --cluster create 127.0.0.1:{7000..7005} --cluster-replicas 1 --cluster-yes >"$state/logs/redis-cluster-create.log"
  fi
  for _ in $(seq 1 100); do redis-cli -p 7000 cluster info | grep -q cluster_state:ok && break; sleep 0.2; done
  export RELAY_NATS_URL=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224
  export OPERATOR_NATS_URL=$RELAY_NATS_URL
  export RELAY_REDIS_URL=redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002
  export OPERATOR_REDIS_URL=$RELAY_REDIS_URL RELAY_REDIS_MODE=cluster OPERATOR_REDIS_MODE=cluster RELAY_REDIS_WAIT_REPLICAS=1
else
  nats-server -a 127.0.0.1 -p 4222 -js -sd "$state/nats" >"$state/logs/nats.log" 2>&1 & pids+=($!)
  redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly yes --dir "$state/redis" >"$state/logs/redis.log" 2>&1 & pids+=($!)
  wait_port 4222 nats-server; wait_port 6379 redis-server
fi
pocketbase superuser upsert admin@relay.local admin-password-123 --dir "$state/pocketbase" >/dev/null
pocketbase serve --http 127.0.0.1:8090 --dir "$state/pocketbase" >"$state/logs/pocketbase.log" 2>&1 & pids+=($!)
wait_port 8090 pocketbase

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

backends="NATS        nats://127.0.0.1:4222 (JetStream on)     Redis  redis://127.0.0.1:6379"
$cluster && backends="NATS        nats://127.0.0.1:4222,4223,4224 (a cluster, JetStream clustered)
  Redis       a Redis Cluster on 127.0.0.1:7000-7005 (3 masters, 3 replicas); publishes wait for a replica"
cat <<TXT

Relay is up (logs in ${state#$root/}/logs).

  Chat in the browser: open http://127.0.0.1:50051/?relays=http://127.0.0.1:50051,http://127.0.0.1:50052
  in two windows and log in as alice@example.com / alice-password and bob@example.com / bob-password.

  relays      gRPC + gRPC-web  127.0.0.1:50051 and 127.0.0.1:50052   admin (/metrics /readyz) :9090 and :9091
  PocketBase  http://127.0.0.1:8090/_/  (admin@relay.local / admin-password-123)
  $backends
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
echo "a process exited; see ${state#$root/}/logs" >&2
