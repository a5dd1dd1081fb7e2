//! The TUN device: open with TUNSETIFF, read and write whole IP packets, optional
//! virtio-net header (IFF_VNET_HDR) for checksum and segmentation offload.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::retry_eintr;
use crate::offload::VNET_HDR_LEN;

/// Why the TUN device could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// /dev/net/tun could not be opened.
    #[error("open /dev/net/tun (is the tun module loaded, and do we have CAP_NET_ADMIN?)")]
    Open(#[source] io::Error),
    /// The interface name is empty, too long or not ASCII.
    #[error("bad TUN device name {0:?}: 1 to 15 ASCII characters")]
    Name(String),
    /// TUNSETIFF failed.
    #[error("TUNSETIFF {name} failed")]
    SetIff {
        /// Requested name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The name belongs to an interface that is not a TUN device (a tap, a bridge ...), which
    /// TUNSETIFF refuses with EINVAL.
    #[error("an interface named {name} exists and is a {kind}, not a TUN device: pass --tun-name=<another name>, or delete it (ip link delete {name})")]
    NotTun {
        /// The name.
        name: String,
        /// What the interface is (`TAP device`, `bridge`, `dummy device` ...).
        kind: String,
        /// TUNSETIFF's error.
        #[source]
        source: io::Error,
    },
    /// A later ioctl on the device failed.
    #[error("{what} on {name} failed")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// Device name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// An open TUN device (IFF_TUN | IFF_NO_PI, optionally IFF_VNET_HDR).
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    vnet_hdr: bool,
}

pub(crate) fn ifreq_for(name: &str) -> Option<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || !name.is_ascii() || name.contains('\0') {
        return None;
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Some(req)
}

/// The interface name the kernel wrote into `req`: NUL-terminated within IFNAMSIZ, or
/// without a NUL all of it.
fn ifr_name(req: &libc::ifreq) -> String {
    let bytes = req.ifr_name.map(|c| c as u8);
    match CStr::from_bytes_until_nul(&bytes) {
        Ok(c) => c.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// TUNSETIFF's failure for `name`, saying what the interface is when the name belongs to one
/// that is not a TUN device (the kernel says only EINVAL).
fn set_iff_error(name: &str, source: io::Error) -> TunError {
    let other_kind = match source.raw_os_error() {
        Some(libc::EINVAL) => match driver_of(name) {
            Ok((driver, bus_info)) => not_tun_kind(&driver, &bus_info),
            // The interface is gone, or never was: the error is something else.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => None,
            // It exists but does not say what it is: not a TUN device, which always does.
            Err(_) => Some("network interface of another kind".to_string()),
        },
        _ => None,
    };
    match other_kind {
        Some(kind) => TunError::NotTun {
            name: name.to_string(),
            kind,
            source,
        },
        None => TunError::SetIff {
            name: name.to_string(),
            source,
        },
    }
}

/// What an interface whose ethtool driver information is `driver` and `bus_info` is, when it
/// is not a TUN device; `None` for a TUN device (the tun driver's bus is `tun` or `tap`).
fn not_tun_kind(driver: &str, bus_info: &str) -> Option<String> {
    match (driver, bus_info) {
        ("tun", "tun") => None,
        ("tun", "tap") => Some("TAP device".to_string()),
        ("bridge", _) => Some("bridge".to_string()),
        ("", _) => Some("network interface of another kind".to_string()),
        (driver, _) => Some(format!("{driver} device")),
    }
}

/// `ETHTOOL_GDRVINFO` of `<linux/ethtool.h>` (the libc crate has SIOCETHTOOL but not the
/// ethtool commands).
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` of `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The driver and bus of interface `name` in this network namespace, as `ethtool -i` shows
/// them (`tun` and `tap` for a tap, `bridge` for a bridge); ENODEV when there is no such
/// interface.
fn driver_of(name: &str) -> io::Result<(String, String)> {
    let mut req = ifreq_for(name).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    req.ifr_ifru.ifru_data = (&mut info as *mut EthtoolDrvinfo).cast();
    let sock = super::udp4_socket()?;
    retry_eintr(|| {
        // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO reads the ifreq and writes one
        // ethtool_drvinfo through ifru_data, which points at `info`, alive and unaliased
        // for the call.
        Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) })
    })?;
    let text = |b: &[u8]| match CStr::from_bytes_until_nul(b) {
        Ok(c) => c.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    };
    Ok((text(&info.driver), text(&info.bus_info)))
}

impl Tun {
    /// Opens (or creates) the TUN device `name`; with `vnet_hdr` every packet read or written
    /// starts with a [`VNET_HDR_LEN`]-byte virtio-net header.
    pub fn open(name: &str, vnet_hdr: bool) -> Result<Tun, TunError> {
        Tun::open_flags(name, vnet_hdr, false)
    }

    /// Opens `queues` queues of the multi-queue TUN device `name` (IFF_MULTI_QUEUE; each
    /// descriptor is one queue, and the kernel spreads flows over them). One queue opens a
    /// plain single-queue device, as [`Tun::open`] does.
    pub fn open_queues(name: &str, vnet_hdr: bool, queues: usize) -> Result<Vec<Tun>, TunError> {
        if queues <= 1 {
            return Ok(vec![Tun::open(name, vnet_hdr)?]);
        }
        Tun::open_multi(name, vnet_hdr, queues)
    }

    /// Opens `queues` (at least one) queues of a multi-queue TUN device, even just one.
    pub fn open_multi(name: &str, vnet_hdr: bool, queues: usize) -> Result<Vec<Tun>, TunError> {
        let first = Tun::open_flags(name, vnet_hdr, true)?;
        let actual = first.name.clone();
        let mut all = vec![first];
        for _ in 1..queues.max(1) {
            all.push(Tun::open_flags(&actual, vnet_hdr, true)?);
        }
        Ok(all)
    }

    fn open_flags(name: &str, vnet_hdr: bool, multi_queue: bool) -> Result<Tun, TunError> {
        let mut req = ifreq_for(name).ok_or_else(|| TunError::Name(name.to_string()))?;
        let fd = nix::fcntl::open(
            c"/dev/net/tun",
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| TunError::Open(e.into()))?;
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        retry_eintr(|| {
            // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
            Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) })
        })
        .map_err(|source| set_iff_error(name, source))?;
        let tun = Tun {
            fd,
            name: ifr_name(&req),
            vnet_hdr,
        };
        if vnet_hdr {
            let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
            retry_eintr(|| {
                // SAFETY: TUNSETVNETHDRSZ reads one c_int from the pointer.
                Errno::result(unsafe {
                    libc::ioctl(tun.fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size)
                })
            })
            .map_err(|source| tun.ioctl_err("TUNSETVNETHDRSZ", source))?;
        }
        Ok(tun)
    }

    /// Takes an open TUN queue handed over by another process: asks the kernel which device
    /// it is (TUNGETIFF) and whether it carries virtio-net headers. A descriptor that is not
    /// a TUN device is refused.
    pub fn from_fd(fd: OwnedFd) -> Result<Tun, TunError> {
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        retry_eintr(|| {
            // SAFETY: TUNGETIFF writes one ifreq, which `req` is.
            Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req) })
        })
        .map_err(|source| TunError::Ioctl {
            what: "TUNGETIFF",
            name: format!("descriptor {}", fd.as_raw_fd()),
            source,
        })?;
        let name = ifr_name(&req);
        // SAFETY: TUNGETIFF filled ifr_flags (the union's flags member) on success.
        let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
        if flags & libc::IFF_TUN == 0 {
            return Err(TunError::Name(format!("{name} is not a TUN device")));
        }
        Ok(Tun {
            fd,
            name,
            vnet_hdr: flags & libc::IFF_VNET_HDR != 0,
        })
    }

    /// The descriptor, to hand over to another process (which gets the same open queue).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A second descriptor for the same open queue: the queue stays attached, and what waits
    /// in it stays queued, until the last of them closes.
    pub fn try_clone(&self) -> io::Result<Tun> {
        Ok(Tun {
            fd: self.fd.try_clone()?,
            name: self.name.clone(),
            vnet_hdr: self.vnet_hdr,
        })
    }

    fn ioctl_err(&self, what: &'static str, source: io::Error) -> TunError {
        TunError::Ioctl {
            what,
            name: self.name.clone(),
            source,
        }
    }

    /// The device name the kernel gave.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether packets carry a virtio-net header.
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Enables offloads (TUN_F_* bits): what the kernel may hand us unsegmented or without
    /// checksums.
    pub fn set_offload(&self, flags: u32) -> Result<(), TunError> {
        retry_eintr(|| {
            // SAFETY: TUNSETOFFLOAD takes its argument by value.
            Errno::result(unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    libc::TUNSETOFFLOAD,
                    flags as libc::c_ulong,
                )
            })
        })
        .map_err(|source| self.ioctl_err("TUNSETOFFLOAD", source))?;
        Ok(())
    }

    /// Makes the device outlive this descriptor (or not), so a restart keeps its routes.
    pub fn set_persist(&self, on: bool) -> Result<(), TunError> {
        retry_eintr(|| {
            // SAFETY: TUNSETPERSIST takes its argument by value.
            Errno::result(unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    libc::TUNSETPERSIST,
                    libc::c_ulong::from(on),
                )
            })
        })
        .map_err(|source| self.ioctl_err("TUNSETPERSIST", source))?;
        Ok(())
    }

    /// Reads one packet (with its virtio-net header when enabled).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        retry_eintr(|| nix::unistd::read(&self.fd, buf))
    }

    /// Writes one packet (with its virtio-net header when enabled).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        retry_eintr(|| nix::unistd::write(&self.fd, buf))
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_of_an_interface_that_is_not_a_tun_device() {
        assert_eq!(not_tun_kind("tun", "tun"), None);
        assert_eq!(not_tun_kind("tun", "tap").as_deref(), Some("TAP device"));
        assert_eq!(not_tun_kind("bridge", "N/A").as_deref(), Some("bridge"));
        assert_eq!(not_tun_kind("dummy", "").as_deref(), Some("dummy device"));
        assert_eq!(not_tun_kind("veth", "").as_deref(), Some("veth device"));
        assert_eq!(
            not_tun_kind("", "").as_deref(),
            Some("network interface of another kind")
        );
        // ethtool_drvinfo is the kernel's 196 bytes.
        assert_eq!(std::mem::size_of::<EthtoolDrvinfo>(), 196);
    }

    #[test]
    fn not_tun_names_the_kind_and_the_fix() {
        let e = TunError::NotTun {
            name: "weft0".into(),
            kind: "TAP device".into(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert_eq!(
            e.to_string(),
            "an interface named weft0 exists and is a TAP device, not a TUN device: pass \
             --tun-name=<another name>, or delete it (ip link delete weft0)"
        );
        // Another error than EINVAL, or a name no interface has: TUNSETIFF's own error.
        let e = set_iff_error("weft0", io::Error::from_raw_os_error(libc::EPERM));
        assert!(matches!(e, TunError::SetIff { .. }), "{e}");
        let e = set_iff_error("wtnone9", io::Error::from_raw_os_error(libc::EINVAL));
        assert!(matches!(e, TunError::SetIff { .. }), "{e}");
    }
}
