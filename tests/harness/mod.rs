//! Shared test harness: a real etcd server and real network namespaces (labs, pods, kernel
//! flannel nodes, traffic helpers). Each test binary uses a subset, hence `dead_code`.
#![allow(dead_code)]

/// Pods wired by the real `bridge`/`host-local` CNI plugins, as flannel's CNI plugin does.
pub mod cni;
/// A real etcd server on a free loopback port with a temporary data dir.
pub mod etcd;
/// Network namespaces, lab topologies, kernel flannel nodes and traffic helpers.
pub mod netns;
/// The real weft binary in a lab: etcd in the underlay namespace, weft nodes, metrics.
pub mod weft;
