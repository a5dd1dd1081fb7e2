//! Shared test harness: a real etcd server and real network namespaces (labs, pods, kernel
//! flannel nodes, traffic helpers), built on weft's own `wire` types. Tests import from here
//! (`use harness::{Lab, Etcd}`); the modules say where each part lives. Each test binary uses
//! a subset, hence `dead_code`.
#![allow(dead_code)]

/// Pods wired by the real `bridge`/`host-local` CNI plugins, as flannel's CNI plugin does.
pub mod cni;
/// A real etcd server, on free loopback ports or inside a lab's underlay namespace.
pub mod etcd;
/// A Linux VXLAN node configured as flanneld's vxlan backend configures it.
pub mod kernel_flannel;
/// The lab topology: underlay segments, hosts, pods, an outside host, a router.
pub mod lab;
/// The network namespace guard and the `ip`/`bridge`/`sysctl` helpers run inside one.
pub mod netns;
/// Guarded child processes, one-shot command runners and polling.
pub mod process;
/// Ping, checksummed TCP transfers and iperf3 between namespaces.
pub mod traffic;
/// The real weft binary in a lab: nodes, their ops server and CLI, cluster set-ups.
pub mod weft;

// Each test binary uses a subset of these.
#[allow(unused_imports)]
pub use self::cni::*;
#[allow(unused_imports)]
pub use self::etcd::*;
#[allow(unused_imports)]
pub use self::kernel_flannel::*;
#[allow(unused_imports)]
pub use self::lab::*;
#[allow(unused_imports)]
pub use self::netns::*;
#[allow(unused_imports)]
pub use self::process::*;
#[allow(unused_imports)]
pub use self::traffic::*;
#[allow(unused_imports)]
pub use self::weft::*;
