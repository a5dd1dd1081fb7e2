//! The worker threads: one or two per worker (its send and receive sides on one thread that
//! polls both, or one thread each), CPU pinning, the stop signal, and [`Datapath`], which
//! owns them and stops them when stopped or dropped.

use std::net::UdpSocket;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::{info, warn};

use crate::sys::{wait_any_readable, EventFd, Wake};
use crate::table::SharedTable;

use super::recv::RecvSide;
use super::send::SendSide;
use super::{
    Counters, DatapathConfig, DatapathError, DatapathInfo, Turn, WorkerIo, MAX_SEND_SOCKETS,
    MAX_WORKERS,
};

/// What a worker thread returns.
type WorkerResult = Result<(), DatapathError>;

/// How long an idle worker thread sleeps before it wakes to beat its heartbeat: a thread
/// that stops beating for longer is wedged (the watchdog's view), not idle.
pub const IDLE_BEAT: std::time::Duration = std::time::Duration::from_millis(1000);

/// Most worker threads (two per worker).
const MAX_THREADS: usize = 2 * MAX_WORKERS;

/// Tells workers to stop: a flag they check between batches and an eventfd that wakes them.
#[derive(Debug)]
struct Stop {
    flag: AtomicBool,
    fd: EventFd,
}

/// What every worker thread shares: the send sockets, the stop signal, the counters and the
/// underlay's current MTU.
#[derive(Debug)]
struct Shared {
    /// The IPv4 send sockets, then (dual stack) as many IPv6 ones.
    tx: Box<[UdpSocket]>,
    stop: Stop,
    counters: Arc<Counters>,
    /// The underlay interface's MTU, as the node last read it: the send side sizes what fits
    /// from it once per batch.
    underlay_mtu: AtomicU32,
    /// One heartbeat per worker thread, in start order: advanced each time the thread
    /// handles a batch or wakes from an idle wait.
    beats: [Beat; MAX_THREADS],
}

/// A worker thread's heartbeat, on a cache line of its own: the threads advance theirs on
/// every turn, and sharing a line would make each advance a cache miss for the others.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Beat(AtomicU64);

/// The running data path: its workers (and through them the TUN queues and sockets). Stopped
/// by [`Datapath::stop`], which reports a worker's error, or by dropping it.
#[derive(Debug)]
pub struct Datapath {
    shared: Arc<Shared>,
    workers: Vec<(String, JoinHandle<WorkerResult>)>,
    /// Each worker's devices, also held by its threads: kept here so that a handover can
    /// take them back once the threads have stopped.
    devices: Vec<Arc<WorkerIo>>,
    info: DatapathInfo,
}

impl Datapath {
    /// Starts one worker per [`WorkerIo`]; all of them send through `tx` (the inner flow's
    /// hash picks the socket, hence the outer source port): the IPv4 sockets, then on a
    /// dual-stack node as many IPv6 ones. `underlay_mtu` is the underlay's MTU now.
    pub(super) fn start(
        workers: Vec<WorkerIo>,
        tx: Vec<UdpSocket>,
        table: SharedTable,
        cfg: DatapathConfig,
        info: DatapathInfo,
        underlay_mtu: u32,
    ) -> Result<Datapath, DatapathError> {
        if workers.is_empty() || workers.len() > MAX_WORKERS {
            return Err(DatapathError::Setup("1 to 16 workers are needed"));
        }
        let families = cfg.families();
        if families == 0
            || tx.is_empty()
            || tx.len() % families != 0
            || tx.len() / families > MAX_SEND_SOCKETS
        {
            return Err(DatapathError::Setup(
                "1 to 64 send sockets per address family are needed",
            ));
        }
        let stop = Stop {
            flag: AtomicBool::new(false),
            fd: EventFd::new().map_err(|source| DatapathError::Start {
                what: "eventfd",
                source,
            })?,
        };
        let shared = Arc::new(Shared {
            tx: tx.into_boxed_slice(),
            stop,
            counters: Arc::new(Counters::default()),
            underlay_mtu: AtomicU32::new(underlay_mtu),
            beats: std::array::from_fn(|_| Beat::default()),
        });
        let n = workers.len();
        let mut dp = Datapath {
            shared,
            workers: Vec::with_capacity(2 * n),
            devices: Vec::with_capacity(n),
            info,
        };
        let cpus = match cfg.pin {
            true => crate::sys::steer::allowed_cpus(),
            false => Vec::new(),
        };
        for (i, io) in workers.into_iter().enumerate() {
            // On failure `dp` drops here and stops the workers already started.
            let cpu = cpus.get(i % cpus.len().max(1)).copied();
            dp.spawn_worker(i, io, &table, &cfg, cpu)?;
        }
        dp.shared.counters.workers.store(n, Ordering::Relaxed);
        info!(
            workers = n,
            send_sockets = dp.shared.tx.len(),
            batch = cfg.batch_size,
            mtu = cfg.tun_mtu,
            threads_per_worker = if cfg.split { 2 } else { 1 },
            "data path running"
        );
        Ok(dp)
    }

    /// Starts worker `i` on its own devices: one thread, or two when `cfg.split`.
    fn spawn_worker(
        &mut self,
        i: usize,
        io: WorkerIo,
        table: &SharedTable,
        cfg: &DatapathConfig,
        cpu: Option<usize>,
    ) -> Result<(), DatapathError> {
        crate::sys::set_nonblocking(io.tun.as_fd(), true).map_err(|source| {
            DatapathError::Start {
                what: "TUN O_NONBLOCK",
                source,
            }
        })?;
        let per_family = self.shared.tx.len() / cfg.families();
        let mut send = SendSide::new(i, &io.tun, cfg, table.reader(), per_family);
        let recv = RecvSide::new(i, &io.tun, cfg, table.reader());
        let io = Arc::new(io);
        self.devices.push(io.clone());
        let (sh, w) = (self.shared.clone(), io.clone());
        // Each thread's heartbeat is the slot of its start order.
        let slot = self.workers.len();
        if !cfg.split {
            return self.spawn(format!("weft-dp{i}"), cpu, move |name| {
                run_both(name, &w, send, recv, &sh, &sh.beats[slot].0)
            });
        }
        self.spawn(format!("weft-dp{i}tx"), cpu, move |name| {
            run_one_side(name, w.tun.as_fd(), &sh.stop, &sh.beats[slot].0, || {
                let mtu = sh.underlay_mtu.load(Ordering::Relaxed);
                send.run_once(&w.tun, &sh.tx, &sh.counters, mtu)
            })
        })?;
        let sh = self.shared.clone();
        self.spawn(format!("weft-dp{i}rx"), cpu, move |name| {
            run_receive(name, &io, recv, &sh, &sh.beats[slot + 1].0)
        })
    }

    /// Starts a thread named `name` (pinned to `cpu` when given) running `f`.
    fn spawn(
        &mut self,
        name: String,
        cpu: Option<usize>,
        f: impl FnOnce(&str) -> WorkerResult + Send + 'static,
    ) -> Result<(), DatapathError> {
        let own = name.clone();
        let h = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    if let Err(e) = crate::sys::steer::pin_current_thread(cpu) {
                        warn!(cpu, error = %e, "could not pin the worker");
                    }
                }
                f(&own)
            })
            .map_err(|source| DatapathError::Start {
                what: "worker thread",
                source,
            })?;
        self.workers.push((name, h));
        Ok(())
    }

    /// Tells the send side the underlay interface's MTU (the node reads it once a second);
    /// true when it changed. From the next batch on, pod packets are sized against it.
    pub fn set_underlay_mtu(&self, mtu: u32) -> bool {
        self.shared.underlay_mtu.swap(mtu, Ordering::Relaxed) != mtu
    }

    /// The underlay MTU the send side sizes pod packets against.
    pub fn underlay_mtu(&self) -> u32 {
        self.shared.underlay_mtu.load(Ordering::Relaxed)
    }

    /// Each worker thread's heartbeat, in start order: it advances whenever the thread
    /// handles a batch or wakes from an idle wait (at least every [`IDLE_BEAT`]).
    pub fn heartbeats(&self) -> Vec<u64> {
        self.shared.beats[..self.workers.len()]
            .iter()
            .map(|b| b.0.load(Ordering::Relaxed))
            .collect()
    }

    /// The worker threads' names, in start order.
    pub fn thread_names(&self) -> Vec<String> {
        self.workers.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The packet counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.shared.counters
    }

    /// What the data path runs with: its TUN, MTU, offloads and threads.
    pub fn info(&self) -> &DatapathInfo {
        &self.info
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Whether every worker is still running.
    pub fn is_running(&self) -> bool {
        self.workers.iter().all(|(_, h)| !h.is_finished())
    }

    /// Stops the workers and waits for them; returns the first worker error.
    pub fn stop(mut self) -> Result<(), DatapathError> {
        self.halt()
    }

    /// Stops the workers but keeps the devices open (second descriptors for the same TUN
    /// queues and sockets, taken before the workers stop): packets arriving meanwhile wait
    /// in the TUN queues and socket buffers for whoever reads them next. For a handover.
    pub fn stop_keeping_devices(mut self) -> Result<super::Devices, DatapathError> {
        let kept = (|| {
            let workers = self
                .devices
                .iter()
                .map(|io| io.try_clone())
                .collect::<std::io::Result<Vec<_>>>()?;
            let tx = self
                .shared
                .tx
                .iter()
                .map(UdpSocket::try_clone)
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok(super::Devices { workers, tx })
        })()
        .map_err(|source| DatapathError::Start {
            what: "duplicating the devices for a handover",
            source,
        })?;
        self.halt()?;
        Ok(kept)
    }

    /// Signals the workers to stop and joins them; the first worker error.
    fn halt(&mut self) -> Result<(), DatapathError> {
        self.shared.stop.flag.store(true, Ordering::Release);
        let _ = self.shared.stop.fd.signal();
        let mut first = Ok(());
        for (name, h) in self.workers.drain(..) {
            let r = h.join().unwrap_or(Err(DatapathError::Panicked(name)));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            warn!(error = %crate::error::Chain(&e), "data path worker failed");
        }
    }
}

/// Sleeps until one of `fds` is readable, the data path stops or [`IDLE_BEAT`] passes:
/// `None` for stop, else the readable descriptors (bit `i` for `fds[i]`; 0 after the idle
/// timeout).
fn sleep_on(name: &str, fds: &[BorrowedFd<'_>], stop: &Stop) -> Result<Option<u32>, DatapathError> {
    match wait_any_readable(fds, &stop.fd, IDLE_BEAT.as_millis() as i32) {
        Ok(_) if stop.flag.load(Ordering::Acquire) => Ok(None),
        Ok(Wake::Stop) => Ok(None),
        Ok(Wake::Ready(mask)) => Ok(Some(mask)),
        Ok(Wake::Timeout) => Ok(Some(0)),
        Err(source) => Err(DatapathError::Io {
            worker: name.to_string(),
            what: "poll",
            source,
        }),
    }
}

/// One thread for both directions: a batch each way, turn about, as `poll` reports work.
fn run_both(
    name: &str,
    io: &WorkerIo,
    mut send: SendSide,
    mut recv: RecvSide,
    sh: &Shared,
    beat: &AtomicU64,
) -> Result<(), DatapathError> {
    const TUN: u32 = 1;
    const SOCK: u32 = 2;
    const SOCK6: u32 = 4;
    let fds = worker_fds(io);
    // Every turn starts with a poll that says which side has work, so no read comes back
    // empty but the one that ends a TUN batch; after a receive that wrote to the TUN, the
    // send side looks too (the local stack may have answered already).
    let mut ready = TUN | SOCK | SOCK6;
    while !sh.stop.flag.load(Ordering::Acquire) {
        beat.fetch_add(1, Ordering::Relaxed);
        let mut wrote = 0;
        if ready & SOCK != 0 {
            wrote = recv.run_once(&io.tun, &io.rx, &sh.counters)?.taken;
        }
        if let (true, Some(rx6)) = (ready & SOCK6 != 0, io.rx6.as_ref()) {
            wrote += recv.run_once(&io.tun, rx6, &sh.counters)?.taken;
        }
        if ready & TUN != 0 || wrote > 0 {
            let mtu = sh.underlay_mtu.load(Ordering::Relaxed);
            send.run_once(&io.tun, &sh.tx, &sh.counters, mtu)?;
        }
        match sleep_on(name, &fds[..fd_count(io)], &sh.stop)? {
            Some(mask) => ready = mask,
            None => break,
        }
    }
    Ok(())
}

/// A worker's descriptors to poll: its TUN queue, its tunnel socket and (dual stack) its
/// IPv6 tunnel socket, in that order; the first [`fd_count`] are real.
fn worker_fds(io: &WorkerIo) -> [BorrowedFd<'_>; 3] {
    let rx6 = io.rx6.as_ref().unwrap_or(&io.rx);
    [io.tun.as_fd(), io.rx.as_fd(), rx6.as_fd()]
}

/// How many of [`worker_fds`] to poll.
fn fd_count(io: &WorkerIo) -> usize {
    if io.rx6.is_some() {
        3
    } else {
        2
    }
}

/// The receive side of a split worker on a thread of its own: a batch from each tunnel
/// socket that has datagrams, until all of them are found empty, then sleeps on them.
fn run_receive(
    name: &str,
    io: &WorkerIo,
    mut recv: RecvSide,
    sh: &Shared,
    beat: &AtomicU64,
) -> Result<(), DatapathError> {
    let fds = worker_fds(io);
    let socks = &fds[1..fd_count(io)];
    let mut ready = u32::MAX;
    while !sh.stop.flag.load(Ordering::Acquire) {
        beat.fetch_add(1, Ordering::Relaxed);
        let mut busy = 0;
        if ready & 1 != 0 && !recv.run_once(&io.tun, &io.rx, &sh.counters)?.drained {
            busy |= 1;
        }
        if let (true, Some(rx6)) = (ready & 2 != 0, io.rx6.as_ref()) {
            if !recv.run_once(&io.tun, rx6, &sh.counters)?.drained {
                busy |= 2;
            }
        }
        ready = match busy {
            0 => match sleep_on(name, socks, &sh.stop)? {
                Some(mask) => mask,
                None => break,
            },
            b => b,
        };
    }
    Ok(())
}

/// One direction of a split worker on a thread of its own: runs `batch` (one batch from
/// `fd`) until it finds the queue empty, then sleeps on `fd`.
///
/// (Measured and left out: letting the receive thread also take a turn at the send side
/// after it wrote to the TUN, so replies leave without waking the send thread. Single-stream
/// TCP fell from about 12 to under 10 Gbit/s, the same loss as the one-thread mode, and ping
/// did not improve reliably.)
fn run_one_side(
    name: &str,
    fd: BorrowedFd<'_>,
    stop: &Stop,
    beat: &AtomicU64,
    mut batch: impl FnMut() -> Result<Turn, DatapathError>,
) -> Result<(), DatapathError> {
    while !stop.flag.load(Ordering::Acquire) {
        beat.fetch_add(1, Ordering::Relaxed);
        if batch()?.drained && sleep_on(name, &[fd], stop)?.is_none() {
            break;
        }
    }
    Ok(())
}
