//! Every syscall that needs `unsafe`: TUN ioctls, batched UDP (recvmmsg/sendmmsg), interface
//! ioctls, poll and eventfd, CPU pinning and BPF steering. Everything else in the crate is
//! safe code built on these.
#![allow(unsafe_code)]

pub mod iface;
pub mod mmsg;
pub mod steer;
pub mod tun;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Runs a syscall wrapper until it fails with something other than EINTR.
pub fn retry_eintr<T: PartialOrd + Default>(mut f: impl FnMut() -> T) -> io::Result<T> {
    loop {
        let r = f();
        if r >= T::default() {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// An eventfd used to wake worker threads out of `poll` when the node stops.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Creates a non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a negative return is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes the eventfd readable (wakes every poller) until the process exits.
    pub fn signal(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to a descriptor we own.
        retry_eintr(|| unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        })?;
        Ok(())
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What woke a [`wait_readable`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Watched descriptors are readable: bit `i` set for `fds[i]`.
    Ready(u32),
    /// The stop eventfd fired.
    Stop,
    /// The timeout passed.
    Timeout,
}

/// Most descriptors [`wait_any_readable`] watches besides the stop eventfd.
pub const MAX_WAIT_FDS: usize = 4;

/// Blocks until one of `fds` is readable, `stop` fires, or `timeout_ms` passes (-1: no
/// timeout). At most [`MAX_WAIT_FDS`] descriptors are watched; the rest are ignored.
pub fn wait_any_readable(fds: &[RawFd], stop: &EventFd, timeout_ms: i32) -> io::Result<Wake> {
    let idle = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    let mut set = [idle; MAX_WAIT_FDS + 1];
    set[0] = libc::pollfd {
        fd: stop.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let n = fds.len().min(MAX_WAIT_FDS);
    for (slot, &fd) in set[1..].iter_mut().zip(&fds[..n]) {
        *slot = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
    }
    // SAFETY: set is a live array of pollfd structs; we pass its used length (<= its size).
    let r = retry_eintr(|| unsafe {
        libc::poll(set.as_mut_ptr(), (n + 1) as libc::nfds_t, timeout_ms)
    })?;
    if r == 0 {
        return Ok(Wake::Timeout);
    }
    if set[0].revents != 0 {
        return Ok(Wake::Stop);
    }
    let mask = set[1..=n]
        .iter()
        .enumerate()
        .filter(|(_, p)| p.revents != 0)
        .fold(0u32, |m, (i, _)| m | 1 << i);
    Ok(Wake::Ready(mask))
}

/// Binds a close-on-exec UDP/IPv4 socket to `addr`; with `reuse_port`, SO_REUSEPORT is set
/// first, so several sockets (of this user) can share the address and the kernel spreads
/// incoming datagrams over them by the 4-tuple's hash.
pub fn bind_udp4(
    addr: std::net::SocketAddrV4,
    reuse_port: bool,
) -> io::Result<std::net::UdpSocket> {
    // SAFETY: socket takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if reuse_port {
        setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    let sin = mmsg::sockaddr_in(addr);
    // SAFETY: passes a live sockaddr_in and its exact size.
    retry_eintr(|| unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    Ok(std::net::UdpSocket::from(fd))
}

/// Turns path-MTU discovery off on a UDP socket (`IP_MTU_DISCOVER` = `IP_PMTUDISC_DONT`):
/// its datagrams leave without DF, so the kernel fragments one that is larger than the
/// device or route MTU, and so may routers on the way, as for Linux's VXLAN device.
pub fn set_df_off(fd: RawFd) -> io::Result<()> {
    setsockopt_int(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DONT,
    )
}

/// The MTU the kernel's routing knows towards `dst` (device, route or learned path MTU),
/// read with `IP_MTU` from a throwaway UDP socket connected to it (connecting sends nothing).
pub fn path_mtu(dst: std::net::SocketAddrV4) -> io::Result<u32> {
    // SAFETY: socket takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = mmsg::sockaddr_in(dst);
    // SAFETY: passes a live sockaddr_in and its exact size.
    retry_eintr(|| unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    let mtu = getsockopt_int(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU)?;
    u32::try_from(mtu).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// Sets or clears O_NONBLOCK on a descriptor.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns, no pointers.
    let flags = retry_eintr(|| unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    retry_eintr(|| unsafe { libc::fcntl(fd, libc::F_SETFL, flags) })?;
    Ok(())
}

/// Sets an integer socket option (`setsockopt(fd, level, name, &value)`).
pub fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    retry_eintr(|| unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Reads an integer socket option.
pub fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: value and len are live locals whose sizes match what we pass.
    retry_eintr(|| unsafe {
        libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len)
    })?;
    Ok(value)
}

/// Whether the process runs with the effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and takes no arguments.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

    #[test]
    fn reuse_port_shares_an_address_and_plain_bind_does_not() {
        let a = bind_udp4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), true).unwrap();
        let SocketAddr::V4(at) = a.local_addr().unwrap() else {
            panic!("IPv4 socket");
        };
        let b = bind_udp4(at, true).unwrap();
        assert_eq!(b.local_addr().unwrap(), SocketAddr::V4(at));
        let e = bind_udp4(at, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn df_off_sticks_and_loopback_path_mtu_is_known() {
        let a = bind_udp4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), false).unwrap();
        set_df_off(a.as_raw_fd()).unwrap();
        let v = getsockopt_int(a.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU_DISCOVER).unwrap();
        assert_eq!(v, libc::IP_PMTUDISC_DONT);
        let mtu = path_mtu(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9)).unwrap();
        assert!(mtu >= 1280, "loopback MTU {mtu}");
    }
}
