//! Retrying etcd calmly: the doubling delay between attempts, and the rate limit on a
//! warning that says the same thing on every attempt.

use std::time::Duration;

use tokio::time::Instant;

/// First delay before retrying etcd after a failure; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between etcd retries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A repeated, unchanged warning is logged again after this long.
const REPEAT_LOG: Duration = Duration::from_secs(30);

/// The delay before the next etcd retry: [`MIN_BACKOFF`], doubling up to [`MAX_BACKOFF`].
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    /// A backoff that starts at [`MIN_BACKOFF`].
    pub(super) fn new() -> Backoff {
        Backoff { next: MIN_BACKOFF }
    }

    /// Starts again from [`MIN_BACKOFF`] (after a success).
    pub(super) fn reset(&mut self) {
        self.next = MIN_BACKOFF;
    }

    /// The delay to wait now; the one after it is twice as long, up to [`MAX_BACKOFF`].
    pub(super) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(MAX_BACKOFF);
        d
    }
}

/// Logs a recurring warning once per change of its text, and again every [`REPEAT_LOG`].
#[derive(Debug, Default)]
pub(super) struct RepeatLog {
    last: Option<(String, Instant)>,
}

impl RepeatLog {
    /// A log that has logged nothing yet (usable in a `static`).
    pub(super) const fn new() -> RepeatLog {
        RepeatLog { last: None }
    }

    /// Whether `msg` is due: new text, or the same text last logged [`REPEAT_LOG`] ago.
    pub(super) fn should_log(&mut self, msg: &str) -> bool {
        let now = Instant::now();
        match &self.last {
            Some((m, at)) if m == msg && now.duration_since(*at) < REPEAT_LOG => false,
            _ => {
                self.last = Some((msg.to_string(), now));
                true
            }
        }
    }

    /// Forgets the last warning, so the next one is logged whatever it says.
    pub(super) fn clear(&mut self) {
        self.last = None;
    }
}
