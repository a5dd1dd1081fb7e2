//! Every syscall that needs `unsafe`: TUN ioctls, batched UDP (recvmmsg/sendmmsg), interface
//! ioctls, poll and eventfd. Everything else in the crate is safe code built on these.
#![allow(unsafe_code)]

pub mod iface;
pub mod mmsg;
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
    /// The watched descriptor is readable.
    Ready,
    /// The stop eventfd fired.
    Stop,
    /// The timeout passed.
    Timeout,
}

/// Blocks until `fd` is readable, `stop` fires, or `timeout_ms` passes (-1: no timeout).
pub fn wait_readable(fd: RawFd, stop: &EventFd, timeout_ms: i32) -> io::Result<Wake> {
    let mut fds = [
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: fds is a live array of two pollfd structs and its length is passed with it.
    let n = retry_eintr(|| unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) })?;
    if n == 0 {
        return Ok(Wake::Timeout);
    }
    if fds[0].revents != 0 {
        return Ok(Wake::Stop);
    }
    Ok(Wake::Ready)
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
