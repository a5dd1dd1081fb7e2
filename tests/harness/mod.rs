//! Shared test harness: real network namespaces (and, from another branch, a real etcd).
//! Each test binary uses a subset, hence `dead_code` is allowed here.
#![allow(dead_code)]

/// Network namespaces, lab topologies, kernel flannel nodes and traffic helpers.
pub mod netns;
