#!/bin/sh
# Builds tests/interop/gonode (hashicorp/raft v1.1.2 from Debian's
# golang-github-hashicorp-raft-dev, GOPATH mode, offline).
#   build_gonode.sh <gonode source dir> <output binary>
# Installs the Go packages first when they are missing and we are root.
set -eu
src=$(cd "$1" && pwd)
out=$2
gocode=/usr/share/gocode
pkgs="golang-go golang-github-hashicorp-raft-dev golang-github-hashicorp-raft-boltdb-dev"
if ! command -v go >/dev/null 2>&1 || [ ! -d $gocode/src/github.com/hashicorp/raft ] ||
   [ ! -d $gocode/src/github.com/hashicorp/raft-boltdb ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "build_gonode: installing $pkgs" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null; }
    fi
fi
if ! command -v go >/dev/null 2>&1; then
    echo "build_gonode: Go is not installed (apt-get install $pkgs)" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src/craftinterop"
ln -s "$src" "$tmp/src/craftinterop/gonode"
mkdir -p "$(dirname "$out")"
case "$out" in /*) abs=$out ;; *) abs=$(pwd)/$out ;; esac
# A cache next to the binary keeps rebuilds quick without touching $HOME.
cache=$(dirname "$abs")/gocache
cd "$tmp/src/craftinterop/gonode"
GO111MODULE=off GOPATH="$tmp:$gocode" GOCACHE="$cache" GOPROXY=off GOFLAGS= \
    go build -o "$abs.tmp.$$" .
mv "$abs.tmp.$$" "$abs"
