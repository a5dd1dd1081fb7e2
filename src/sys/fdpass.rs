//! Passing descriptors between processes over a unix stream socket (SCM_RIGHTS): how a
//! running node hands its TUN queues and sockets to the one taking over from it. The
//! receiver gets new descriptors for the same open files, so nothing queued in them is lost
//! and the sender keeps its own until it closes them.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use super::retry_eintr;

/// Most descriptors one message carries (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;

/// Sends `bytes` on the stream socket `sock` with `fds` attached to them (the receiver gets
/// the descriptors with the first of these bytes it reads).
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} descriptors, at most {MAX_FDS} per message", fds.len()),
        ));
    }
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no bytes to carry the descriptors",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let mut sent = retry_eintr(|| {
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
    })?;
    // The rest of a partial write goes without the descriptors (already delivered).
    while sent < bytes.len() {
        sent += retry_eintr(|| {
            sendmsg::<()>(
                sock.as_raw_fd(),
                &[IoSlice::new(&bytes[sent..])],
                &[],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
        })?;
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes from the stream socket `sock` and the descriptors sent
/// with them (close-on-exec). 0 bytes means the peer closed. A message whose descriptors did
/// not all fit is an error (they would be lost).
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    // The received message borrows the buffers, so EINTR is retried here by hand.
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel has just installed `fd` in this process's table for us;
                // nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::other("descriptors truncated (MSG_CTRUNC)"));
    }
    Ok((msg.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_cross_with_their_bytes_and_keep_the_open_file() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut p_read, mut p_write) = {
            let (r, w) = UnixStream::pair().unwrap();
            (r, w)
        };
        // A pipe-like pair: what one end writes the other reads; send the writer.
        send_with_fds(a.as_fd(), b"hello", &[p_write.as_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        // The received descriptor is the same open file: writing to it reaches p_read.
        let mut got = UnixStream::from(fds.into_iter().next().unwrap());
        got.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        p_read.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        // The sender's copy still works too.
        p_write.write_all(b"y").unwrap();
        p_read.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"y");
        // Bytes without descriptors, and a closed peer.
        send_with_fds(a.as_fd(), b"plain", &[]).unwrap();
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"plain"[..], 0));
        drop(a);
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf).unwrap().0, 0);
        let too_many: Vec<BorrowedFd<'_>> = (0..=MAX_FDS).map(|_| p_write.as_fd()).collect();
        assert!(send_with_fds(b.as_fd(), b"x", &too_many).is_err());
    }
}
