#!/usr/bin/env bash
# Installs what `make test` and `make demo` need on a fresh Debian machine (run as root).
# Idempotent: installs only what is missing.
set -euo pipefail
need=()
want() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
want etcd etcd-server
want etcdctl etcd-client
want protoc protobuf-compiler
# protoc's well-known types (google/protobuf/descriptor.proto ...): the etcd-client build imports
# them, and --no-install-recommends leaves them out of protobuf-compiler.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
want ip iproute2
want bridge iproute2
want iptables iptables
want iptables-restore iptables
# The IPv6 half of a dual-stack node's rules: Debian's iptables package provides ip6tables and
# ip6tables-restore too (update-alternatives links to the -nft or -legacy variant).
want ip6tables iptables
want ip6tables-restore iptables
want iperf3 iperf3
want ethtool ethtool
want ping iputils-ping
want sysctl procps
want python3 python3
want systemd-analyze systemd
want pkg-config pkg-config
want cc build-essential
# The CNI plugins kubelet runs on a flannel node (tests/cni.rs, the demo): bridge, host-local.
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing ${need[*]}; run as root (apt-get install) or install them yourself" >&2
    exit 1
  fi
  mapfile -t pkgs < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "deps: apt-get install ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: cargo not found; install Rust stable with rustup (https://rustup.rs)" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi
