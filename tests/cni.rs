//! Pods wired the way kubelet wires them on a flannel node: the real `bridge` and
//! `host-local` CNI plugins, configured from each weft node's subnet.env exactly as the
//! flannel CNI plugin delegates (tests/harness/cni.rs). Two weft nodes, one with `--ip-masq`
//! (FLANNEL_IPMASQ=true: the bridge leaves masquerading to weft) and one without
//! (FLANNEL_IPMASQ=false: the bridge plugin masquerades, as flannel's CNI plugin asks).
//! Cross-node ping both ways, checksummed TCP both ways, then CNI DEL removes the pod's
//! veth, its iptables chain and its address reservation.

mod harness;

use std::time::Duration;

use harness::{require_root, tcp_transfer, CniNetwork, Etcd, Lab, WeftNode, VXLAN_CONFIG};
use weft::store::SubnetEnv;

#[test]
fn cni_bridge_pods_reach_each_other_across_weft_nodes() {
    require_root();
    let lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let a = WeftNode::start(lab.host(0), &etcd, &["--ip-masq"]);
    let b = WeftNode::start(lab.host(1), &etcd, &[]);
    let (env_a, env_b) = (
        SubnetEnv::read(a.subnet_file()).expect("a's subnet.env"),
        SubnetEnv::read(b.subnet_file()).expect("b's subnet.env"),
    );
    assert!(env_a.ip_masq && !env_b.ip_masq);
    let net_a = CniNetwork::from_subnet_env(lab.host(0), a.subnet_file());
    let net_b = CniNetwork::from_subnet_env(lab.host(1), b.subnet_file());
    let pa = net_a.add(0);
    let pb = net_b.add(0);

    // What the bridge plugin built matches subnet.env: address from the lease, gateway on
    // cni0, the pod MTU, a route to the Network and a default route.
    for (pod, env, host) in [(&pa, &env_a, lab.host(0)), (&pb, &env_b, lab.host(1))] {
        assert!(
            env.subnet.contains(pod.addr()),
            "{} not in {}",
            pod.addr(),
            env.subnet
        );
        assert_eq!(pod.gateway(), env.subnet.first_host());
        let cni0 = host.ip(&["-4", "addr", "show", "dev", "cni0"]);
        let gateway_cidr = format!("{}/{}", env.subnet.first_host(), env.subnet.prefix_len());
        assert!(cni0.contains(&gateway_cidr), "{cni0}");
        let link = pod.ip(&["link", "show", "dev", "eth0"]);
        assert!(link.contains(&format!("mtu {}", env.mtu)), "{link}");
        let routes = pod.ip(&["-4", "route"]);
        assert!(
            routes.contains(&format!("{} via {}", env.network, pod.gateway())),
            "{routes}"
        );
        assert!(
            routes.contains(&format!("default via {}", pod.gateway())),
            "{routes}"
        );
    }
    assert_eq!(net_a.reserved(), vec![pa.addr()]);

    assert!(
        pa.wait_for_ping(pb.addr(), Duration::from_secs(10)),
        "pod a -> pod b"
    );
    assert!(pa.ping(pb.addr(), 3).all_replied());
    assert!(
        pb.wait_for_ping(pa.addr(), Duration::from_secs(10)),
        "pod b -> pod a"
    );
    assert!(pb.ping(pa.addr(), 3).all_replied());

    // A -> B: node A leaves pod-to-pod traffic alone (--ip-masq spares the Network) and the
    // bridge on A does not masquerade (ipMasq false): B sees A's pod address.
    let t = tcp_transfer(&pa, &pb, pb.addr(), 5401, 4 << 20, Duration::from_secs(60)).unwrap();
    assert!(t.intact(), "{t:?}");
    assert_eq!(t.peer, pa.addr().to_string());
    // B -> A: B's bridge masquerades what leaves its pod subnet (ipMasq = !FLANNEL_IPMASQ),
    // pod-to-pod included, as on a flannel node without --ip-masq; it still arrives intact.
    let t = tcp_transfer(&pb, &pa, pa.addr(), 5402, 4 << 20, Duration::from_secs(60)).unwrap();
    assert!(t.intact(), "{t:?}");
    let nat_b = lab
        .host(1)
        .exec(&["iptables", "-w", "5", "-t", "nat", "-S", "POSTROUTING"]);
    let nat_b = String::from_utf8_lossy(&nat_b.stdout).into_owned();
    assert!(
        nat_b.contains("CNI-"),
        "bridge ipMasq chain missing:\n{nat_b}"
    );

    // CNI DEL: the veth goes from both ends, the address is released, B's chain is gone.
    for (net, pod, host) in [(&net_a, &pa, lab.host(0)), (&net_b, &pb, lab.host(1))] {
        net.del(pod);
        assert!(
            !pod.ip_ok(&["link", "show", "dev", "eth0"]),
            "pod eth0 survived DEL"
        );
        let ports = host.ip(&["link", "show", "master", "cni0"]);
        assert!(ports.trim().is_empty(), "cni0 still has ports:\n{ports}");
        assert!(
            net.reserved().is_empty(),
            "reservations left: {:?}",
            net.reserved()
        );
    }
    let nat_b = lab
        .host(1)
        .exec(&["iptables", "-w", "5", "-t", "nat", "-S", "POSTROUTING"]);
    let nat_b = String::from_utf8_lossy(&nat_b.stdout).into_owned();
    assert!(
        !nat_b.contains("CNI-"),
        "bridge ipMasq chain left after DEL:\n{nat_b}"
    );
    // A DEL of something already gone succeeds (kubelet retries DEL).
    net_a.del(&pa);
    assert!(a.http("/readyz").is_some() && b.http("/readyz").is_some());
}
