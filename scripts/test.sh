#!/usr/bin/env bash
# Runs every test: formatting, lints, drift of generated files, unit tests, and the integration tests
# against real nats-server, redis-server, PocketBase, kube-apiserver + etcd, helm and headless
# Chromium (started by the tests themselves on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# kube-apiserver, etcd and helm for the operator and chart tests, built once into a cache.
KUBEBUILDER_ASSETS=$(scripts/install-k8s-test-bins.sh)
export KUBEBUILDER_ASSETS
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Generated files must match their source.
cargo run -q -p operator --bin crdgen | diff -u crds/relaychannel.yaml - \
  || { echo "crds/relaychannel.yaml drifted from operator/src/crd.rs: regenerate it with cargo run -p operator --bin crdgen > crds/relaychannel.yaml" >&2; exit 1; }
(cd web && npm run gen --silent) && test -z "$(git status --porcelain -- web/src/gen)" \
  || { echo "web/src/gen drifted from proto/: run npm run gen in web/ and commit it" >&2; exit 1; }
(cd web && npm run build --silent)
diff -u crds/relaychannel.yaml charts/relay/crds/relaychannel.yaml \
  || { echo "charts/relay/crds/ drifted from crds/: cp crds/relaychannel.yaml charts/relay/crds/" >&2; exit 1; }
cargo test --workspace
