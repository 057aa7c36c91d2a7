#!/usr/bin/env bash
# Builds the envtest-style binaries the operator's integration tests need, from Go modules, into a
# cache outside the repo, and prints the folder (use it as KUBEBUILDER_ASSETS):
#   kube-apiserver (k8s.io/kubernetes) and etcd (go.etcd.io/etcd), plus helm and promtool.
# k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces every k8s.io staging module with a
# local path), so it is built from a throwaway wrapper module that pins each staging module instead.
# Idempotent: a binary already in the cache is kept.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
HELM_VERSION=${HELM_VERSION:-3.22.0}
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-0.316.0}
out=${KUBEBUILDER_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/relay-test-bins/k8s-$K8S_VERSION}
mkdir -p "$out"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build_wrapped() { # name module version package
  local name=$1 module=$2 version=$3 pkg=$4
  [ -x "$out/$name" ] && return 0
  echo "building $name ($module@$version); this takes a while the first time" >&2
  local dir="$work/$name"
  mkdir -p "$dir" && cd "$dir"
  go mod init "wrap/$name" >/dev/null 2>&1
  if [ "$module" = k8s.io/kubernetes ]; then
    # Pin every staging module that k8s.io/kubernetes replaces with a local path.
    local gomod
    gomod=$(go mod download -json "$module@v$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod" | while read -r m; do
      go mod edit -replace "$m=$m@v0.${version#1.}"
    done
  fi
  go get "$module@v$version" >/dev/null 2>&1 || go get "$module@v$version"
  local ldflags=""
  if [ "$module" = k8s.io/kubernetes ]; then
    # What the Kubernetes build stamps in; the API server reports it and derives defaults from it.
    local v=k8s.io/component-base/version minor=${version#1.}
    ldflags="-X $v.gitVersion=v$version -X $v.gitMajor=1 -X $v.gitMinor=${minor%%.*} -X $v.gitTreeState=clean"
  fi
  go build -ldflags "$ldflags" -o "$out/$name" "$pkg"
  cd - >/dev/null
}

build_wrapped kube-apiserver k8s.io/kubernetes "$K8S_VERSION" k8s.io/kubernetes/cmd/kube-apiserver
build_wrapped etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3
# promtool checks the alert rules the chart ships.
build_wrapped promtool github.com/prometheus/prometheus "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool
if [ ! -x "$out/helm" ]; then
  echo "building helm $HELM_VERSION" >&2
  GOBIN="$out" go install "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
fi
echo "$out"
