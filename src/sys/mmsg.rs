//! Batched UDP I/O: recvmmsg into a batch of packet buffers, sendmmsg from any list of
//! (payload, destination, segment size). The message headers are allocated once per worker
//! and reused. A segment size sends the payload as a train of equal datagrams in one message
//! (UDP_SEGMENT, "UDP GSO"); with UDP_GRO on the socket, one received buffer may hold a train
//! of datagrams from one sender, whose size comes back in the batch metadata.
//!
//! recvmmsg and sendmmsg stay raw `libc` calls: nix's versions (`MultiHeaders`) take the
//! payloads, addresses and control messages as iterators and re-encode them on every call,
//! cannot point one message at several iovecs built once, and cannot stop at the first
//! refused message to resend a train in its place.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, setsockopt, sockopt};

use super::retry_eintr;
use crate::buf::{Meta, PacketBuf};

pub use crate::offload::UDP_MAX_SEGMENTS;

/// Room for one control message carrying an int, 8-byte aligned.
type Ctrl = [u64; 4];

/// Asks the kernel to hand over trains of datagrams (UDP_GRO) on this socket.
pub fn enable_udp_gro(fd: BorrowedFd<'_>) -> io::Result<()> {
    retry_eintr(|| setsockopt(&fd, sockopt::UdpGroSegment, &true))
}

/// How many datagrams one UDP_SEGMENT send on `fd` may carry, or `None` without UDP GSO:
/// reading the option (which changes nothing) succeeds on exactly the kernels that take it
/// (Linux 4.18 on), and only on UDP sockets.
pub fn udp_gso_max_segments(fd: BorrowedFd<'_>) -> Option<usize> {
    getsockopt(&fd, sockopt::UdpGsoSegment)
        .ok()
        .map(|_| UDP_MAX_SEGMENTS)
}

/// Whether the kernel receives UDP_GRO trains: [`enable_udp_gro`] on a throwaway UDP socket
/// succeeds (Linux 5.0 on). A throwaway socket, because reading the option back only works
/// from Linux 5.19 on, and enabling it changes what the socket receives.
pub fn udp_gro_supported() -> bool {
    super::udp4_socket().is_ok_and(|s| enable_udp_gro(s.as_fd()).is_ok())
}

/// Reusable message headers for one worker (used by one thread at a time).
pub struct Mmsg {
    hdrs: Vec<libc::mmsghdr>,
    /// One iovec per message (receive); on send, the gathered parts of every message of one
    /// sendmmsg, message after message (grown to the largest batch once, then reused).
    iovs: Vec<libc::iovec>,
    names: Vec<Name>,
    /// The length of each message's address (`sockaddr_in` or `sockaddr_in6`).
    name_lens: Vec<libc::socklen_t>,
    ctrl: Vec<Ctrl>,
    /// Per message of a send: its first iovec, how many, and its segment size (0: none).
    spans: Vec<(usize, usize, u16)>,
    /// A refused train cut into its datagrams: their headers, iovecs and spans.
    split_hdrs: Vec<libc::mmsghdr>,
    split_iovs: Vec<libc::iovec>,
    split_spans: Vec<(usize, usize)>,
}

// SAFETY: the raw pointers inside the headers point only into this struct's own heap
// vectors (which do not move when the struct does) or at caller buffers that every `send` and
// `recv` re-points before the syscall; no pointer is dereferenced outside those `&mut self`
// calls, so handing an `Mmsg` to another thread is sound.
unsafe impl Send for Mmsg {}

/// What one [`Mmsg::send`] achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// Messages the kernel took (a train is one message; so is each datagram of a refused
    /// train that was resent on its own).
    pub sent: usize,
    /// Messages refused (each skipped, the rest still sent).
    pub failed: usize,
    /// The errno of the last refusal.
    pub last_errno: i32,
    /// Trains the kernel refused (EINVAL, EMSGSIZE or EIO) that were resent datagram by
    /// datagram in their place.
    pub split_trains: usize,
    /// Datagrams of those trains the kernel took one by one.
    pub split_sent: usize,
    /// The largest segment size among the refused trains (0: none refused).
    pub refused_segment: u16,
    /// The errno that refused the last of them.
    pub split_errno: i32,
    /// Where the last of them went.
    pub refused_to: Option<SocketAddr>,
}

/// Whether a train refused with `errno` is worth resending datagram by datagram: EINVAL or
/// EMSGSIZE (a segment plus headers exceeds the device or path MTU the kernel fragments
/// for, or more segments than it takes) or EIO (no UDP GSO on this route).
fn split_on(errno: i32) -> bool {
    matches!(errno, libc::EINVAL | libc::EMSGSIZE | libc::EIO)
}

/// Most datagrams of a refused train handed to one sendmmsg.
const SPLIT_BATCH: usize = 64;

/// Room for one message's IPv4 or IPv6 socket address.
#[repr(C)]
#[derive(Clone, Copy)]
union Name {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

/// The C socket address of `a`.
pub(crate) fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The C socket address of `a`, and its length.
fn name_of(a: SocketAddr) -> (Name, libc::socklen_t) {
    match a {
        SocketAddr::V4(a) => (Name { v4: sockaddr_in(a) }, V4_LEN),
        SocketAddr::V6(a) => (
            Name {
                v6: libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo().to_be(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                },
            },
            V6_LEN,
        ),
    }
}

/// Length of a `sockaddr_in`.
const V4_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
/// Length of a `sockaddr_in6` (the room a received address gets).
const V6_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;

/// The address a C socket address holds (unspecified IPv4 for another family).
fn socket_addr(n: &Name) -> SocketAddr {
    // SAFETY: both variants are plain C structs that start with the family field, and every
    // bit pattern is a valid value of either; the family says which one the kernel wrote.
    unsafe {
        if n.v6.sin6_family == libc::AF_INET6 as libc::sa_family_t {
            let v6 = &n.v6;
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                u32::from_be(v6.sin6_flowinfo),
                v6.sin6_scope_id,
            ))
        } else {
            let v4 = &n.v4;
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            ))
        }
    }
}

/// Points a header at `name` (of `name_len` bytes) and at `n` iovecs from `iov`, without
/// control messages.
fn aim(
    h: &mut libc::mmsghdr,
    name: *mut Name,
    name_len: libc::socklen_t,
    iov: *mut libc::iovec,
    n: usize,
) {
    h.msg_len = 0;
    h.msg_hdr.msg_name = name.cast();
    h.msg_hdr.msg_namelen = name_len;
    h.msg_hdr.msg_iov = iov;
    h.msg_hdr.msg_iovlen = n;
    h.msg_hdr.msg_control = std::ptr::null_mut();
    h.msg_hdr.msg_controllen = 0;
    h.msg_hdr.msg_flags = 0;
}

/// The errno an I/O error carries (0 if none).
fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// One sendmmsg of `hdrs`, retried on EINTR: how many messages the kernel took, or why it
/// refused the first.
///
/// # Safety
/// Every header must point at live iovecs, payloads, addresses and control messages.
unsafe fn send_batch(fd: BorrowedFd<'_>, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    retry_eintr(|| {
        // SAFETY: the caller vouches for every pointer in hdrs; sendmmsg only reads through
        // them, and we pass the slice's own length.
        let r = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                0,
            )
        };
        Errno::result(r).map(|n| n as usize)
    })
}

impl Mmsg {
    /// Allocates headers for batches of up to `n` datagrams.
    pub fn new(n: usize) -> Mmsg {
        // SAFETY: mmsghdr is a plain C struct for which all-zero is valid.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Mmsg {
            hdrs: vec![zero_hdr; n],
            iovs: vec![iov; n],
            names: vec![name_of(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).0; n],
            name_lens: vec![V6_LEN; n],
            ctrl: vec![[0u64; 4]; n],
            spans: vec![(0, 0, 0); n],
            split_hdrs: vec![zero_hdr; SPLIT_BATCH],
            split_iovs: Vec::with_capacity(4 * SPLIT_BATCH),
            split_spans: Vec::with_capacity(2 * SPLIT_BATCH),
        }
    }

    /// Resends message `i` (a train of `seg`-byte datagrams, already pointed at its iovecs
    /// and address) as one message per datagram, in order, without UDP_SEGMENT: the kernel
    /// then fragments each one that is larger than the path. Adds to `out`.
    fn send_split(&mut self, fd: BorrowedFd<'_>, i: usize, seg: u16, out: &mut SendOutcome) {
        self.cut_train(i, seg);
        let name: *mut Name = &mut self.names[i];
        let name_len = self.name_lens[i];
        let mut done = 0;
        while done < self.split_spans.len() {
            let count = (self.split_spans.len() - done).min(SPLIT_BATCH);
            let spans = &self.split_spans[done..done + count];
            for (h, &(at, parts)) in self.split_hdrs.iter_mut().zip(spans) {
                // split_iovs does not grow again before the syscall.
                aim(h, name, name_len, self.split_iovs[at..].as_mut_ptr(), parts);
            }
            let mut k = 0;
            while k < count {
                // SAFETY: split_hdrs[..count] were just pointed at split_iovs (into the
                // caller's payloads, alive for this call) and at names[i].
                match unsafe { send_batch(fd, &mut self.split_hdrs[k..count]) } {
                    Ok(r) => {
                        out.sent += r;
                        out.split_sent += r;
                        k += r;
                    }
                    Err(e) => {
                        out.failed += 1;
                        out.last_errno = errno_of(&e);
                        k += 1;
                    }
                }
            }
            done += count;
        }
    }

    /// Cuts message `i`'s iovecs at every `seg` bytes into `split_iovs`, one span of
    /// `split_spans` per datagram: a datagram's parts are whole iovecs or pieces of one.
    fn cut_train(&mut self, i: usize, seg: u16) {
        let (first, n, _) = self.spans[i];
        let seg = usize::from(seg).max(1);
        self.split_iovs.clear();
        self.split_spans.clear();
        let mut start = 0;
        let mut left = seg;
        for k in first..first + n {
            let (mut base, mut len) = (self.iovs[k].iov_base.cast::<u8>(), self.iovs[k].iov_len);
            while len > 0 {
                let take = len.min(left);
                self.split_iovs.push(libc::iovec {
                    iov_base: base.cast(),
                    iov_len: take,
                });
                base = base.wrapping_add(take);
                len -= take;
                left -= take;
                if left == 0 {
                    self.split_spans
                        .push((start, self.split_iovs.len() - start));
                    start = self.split_iovs.len();
                    left = seg;
                }
            }
        }
        if start < self.split_iovs.len() {
            self.split_spans
                .push((start, self.split_iovs.len() - start));
        }
    }

    /// Points message `i` at `n` iovecs from index `first` of `iovs` (which must not grow
    /// again before the syscall) and at `names[i]`, without control messages.
    fn point(&mut self, i: usize, first: usize, n: usize) {
        let iov = self.iovs[first..first + n].as_mut_ptr();
        aim(
            &mut self.hdrs[i],
            &mut self.names[i],
            self.name_lens[i],
            iov,
            n,
        );
    }

    /// Gives message `i` room for one control message (received UDP_GRO size).
    fn room_for_cmsg(&mut self, i: usize) {
        let h = &mut self.hdrs[i];
        h.msg_hdr.msg_control = self.ctrl[i].as_mut_ptr().cast();
        h.msg_hdr.msg_controllen = std::mem::size_of::<Ctrl>();
    }

    /// Attaches a UDP_SEGMENT control message with `size` to message `i`.
    fn set_segment(&mut self, i: usize, size: u16) {
        self.room_for_cmsg(i);
        let h = &mut self.hdrs[i];
        // SAFETY: msg_control points at ctrl[i], 32 aligned bytes, which hold one cmsghdr
        // (16 bytes) and a u16; CMSG_* compute offsets inside that buffer only.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
            h.msg_hdr.msg_controllen = space;
            let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
        }
    }

    /// The UDP_GRO segment size message `i` carries, if any.
    fn gro_size(&self, i: usize) -> u16 {
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_control.is_null() {
            return 0;
        }
        // SAFETY: the kernel wrote at most msg_controllen bytes of control messages into
        // ctrl[i]; CMSG_FIRSTHDR/NXTHDR stay within msg_controllen and return null past it.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    return u16::try_from(v).unwrap_or(0);
                }
                c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
            }
        }
        0
    }

    /// Receives up to `bufs.len()` datagrams without blocking; returns how many arrived
    /// (0 when none is waiting). Each buffer is reset first (full headroom, whatever an
    /// earlier decapsulation left), so a datagram always lands at the same offset. A datagram
    /// larger than its buffer is cut to length 0, so the decapsulator drops it as truncated.
    pub fn recv(
        &mut self,
        fd: BorrowedFd<'_>,
        bufs: &mut [PacketBuf],
        meta: &mut [Meta],
    ) -> io::Result<usize> {
        let n = bufs.len().min(meta.len()).min(self.hdrs.len());
        self.iovs.clear();
        for b in bufs.iter_mut().take(n) {
            b.reset();
            let space = b.recv_space();
            self.iovs.push(libc::iovec {
                iov_base: space.as_mut_ptr().cast(),
                iov_len: space.len(),
            });
        }
        for i in 0..n {
            self.name_lens[i] = V6_LEN;
            self.point(i, i, 1);
            self.room_for_cmsg(i);
        }
        // SAFETY: hdrs[..n] point at live iovecs, names and buffers that outlive the call.
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let got = r as usize;
        for i in 0..got {
            let h = &self.hdrs[i];
            let len = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                0
            } else {
                h.msg_len as usize
            };
            bufs[i].set_len(len);
            meta[i].addr = socket_addr(&self.names[i]);
            let seg = self.gro_size(i);
            meta[i].segment_size = if usize::from(seg) < len { seg } else { 0 };
        }
        Ok(got)
    }

    /// Sends every (payload, destination, segment size) item, as many per syscall as the
    /// kernel takes; a segment size above 0 sends the payload as a train of datagrams of that
    /// size (the last may be shorter). A train the kernel refuses as too large or unsupported
    /// (EINVAL, EMSGSIZE, EIO: a segment plus headers exceeds the MTU it fragments for) is
    /// resent at once as one message per datagram, before the messages after it, so nothing
    /// overtakes it; any other refused message is skipped and counted, the rest still go
    /// out.
    pub fn send<'a>(
        &mut self,
        fd: BorrowedFd<'_>,
        items: impl IntoIterator<Item = (&'a [u8], SocketAddr, u16)>,
    ) -> SendOutcome {
        self.send_gather(
            fd,
            items
                .into_iter()
                .map(|(data, dst, seg)| (std::iter::once(data), dst, seg)),
        )
    }

    /// Like [`Mmsg::send`], but each message's payload is gathered from several slices, in
    /// order (at most `UIO_MAXIOV`, 1024, per message): headers and payloads that lie apart
    /// leave in one datagram, or one train, without being copied together first.
    pub fn send_gather<'a, P: IntoIterator<Item = &'a [u8]>>(
        &mut self,
        fd: BorrowedFd<'_>,
        items: impl IntoIterator<Item = (P, SocketAddr, u16)>,
    ) -> SendOutcome {
        let mut out = SendOutcome::default();
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let count = self.load(&mut items);
            let mut start = 0;
            while start < count {
                // SAFETY: load pointed hdrs[..count] at payloads borrowed for 'a (alive for
                // this call), at names and at ctrl.
                match unsafe { send_batch(fd, &mut self.hdrs[start..count]) } {
                    Ok(r) => {
                        out.sent += r;
                        start += r;
                    }
                    Err(e) => {
                        self.refused(fd, start, errno_of(&e), &mut out);
                        start += 1;
                    }
                }
            }
        }
        out
    }

    /// Loads the next items (as many as there are headers) into the headers, each pointed
    /// at its gathered iovecs, its address and, for a train, its UDP_SEGMENT size; returns
    /// how many.
    fn load<'a, P: IntoIterator<Item = &'a [u8]>>(
        &mut self,
        items: &mut impl Iterator<Item = (P, SocketAddr, u16)>,
    ) -> usize {
        let mut count = 0;
        self.iovs.clear();
        while count < self.hdrs.len() {
            let Some((parts, dst, seg)) = items.next() else {
                break;
            };
            let first = self.iovs.len();
            let mut len = 0;
            for part in parts {
                self.iovs.push(libc::iovec {
                    iov_base: part.as_ptr() as *mut libc::c_void,
                    iov_len: part.len(),
                });
                len += part.len();
            }
            (self.names[count], self.name_lens[count]) = name_of(dst);
            let seg = if seg > 0 && usize::from(seg) < len {
                seg
            } else {
                0
            };
            self.spans[count] = (first, self.iovs.len() - first, seg);
            count += 1;
        }
        // Only now that the iovecs stopped growing may the headers point at them.
        for i in 0..count {
            let (first, n, seg) = self.spans[i];
            self.point(i, first, n);
            if seg > 0 {
                self.set_segment(i, seg);
            }
        }
        count
    }

    /// Message `i` was refused with `errno`: a train worth splitting is resent datagram by
    /// datagram in its place, before any later message, so nothing overtakes it; anything
    /// else is counted as failed.
    fn refused(&mut self, fd: BorrowedFd<'_>, i: usize, errno: i32, out: &mut SendOutcome) {
        let seg = self.spans[i].2;
        if seg > 0 && split_on(errno) {
            out.split_trains += 1;
            out.refused_segment = out.refused_segment.max(seg);
            out.split_errno = errno;
            out.refused_to = Some(socket_addr(&self.names[i]));
            self.send_split(fd, i, seg, out);
        } else {
            out.failed += 1;
            out.last_errno = errno;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::Batch;
    use std::net::UdpSocket;

    /// A receiving and a sending socket on loopback, and the receiver's address.
    fn loopback_pair() -> (UdpSocket, UdpSocket, SocketAddr) {
        loopback_pair_at("127.0.0.1:0")
    }

    /// [`loopback_pair`] on `at` (an IPv4 or IPv6 loopback address, port 0).
    fn loopback_pair_at(at: &str) -> (UdpSocket, UdpSocket, SocketAddr) {
        let rx = UdpSocket::bind(at).unwrap();
        let tx = UdpSocket::bind(at).unwrap();
        let dst = rx.local_addr().unwrap();
        (rx, tx, dst)
    }

    #[test]
    fn ipv6_and_ipv4_destinations_in_one_batch_of_headers() {
        // One Mmsg sends to IPv6 on one socket and IPv4 on another, and receives IPv6
        // senders' addresses whole (the names are reused across families).
        let (rx6, tx6, dst6) = loopback_pair_at("[::1]:0");
        let (rx4, tx4, dst4) = loopback_pair();
        let mut m = Mmsg::new(4);
        for round in 0..3u8 {
            let out = m.send(
                tx6.as_fd(),
                [(&[round; 100][..], dst6, 0), (&[round; 10][..], dst6, 0)],
            );
            assert_eq!(out.sent, 2);
            let out = m.send(tx4.as_fd(), [(&[round; 50][..], dst4, 0)]);
            assert_eq!(out.sent, 1);
            let (bufs, meta, got) = recv_at_least(&rx6, 2);
            assert_eq!(got, 2);
            assert_eq!(bufs[0].as_slice(), &[round; 100][..]);
            assert_eq!(meta[0].addr, tx6.local_addr().unwrap());
            assert_eq!(meta[1].addr, tx6.local_addr().unwrap());
            let (bufs, meta, got) = recv_at_least(&rx4, 1);
            assert_eq!(got, 1);
            assert_eq!(bufs[0].as_slice(), &[round; 50][..]);
            assert_eq!(meta[0].addr, tx4.local_addr().unwrap());
        }
    }

    /// Receives into 8 fresh buffers until `want` buffers are filled or half a second passed;
    /// returns them, their metadata and how many were filled.
    fn recv_at_least(rx: &UdpSocket, want: usize) -> (Vec<PacketBuf>, [Meta; 8], usize) {
        let mut r = Mmsg::new(8);
        let mut bufs: Vec<PacketBuf> = (0..8).map(|_| PacketBuf::new(4096, 64)).collect();
        let mut meta = [Meta::default(); 8];
        let mut got = 0;
        for _ in 0..100 {
            got += r
                .recv(rx.as_fd(), &mut bufs[got..], &mut meta[got..])
                .unwrap();
            if got >= want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        (bufs, meta, got)
    }

    #[test]
    fn loopback_batch_round_trip() {
        let (rx, tx, dst) = loopback_pair();
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
        let mut m = Mmsg::new(4); // fewer headers than datagrams: two syscalls
        let out = m.send(tx.as_fd(), payloads.iter().map(|p| (&p[..], dst, 0)));
        assert_eq!(
            out,
            SendOutcome {
                sent: 5,
                ..SendOutcome::default()
            }
        );
        let mut batch = Batch::new(8, 256, 64);
        let mut got = 0;
        let mut r = Mmsg::new(8);
        for _ in 0..100 {
            let (bufs, meta) = batch.slots_mut();
            got += r
                .recv(rx.as_fd(), &mut bufs[got..], &mut meta[got..])
                .unwrap();
            if got == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 5);
        batch.set_len(got);
        let (bufs, meta) = batch.packets();
        for (i, b) in bufs.iter().enumerate() {
            assert_eq!(b.as_slice(), &payloads[i][..]);
            assert_eq!(meta[i].addr, tx.local_addr().unwrap());
        }
        assert_eq!(
            r.recv(
                rx.as_fd(),
                &mut batch.slots_mut().0[..1],
                &mut [Meta::default()]
            )
            .unwrap(),
            0
        );

        // A slot left advanced by a decapsulation is reset by the next receive: the space
        // does not shrink however often the slot is reused.
        let mut b = [PacketBuf::new(256, 64)];
        let mut meta = [Meta::default()];
        for round in 0..50u8 {
            m.send(tx.as_fd(), [(&[round; 150][..], dst, 0)]);
            let mut got = 0;
            for _ in 0..100 {
                got = r.recv(rx.as_fd(), &mut b, &mut meta).unwrap();
                if got == 1 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            assert_eq!(got, 1);
            assert_eq!(b[0].len(), 150, "round {round}");
            b[0].advance(22).unwrap();
            b[0].prepend(10).unwrap();
        }
    }

    #[test]
    fn gathered_parts_leave_as_one_datagram_or_one_train() {
        let (rx, tx, dst) = loopback_pair();
        // Headers and payloads in separate buffers: three datagrams of 10 + 90 bytes and a
        // last one of 10 + 30, gathered into one UDP_SEGMENT train of 100-byte segments,
        // then a plain two-part datagram.
        let hdrs: Vec<[u8; 10]> = (0..4u8).map(|i| [0xe0 + i; 10]).collect();
        let pay: Vec<u8> = (0..300u16).map(|i| (i % 251) as u8).collect();
        let mut parts: Vec<&[u8]> = Vec::new();
        for (i, h) in hdrs.iter().enumerate() {
            parts.push(h);
            parts.push(&pay[i * 90..((i + 1) * 90).min(300)]);
        }
        let mut m = Mmsg::new(2);
        let out = m.send_gather(
            tx.as_fd(),
            [
                (parts.clone(), dst, 100),
                (vec![&hdrs[0][..], &pay[..5]], dst, 0),
            ],
        );
        assert_eq!(
            out,
            SendOutcome {
                sent: 2,
                ..SendOutcome::default()
            }
        );
        let (bufs, _, got) = recv_at_least(&rx, 5);
        assert_eq!(got, 5);
        let expect: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let train: Vec<u8> = bufs[..4]
            .iter()
            .flat_map(|b| b.as_slice().to_vec())
            .collect();
        assert_eq!(train, expect);
        assert_eq!(
            bufs[..4].iter().map(|b| b.len()).collect::<Vec<_>>(),
            [100, 100, 100, 40]
        );
        assert_eq!(bufs[4].as_slice(), [&hdrs[0][..], &pay[..5]].concat());
    }

    #[test]
    fn refused_train_is_resent_datagram_by_datagram_in_place() {
        let (rx, tx, dst) = loopback_pair();
        // 200 segments of 5 bytes: more than the kernel takes in one UDP_SEGMENT send (64,
        // 128 since Linux 6.9), so it refuses the train (EINVAL), as it refuses one whose
        // segment exceeds the MTU.
        // Gathered from parts that straddle datagram boundaries (7-byte parts).
        let payload: Vec<u8> = (0..1000u16).map(|i| (i / 5) as u8).collect();
        let parts: Vec<&[u8]> = payload.chunks(7).collect();
        let before = [0xaa_u8; 4];
        let after = [0xbb_u8; 4];
        let mut m = Mmsg::new(4);
        let out = m.send_gather(
            tx.as_fd(),
            [
                (vec![&before[..]], dst, 0),
                (parts, dst, 5),
                (vec![&after[..]], dst, 0),
            ],
        );
        assert_eq!(out.split_trains, 1, "{out:?}");
        assert_eq!(out.split_sent, 200, "{out:?}");
        assert_eq!((out.sent, out.failed), (202, 0), "{out:?}");
        assert_eq!(out.refused_segment, 5);
        assert_eq!(out.split_errno, libc::EINVAL);
        assert_eq!(out.refused_to, Some(dst));
        // Every datagram, in order: the one before, the train's 200, the one after.
        let mut seen: Vec<Vec<u8>> = Vec::new();
        for _ in 0..400 {
            let (bufs, _, got) = recv_at_least(&rx, 1);
            seen.extend(bufs[..got].iter().map(|b| b.as_slice().to_vec()));
            if seen.len() >= 202 {
                break;
            }
        }
        assert_eq!(seen.len(), 202);
        assert_eq!(seen[0], before);
        for (k, d) in seen[1..201].iter().enumerate() {
            assert_eq!(d, &vec![k as u8; 5], "datagram {k}");
        }
        assert_eq!(seen[201], after);
    }

    #[test]
    fn offload_probes_answer_on_a_loopback_socket() {
        let (rx, tx, _) = loopback_pair();
        // Any kernel this runs on has UDP GSO (4.18) and GRO (5.0).
        assert_eq!(udp_gso_max_segments(tx.as_fd()), Some(UDP_MAX_SEGMENTS));
        assert!(udp_gro_supported());
        // The GSO probe only reads: the socket still sends plain datagrams.
        assert_eq!(getsockopt(&tx.as_fd(), sockopt::UdpGsoSegment).unwrap(), 0);
        // Enabling GRO sticks (read back, which Linux 5.19 on allows).
        assert!(!getsockopt(&rx.as_fd(), sockopt::UdpGroSegment).unwrap());
        enable_udp_gro(rx.as_fd()).unwrap();
        assert!(getsockopt(&rx.as_fd(), sockopt::UdpGroSegment).unwrap());
        // Not a UDP socket: no UDP GSO, no UDP GRO.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(udp_gso_max_segments(tcp.as_fd()), None);
        assert!(enable_udp_gro(tcp.as_fd()).is_err());
    }

    #[test]
    fn gso_train_and_gro_receive() {
        let (rx, tx, dst) = loopback_pair();
        let mut train = Vec::new();
        for i in 0..5u8 {
            train.extend_from_slice(&[i; 100]);
        }
        train.extend_from_slice(&[9; 40]); // a shorter last segment
        let mut m = Mmsg::new(4);
        let out = m.send(tx.as_fd(), [(&train[..], dst, 100)]);
        assert_eq!(out.sent, 1, "one message: {out:?}");
        // Without UDP_GRO the receiver sees six datagrams.
        let (mut bufs, mut meta, got) = recv_at_least(&rx, 6);
        assert_eq!(got, 6);
        let mut r = Mmsg::new(8);
        assert_eq!(bufs[5].as_slice(), &[9; 40]);
        assert!(meta[..6].iter().all(|m| m.segment_size == 0));
        // With UDP_GRO one receive may carry the whole train and its segment size.
        enable_udp_gro(rx.as_fd()).unwrap();
        m.send(tx.as_fd(), [(&train[..], dst, 100)]);
        let mut total = 0;
        let mut seen = Vec::new();
        for _ in 0..100 {
            let n = r.recv(rx.as_fd(), &mut bufs, &mut meta).unwrap();
            for i in 0..n {
                total += bufs[i].len();
                seen.push((bufs[i].len(), meta[i].segment_size));
            }
            if total >= train.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(total, train.len(), "{seen:?}");
        for (len, seg) in seen {
            assert!(seg == 0 && len <= 100 || seg == 100, "len {len} seg {seg}");
        }
    }
}
