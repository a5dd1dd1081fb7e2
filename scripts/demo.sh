#!/usr/bin/env bash
# The demo (`make demo`). Until the dataplane lands (issue 4: `weft run`, a three-node cluster
# with pods in namespaces), this shows what exists today: weft's packet layer reading what a
# Linux kernel VXLAN device, configured as flanneld configures it, puts on the wire.
set -euo pipefail
cd "$(dirname "$0")/.."
weft=target/release/weft
[ -x "$weft" ] || cargo build --release --locked
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces)" >&2; exit 1; }

echo "== weft --help"
"$weft" --help
echo
echo "== NOTE: the node service (weft run) and the three-node cluster demo are not built yet;"
echo "   they arrive with the dataplane issue. What follows is the packet layer at work."
echo
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "== capturing VXLAN from a kernel flannel.1 device in two fresh network namespaces"
proto/capture-golden.sh "$tmp/cap.txt" off
echo
while read -r name port hex; do
  echo "== $name (outer source port $port)"
  "$weft" inspect --vni 1 --vtep-mac 5e:a4:8b:11:22:33 "$hex" | sed 's/^/   /'
done <"$tmp/cap.txt"
echo
echo "== the same ICMP datagram with VNI 2, as a node of another network would send it"
hex=$(sed -n 1p "$tmp/cap.txt" | cut -d' ' -f3)
tampered="${hex:0:8}000002${hex:14}"
"$weft" inspect --vni 1 --vtep-mac 5e:a4:8b:11:22:33 "$tampered" | sed 's/^/   /' || true
echo
echo "demo done: kernel VXLAN datagrams decoded and checked by weft; namespaces removed."
