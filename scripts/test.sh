#!/usr/bin/env bash
# Runs every test: unit, property, golden and the integration tests that
# build real network namespaces, veth pairs and AF_XDP sockets (root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then
  ./scripts/deps.sh
else
  echo "note: not root: the network integration tests will be skipped" >&2
fi
# Integration tests share the machine's two cores with the switch under
# test; run them one at a time so timing-sensitive checks stay honest.
cargo test --workspace --locked -- --test-threads=1
