//! One weft per etcd network per network namespace.
//!
//! A second `weft run` started by mistake next to a running one (another `--tun-name` and
//! subnet file, several workers) would rewrite the lease and the subnet file and join the
//! tunnel port's SO_REUSEPORT group, taking most of the first one's traffic. Each node
//! therefore holds an abstract unix socket named after its etcd prefix for as long as it runs.
//! Abstract socket names belong to the network namespace, so nodes in separate namespaces
//! (the tests, the demo) never collide, and the kernel frees the name when the process dies,
//! however it dies: there is no stale lock file to clean up.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

/// Why this process may not run as the node.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another process holds the name: another weft of the same network in this namespace.
    #[error("another weft already runs for etcd prefix {prefix} in this network namespace (it holds the abstract socket @{name}); stop it first, or run this one in its own network namespace")]
    Running {
        /// The etcd prefix.
        prefix: String,
        /// The abstract socket name.
        name: String,
    },
    /// The socket could not be made at all.
    #[error("taking the single-instance socket @{name}")]
    Socket {
        /// The abstract socket name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Proof that this process is the only weft of its network here; released on drop.
#[derive(Debug)]
pub struct InstanceLock {
    socket: UnixListener,
    name: String,
}

/// The abstract socket name for an etcd prefix.
pub fn socket_name(prefix: &str) -> String {
    format!("weft{}", prefix.trim_end_matches('/'))
}

impl InstanceLock {
    /// Takes the name for `prefix`, or says who holds it.
    pub fn acquire(prefix: &str) -> Result<InstanceLock, InstanceError> {
        let name = socket_name(prefix);
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(|source| {
            InstanceError::Socket {
                name: name.clone(),
                source,
            }
        })?;
        match UnixListener::bind_addr(&addr) {
            Ok(socket) => Ok(InstanceLock { socket, name }),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(InstanceError::Running {
                prefix: prefix.to_string(),
                name,
            }),
            Err(source) => Err(InstanceError::Socket { name, source }),
        }
    }

    /// Takes the socket a running weft of `prefix` handed over (a takeover): it must be
    /// bound to this prefix's name. The name stays held throughout: both processes hold the
    /// same socket until the old one exits.
    pub fn adopt(socket: UnixListener, prefix: &str) -> Result<InstanceLock, InstanceError> {
        let name = socket_name(prefix);
        let bound = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_abstract_name().map(<[u8]>::to_vec));
        if bound.as_deref() != Some(name.as_bytes()) {
            return Err(InstanceError::Socket {
                name,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the handed-over socket is bound to another name",
                ),
            });
        }
        Ok(InstanceLock { socket, name })
    }

    /// Another handle on the socket, for serving on it (`weft status` asks it).
    pub fn listener(&self) -> std::io::Result<UnixListener> {
        self.socket.try_clone()
    }

    /// The socket's descriptor, to hand over to a process taking over.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.socket)
    }

    /// The abstract socket name held.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_of_the_same_prefix_is_refused_until_the_first_goes() {
        let prefix = format!("/weft-unit-test/{}", std::process::id());
        let first = InstanceLock::acquire(&prefix).unwrap();
        let e = InstanceLock::acquire(&prefix).unwrap_err();
        assert!(matches!(e, InstanceError::Running { .. }), "{e}");
        assert!(e.to_string().contains(&prefix));
        let other = InstanceLock::acquire(&format!("{prefix}-other")).unwrap();
        drop(first);
        let again = InstanceLock::acquire(&prefix).unwrap();
        assert_eq!(again.name(), socket_name(&prefix));
        drop(other);
    }
}
