#!/usr/bin/env bash
# The demo (`make demo`): a local etcd, three weft nodes and one Linux-kernel VXLAN node
# configured exactly as flanneld configures one, each a network namespace with a pod
# namespace behind a cni0 bridge. The weft nodes' pods are wired as kubelet wires them on a
# flannel node: the real bridge and host-local CNI plugins, configured from the node's
# subnet.env the way flannel's CNI plugin delegates. Every pod pings every other pod, then
# iperf3 runs between pods on different weft nodes and between a weft pod and the kernel
# node's pod.
# Everything it creates (namespaces, processes, temp files) is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, TUN)" >&2; exit 1; }
weft=${CARGO_TARGET_DIR:-$PWD/target}/release/weft
[ -x "$weft" ] || cargo build --release --locked
for c in etcd etcdctl ip bridge iperf3 ping python3; do
  command -v $c >/dev/null || { echo "demo: $c missing; run scripts/deps.sh" >&2; exit 1; }
done
CNI_DIR=/usr/lib/cni
[ -x $CNI_DIR/bridge ] && [ -x $CNI_DIR/host-local ] ||
  { echo "demo: CNI plugins missing; run scripts/deps.sh (containernetworking-plugins)" >&2; exit 1; }

P=wd$$                      # namespace prefix, unique per run
tmp=$(mktemp -d /tmp/weft-demo.XXXXXX)
pids=()
nss=()
cni_hosts=()
cleanup() {
  set +e
  # As kubelet does when a pod goes: CNI DEL (veth, address reservation, masquerade chain).
  for h in "${cni_hosts[@]}"; do cni "$h" DEL "$tmp/$h.env" >/dev/null 2>&1; done
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  # Anything still running inside our namespaces (an iperf3 server, say) goes too.
  for n in "${nss[@]}"; do
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    ip netns del "$n" 2>/dev/null
  done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
nsx() { local n=$1; shift; ip netns exec "$P$n" "$@"; }
addns() { ip netns add "$P$1"; nss+=("$P$1"); ip -n "$P$1" link set lo up; }

ETCD=http://192.168.64.2:2379
export ETCDCTL_API=3
ctl() { nsx etcd etcdctl --endpoints "$ETCD" "$@"; }

echo "== underlay: bridge in ${P}u, etcd in ${P}etcd (192.168.64.2)"
addns u
ip -n ${P}u link add br0 type bridge
ip -n ${P}u link set br0 up
attach() { # namespace, address
  ip link add eth0 netns "$P$1" type veth peer name "v$1" netns ${P}u
  ip -n ${P}u link set "v$1" master br0 up
  ip -n "$P$1" addr add "$2/24" dev eth0
  ip -n "$P$1" link set eth0 up
}
addns etcd
attach etcd 192.168.64.2
nsx etcd etcd --name demo --data-dir "$tmp/etcd" --listen-client-urls "$ETCD" \
  --advertise-client-urls "$ETCD" --listen-peer-urls http://127.0.0.1:2380 \
  --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster demo=http://127.0.0.1:2380 \
  >"$tmp/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
ctl put /coreos.com/network/config '{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}' >/dev/null
echo "   network config: $(ctl get /coreos.com/network/config --print-value-only)"

# A pod behind a cni0 bridge whose address and MTU come from the node's subnet.env.
add_pod() { # host, subnet.env
  # shellcheck disable=SC1090
  . "$2"
  local gw=${FLANNEL_SUBNET%/*} len=${FLANNEL_SUBNET#*/}
  local pod=${gw%.1}.2
  nsx "$1" sysctl -qw net.ipv4.ip_forward=1
  nsx "$1" ip link add cni0 type bridge
  nsx "$1" ip addr add "$FLANNEL_SUBNET" dev cni0
  nsx "$1" ip link set cni0 mtu "$FLANNEL_MTU" up
  addns "$1pod"
  ip link add eth0 netns "$P$1pod" type veth peer name veth0 netns "$P$1"
  nsx "$1" ip link set veth0 master cni0 mtu "$FLANNEL_MTU" up
  nsx "$1pod" ip addr add "$pod/$len" dev eth0
  nsx "$1pod" ip link set eth0 mtu "$FLANNEL_MTU" up
  nsx "$1pod" ip route add default via "$gw"
  echo "$pod" >"$tmp/$1.pod"
}

# The flannel CNI plugin's delegate config for a subnet.env: bridge cni0 (name cbr0) as the
# pods' default gateway, ipMasq = !FLANNEL_IPMASQ, mtu = FLANNEL_MTU, host-local IPAM over
# FLANNEL_SUBNET's network with a route to FLANNEL_NETWORK; host-local's state lives in $tmp.
cni_conf() { # host, subnet.env
  # shellcheck disable=SC1090
  . "$2"
  local masq=true sub
  [ "$FLANNEL_IPMASQ" = true ] && masq=false
  sub=$(python3 -c 'import ipaddress,sys; print(ipaddress.ip_interface(sys.argv[1]).network)' "$FLANNEL_SUBNET")
  printf '{"cniVersion":"0.3.1","name":"cbr0","type":"bridge","hairpinMode":true,"isDefaultGateway":true,"isGateway":true,"ipMasq":%s,"mtu":%s,"ipam":{"type":"host-local","ranges":[[{"subnet":"%s"}]],"routes":[{"dst":"%s"}],"dataDir":"%s"}}' \
    "$masq" "$FLANNEL_MTU" "$sub" "$FLANNEL_NETWORK" "$tmp/cni-$1"
}
# Runs the bridge plugin inside the node's namespace, as kubelet would on that node.
cni() { # host, ADD|DEL, subnet.env
  cni_conf "$1" "$3" | CNI_COMMAND=$2 CNI_CONTAINERID="demo-$1" CNI_NETNS="/run/netns/$P$1pod" \
    CNI_IFNAME=eth0 CNI_PATH=$CNI_DIR nsx "$1" $CNI_DIR/bridge
}
# A pod wired by CNI ADD; its address is whatever host-local hands out.
add_pod_cni() { # host, subnet.env
  addns "$1pod"
  local out
  out=$(cni "$1" ADD "$2") || { echo "CNI ADD on $1 failed: $out" >&2; exit 1; }
  cni_hosts+=("$1")
  python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])' \
    <<<"$out" >"$tmp/$1.pod"
}

echo "== three weft nodes (weft run, flanneld's flags), pods wired by the bridge CNI plugin"
for i in 1 2 3; do
  addns "w$i"
  attach "w$i" "192.168.64.1$i"
  nsx "w$i" "$weft" run -etcd-endpoints="$ETCD" -iface=eth0 \
    -subnet-file="$tmp/w$i.env" >"$tmp/w$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 100); do [ -s "$tmp/w$i.env" ] && break; sleep 0.1; done
  [ -s "$tmp/w$i.env" ] || { echo "weft node w$i did not come up:"; cat "$tmp/w$i.log"; exit 1; }
  add_pod_cni "w$i" "$tmp/w$i.env"
  echo "   w$i: $(grep FLANNEL_SUBNET "$tmp/w$i.env"), pod $(cat "$tmp/w$i.pod") (CNI bridge + host-local)"
done

echo "== one kernel VXLAN node (k1), configured as flanneld's vxlan backend does"
addns k1
attach k1 192.168.64.21
kmac=c6:d2:32:6f:8f:44
ksub=10.1.200.0/24
nsx k1 ip link add flannel.1 address $kmac type vxlan id 1 local 192.168.64.21 dev eth0 \
  dstport 8472 nolearning
nsx k1 ip addr add 10.1.200.0/32 dev flannel.1
nsx k1 ip link set flannel.1 mtu 1450 up
lease=$(ctl lease grant 86400 | awk '{print $2}')
ctl put --lease="$lease" /coreos.com/network/subnets/10.1.200.0-24 \
  '{"PublicIP":"192.168.64.21","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"'$kmac'"}}' >/dev/null
printf 'FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.200.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n' >"$tmp/k1.env"
add_pod k1 "$tmp/k1.env"
# flanneld's per-lease entries for every weft node: neighbour, FDB, onlink route.
ctl get --prefix /coreos.com/network/subnets/ | paste - - | while read -r key val; do
  sub=${key##*/}; net=${sub%-*}; len=${sub#*-}
  [ "$net" = 10.1.200.0 ] && continue
  pip=$(echo "$val" | sed -E 's/.*"PublicIP":"([^"]+)".*/\1/')
  mac=$(echo "$val" | sed -E 's/.*"VtepMAC":"([^"]+)".*/\1/')
  nsx k1 ip neigh replace "$net" lladdr "$mac" dev flannel.1 nud permanent
  nsx k1 bridge fdb append "$mac" dev flannel.1 dst "$pip"
  nsx k1 ip route replace "$net/$len" via "$net" dev flannel.1 onlink
done
echo "   k1: FLANNEL_SUBNET=10.1.200.1/24, pod $(cat "$tmp/k1.pod")"
sleep 1   # the weft nodes pick up k1's lease from their etcd watch

echo "== ping: every pod to every other pod"
nodes=(w1 w2 w3 k1)
fail=0
printf '   %-8s' from/to; for d in "${nodes[@]}"; do printf '%-10s' "$d"; done; echo
for s in "${nodes[@]}"; do
  printf '   %-8s' "$s"
  for d in "${nodes[@]}"; do
    if [ "$s" = "$d" ]; then printf '%-10s' -; continue; fi
    if out=$(nsx "${s}pod" ping -c 3 -i 0.2 -W 1 "$(cat "$tmp/$d.pod")" 2>&1); then
      printf '%-10s' "$(echo "$out" | awk -F/ '/rtt/{printf "%.2fms", $5}')"
    else
      printf '%-10s' FAIL; fail=1
    fi
  done
  echo
done

echo "== iperf3 (5 s, one TCP stream)"
iperf() { # from, to
  nsx "${2}pod" iperf3 -s -1 >"$tmp/iperf-s-$2.log" 2>&1 &
  local spid=$! r
  pids+=("$spid")
  for _ in $(seq 30); do nsx "${2}pod" ss -ltn 2>/dev/null | grep -q ':5201 ' && break; sleep 0.1; done
  timeout 20 ip netns exec "$P${1}pod" iperf3 -c "$(cat "$tmp/$2.pod")" -t 5 -J \
    >"$tmp/iperf-$1-$2.json" 2>&1 || true
  r=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f Gbit/s" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' \
    "$tmp/iperf-$1-$2.json" 2>/dev/null) || r=FAIL
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  echo "   $1 pod -> $2 pod: $r"
  if [ "$r" = FAIL ]; then grep -m3 -i error "$tmp/iperf-$1-$2.json" | sed 's/^/      /'; fail=1; fi
}
iperf w1 w2
iperf w3 k1
iperf k1 w1

echo "== weft node logs (w1)"
sed 's/^/   /' "$tmp/w1.log"
echo
if [ $fail = 0 ]; then
  echo "demo done: 3 weft nodes + 1 kernel VXLAN node, all pod pairs reachable; tearing down."
else
  echo "demo FAILED (see above); tearing down." >&2
  exit 1
fi
