//! systemd's watchdog (`WatchdogSec=`): the node pings it (`WATCHDOG=1`) only while every
//! data-path thread makes progress, so a worker wedged without exiting (a syscall that never
//! returns, a loop that never yields) stops the pings and systemd kills and restarts the
//! node, which then forwards again at once from its persisted TUN and state file.
//!
//! A worker thread's heartbeat advances whenever it handles a batch or wakes from an idle
//! wait, which it does at least every [`crate::dataplane::IDLE_BEAT`]; one that has not
//! advanced for [`STALL_AFTER`] is wedged. The pings are sent from the control runtime's
//! once-a-second tick, so a wedged runtime stops them too.

use std::time::{Duration, Instant};

/// How long a worker thread's heartbeat may stand still before it counts as wedged: a few
/// idle wake-ups, well under any sensible `WatchdogSec=`.
pub const STALL_AFTER: Duration = Duration::from_secs(4);

/// The watchdog interval a takeover inherited from the process it took over from.
static INHERITED: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Keeps the watchdog interval of the process this one took over from (systemd gives a
/// process started by `systemctl reload` none of its own).
pub fn inherit_interval(interval: Duration) {
    let _ = INHERITED.set(interval);
}

/// The watchdog interval to ping at: systemd's for this process, else the inherited one.
pub fn interval() -> Option<Duration> {
    interval_from_env().or_else(|| INHERITED.get().copied())
}

/// The watchdog interval systemd asked for, if it asked this process: `WATCHDOG_USEC`, for
/// us when `WATCHDOG_PID` is unset or ours (as `sd_watchdog_enabled` decides).
pub fn interval_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// A worker thread whose heartbeat stood still too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// Its index in start order.
    pub thread: usize,
    /// How long it has not advanced.
    pub for_: Duration,
}

/// Tracks the heartbeats and says whether every thread still makes progress.
#[derive(Debug, Default)]
pub struct Watchdog {
    /// Each thread's last heartbeat and when it last changed.
    seen: Vec<(u64, Instant)>,
}

impl Watchdog {
    /// Takes the heartbeats read `now`: `Ok` while every thread advanced within
    /// [`STALL_AFTER`], else the thread that stalls longest.
    pub fn check(&mut self, beats: &[u64], now: Instant) -> Result<(), Stalled> {
        if self.seen.len() != beats.len() {
            // Threads started anew (a takeover or a restart of the data path): start over.
            self.seen = beats.iter().map(|&b| (b, now)).collect();
            return Ok(());
        }
        let mut worst: Option<Stalled> = None;
        for (i, (&beat, seen)) in beats.iter().zip(self.seen.iter_mut()).enumerate() {
            if beat != seen.0 {
                *seen = (beat, now);
                continue;
            }
            let still = now.saturating_duration_since(seen.1);
            if still >= STALL_AFTER && worst.as_ref().is_none_or(|w| still > w.for_) {
                worst = Some(Stalled {
                    thread: i,
                    for_: still,
                });
            }
        }
        worst.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_only_while_every_worker_makes_progress() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = Watchdog::default();
        assert_eq!(w.check(&[1, 1], at(0)), Ok(()));
        // Both advance (busy, or waking idle once a second): fed.
        for s in 1..10 {
            assert_eq!(w.check(&[1 + s, 5 * s], at(s)), Ok(()));
        }
        // Thread 1 stops: still fed until it has stood still for STALL_AFTER.
        assert_eq!(w.check(&[11, 45], at(10)), Ok(()));
        assert_eq!(w.check(&[12, 45], at(12)), Ok(()));
        let stalled = w.check(&[13, 45], at(9 + STALL_AFTER.as_secs()));
        assert_eq!(
            stalled,
            Err(Stalled {
                thread: 1,
                for_: STALL_AFTER
            })
        );
        assert!(w.check(&[14, 45], at(20)).is_err());
        // It moves again: fed again.
        assert_eq!(w.check(&[15, 46], at(21)), Ok(()));
        // Another set of threads (a takeover) starts afresh.
        assert_eq!(w.check(&[0, 0, 0], at(40)), Ok(()));
    }

    #[test]
    fn the_interval_is_systemds_for_this_process_only() {
        // The environment is the process's; each case sets what it reads.
        std::env::set_var("WATCHDOG_USEC", "10000000");
        std::env::remove_var("WATCHDOG_PID");
        assert_eq!(interval_from_env(), Some(Duration::from_secs(10)));
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        assert_eq!(interval_from_env(), Some(Duration::from_secs(10)));
        std::env::set_var("WATCHDOG_PID", "1");
        assert_eq!(interval_from_env(), None);
        std::env::remove_var("WATCHDOG_PID");
        std::env::set_var("WATCHDOG_USEC", "0");
        assert_eq!(interval_from_env(), None);
        std::env::remove_var("WATCHDOG_USEC");
        assert_eq!(interval_from_env(), None);
    }
}
