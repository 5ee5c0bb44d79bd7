#!/usr/bin/env bash
# The demo: builds craft and runs a 3-node in-process cluster through
# election, replication, leader failure and failover.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh build >/dev/null
exec ./build/examples/craft-demo
