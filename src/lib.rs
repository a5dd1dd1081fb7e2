//! weft: a userspace VXLAN overlay router, compatible with flannel.
//!
//! Data flows one way: `store` (etcd leases) -> `table` (lock-free lease snapshots) ->
//! dataplane (TUN <-> UDP). The packet layer (`wire`, `buf`, `encap`) is pure: no I/O, no unsafe.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod buf;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod encap;
pub mod error;
pub mod fixtures;
pub mod gro;
pub mod gso;
pub mod host;
pub mod node;
pub mod offload;
pub mod ops;
pub mod store;
pub mod sys;
pub mod table;
pub mod wire;
