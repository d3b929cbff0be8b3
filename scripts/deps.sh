#!/usr/bin/env bash
# Installs the Debian packages ferrovs needs to build (libbpf's C parts)
# and to run its demo and network tests, if any are missing. Root only.
# netsniff-ng (trafgen) and openvswitch-switch are for ferrovs-bench, which
# compares ferrovs with Open vSwitch (it skips a system or test whose tool
# is missing).
set -euo pipefail
need=(libelf-dev zlib1g-dev pkg-config iproute2 iputils-ping iperf3 ethtool util-linux netsniff-ng openvswitch-switch)
missing=()
for p in "${need[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
