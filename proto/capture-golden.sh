#!/usr/bin/env bash
# Captures VXLAN datagrams emitted by a Linux kernel VXLAN device configured the way
# flanneld's vxlan backend configures it, and writes their UDP payloads as golden vectors.
#
# usage: proto/capture-golden.sh OUT_FILE [offloads: on|off]
#
# Topology (two network namespaces this script creates and always deletes):
#   weftcap-a-$$ : 192.168.64.2/24 on veth, flannel.1 (VNI 1, dstport 8472, nolearning,
#                  VtepMAC c6:d2:32:6f:8f:44, 10.1.15.0/32), and for the remote lease
#                  10.1.16.0/24 (PublicIP 192.168.64.3, VtepMAC 5e:a4:8b:11:22:33):
#                  neigh 10.1.16.0 -> 5e:a4:8b:11:22:33 permanent, fdb 5e:a4:.. -> 192.168.64.3,
#                  route 10.1.16.0/24 via 10.1.16.0 dev flannel.1 onlink  (exactly flanneld's)
#   weftcap-b-$$ : 192.168.64.3/24 on veth, a plain UDP socket on :8472 recording payloads
# Traffic from A's kernel stack to pods in 10.1.16.0/24: ICMP echo (56 and 1372 data bytes),
# a UDP datagram, a TCP SYN. Each line of OUT_FILE: "<name> <outer-src-port> <hex payload>".
# With offloads "off" (default), flannel.1 has tx checksumming off, as a peer on another
# machine delivers; with "on", inner TCP/UDP checksums may be the kernel's partial value.
set -euo pipefail
out=${1:?usage: capture-golden.sh OUT_FILE [on|off]}
offloads=${2:-off}
[ "$(id -u)" = 0 ] || { echo "capture-golden.sh: needs root (network namespaces)" >&2; exit 1; }
A=weftcap-a-$$
B=weftcap-b-$$
rx_pid=
cleanup() {
  [ -n "$rx_pid" ] && kill "$rx_pid" 2>/dev/null || true
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

ip netns add "$A"
ip netns add "$B"
ip link add vcap-a netns "$A" type veth peer name vcap-b netns "$B"
ip -n "$A" addr add 192.168.64.2/24 dev vcap-a
ip -n "$B" addr add 192.168.64.3/24 dev vcap-b
for n in "$A" "$B"; do ip -n "$n" link set lo up; done
ip -n "$A" link set vcap-a up
ip -n "$B" link set vcap-b up

ip -n "$A" link add flannel.1 address c6:d2:32:6f:8f:44 type vxlan id 1 local 192.168.64.2 \
  dev vcap-a dstport 8472 nolearning
ip -n "$A" addr add 10.1.15.0/32 dev flannel.1
ip -n "$A" link set flannel.1 mtu 1450 up
ip -n "$A" neigh replace 10.1.16.0 lladdr 5e:a4:8b:11:22:33 dev flannel.1 nud permanent
ip netns exec "$A" bridge fdb append 5e:a4:8b:11:22:33 dev flannel.1 dst 192.168.64.3
ip -n "$A" route add 10.1.16.0/24 via 10.1.16.0 dev flannel.1 onlink
if [ "$offloads" = off ]; then
  ip netns exec "$A" ethtool -K flannel.1 tx off >/dev/null
  ip netns exec "$A" ethtool -K vcap-a tx-udp_tnl-segmentation off \
    tx-udp_tnl-csum-segmentation off >/dev/null 2>&1 || true
fi

tmp=$(mktemp)
ip netns exec "$B" python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.168.64.3", 8472))
s.settimeout(5)
names = sys.argv[2].split(",")
with open(sys.argv[1], "w") as f:
    for name in names:
        data, (ip, port) = s.recvfrom(65535)
        f.write("%s %d %s\n" % (name, port, data.hex()))
        f.flush()
' "$tmp" icmp-echo-56,icmp-echo-1372,udp-5000,tcp-syn-80 &
rx_pid=$!
sleep 0.5

ip netns exec "$A" python3 -c '
import socket, struct, time, errno

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

def ping(dst, n, seq):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    data = bytes((i & 0xff for i in range(n)))
    hdr = struct.pack("!BBHHH", 8, 0, 0, 0x7765, seq)
    c = csum(hdr + data)
    s.sendto(struct.pack("!BBHHH", 8, 0, c, 0x7765, seq) + data, (dst, 0))
    time.sleep(0.2)

ping("10.1.16.2", 56, 1)
ping("10.1.16.2", 1372, 2)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("10.1.15.0", 40001))
u.sendto(b"weft golden vector\n", ("10.1.16.2", 5000))
time.sleep(0.2)
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.bind(("10.1.15.0", 40002))
t.setblocking(False)
try:
    t.connect(("10.1.16.2", 80))
except BlockingIOError:
    pass
time.sleep(0.5)
'
wait "$rx_pid"
rx_pid=
mv "$tmp" "$out"
echo "captured $(wc -l <"$out") datagrams (offloads $offloads) into $out"
