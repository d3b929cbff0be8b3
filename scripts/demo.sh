#!/usr/bin/env bash
# The ferrovs demo: two simulated Kubernetes nodes on this machine, each
# with its own ferrovsd, pods in network namespaces, two tenants with
# VLAN isolation, and a VXLAN tunnel between the nodes.
#
#   node1 (ferrovsd br1)                 node2 (ferrovsd br2)
#   red-a  10.10.0.11  tag 10 ┐          ┌ tag 10  red-c  10.10.0.21
#   blue-a 10.10.0.11  tag 20 ┤          ├ tag 20  blue-c 10.10.0.22
#   red-b  10.10.0.12  tag 10 ┘          │
#   vxlan vx-red key 5010 tag 10 ═══ ul1 ═ ul2 ═══ vx-red (same)
#   vxlan vx-blue key 5020 tag 20 ══════════════ vx-blue
#
# red and blue pods use the same subnet (blue-a even reuses red-a's IP):
# only VLANs keep them apart. Everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: the demo creates network namespaces and AF_XDP sockets" >&2
  exit 1
fi

./scripts/deps.sh

echo "== building ferrovs (release)"
cargo build --release --locked -p tools --bins
BIN=$PWD/target/release
WORK=$(mktemp -d /tmp/ferrovs-demo.XXXX)
PIDS=()
NSS=(fdemo-red-a fdemo-blue-a fdemo-red-b fdemo-red-c fdemo-blue-c)
LINKS=(fd-red-a fd-blue-a fd-red-b fd-red-c fd-blue-c fd-ul1)

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  for n in "${NSS[@]}"; do ip netns del "$n" 2>/dev/null; done
  for l in "${LINKS[@]}"; do ip link del "$l" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# pod NAME NS IP MAC: a namespace with eth0, host side NAME
pod() {
  local host=$1 ns=$2 ip=$3 mac=$4
  ip netns add "$ns"
  ip link add "$host" type veth peer name eth0 netns "$ns"
  ip -n "$ns" link set eth0 address "$mac"
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  ip netns exec "$ns" ethtool -K eth0 tx off >/dev/null
  ip link set "$host" up
}

echo "== creating pods (network namespaces)"
pod fd-red-a  fdemo-red-a  10.10.0.11 02:00:00:0a:00:11
pod fd-blue-a fdemo-blue-a 10.10.0.11 02:00:00:14:00:11
pod fd-red-b  fdemo-red-b  10.10.0.12 02:00:00:0a:00:12
pod fd-red-c  fdemo-red-c  10.10.0.21 02:00:00:0a:00:21
pod fd-blue-c fdemo-blue-c 10.10.0.22 02:00:00:14:00:22
echo "== creating the underlay link between the nodes"
ip link add fd-ul1 type veth peer name fd-ul2
ip link set fd-ul1 up
ip link set fd-ul2 up

cat >"$WORK/flows.txt" <<'FLOWS'
# Tenants are kept apart by the access VLAN of each port; 'normal' is a
# VLAN-aware learning switch. Count ARP separately to show it in dump-flows.
table=0,priority=100,arp actions=normal
table=0,priority=0 actions=normal
FLOWS

cat >"$WORK/node1.toml" <<EOF
bridge = "br1"
socket = "$WORK/br1.sock"
metrics = "127.0.0.1:9471"
flows = "$WORK/flows.txt"
[[port]]
name = "fd-red-a"
ofport = 1
tag = 10
[[port]]
name = "fd-blue-a"
ofport = 2
tag = 20
[[port]]
name = "fd-red-b"
ofport = 3
tag = 10
[[port]]
name = "vx-red"
ofport = 10
type = "vxlan"
underlay = "fd-ul1"
local_ip = "192.168.250.1"
remote_ip = "192.168.250.2"
key = 5010
tag = 10
[[port]]
name = "vx-blue"
ofport = 11
type = "vxlan"
underlay = "fd-ul1"
local_ip = "192.168.250.1"
remote_ip = "192.168.250.2"
key = 5020
tag = 20
EOF

cat >"$WORK/node2.toml" <<EOF
bridge = "br2"
socket = "$WORK/br2.sock"
flows = "$WORK/flows.txt"
[[port]]
name = "fd-red-c"
ofport = 1
tag = 10
[[port]]
name = "fd-blue-c"
ofport = 2
tag = 20
[[port]]
name = "vx-red"
ofport = 10
type = "vxlan"
underlay = "fd-ul2"
local_ip = "192.168.250.2"
remote_ip = "192.168.250.1"
key = 5010
tag = 10
[[port]]
name = "vx-blue"
ofport = 11
type = "vxlan"
underlay = "fd-ul2"
local_ip = "192.168.250.2"
remote_ip = "192.168.250.1"
key = 5020
tag = 20
EOF

echo "== starting ferrovsd for node1 and node2"
RUST_LOG=warn "$BIN/ferrovsd" --config "$WORK/node1.toml" &
PIDS+=($!)
RUST_LOG=warn "$BIN/ferrovsd" --config "$WORK/node2.toml" &
PIDS+=($!)
for s in br1 br2; do
  for _ in $(seq 50); do [ -S "$WORK/$s.sock" ] && break; sleep 0.1; done
done
ctl1() { "$BIN/ferrovs-ctl" --socket "$WORK/br1.sock" "$@"; }
ctl2() { "$BIN/ferrovs-ctl" --socket "$WORK/br2.sock" "$@"; }

echo; echo "== ferrovs-ctl show (node1)"; ctl1 show

check() {
  local what=$1 expect=$2 ns=$3 dst=$4
  if ip netns exec "$ns" ping -c 3 -i 0.2 -W 1 "$dst" >"$WORK/ping.txt" 2>&1; then got=reaches; else got=blocked; fi
  local summary
  summary=$(grep -E 'packets transmitted' "$WORK/ping.txt" || true)
  if [ "$got" = "$expect" ]; then mark=OK; else mark=UNEXPECTED; FAILED=1; fi
  printf '  %-52s %-8s (%s) [%s]\n' "$what" "$got" "$summary" "$mark"
}
FAILED=0
echo; echo "== traffic"
check "red-a  -> red-b   (same node, same tenant)"        reaches fdemo-red-a 10.10.0.12
check "red-a  -> red-c   (node1 -> node2 over VXLAN)"     reaches fdemo-red-a 10.10.0.21
check "blue-a -> blue-c  (other tenant over VXLAN)"       reaches fdemo-blue-a 10.10.0.22
check "blue-a -> red-b   (cross-tenant, same subnet)"     blocked fdemo-blue-a 10.10.0.12
check "red-c  -> blue-c  (cross-tenant on node2)"         blocked fdemo-red-c 10.10.0.22

echo; echo "== ferrovs-ctl dump-flows (node1)"; ctl1 dump-flows
echo; echo "== ferrovs-ctl dump-ports (node1)"; ctl1 dump-ports
echo; echo "== ferrovs-ctl fdb-show (node1): blue-a and red-a share an IP, not a VLAN"; ctl1 fdb-show
echo; echo "== ferrovs-ctl trace (node1): blue-a's ARP broadcast stays in VLAN 20"
ctl1 trace in_port=2,arp,dl_src=02:00:00:14:00:11,dl_dst=ff:ff:ff:ff:ff:ff,arp_op=1,arp_spa=10.10.0.11,arp_tpa=10.10.0.12
echo; echo "== Prometheus metrics (node1, excerpt)"
curl -s http://127.0.0.1:9471/metrics 2>/dev/null | grep -E '^ferrovs_(flow_cache|upcalls|packets)' || \
  echo "  (curl not installed; metrics are at http://127.0.0.1:9471/metrics)"

echo
if [ "$FAILED" = 0 ]; then echo "demo: all traffic checks as expected"; else echo "demo: some checks were UNEXPECTED"; fi
exit "$FAILED"
