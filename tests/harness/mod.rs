//! Shared test harness: real network namespaces (and, from another branch, a real etcd).
//! Each test binary uses a subset, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod netns;
