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
        .map_err(|source| TunError::SetIff {
            name: name.to_string(),
            source,
        })?;
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
