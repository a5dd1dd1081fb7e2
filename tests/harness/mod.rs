//! Test harness: real components for integration tests.

pub mod etcd;
