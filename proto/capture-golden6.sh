#!/usr/bin/env bash
# Captures VXLAN-over-IPv6 datagrams emitted by a Linux kernel `flannel-v6.1` device of a
# dual-stack pair configured the way flanneld v0.20.2's vxlan backend configures it, and writes
# each whole outer IPv6 packet as a golden vector.
#
# usage: proto/capture-golden6.sh OUT_FILE [offloads: on|off]
#
# Topology (two network namespaces this script creates and always deletes), both nodes dual
# stack, each with the other's lease (neighbour, FDB entry, onlink route on both devices):
#   weftcap6-a-$$ : underlay 192.168.64.2/24 and fd77::2/64 on vcap6-a;
#                   flannel.1    VNI 1, local 192.168.64.2, MAC c6:d2:32:6f:8f:44, 10.1.15.0/32
#                   flannel-v6.1 VNI 1, local fd77::2, MAC c6:d2:32:6f:8f:66, fd10:0:0:15::/128
#   weftcap6-b-$$ : underlay 192.168.64.3/24 and fd77::3/64 on vcap6-b;
#                   flannel.1    VNI 1, local 192.168.64.3, MAC 5e:a4:8b:11:22:33, 10.1.16.0/32
#                   flannel-v6.1 VNI 1, local fd77::3, MAC 5e:a4:8b:11:22:66, fd10:0:0:16::/128
#                   and the "pod" address fd10:0:0:16::2/128 on lo, so it answers.
# Both devices: dstport 8472, nolearning, dev = the underlay veth, no MTU given (the kernel's
# choice: 1430 for flannel-v6.1), no checksum attributes (the kernel's defaults), exactly as
# flanneld creates them. From A's host stack to fd10:0:0:16::2: an ICMPv6 echo (56 and 1372
# data bytes), a UDP datagram to port 5000, a TCP SYN to port 80, each sent from
# fd10:0:0:15:: (flannel-v6.1's address, once duplicate address detection is done), and a UDP
# datagram to port 5001 with traffic class 0xba (DSCP EF, ECN ECT(0)). A packet
# socket on vcap6-b records every IPv6 UDP packet from fd77::2 to port 8472, from the IPv6
# header on. Each line of OUT_FILE: "<name> <outer-src-port> <hex outer IPv6 packet>".
#
# With offloads "off" (default) A's flannel-v6.1 has tx checksumming off and A's underlay veth
# has tx checksumming and UDP-tunnel segmentation off, so the capture holds what a kernel on
# another machine puts on a wire (complete inner and outer checksums). With "on" (the kernel's
# defaults) the inner TCP/UDP checksums and the outer UDP checksum hold partial values (the
# folded pseudo-header sums), as they cross a veth.
set -euo pipefail
out=${1:?usage: capture-golden6.sh OUT_FILE [on|off]}
offloads=${2:-off}
[ "$(id -u)" = 0 ] || { echo "capture-golden6.sh: needs root (network namespaces)" >&2; exit 1; }
A=weftcap6-a-$$
B=weftcap6-b-$$
rx_pid=
cleanup() {
  [ -n "$rx_pid" ] && kill "$rx_pid" 2>/dev/null || true
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

ip netns add "$A"
ip netns add "$B"
ip link add vcap6-a netns "$A" type veth peer name vcap6-b netns "$B"
ip -n "$A" addr add 192.168.64.2/24 dev vcap6-a
ip -n "$B" addr add 192.168.64.3/24 dev vcap6-b
ip -n "$A" -6 addr add fd77::2/64 dev vcap6-a nodad
ip -n "$B" -6 addr add fd77::3/64 dev vcap6-b nodad
for n in "$A" "$B"; do ip -n "$n" link set lo up; done
ip -n "$A" link set vcap6-a up
ip -n "$B" link set vcap6-b up

# node NS VETH PUBLIC_IP PUBLIC_IPV6 MAC MAC6 SUBNET_IP SUBNET6_IP: flanneld's two devices.
node() {
  local ns=$1 veth=$2 pip=$3 pip6=$4 mac=$5 mac6=$6 sn=$7 sn6=$8
  ip -n "$ns" link add flannel.1 address "$mac" type vxlan id 1 local "$pip" dev "$veth" \
    dstport 8472 nolearning
  ip -n "$ns" link add flannel-v6.1 address "$mac6" type vxlan id 1 local "$pip6" \
    dev "$veth" dstport 8472 nolearning
  ip netns exec "$ns" sysctl -q -w net/ipv6/conf/flannel.1/accept_ra=0
  ip netns exec "$ns" sysctl -q -w net/ipv6/conf/flannel-v6.1/accept_ra=0
  ip -n "$ns" addr add "$sn/32" dev flannel.1
  ip -n "$ns" link set flannel.1 up
  ip -n "$ns" -6 addr add "$sn6/128" dev flannel-v6.1
  ip -n "$ns" link set flannel-v6.1 up
}
# peer NS PUBLIC_IP PUBLIC_IPV6 MAC MAC6 SUBNET SUBNET_IP SUBNET6 SUBNET6_IP: a remote lease.
peer() {
  local ns=$1 pip=$2 pip6=$3 mac=$4 mac6=$5 sn=$6 snip=$7 sn6=$8 sn6ip=$9
  ip -n "$ns" neigh replace "$snip" lladdr "$mac" dev flannel.1 nud permanent
  bridge -n "$ns" fdb replace "$mac" dev flannel.1 dst "$pip" self permanent
  ip -n "$ns" route replace "$sn" via "$snip" dev flannel.1 onlink
  ip -n "$ns" -6 neigh replace "$sn6ip" lladdr "$mac6" dev flannel-v6.1 nud permanent
  bridge -n "$ns" fdb replace "$mac6" dev flannel-v6.1 dst "$pip6" self permanent
  ip -n "$ns" -6 route replace "$sn6" via "$sn6ip" dev flannel-v6.1 onlink
}
node "$A" vcap6-a 192.168.64.2 fd77::2 c6:d2:32:6f:8f:44 c6:d2:32:6f:8f:66 10.1.15.0 fd10:0:0:15::
node "$B" vcap6-b 192.168.64.3 fd77::3 5e:a4:8b:11:22:33 5e:a4:8b:11:22:66 10.1.16.0 fd10:0:0:16::
peer "$A" 192.168.64.3 fd77::3 5e:a4:8b:11:22:33 5e:a4:8b:11:22:66 \
  10.1.16.0/24 10.1.16.0 fd10:0:0:16::/64 fd10:0:0:16::
peer "$B" 192.168.64.2 fd77::2 c6:d2:32:6f:8f:44 c6:d2:32:6f:8f:66 \
  10.1.15.0/24 10.1.15.0 fd10:0:0:15::/64 fd10:0:0:15::
ip -n "$B" -6 addr add fd10:0:0:16::2/128 dev lo nodad
if [ "$offloads" = off ]; then
  ip netns exec "$A" ethtool -K flannel-v6.1 tx off >/dev/null
  ip netns exec "$A" ethtool -K vcap6-a tx off tx-udp_tnl-segmentation off \
    tx-udp_tnl-csum-segmentation off >/dev/null 2>&1 || true
fi

# The source address must have finished duplicate address detection (flanneld adds it
# without NODAD); until then the kernel would pick another source.
for _ in $(seq 50); do
  if [ -z "$(ip -n "$A" -6 addr show dev flannel-v6.1 tentative)" ]; then break; fi
  sleep 0.1
done
if [ -n "$(ip -n "$A" -6 addr show dev flannel-v6.1 tentative)" ]; then
  echo "capture-golden6.sh: fd10:0:0:15:: still tentative after 5 s" >&2
  exit 1
fi

tmp=$(mktemp)
ip netns exec "$B" python3 -c '
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x86dd))
s.bind(("vcap6-b", 0x86dd))
s.settimeout(5)
src = socket.inet_pton(socket.AF_INET6, "fd77::2")
names = sys.argv[2].split(",")
with open(sys.argv[1], "w") as f:
    while names:
        pkt = s.recv(65535)
        if len(pkt) < 48 or pkt[6] != 17 or pkt[8:24] != src:
            continue
        sport, dport = struct.unpack("!HH", pkt[40:44])
        if dport != 8472:
            continue
        f.write("%s %d %s\n" % (names.pop(0), sport, pkt.hex()))
        f.flush()
' "$tmp" icmp6-echo-56,icmp6-echo-1372,udp-5000,udp-5001-ef-ect0,tcp-syn-80 &
rx_pid=$!
sleep 0.5

ip netns exec "$A" python3 -c '
import socket, struct, time

SRC = "fd10:0:0:15::"
DST = "fd10:0:0:16::2"

def ping(n, seq):
    # The kernel fills in an ICMPv6 checksum on raw ICMPv6 sockets.
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.bind((SRC, 0))
    data = bytes((i & 0xff for i in range(n)))
    s.sendto(struct.pack("!BBHHH", 128, 0, 0, 0x7765, seq) + data, (DST, 0))
    time.sleep(0.2)

ping(56, 1)
ping(1372, 2)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.bind((SRC, 40001))
u.sendto(b"weft golden vector\n", (DST, 5000))
time.sleep(0.2)
# Traffic class DSCP EF (46) with ECN ECT(0): shows which bits reach the outer header.
e = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
e.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0xba)
e.bind((SRC, 40003))
e.sendto(b"weft golden vector\n", (DST, 5001))
time.sleep(0.2)
t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
t.bind((SRC, 40002))
t.setblocking(False)
try:
    t.connect((DST, 80))
except BlockingIOError:
    pass
time.sleep(0.5)
'
wait "$rx_pid"
rx_pid=
mv "$tmp" "$out"
echo "captured $(wc -l <"$out") datagrams (offloads $offloads) into $out"
