//! Handing a running node over to a new process without losing a packet (`weft run
//! --takeover`): an upgrade, or a DaemonSet rollout with maxSurge, replaces the process while
//! the pod network never notices.
//!
//! Like HAProxy's seamless reload or Envoy's hot restart the running node passes its
//! descriptors to the new process over a unix socket (SCM_RIGHTS), but what it passes is a
//! live packet path: the TUN queues and the tunnel and send sockets, never closed and
//! reopened, so packets arriving during the switch wait in the TUN queues and socket buffers.
//! Like Cloudflare's tableflip the old process exits only after the new one says it
//! forwards, and until then it can take everything back.
//!
//! The exchange, on the node's single-instance socket (the new process cannot bind it while
//! the old one runs, so it connects to it):
//!
//! 1. new -> old: the line `takeover <protocol>`.
//! 2. old -> new: the [`Offer`] (who it is: prefix, TUN, workers, underlay, ...) and its
//!    state (the state file's bytes: config, own lease, table). A node that cannot hand over
//!    (another protocol, still starting) answers [`Msg::Abort`] with the reason instead; an
//!    old weft without takeover answers with its status, which is not a frame.
//! 3. new: checks the offer against its own flags and the state like a state file; answers
//!    [`Msg::Ready`] or [`Msg::Abort`] (the old node carries on).
//! 4. old: stops its workers, keeping second descriptors of every device; sends the devices
//!    (and its ops and instance listeners) in one frame.
//! 5. new: starts its workers on them, then [`Msg::Forwarding`].
//! 6. old: [`Msg::Bye`], tells systemd the new main PID, stops its store and exits 0. If step
//!    5 never comes (the new process failed or died), the old one starts its workers on its
//!    own descriptors again and carries on; a new process that gets no Bye stops and exits 1.
//!
//! Frames are `WEFT`, a little-endian u32 length and the payload (JSON, or the state bytes).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dataplane::{Devices, WorkerIo};
use crate::sys::fdpass::{recv_with_fds, send_with_fds};
use crate::sys::tun::Tun;

/// The handover protocol this build speaks.
pub const PROTOCOL: u32 = 1;

/// The first line a process taking over sends.
pub const HELLO: &str = "takeover";

/// Every frame starts with these bytes.
const MAGIC: &[u8; 4] = b"WEFT";

/// The largest frame accepted (a 65,000-lease state is about 15 MB).
const MAX_FRAME: usize = 256 << 20;

/// How long one step may take: an answer to a message, the descriptors. The running node's
/// control loop waits this long at most for the new process to forward (its workers stand
/// still meanwhile), well under the unit's `WatchdogSec=`.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the new process may take to check the offer and the state (a large table: about
/// 0.1 s for 65,000 leases); the running node forwards meanwhile.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a takeover did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// The socket exchange failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The other side answered something that is not a takeover frame.
    #[error("the running weft did not answer with the takeover protocol (an older weft, which cannot hand over: stop it, then start this one)")]
    NotAFrame,
    /// The other side closed the connection.
    #[error("the other process closed the connection {0}")]
    Closed(&'static str),
    /// The other side said no, with its reason.
    #[error("{0}")]
    Refused(String),
    /// A message that does not belong at this step.
    #[error("unexpected message {got:?} {when}")]
    Unexpected {
        /// What came.
        got: String,
        /// At which step.
        when: &'static str,
    },
    /// The devices frame did not hold what its header says.
    #[error("the handed-over descriptors do not match: {0}")]
    Devices(String),
}

/// What a running node offers the process taking over from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The handover protocol.
    pub protocol: u32,
    /// The running weft's version.
    pub weft_version: String,
    /// Its process id.
    pub pid: u32,
    /// The etcd prefix it runs.
    pub prefix: String,
    /// Its TUN device (`None`: host-gw, no data path).
    pub tun: Option<String>,
    /// Its workers (TUN queues).
    pub workers: usize,
    /// Its underlay interface.
    pub iface: String,
    /// Its PublicIP.
    pub public_ip: Ipv4Addr,
    /// Its PublicIPv6.
    pub public_ipv6: Option<Ipv6Addr>,
    /// Where its ops server listens.
    pub healthz: Option<SocketAddr>,
    /// systemd's notification socket it was given (the new process announces itself there).
    pub notify_socket: Option<String>,
    /// systemd's watchdog interval it was given, in microseconds.
    pub watchdog_usec: Option<u64>,
}

/// The messages after the offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// New: the offer and state are usable; hand over (the new process's pid).
    Ready(u32),
    /// Either side: no takeover, and why.
    Abort(String),
    /// Old: the devices follow in this frame's descriptors.
    Devices(DevicesHeader),
    /// New: its workers run on the devices.
    Forwarding,
    /// Old: it lets go and exits.
    Bye,
}

/// What the descriptors of a [`Msg::Devices`] frame are, in order: per worker the TUN queue,
/// its tunnel socket and (if `rx6`) its IPv6 tunnel socket; then the send sockets; then the
/// ops listener (if `ops`); then the instance socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesHeader {
    /// Workers.
    pub workers: usize,
    /// Whether each worker has an IPv6 tunnel socket.
    pub rx6: bool,
    /// Send sockets.
    pub tx: usize,
    /// Whether the ops listener follows.
    pub ops: bool,
}

/// What the process taking over receives.
#[derive(Debug)]
pub struct Received {
    /// The data path's devices (`None`: host-gw).
    pub devices: Option<Devices>,
    /// The ops server's listening socket.
    pub ops: Option<TcpListener>,
    /// The single-instance socket.
    pub instance: UnixListener,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> TakeoverError {
    move |source| TakeoverError::Io { what, source }
}

/// Writes one frame, with `fds` attached to its first bytes.
fn write_frame(
    s: &UnixStream,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), TakeoverError> {
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(MAGIC);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    send_with_fds(s.as_fd(), &frame, fds).map_err(io("sending a takeover message"))
}

/// Reads one frame (within `timeout`): its payload and the descriptors sent with it.
fn read_frame(
    s: &UnixStream,
    timeout: Duration,
    when: &'static str,
) -> Result<(Vec<u8>, Vec<OwnedFd>), TakeoverError> {
    s.set_read_timeout(Some(timeout))
        .map_err(io("setting a timeout"))?;
    let mut head = [0u8; 8];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < head.len() {
        let (n, more) = recv_with_fds(s.as_fd(), &mut head[got..]).map_err(io(when))?;
        if n == 0 {
            return Err(match got {
                0 => TakeoverError::Closed(when),
                _ => TakeoverError::NotAFrame,
            });
        }
        got += n;
        fds.extend(more);
        if got >= 4 && &head[..4] != MAGIC {
            return Err(TakeoverError::NotAFrame);
        }
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(TakeoverError::NotAFrame);
    }
    let mut payload = vec![0u8; len];
    (&mut &*s).read_exact(&mut payload).map_err(io(when))?;
    Ok((payload, fds))
}

fn send_msg(s: &UnixStream, m: &Msg, fds: &[BorrowedFd<'_>]) -> Result<(), TakeoverError> {
    // Serializing these plain types cannot fail.
    write_frame(s, &serde_json::to_vec(m).unwrap_or_default(), fds)
}

fn read_msg(
    s: &UnixStream,
    timeout: Duration,
    when: &'static str,
) -> Result<(Msg, Vec<OwnedFd>), TakeoverError> {
    let (payload, fds) = read_frame(s, timeout, when)?;
    let m = serde_json::from_slice(&payload).map_err(|_| TakeoverError::Unexpected {
        got: String::from_utf8_lossy(&payload[..payload.len().min(80)]).into_owned(),
        when,
    })?;
    Ok((m, fds))
}

/// Whether the first line a client of the instance socket sent asks for a takeover, and in
/// which protocol.
pub fn parse_hello(line: &str) -> Option<u32> {
    let rest = line.trim().strip_prefix(HELLO)?;
    rest.trim().parse().ok()
}

/// Answers a client that asked for a takeover the node cannot give (another protocol, not
/// running yet): the reason, as the new process will report it.
pub fn refuse(conn: &UnixStream, why: &str) {
    let _ = send_msg(conn, &Msg::Abort(why.to_string()), &[]);
}

/// The running node's side of one takeover.
#[derive(Debug)]
pub struct Giver {
    conn: UnixStream,
}

impl Giver {
    /// A takeover asked for on `conn` (its hello line already read).
    pub fn new(conn: UnixStream) -> Giver {
        Giver { conn }
    }

    /// The connection (for a last word, [`refuse`]).
    pub fn conn(&self) -> &UnixStream {
        &self.conn
    }

    /// Steps 2 and 3: sends the offer and the state, waits for the new process to accept
    /// them; its pid.
    pub fn offer(&mut self, offer: &Offer, state: &[u8]) -> Result<u32, TakeoverError> {
        let o = serde_json::to_vec(offer).unwrap_or_default();
        write_frame(&self.conn, &o, &[])?;
        write_frame(&self.conn, state, &[])?;
        match read_msg(
            &self.conn,
            CHECK_TIMEOUT,
            "waiting for the new process to accept",
        )?
        .0
        {
            Msg::Ready(pid) => Ok(pid),
            Msg::Abort(why) => Err(TakeoverError::Refused(format!(
                "the new process refused: {why}"
            ))),
            m => Err(TakeoverError::Unexpected {
                got: format!("{m:?}"),
                when: "waiting for ready",
            }),
        }
    }

    /// Steps 4 to 6: sends the devices and listeners, waits until the new process forwards,
    /// then lets go. On `Err` the new process does not forward: the caller takes its devices
    /// back.
    pub fn hand_over(
        &mut self,
        devices: Option<&Devices>,
        ops: Option<BorrowedFd<'_>>,
        instance: BorrowedFd<'_>,
    ) -> Result<(), TakeoverError> {
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        if let Some(d) = devices {
            for w in &d.workers {
                fds.push(w.tun.fd());
                fds.push(w.rx.as_fd());
                fds.extend(w.rx6.as_ref().map(|s| s.as_fd()));
            }
            fds.extend(d.tx.iter().map(|s| s.as_fd()));
        }
        fds.extend(ops);
        fds.push(instance);
        let header = DevicesHeader {
            workers: devices.map_or(0, |d| d.workers.len()),
            rx6: devices.is_some_and(|d| d.workers.iter().any(|w| w.rx6.is_some())),
            tx: devices.map_or(0, |d| d.tx.len()),
            ops: ops.is_some(),
        };
        send_msg(&self.conn, &Msg::Devices(header), &fds)?;
        match read_msg(
            &self.conn,
            STEP_TIMEOUT,
            "waiting for the new process to forward",
        )?
        .0
        {
            Msg::Forwarding => {}
            Msg::Abort(why) => {
                return Err(TakeoverError::Refused(format!(
                    "the new process failed: {why}"
                )))
            }
            m => {
                return Err(TakeoverError::Unexpected {
                    got: format!("{m:?}"),
                    when: "waiting for forwarding",
                })
            }
        }
        send_msg(&self.conn, &Msg::Bye, &[])
    }
}

/// The new process's side of one takeover.
#[derive(Debug)]
pub struct Taker {
    conn: UnixStream,
}

impl Taker {
    /// Connects to the weft running for `prefix` in this network namespace and asks for a
    /// takeover; `None` when none runs.
    pub fn connect(prefix: &str) -> Result<Option<Taker>, TakeoverError> {
        let name = crate::host::instance::socket_name(prefix);
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(io("naming the instance socket"))?;
        let conn = match UnixStream::connect_addr(&addr) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
            Err(e) => return Err(io("connecting to the running weft")(e)),
        };
        (&conn)
            .write_all(format!("{HELLO} {PROTOCOL}\n").as_bytes())
            .map_err(io("asking the running weft to hand over"))?;
        Ok(Some(Taker { conn }))
    }

    /// Step 2: the offer and the state.
    pub fn receive_offer(&mut self) -> Result<(Offer, Vec<u8>), TakeoverError> {
        let (payload, _) = read_frame(&self.conn, STEP_TIMEOUT, "waiting for the offer")?;
        if let Ok(Msg::Abort(why)) = serde_json::from_slice::<Msg>(&payload) {
            return Err(TakeoverError::Refused(format!(
                "the running weft refused: {why}"
            )));
        }
        let offer: Offer =
            serde_json::from_slice(&payload).map_err(|_| TakeoverError::Unexpected {
                got: String::from_utf8_lossy(&payload[..payload.len().min(80)]).into_owned(),
                when: "reading the offer",
            })?;
        let (state, _) = read_frame(&self.conn, STEP_TIMEOUT, "waiting for the state")?;
        Ok((offer, state))
    }

    /// Step 3, no: the running node carries on.
    pub fn abort(&mut self, why: &str) {
        let _ = send_msg(&self.conn, &Msg::Abort(why.to_string()), &[]);
    }

    /// Step 3, yes, and step 4: the devices and listeners.
    pub fn accept(&mut self) -> Result<Received, TakeoverError> {
        send_msg(&self.conn, &Msg::Ready(std::process::id()), &[])?;
        let (m, fds) = read_msg(&self.conn, STEP_TIMEOUT, "waiting for the devices")?;
        let header = match m {
            Msg::Devices(h) => h,
            Msg::Abort(why) => {
                return Err(TakeoverError::Refused(format!(
                    "the running weft stopped the takeover: {why}"
                )))
            }
            m => {
                return Err(TakeoverError::Unexpected {
                    got: format!("{m:?}"),
                    when: "waiting for the devices",
                })
            }
        };
        unpack(header, fds)
    }

    /// Step 5: says it forwards, waits for the old process to let go. `Err`: it did not; the
    /// old process may be forwarding again, so this one must stop.
    pub fn forwarding(&mut self) -> Result<(), TakeoverError> {
        send_msg(&self.conn, &Msg::Forwarding, &[])?;
        match read_msg(
            &self.conn,
            STEP_TIMEOUT,
            "waiting for the running weft to let go",
        )?
        .0
        {
            Msg::Bye => Ok(()),
            m => Err(TakeoverError::Unexpected {
                got: format!("{m:?}"),
                when: "waiting for bye",
            }),
        }
    }
}

/// The descriptors of a devices frame, in the header's order, as typed objects.
fn unpack(h: DevicesHeader, fds: Vec<OwnedFd>) -> Result<Received, TakeoverError> {
    let per_worker = if h.rx6 { 3 } else { 2 };
    let want = h.workers * per_worker + h.tx + usize::from(h.ops) + 1;
    if fds.len() != want || h.workers > crate::dataplane::MAX_WORKERS {
        return Err(TakeoverError::Devices(format!(
            "{} descriptors for {} workers, {} send sockets{}",
            fds.len(),
            h.workers,
            h.tx,
            if h.ops { " and the ops listener" } else { "" }
        )));
    }
    let mut it = fds.into_iter();
    let mut next = || {
        it.next()
            .ok_or_else(|| TakeoverError::Devices("too few descriptors".into()))
    };
    let mut workers = Vec::with_capacity(h.workers);
    for _ in 0..h.workers {
        let tun = Tun::from_fd(next()?)
            .map_err(|e| TakeoverError::Devices(crate::error::Chain(&e).to_string()))?;
        let rx = UdpSocket::from(next()?);
        let rx6 = match h.rx6 {
            true => Some(UdpSocket::from(next()?)),
            false => None,
        };
        workers.push(WorkerIo { tun, rx, rx6 });
    }
    let tx = (0..h.tx)
        .map(|_| next().map(UdpSocket::from))
        .collect::<Result<Vec<_>, _>>()?;
    let ops = match h.ops {
        true => Some(TcpListener::from(next()?)),
        false => None,
    };
    let instance = UnixListener::from(next()?);
    let devices = (h.workers > 0).then_some(Devices { workers, tx });
    Ok(Received {
        devices,
        ops,
        instance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_lines_name_the_protocol() {
        assert_eq!(parse_hello("takeover 1\n"), Some(1));
        assert_eq!(parse_hello("takeover 7"), Some(7));
        assert_eq!(parse_hello("status\n"), None);
        assert_eq!(parse_hello(""), None);
        assert_eq!(parse_hello("takeover x"), None);
    }

    #[test]
    fn frames_round_trip_and_a_non_frame_is_told_apart() {
        let (a, b) = UnixStream::pair().unwrap();
        send_msg(&a, &Msg::Ready(42), &[]).unwrap();
        assert_eq!(
            read_msg(&b, STEP_TIMEOUT, "test").unwrap().0,
            Msg::Ready(42)
        );
        // An older weft answers with its status: "200\n{...}".
        (&a).write_all(b"200\n{\"node\":{}}").unwrap();
        assert!(matches!(
            read_frame(&b, STEP_TIMEOUT, "test"),
            Err(TakeoverError::NotAFrame)
        ));
        // A closed peer.
        let (c, d) = UnixStream::pair().unwrap();
        drop(c);
        assert!(matches!(
            read_frame(&d, STEP_TIMEOUT, "test"),
            Err(TakeoverError::Closed(_))
        ));
        // Silence ends in the step's timeout.
        let (_e, f) = UnixStream::pair().unwrap();
        assert!(matches!(
            read_frame(&f, Duration::from_millis(50), "test"),
            Err(TakeoverError::Io { .. })
        ));
    }

    #[test]
    fn a_devices_frame_must_hold_what_its_header_says() {
        let (a, _b) = UnixStream::pair().unwrap();
        let h = DevicesHeader {
            workers: 1,
            rx6: false,
            tx: 2,
            ops: false,
        };
        // 1 TUN + 1 rx + 2 tx + instance = 5 wanted; 2 given.
        let fds = vec![
            a.as_fd().try_clone_to_owned().unwrap(),
            a.as_fd().try_clone_to_owned().unwrap(),
        ];
        assert!(matches!(
            unpack(h.clone(), fds),
            Err(TakeoverError::Devices(_))
        ));
        // The right count, but the first is no TUN device.
        let fds = (0..5)
            .map(|_| a.as_fd().try_clone_to_owned().unwrap())
            .collect();
        let e = unpack(h, fds).unwrap_err();
        assert!(
            e.to_string().contains("TUNGETIFF") || e.to_string().contains("not a TUN"),
            "{e}"
        );
        // host-gw: only the instance socket.
        let h = DevicesHeader {
            workers: 0,
            rx6: false,
            tx: 0,
            ops: false,
        };
        let r = unpack(h, vec![a.as_fd().try_clone_to_owned().unwrap()]).unwrap();
        assert!(r.devices.is_none() && r.ops.is_none());
    }
}
