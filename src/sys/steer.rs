//! CPU-local steering: pin a worker thread to a CPU, and make the kernel hand a packet to the
//! worker of the CPU it is being processed on, both for the TUN (a tiny eBPF steering
//! program: queue = current CPU) and for the SO_REUSEPORT group (a classic BPF program:
//! socket = current CPU). Then a packet and its worker meet on one CPU, and waking the worker
//! is a local context switch instead of an inter-processor wake-up.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::sys::socket::{setsockopt, sockopt};
use nix::unistd::Pid;

use super::retry_eintr;

/// `bpf(2)` command and program type, from <linux/bpf.h> (libc has neither).
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
/// eBPF's call and exit operations of the BPF_JMP class (<linux/bpf.h>; libc has only the
/// classic BPF codes).
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
/// eBPF helper number of `bpf_get_smp_processor_id`.
const BPF_FUNC_GET_SMP_PROCESSOR_ID: i32 = 8;

/// Pid 0, which the affinity calls take as the calling thread (Linux's affinity is per
/// thread; a new thread inherits its creator's).
fn this_thread() -> Pid {
    Pid::from_raw(0)
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(set) = sched_getaffinity(this_thread()) else {
        return Vec::new();
    };
    (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect()
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    sched_setaffinity(this_thread(), &set)?;
    Ok(())
}

/// Makes the SO_REUSEPORT group of `fd` (sockets numbered in bind order) deliver each
/// datagram to socket `current CPU % n`.
pub fn reuseport_by_cpu(fd: BorrowedFd<'_>, n: u32) -> io::Result<()> {
    if n == 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let prog = [
        // A = the CPU processing the packet
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
        },
        // A %= n
        libc::sock_filter {
            code: (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: n,
        },
        // return A: the index into the group
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_A) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    // The kernel copies the program during the call, while `prog` is alive.
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    retry_eintr(|| setsockopt(&fd, sockopt::AttachReusePortCbpf, &fprog))?;
    Ok(())
}

/// `union bpf_attr` as BPF_PROG_LOAD reads it (the leading fields; the rest stay zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    rest: [u64; 12],
}

/// Installs a TUN steering program on the device of `tun_fd` that puts each packet the stack
/// sends into the queue of the CPU sending it (`cpu % queues`). Needs CAP_BPF or
/// CAP_SYS_ADMIN to load the program.
pub fn tun_steer_by_cpu(tun_fd: BorrowedFd<'_>) -> io::Result<()> {
    // r0 = bpf_get_smp_processor_id(); exit. (code, regs, off, imm) per instruction.
    let jmp = libc::BPF_JMP as u8;
    let insns: [[u8; 8]; 2] = [
        insn(jmp | BPF_CALL, 0, 0, BPF_FUNC_GET_SMP_PROCESSOR_ID),
        insn(jmp | BPF_EXIT, 0, 0, 0),
    ];
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    // SAFETY: bpf(BPF_PROG_LOAD) reads `attr` (live, its exact size) and, through it, the
    // instructions and the license string, both alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh program descriptor that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let prog_fd: libc::c_int = prog.as_raw_fd();
    retry_eintr(|| {
        // SAFETY: TUNSETSTEERINGEBPF reads one int (the program fd) from the pointer; the
        // device takes its own reference, so our descriptor may close afterwards.
        let r = unsafe { libc::ioctl(tun_fd.as_raw_fd(), libc::TUNSETSTEERINGEBPF, &prog_fd) };
        Errno::result(r)
    })?;
    Ok(())
}

/// One eBPF instruction (`struct bpf_insn`: code, dst/src register nibbles, off, imm in
/// native byte order). Only register 0 and no registers are used here, so the nibble order
/// (which differs between little- and big-endian bitfields) does not matter.
fn insn(code: u8, regs: u8, off: i16, imm: i32) -> [u8; 8] {
    let (o, i) = (off.to_ne_bytes(), imm.to_ne_bytes());
    [code, regs, o[0], o[1], i[0], i[1], i[2], i[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::os::fd::AsFd;

    #[test]
    fn pinning_and_reuseport_program_take() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        let handle = std::thread::spawn(move || {
            pin_current_thread(cpus[0]).unwrap();
            allowed_cpus()
        });
        assert_eq!(handle.join().unwrap().len(), 1);
        let a = super::super::bind_udp4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), true).unwrap();
        let SocketAddr::V4(at) = a.local_addr().unwrap() else {
            panic!("IPv4");
        };
        let _b = super::super::bind_udp4(at, true).unwrap();
        reuseport_by_cpu(a.as_fd(), 2).unwrap();
        // Datagrams still arrive (at one of the two sockets).
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", at).unwrap();
    }
}
