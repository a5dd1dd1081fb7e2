//! Pods wired the way kubelet wires them on a flannel node: the flannel CNI plugin's
//! delegation (DESIGN.md "The node's neighbours") replayed with the real `bridge` and
//! `host-local` plugins (Debian's containernetworking-plugins, /usr/lib/cni).
//!
//! flannel-io/cni-plugin reads subnet.env and hands `bridge` this config (kube-flannel's
//! delegate `{"hairpinMode":true,"isDefaultGateway":true}` merged with what the plugin fills
//! in): name `cbr0`, `isGateway` true, `ipMasq` = !FLANNEL_IPMASQ, `mtu` = FLANNEL_MTU,
//! `ipam` host-local with `ranges` [[{subnet: FLANNEL_SUBNET's network}]] and `routes`
//! [{dst: FLANNEL_NETWORK}]. `bridge` has no `bridge` key, so the bridge is `cni0`. The one
//! addition here is ipam `dataDir`: a per-network temp dir instead of /var/lib/cni/networks,
//! so tests never share or leave allocation state.
//!
//! Plugins run inside the lab host's namespace (`ip netns exec <host>`), never in the root
//! namespace.

use std::io::Write;
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use weft::store::SubnetEnv;
use weft::wire::Subnet;

use super::lab::Host;
use super::netns::Netns;
use super::process::describe;

/// Where Debian's containernetworking-plugins installs the plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// The CNI spec version kube-flannel's config declares.
pub const CNI_VERSION: &str = "0.3.1";

/// Fails the test with a clear message unless the `bridge` and `host-local` plugins exist.
pub fn require_cni() {
    for p in ["bridge", "host-local"] {
        assert!(
            Path::new(CNI_PATH).join(p).is_file(),
            "{CNI_PATH}/{p} missing: apt-get install containernetworking-plugins (scripts/deps.sh does)"
        );
    }
}

/// The `bridge` config the flannel CNI plugin delegates to for `env`, with host-local's
/// state in `data_dir`.
pub fn flannel_delegate(env: &SubnetEnv, data_dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": CNI_VERSION,
        "name": "cbr0",
        "type": "bridge",
        "hairpinMode": true,
        "isDefaultGateway": true,
        "isGateway": true,
        "ipMasq": !env.ip_masq,
        "mtu": env.mtu,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": env.subnet.to_string()}]],
            "routes": [{"dst": env.network.to_string()}],
            "dataDir": data_dir.display().to_string(),
        },
    })
}

/// One node's pod network as kubelet sees it: the delegate config built from the node's
/// subnet.env and host-local's allocation state (a temp dir, deleted on drop).
pub struct CniNetwork {
    host_ns: String,
    config: String,
    data_dir: tempfile::TempDir,
}

/// A pod namespace wired by CNI ADD. Dropping it deletes the namespace (and with it the
/// veth); [`CniNetwork::del`] is what kubelet does first.
pub struct CniPod {
    ns: Netns,
    container_id: String,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    /// The plugin's ADD result (CNI JSON).
    pub result: serde_json::Value,
}

impl CniPod {
    /// The address host-local gave the pod.
    pub fn addr(&self) -> Ipv4Addr {
        self.ip
    }

    /// Its gateway (`cni0`'s address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The CNI_CONTAINERID it was added under.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }
}

impl Deref for CniPod {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

impl CniNetwork {
    /// The network the flannel plugin would build on `host` from the subnet.env at `path`.
    pub fn from_subnet_env(host: &Host, path: &Path) -> CniNetwork {
        require_cni();
        let env = SubnetEnv::read(path).unwrap_or_else(|e| panic!("{e:?}"));
        let data_dir = tempfile::tempdir().expect("host-local data dir");
        let config = flannel_delegate(&env, data_dir.path()).to_string();
        CniNetwork {
            host_ns: host.name().to_string(),
            config,
            data_dir,
        }
    }

    /// The delegate config passed to `bridge` on stdin.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// host-local's per-network state directory (`<dataDir>/cbr0`).
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.path().join("cbr0")
    }

    /// Addresses host-local holds reserved (one file per address in its state directory).
    pub fn reserved(&self) -> Vec<Ipv4Addr> {
        let Ok(rd) = std::fs::read_dir(self.state_dir()) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Runs the `bridge` plugin with `command` (ADD, DEL, CHECK) for `pod_ns` inside the
    /// host namespace; returns its output whatever happened.
    pub fn run(&self, command: &str, container_id: &str, pod_ns: &str) -> Output {
        let netns = format!("/run/netns/{pod_ns}");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.host_ns])
            .arg(Path::new(CNI_PATH).join("bridge"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the bridge CNI plugin");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(self.config.as_bytes())
                .expect("write the CNI config");
        }
        child.wait_with_output().expect("wait for the CNI plugin")
    }

    /// Creates pod namespace `<host>c<k>` and wires it with CNI ADD, as kubelet does for a
    /// new sandbox; panics with the plugin's output on failure.
    pub fn add(&self, k: usize) -> CniPod {
        let ns = Netns::new(&format!("{}c{k}", self.host_ns));
        let container_id = format!("weft-test-{}", ns.name());
        let out = self.run("ADD", &container_id, ns.name());
        assert!(
            out.status.success(),
            "{}\nconfig: {}",
            describe("CNI ADD (bridge)", &out),
            self.config
        );
        let result: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("CNI ADD result: {e}: {}", describe("bridge", &out)));
        let ip4 = result["ips"]
            .as_array()
            .and_then(|ips| ips.iter().find(|i| i["version"] == "4"))
            .unwrap_or_else(|| panic!("no IPv4 in the CNI result: {result}"));
        // "10.1.2.2/24": the pod's address and the length of the subnet it lies in.
        let (ip, len): (Ipv4Addr, u8) = ip4["address"]
            .as_str()
            .and_then(|a| a.split_once('/'))
            .and_then(|(ip, len)| Some((ip.parse().ok()?, len.parse().ok()?)))
            .unwrap_or_else(|| panic!("bad address in the CNI result: {result}"));
        let gateway = ip4["gateway"]
            .as_str()
            .and_then(|g| g.parse().ok())
            .or_else(|| Subnet::containing(ip, len).ok()?.nth_addr(1))
            .unwrap_or_else(|| panic!("no gateway for {ip}/{len} in the CNI result: {result}"));
        CniPod {
            ns,
            container_id,
            ip,
            gateway,
            result,
        }
    }

    /// CNI DEL for `pod`, as kubelet does when the sandbox goes; the namespace itself stays
    /// until the pod is dropped. Panics with the plugin's output on failure.
    pub fn del(&self, pod: &CniPod) {
        let out = self.run("DEL", &pod.container_id, pod.ns.name());
        assert!(
            out.status.success(),
            "{}",
            describe("CNI DEL (bridge)", &out)
        );
    }
}
