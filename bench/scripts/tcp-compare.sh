#!/usr/bin/env bash
# TCP throughput and switch CPU cost: ferrovs vs Open vSwitch (AF_XDP,
# userspace datapath) vs the Linux bridge, in one run, alternating the
# systems round by round (A B C A B C ...).
#
#   sudo bench/scripts/tcp-compare.sh [ROUNDS] [SECONDS]     (default 3, 5)
#
# Topology per run (torn down and rebuilt between runs, so the AF_XDP
# programs of one system never meet the other's):
#   netns tcmp-snd: eth0 10.77.0.1/24 <-veth-> tcmp-a   [switch]   tcmp-b <-veth-> netns tcmp-rcv: eth0 10.77.0.2/24
# with `ethtool -K eth0 tx off` in both namespaces (checksums filled in by
# the sender: the switches do not offload).
#
# Each run: iperf3 TCP for SECONDS (client in tcmp-snd, server in
# tcmp-rcv); Gbit/s from the receiver's total, and the switch process's
# CPU seconds (utime+stime from /proc/<pid>/stat, all threads) during the
# run -> CPU seconds per GB received. The Linux bridge forwards in the
# kernel (softirq of the sending/receiving CPUs), so it has no process to
# charge and its CPU column is empty.
#
# Output: a Markdown table (median per system, ferrovs/OVS ratios) on
# stdout, every run as CSV in bench/results/tcp-compare.csv.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
SECS=${2:-5}
CORE=${CORE:-1}            # the one poll/PMD core for ferrovs and OVS
CSV=bench/results/tcp-compare.csv
NS_S=tcmp-snd NS_R=tcmp-rcv
LA=tcmp-a LB=tcmp-b
BR=tcmpbr
OVS_CTL=/usr/share/openvswitch/scripts/ovs-ctl
WORK=$(mktemp -d /tmp/tcp-compare.XXXX)
FPID=""

[ "$(id -u)" -eq 0 ] || { echo "run as root (namespaces, AF_XDP, OVS)" >&2; exit 1; }
for c in iperf3 ethtool ip python3; do
  command -v $c >/dev/null || { echo "missing $c" >&2; exit 1; }
done
if ! command -v ovs-vsctl >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openvswitch-switch >/dev/null
fi

log() { echo "== $*" >&2; }

del_links() {
  ip link del $LA 2>/dev/null || true
  ip link del $LB 2>/dev/null || true
  ip link del $BR 2>/dev/null || true
}

stop_ferrovs() {
  [ -z "$FPID" ] && [ -f "$WORK/ferrovsd.pid" ] && FPID=$(cat "$WORK/ferrovsd.pid")
  if [ -n "$FPID" ]; then
    kill -TERM "$FPID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$FPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$FPID" 2>/dev/null || true
    wait "$FPID" 2>/dev/null || true
    FPID=""
    rm -f "$WORK/ferrovsd.pid"
  fi
}

stop_ovs() {
  ovs-vsctl --if-exists --timeout=5 del-br $BR 2>/dev/null || true
  $OVS_CTL stop >/dev/null 2>&1 || true
}

cleanup() {
  set +e
  stop_ferrovs
  stop_ovs
  pkill -F "$WORK/iperf.pid" 2>/dev/null
  del_links
  ip netns del $NS_S 2>/dev/null
  ip netns del $NS_R 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Fresh veth pairs into the (persistent) namespaces.
make_links() {
  del_links
  ip link add $LA type veth peer name eth0 netns $NS_S
  ip link add $LB type veth peer name eth0 netns $NS_R
  local ns
  for ns in $NS_S $NS_R; do
    ip -n $ns link set eth0 address "02:77:00:00:00:0$([ $ns = $NS_S ] && echo 1 || echo 2)"
    ip -n $ns link set eth0 up
    ip netns exec $ns ethtool -K eth0 tx off >/dev/null
  done
  ip -n $NS_S addr add 10.77.0.1/24 dev eth0
  ip -n $NS_R addr add 10.77.0.2/24 dev eth0
  ip link set $LA up
  ip link set $LB up
}

cpu_ticks() { # utime+stime of a process (all threads)
  awk '{print $14 + $15}' "/proc/$1/stat"
}

wait_ping() {
  local i
  for i in $(seq 40); do
    ip netns exec $NS_S ping -c1 -W1 10.77.0.2 >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  return 1
}

# Runs iperf3; prints "gbps bytes cpu_s" (cpu_s empty without a pid).
measure() {
  local pid=$1 t0 t1 out
  ip netns exec $NS_R iperf3 -s -1 -p 5201 -D -I "$WORK/iperf.pid"
  sleep 0.3
  [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
  out=$(ip netns exec $NS_S iperf3 -c 10.77.0.2 -p 5201 -t "$SECS" -J)
  [ -n "$pid" ] && t1=$(cpu_ticks "$pid")
  local cpu=""
  [ -n "$pid" ] && cpu=$(echo "($t1 - $t0) / $(getconf CLK_TCK)" | bc -l)
  python3 -c '
import json, sys
d = json.loads(sys.argv[1])
r = d["end"]["sum_received"]
print("%.3f %d %s" % (r["bits_per_second"] / 1e9, r["bytes"], sys.argv[2]))
' "$out" "$cpu"
  pkill -F "$WORK/iperf.pid" 2>/dev/null || true
}

run_ferrovs() {
  cat >"$WORK/flows.txt" <<'EOF'
in_port=1 actions=output:2
in_port=2 actions=output:1
EOF
  cat >"$WORK/ferrovs.toml" <<EOF
bridge = "$BR"
threads = 1
cores = [$CORE]
socket = "$WORK/ferrovs.sock"
flows = "$WORK/flows.txt"
[[port]]
name = "$LA"
ofport = 1
[[port]]
name = "$LB"
ofport = 2
EOF
  RUST_LOG=warn "$FERROVSD" -c "$WORK/ferrovs.toml" >"$WORK/ferrovsd.log" 2>&1 &
  FPID=$!
  echo "$FPID" >"$WORK/ferrovsd.pid"
  wait_ping || { cat "$WORK/ferrovsd.log" >&2; echo "ferrovs: no connectivity" >&2; return 1; }
  measure "$FPID"
  stop_ferrovs
}

run_ovs() {
  $OVS_CTL start --system-id=random >/dev/null 2>&1 || { echo "ovs-ctl start failed" >&2; return 1; }
  ovs-vsctl set Open_vSwitch . other_config:pmd-cpu-mask=$(printf '0x%x' $((1 << CORE)))
  ovs-vsctl --may-exist add-br $BR -- set bridge $BR datapath_type=netdev
  ovs-vsctl add-port $BR $LA -- set interface $LA type=afxdp options:xdp-mode=native ofport_request=1
  ovs-vsctl add-port $BR $LB -- set interface $LB type=afxdp options:xdp-mode=native ofport_request=2
  ovs-ofctl del-flows $BR
  ovs-ofctl add-flow $BR "in_port=1 actions=output:2"
  ovs-ofctl add-flow $BR "in_port=2 actions=output:1"
  if ! wait_ping; then
    ovs-vsctl show >&2; tail -30 /var/log/openvswitch/ovs-vswitchd.log >&2
    echo "ovs: no connectivity" >&2; return 1
  fi
  local pid
  pid=$(cat /var/run/openvswitch/ovs-vswitchd.pid)
  measure "$pid"
  stop_ovs
}

run_bridge() {
  ip link add $BR type bridge
  ip link set $LA master $BR
  ip link set $LB master $BR
  ip link set $BR up
  wait_ping || { echo "bridge: no connectivity" >&2; return 1; }
  measure ""
  ip link del $BR
}

log "building ferrovsd (release)"
cargo build -q --release -p tools --bin ferrovsd
FERROVSD=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/ferrovsd
stop_ovs
ip netns del $NS_S 2>/dev/null || true
ip netns del $NS_R 2>/dev/null || true
ip netns add $NS_S
ip netns add $NS_R
ip -n $NS_S link set lo up
ip -n $NS_R link set lo up

mkdir -p "$(dirname "$CSV")"
echo "round,system,gbps,bytes,cpu_s,cpu_s_per_gb" >"$CSV"
for r in $(seq "$ROUNDS"); do
  for sys in ferrovs ovs bridge; do
    log "round $r: $sys"
    make_links
    if res=$(run_$sys); then
      read -r gbps bytes cpu <<<"$res"
      per=""
      [ -n "$cpu" ] && per=$(printf '%.3f' "$(echo "$cpu / ($bytes / 1000000000)" | bc -l)")
      [ -n "$cpu" ] && cpu=$(printf '%.2f' "$cpu")
      echo "$r,$sys,$gbps,$bytes,$cpu,$per" >>"$CSV"
      log "  $gbps Gbit/s, cpu ${cpu:--} s, ${per:--} s/GB"
    else
      echo "$r,$sys,,,," >>"$CSV"
      log "  failed"
    fi
    del_links
  done
done

python3 - "$CSV" "$SECS" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def med(sys_, col):
    v = [float(r[col]) for r in rows if r["system"] == sys_ and r[col]]
    return statistics.median(v) if v else None
fmt = lambda v, f: "-" if v is None else f % v
print(f"TCP, iperf3 {sys.argv[2]} s per run, median of {len({r['round'] for r in rows})} alternating rounds\n")
print("| system | Gbit/s | switch CPU s | CPU s per GB |")
print("|---|---:|---:|---:|")
names = {"ferrovs": "ferrovs (AF_XDP, 1 poll thread)", "ovs": "OVS 3.1 (netdev, afxdp, 1 PMD)", "bridge": "Linux bridge"}
for s in ("ferrovs", "ovs", "bridge"):
    print(f"| {names[s]} | {fmt(med(s,'gbps'),'%.2f')} | {fmt(med(s,'cpu_s'),'%.2f')} | {fmt(med(s,'cpu_s_per_gb'),'%.3f')} |")
f, o = med("ferrovs", "gbps"), med("ovs", "gbps")
fc, oc = med("ferrovs", "cpu_s_per_gb"), med("ovs", "cpu_s_per_gb")
print()
if f and o:
    print(f"ferrovs/OVS throughput: {f/o:.2f}x")
if fc and oc:
    print(f"ferrovs/OVS CPU per GB: {fc/oc:.2f}x (lower is better)")
EOF
