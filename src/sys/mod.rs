//! Every syscall that needs `unsafe`: TUN ioctls, batched UDP (recvmmsg/sendmmsg), interface
//! ioctls, poll and eventfd, CPU pinning and BPF steering. Everything else in the crate is
//! safe code built on these.
#![allow(unsafe_code)]

pub mod fdpass;
pub mod iface;
pub mod mmsg;
pub mod steer;
pub mod tun;

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EfdFlags;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6};

/// Runs a syscall until it fails with something other than EINTR. Raw `libc` calls go
/// through `Errno::result` first, so one helper serves them and nix's wrappers alike.
pub fn retry_eintr<T>(mut f: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// An eventfd used to wake worker threads out of `poll` when the node stops.
#[derive(Debug)]
pub struct EventFd {
    fd: nix::sys::eventfd::EventFd,
}

impl EventFd {
    /// Creates a non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<EventFd> {
        let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
        let fd = nix::sys::eventfd::EventFd::from_flags(flags)?;
        Ok(EventFd { fd })
    }

    /// Makes the eventfd readable (wakes every poller) until the process exits.
    pub fn signal(&self) -> io::Result<()> {
        retry_eintr(|| self.fd.write(1))?;
        Ok(())
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What woke a [`wait_any_readable`] call.
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

/// Blocks until one of `fds` is readable, `stop` fires, or `timeout_ms` passes (negative: no
/// timeout). At most [`MAX_WAIT_FDS`] descriptors are watched; the rest are ignored.
pub fn wait_any_readable(
    fds: &[BorrowedFd<'_>],
    stop: &EventFd,
    timeout_ms: i32,
) -> io::Result<Wake> {
    let n = fds.len().min(MAX_WAIT_FDS);
    // On the stack, no allocation: slot 0 is the stop eventfd, slots 1..=n the watched
    // descriptors; the slots past n (filled with the eventfd too) are not passed to poll.
    let mut set: [PollFd<'_>; MAX_WAIT_FDS + 1] = std::array::from_fn(|i| {
        let fd = if (1..=n).contains(&i) {
            fds[i - 1]
        } else {
            stop.as_fd()
        };
        PollFd::new(fd, PollFlags::POLLIN)
    });
    // poll(2) takes any negative timeout as "none"; PollTimeout only knows -1.
    let timeout = PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::NONE);
    let r = retry_eintr(|| nix::poll::poll(&mut set[..=n], timeout))?;
    if r == 0 {
        return Ok(Wake::Timeout);
    }
    // Any revents bit counts, even one nix has no name for (`revents()` is None then).
    let woke = |p: &PollFd<'_>| p.revents() != Some(PollFlags::empty());
    if woke(&set[0]) {
        return Ok(Wake::Stop);
    }
    let mask = set[1..=n]
        .iter()
        .enumerate()
        .filter(|(_, p)| woke(p))
        .fold(0u32, |m, (i, _)| m | 1 << i);
    Ok(Wake::Ready(mask))
}

/// A fresh close-on-exec UDP/IPv4 socket.
fn udp4_socket() -> io::Result<OwnedFd> {
    udp_socket(AddressFamily::Inet)
}

/// A fresh close-on-exec UDP socket of `family`.
pub(crate) fn udp_socket(family: AddressFamily) -> io::Result<OwnedFd> {
    let fd = socket::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    Ok(fd)
}

/// Binds a close-on-exec UDP/IPv4 socket to `addr`; with `reuse_port`, SO_REUSEPORT is set
/// first, so several sockets (of this user) can share the address and the kernel spreads
/// incoming datagrams over them by the 4-tuple's hash.
pub fn bind_udp4(addr: SocketAddrV4, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    bind_udp(SocketAddr::V4(addr), reuse_port)
}

/// Binds a close-on-exec UDP socket of `addr`'s family to it, as [`bind_udp4`] does; an
/// IPv6 socket is IPv6-only (`IPV6_V6ONLY`), so it never shares the port with IPv4.
pub fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = udp_socket(family)?;
    if reuse_port {
        retry_eintr(|| socket::setsockopt(&fd, sockopt::ReusePort, &true))?;
    }
    match addr {
        SocketAddr::V4(a) => retry_eintr(|| socket::bind(fd.as_raw_fd(), &SockaddrIn::from(a)))?,
        SocketAddr::V6(a) => {
            retry_eintr(|| socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true))?;
            retry_eintr(|| socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(a)))?
        }
    }
    Ok(std::net::UdpSocket::from(fd))
}

/// Turns path-MTU discovery off on a UDP socket (`IP_MTU_DISCOVER` = `IP_PMTUDISC_DONT`):
/// its datagrams leave without DF, so the kernel fragments one that is larger than the
/// device or route MTU, and so may routers on the way, as for Linux's VXLAN device. On an
/// IPv6 socket (`IPV6_MTU_DISCOVER`) only this host fragments: IPv6 routers never do.
pub fn set_df_off(fd: BorrowedFd<'_>) -> io::Result<()> {
    use socket::SockaddrLike;
    match socket::getsockname::<socket::SockaddrStorage>(fd.as_raw_fd())?.family() {
        Some(AddressFamily::Inet6) => setsockopt_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        ),
        _ => setsockopt_int(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        ),
    }
}

/// The MTU the kernel's routing knows towards `dst` (device, route or learned path MTU),
/// read with `IP_MTU` (`IPV6_MTU`) from a throwaway UDP socket connected to it (connecting
/// sends nothing).
pub fn path_mtu(dst: SocketAddr) -> io::Result<u32> {
    let mtu = match dst {
        SocketAddr::V4(d) => {
            let fd = udp_socket(AddressFamily::Inet)?;
            retry_eintr(|| socket::connect(fd.as_raw_fd(), &SockaddrIn::from(d)))?;
            retry_eintr(|| socket::getsockopt(&fd, sockopt::IpMtu))?
        }
        SocketAddr::V6(d) => {
            let fd = udp_socket(AddressFamily::Inet6)?;
            retry_eintr(|| socket::connect(fd.as_raw_fd(), &SockaddrIn6::from(d)))?;
            getsockopt_int(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_MTU)?
        }
    };
    u32::try_from(mtu).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// Sets or clears O_NONBLOCK on a descriptor.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(retry_eintr(|| fcntl(fd, FcntlArg::F_GETFL))?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags & !OFlag::O_NONBLOCK
    };
    retry_eintr(|| fcntl(fd, FcntlArg::F_SETFL(flags)))?;
    Ok(())
}

/// Sets an integer socket option (`setsockopt(fd, level, name, &value)`).
pub fn setsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    retry_eintr(|| {
        // SAFETY: passes a pointer to a live c_int and its exact size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        Errno::result(r)
    })?;
    Ok(())
}

/// Reads an integer socket option.
pub fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    retry_eintr(|| {
        // SAFETY: value and len are live locals whose sizes match what we pass.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&mut value as *mut i32).cast(),
                &mut len,
            )
        };
        Errno::result(r)
    })?;
    Ok(value)
}

/// Hands heap memory that is free but still mapped back to the kernel (glibc's
/// `malloc_trim(0)`: every arena, not only the top of the heap). glibc keeps what a burst of
/// allocations freed (a listing of 65,000 leases, a replaced table) as resident memory
/// otherwise. Costs a walk over the free lists: call it after bulk work, never per packet.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes a plain integer and only rearranges the allocator's own free
    // memory; it is thread-safe (each arena is locked while trimmed).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether the process runs with the effective uid 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
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
        set_df_off(a.as_fd()).unwrap();
        let v = getsockopt_int(a.as_fd(), libc::IPPROTO_IP, libc::IP_MTU_DISCOVER).unwrap();
        assert_eq!(v, libc::IP_PMTUDISC_DONT);
        let mtu = path_mtu(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9).into()).unwrap();
        assert!(mtu >= 1280, "loopback MTU {mtu}");
        // The same on IPv6: the socket is IPv6-only and its own option is set.
        let a6 = bind_udp("[::1]:0".parse().unwrap(), false).unwrap();
        set_df_off(a6.as_fd()).unwrap();
        let v = getsockopt_int(a6.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER).unwrap();
        assert_eq!(v, libc::IPV6_PMTUDISC_DONT);
        assert_eq!(
            getsockopt_int(a6.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap(),
            1
        );
        let mtu6 = path_mtu("[::1]:9".parse().unwrap()).unwrap();
        assert!(mtu6 >= 1280, "loopback MTU {mtu6}");
    }

    #[test]
    fn wait_reports_timeout_readable_sockets_and_stop() {
        let stop = EventFd::new().unwrap();
        let a = bind_udp4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), false).unwrap();
        let b = bind_udp4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), false).unwrap();
        let fds = [a.as_fd(), b.as_fd()];
        assert_eq!(wait_any_readable(&fds, &stop, 0).unwrap(), Wake::Timeout);
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", b.local_addr().unwrap()).unwrap();
        assert_eq!(
            wait_any_readable(&fds, &stop, 1000).unwrap(),
            Wake::Ready(0b10)
        );
        // The stop eventfd wins over readable sockets, and stays readable.
        stop.signal().unwrap();
        assert_eq!(wait_any_readable(&fds, &stop, -1).unwrap(), Wake::Stop);
        assert_eq!(wait_any_readable(&[], &stop, -5).unwrap(), Wake::Stop);
    }

    #[test]
    fn nonblocking_flag_sets_and_clears() {
        let a = bind_udp4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), false).unwrap();
        let flags = || fcntl(a.as_fd(), FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags() & libc::O_NONBLOCK, 0);
        set_nonblocking(a.as_fd(), true).unwrap();
        assert_eq!(flags() & libc::O_NONBLOCK, libc::O_NONBLOCK);
        let mut buf = [0u8; 4];
        let e = a.recv(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        set_nonblocking(a.as_fd(), false).unwrap();
        assert_eq!(flags() & libc::O_NONBLOCK, 0);
    }
}
