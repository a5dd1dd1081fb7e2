//! Child processes for tests: [`Proc`], a guard that stops (SIGTERM, then SIGKILL) and reaps
//! its process when dropped, the checked and unchecked one-shot runners built on it, and
//! [`wait_until`], a polling loop for any condition.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a checked command may run before it is killed and the test fails.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// A child process that is stopped (SIGTERM, then SIGKILL) and reaped when dropped; its
/// stdout and stderr are collected in the background.
pub struct Proc {
    child: Option<Child>,
    cmd: String,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    })
}

/// Clock ticks per second, the unit of the CPU times in /proc.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf takes no pointers.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (all its threads) in seconds; 0 when it is gone.
pub fn process_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the ")" closing the command name: state is field 3, utime 14, stime 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (get(14) + get(15)) as f64 / clk_tck()
}

/// Waits until `cond` holds, polling every 20 ms for at most `timeout`; returns how long it
/// took, `None` on timeout.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` to `pid`; errors (already gone) are ignored.
pub(super) fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is one we
    // started (a child, or a process inside a namespace this harness created).
    unsafe {
        libc::kill(pid, sig);
    }
}

impl Proc {
    /// Starts `argv` with stdin closed and stdout/stderr captured; panics if it cannot start.
    pub fn spawn(argv: &[&str]) -> Proc {
        Proc::try_spawn(argv).unwrap_or_else(|e| panic!("cannot start `{}`: {e}", argv.join(" ")))
    }

    /// Starts `argv` with stdin closed and stdout/stderr captured.
    pub fn try_spawn(argv: &[&str]) -> std::io::Result<Proc> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty command"))?;
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());
        Ok(Proc {
            child: Some(child),
            cmd: argv.join(" "),
            stdout,
            stderr,
        })
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, sig: libc::c_int) {
        signal(self.pid(), sig);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The command line, for messages.
    pub fn cmd(&self) -> &str {
        &self.cmd
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running (or was
    /// reaped already).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let end = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Waits up to `timeout` for the process to exit and returns its output; on timeout it is
    /// stopped and the returned status says so (not success).
    pub fn output_within(mut self, timeout: Duration) -> Output {
        let status = match self.wait_timeout(timeout) {
            Some(st) => Some(st),
            None => self.terminate(),
        };
        // Unreapable (never seen): report it as killed rather than panic.
        self.collect(status.unwrap_or(ExitStatus::from_raw(libc::SIGKILL)))
    }

    /// Stops the process (SIGTERM, SIGKILL after [`STOP_GRACE`]) and returns its output.
    pub fn stop(mut self) -> Output {
        let status = self
            .terminate()
            .unwrap_or_else(|| panic!("cannot reap `{}`", self.cmd));
        self.collect(status)
    }

    /// [`Proc::stop`], keeping what a weft test reads: the exit status and stderr as text.
    pub fn stop_with_stderr(self) -> (ExitStatus, String) {
        let out = self.stop();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// SIGTERM, SIGKILL after [`STOP_GRACE`], reap. Never panics: `Drop` uses it.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        signal(child.id(), libc::SIGTERM);
        if let Some(st) = self.wait_timeout(STOP_GRACE) {
            return Some(st);
        }
        let child = self.child.as_mut()?;
        let _ = child.kill();
        child.wait().ok()
    }

    fn collect(&mut self, status: ExitStatus) -> Output {
        self.child = None;
        let join = |h: Option<JoinHandle<Vec<u8>>>| -> Vec<u8> {
            let Some(h) = h else { return Vec::new() };
            // A grandchild could keep the pipe open; never hang on it.
            let end = Instant::now() + Duration::from_secs(2);
            while !h.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                h.join().unwrap_or_default()
            } else {
                Vec::new()
            }
        };
        Output {
            status,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// Formats a finished command for a failure message.
pub fn describe(cmd: &str, out: &Output) -> String {
    format!(
        "`{cmd}` exited with {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// Runs `argv` (in the current namespace) for at most `timeout`; never panics: a command
/// that cannot start reports exit status 127, as a shell would.
pub fn run_unchecked(argv: &[&str], timeout: Duration) -> Output {
    match Proc::try_spawn(argv) {
        Ok(p) => p.output_within(timeout),
        Err(e) => Output {
            status: ExitStatus::from_raw(127 << 8),
            stdout: Vec::new(),
            stderr: format!("cannot start `{}`: {e}", argv.join(" ")).into_bytes(),
        },
    }
}

/// Runs `argv` (in the current namespace); panics with its output unless it succeeds.
pub fn run(argv: &[&str]) -> Output {
    let out = run_unchecked(argv, EXEC_TIMEOUT);
    assert!(out.status.success(), "{}", describe(&argv.join(" "), &out));
    out
}
