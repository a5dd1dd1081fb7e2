//! Keeping the state file ([`crate::store::state`]) in step with the store: written when
//! what it holds changed (the table, our lease), at most every few seconds (longer for large
//! tables, whose file is larger), in the background so a slow disk never holds up the watch,
//! and once more when the store stops. A write that fails is logged (at most every 30 s) and
//! retried; the old file stays whole meanwhile.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use super::Runner;
use crate::store::retry::RepeatLog;
use crate::store::state::SavedState;

/// The shortest time between two writes.
const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Whether and when the state file is written.
#[derive(Debug)]
pub(super) struct StateKeeper {
    path: Option<PathBuf>,
    /// Something changed since the last write.
    dirty: bool,
    written_at: Option<Instant>,
    errors: RepeatLog,
}

impl StateKeeper {
    /// A keeper writing to `path` (`None`: no state file).
    pub(super) fn new(path: Option<PathBuf>) -> StateKeeper {
        StateKeeper {
            path,
            dirty: false,
            written_at: None,
            errors: RepeatLog::default(),
        }
    }

    /// What the file holds changed.
    pub(super) fn changed(&mut self) {
        self.dirty = true;
    }

    /// When the next write is due, if one is: [`MIN_INTERVAL`] after the last, plus a
    /// second per 10,000 leases (a 65,000-lease state is about 15 MB).
    pub(super) fn due(&self, leases: usize) -> Option<Instant> {
        if !self.dirty || self.path.is_none() {
            return None;
        }
        let spacing = MIN_INTERVAL + Duration::from_secs((leases / 10_000) as u64);
        Some(self.written_at.map_or_else(Instant::now, |at| at + spacing))
    }
}

impl Runner {
    /// The state as the store holds it now.
    pub(super) fn capture_state(&self) -> SavedState {
        SavedState::capture(
            &self.keys,
            &self.config,
            &self.config_text,
            &self.own,
            &self.peers,
            self.revision,
        )
    }

    /// Writes the state file when due (`now`: whenever something changed, as at stop).
    pub(super) async fn save_state(&mut self, now: bool) {
        let Some(path) = self.state.path.clone() else {
            return;
        };
        let due = self.state.due(self.peers.len());
        if !due.is_some_and(|at| now || at <= Instant::now()) {
            return;
        }
        let state = self.capture_state();
        self.state.dirty = false;
        self.state.written_at = Some(Instant::now());
        let write = tokio::task::spawn_blocking(move || state.write(&path)).await;
        match write {
            Ok(Ok(())) => self.state.errors.clear(),
            Ok(Err(e)) => {
                self.state.dirty = true;
                let msg = crate::error::Chain(&e).to_string();
                if self.state.errors.should_log(&msg) {
                    tracing::warn!(error = %msg, "writing the state file failed; a restart without etcd will not find this state (retrying)");
                }
            }
            Err(e) => tracing::warn!(error = %e, "writing the state file panicked"),
        }
    }
}
