//! Interface ioctls (MTU, flags, IPv4 and IPv6 addresses) and the interface addresses
//! (getifaddrs).
//!
//! The SIOC*IF* ioctls stay hand-written: rtnetlink does the same over netlink, but only as
//! async requests served by a connection task, which would make the TUN set-up (synchronous,
//! like the rest of the data path's start) async too.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use nix::errno::Errno;

use super::retry_eintr;
use super::tun::ifreq_for;

fn req(name: &str) -> io::Result<libc::ifreq> {
    ifreq_for(name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        )
    })
}

fn ioctl(request: libc::Ioctl, r: &mut libc::ifreq) -> io::Result<()> {
    let s = super::udp4_socket()?;
    retry_eintr(|| {
        // SAFETY: every request passed here reads or writes exactly one ifreq.
        let rc = unsafe { libc::ioctl(s.as_raw_fd(), request, r as *mut libc::ifreq) };
        Errno::result(rc)
    })?;
    Ok(())
}

/// `a` as the generic `sockaddr` an ifreq holds: the bytes of a `sockaddr_in` (family, then
/// port 0, then the address in network order, then zeros).
fn sockaddr_v4(a: Ipv4Addr) -> libc::sockaddr {
    let mut sa_data = [0 as libc::c_char; 14];
    for (d, b) in sa_data[2..6].iter_mut().zip(a.octets()) {
        *d = b as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

/// Reads an interface's MTU.
pub fn mtu(name: &str) -> io::Result<u32> {
    let mut r = req(name)?;
    ioctl(libc::SIOCGIFMTU, &mut r)?;
    // SAFETY: SIOCGIFMTU filled the mtu member of the union.
    Ok(unsafe { r.ifr_ifru.ifru_mtu } as u32)
}

/// Sets an interface's MTU.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let mut r = req(name)?;
    r.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    ioctl(libc::SIOCSIFMTU, &mut r)
}

/// Whether an interface is administratively up (IFF_UP).
pub fn is_up(name: &str) -> io::Result<bool> {
    let mut r = req(name)?;
    ioctl(libc::SIOCGIFFLAGS, &mut r)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { r.ifr_ifru.ifru_flags };
    Ok(i32::from(flags) & libc::IFF_UP != 0)
}

/// Brings an interface up (IFF_UP | IFF_RUNNING), keeping its other flags.
pub fn set_up(name: &str) -> io::Result<()> {
    let mut r = req(name)?;
    ioctl(libc::SIOCGIFFLAGS, &mut r)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { r.ifr_ifru.ifru_flags };
    r.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(libc::SIOCSIFFLAGS, &mut r)
}

/// Sets the interface's primary IPv4 address and netmask; the kernel adds the prefix route.
pub fn set_ipv4(name: &str, addr: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    let mut r = req(name)?;
    r.ifr_ifru.ifru_addr = sockaddr_v4(addr);
    ioctl(libc::SIOCSIFADDR, &mut r)?;
    let mask = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    };
    let mut r = req(name)?;
    r.ifr_ifru.ifru_netmask = sockaddr_v4(Ipv4Addr::from(mask));
    ioctl(libc::SIOCSIFNETMASK, &mut r)
}

/// Adds an IPv6 address with `prefix_len` to the interface (the kernel adds the prefix
/// route), without duplicate address detection (the TUN has no neighbours to ask: with DAD
/// the address would stay tentative for a second). An address it already has is kept.
pub fn add_ipv6(name: &str, addr: Ipv6Addr, prefix_len: u8) -> io::Result<()> {
    let index = nix::net::if_::if_nametoindex(name)?;
    let dad = format!("/proc/sys/net/ipv6/conf/{name}/accept_dad");
    // Best effort: without the file (IPv6 off on the interface) the ioctl below says why.
    let _ = std::fs::write(dad, "0");
    let mut r = libc::in6_ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        ifr6_prefixlen: u32::from(prefix_len.min(128)),
        ifr6_ifindex: index as libc::c_int,
    };
    let s = super::udp_socket(nix::sys::socket::AddressFamily::Inet6)?;
    let done = retry_eintr(|| {
        // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads exactly one in6_ifreq.
        let rc = unsafe {
            libc::ioctl(
                s.as_raw_fd(),
                libc::SIOCSIFADDR,
                &mut r as *mut libc::in6_ifreq,
            )
        };
        Errno::result(rc)
    });
    match done {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(drop),
    }
}

/// One IPv4 address of a local interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface name.
    pub name: String,
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length of its netmask.
    pub prefix_len: u8,
}

/// Every IPv4 address on this namespace's interfaces.
pub fn ipv4_addrs() -> io::Result<Vec<IfAddr>> {
    let list = nix::ifaddrs::getifaddrs()?;
    let out = list
        .filter_map(|ifa| {
            let addr = ifa.address.as_ref()?.as_sockaddr_in()?.ip();
            // No netmask (or one that is not IPv4): a host address.
            let prefix_len = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map_or(32, |m| u32::from(m.ip()).count_ones() as u8);
            Some(IfAddr {
                name: ifa.interface_name,
                addr,
                prefix_len,
            })
        })
        .collect();
    Ok(out)
}

/// One IPv6 address of a local interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr6 {
    /// Interface name.
    pub name: String,
    /// The address.
    pub addr: Ipv6Addr,
    /// Prefix length of its netmask (the on-link prefix it makes).
    pub prefix_len: u8,
}

/// Every IPv6 address on this namespace's interfaces, in the kernel's order.
pub fn ipv6_addrs() -> io::Result<Vec<IfAddr6>> {
    let list = nix::ifaddrs::getifaddrs()?;
    let out = list
        .filter_map(|ifa| {
            let addr = ifa.address.as_ref()?.as_sockaddr_in6()?.ip();
            // No netmask (or one that is not IPv6): a host address.
            let prefix_len = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in6())
                .map_or(128, |m| u128::from(m.ip()).count_ones() as u8);
            Some(IfAddr6 {
                name: ifa.interface_name,
                addr,
                prefix_len,
            })
        })
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_v4_holds_a_sockaddr_in() {
        let sa = sockaddr_v4(Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(i32::from(sa.sa_family), libc::AF_INET);
        let data: Vec<u8> = sa.sa_data.iter().map(|&c| c as u8).collect();
        assert_eq!(data, [0, 0, 10, 244, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn loopback_is_listed_with_its_prefix() {
        let all = ipv4_addrs().unwrap();
        let lo = IfAddr {
            name: "lo".to_string(),
            addr: Ipv4Addr::LOCALHOST,
            prefix_len: 8,
        };
        assert!(all.contains(&lo), "{all:?}");
        assert!(mtu("lo").unwrap() >= 1280);
        assert_eq!(mtu("").unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn ipv6_loopback_is_listed_with_its_prefix() {
        let all = ipv6_addrs().unwrap();
        let lo = IfAddr6 {
            name: "lo".to_string(),
            addr: Ipv6Addr::LOCALHOST,
            prefix_len: 128,
        };
        assert!(all.contains(&lo), "{all:?}");
    }
}
