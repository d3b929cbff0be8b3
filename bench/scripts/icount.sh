#!/usr/bin/env bash
# Instructions per packet of the datapath pipeline, counted by callgrind.
# Builds ferrovs-icount in release mode and, for each case, runs N packets
# (after warm-up) with only the measured loop collected; prints Ir/packet.
#   bench/scripts/icount.sh [N] [case...]     (cases: l2 normal_vlan k8s)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000000}
shift || true
CASES=("$@")
[ ${#CASES[@]} -eq 0 ] && CASES=(l2 normal_vlan k8s)
command -v valgrind >/dev/null || { echo "valgrind missing (apt-get install -y valgrind)" >&2; exit 1; }
cargo build -q --release -p bench --bin ferrovs-icount
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/ferrovs-icount
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
printf '%-12s %12s %14s %10s\n' case packets instructions "instr/pkt"
for c in "${CASES[@]}"; do
  info=$(valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*icount_measure*' \
      --callgrind-out-file="$OUT/cg.$c" "$BIN" "$c" "$N" 2>"$OUT/log.$c") || { cat "$OUT/log.$c" >&2; exit 1; }
  pkts=$(sed -n 's/.*packets=\([0-9]*\).*/\1/p' <<<"$info")
  ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$OUT/cg.$c")
  [ -n "$ir" ] || ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$OUT/cg.$c")
  printf '%-12s %12s %14s %10.1f   (%s)\n' "$c" "$pkts" "$ir" "$(echo "$ir / $pkts" | bc -l)" "$info"
  if [ -n "${KEEP:-}" ]; then cp "$OUT/cg.$c" "${KEEP}/callgrind.out.$c"; fi
done
