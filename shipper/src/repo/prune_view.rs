//! The prune lock and mark as one process last read them (see
//! [`super::lock::state`]), held by the repository handle so every clone
//! of it (every ship loop of a process server) shares one read.

use std::time::{Duration, Instant};

/// The lock's time and the mark's version as last read, and when that
/// read began.
#[derive(Default)]
pub struct PruneView(pub(super) tokio::sync::Mutex<Option<(Instant, PruneState)>>);

/// What a shipper checks before a manifest.
#[derive(Clone, Debug, Default)]
pub struct PruneState {
    /// When the prune lock was taken (ns since the epoch), if it is held.
    pub lock_ns: Option<u64>,
    /// The version of prune's mark.
    pub pruned: Option<String>,
}

impl PruneState {
    /// The lock's age, if it is held.
    pub fn lock_age(&self) -> Option<Duration> {
        self.lock_ns
            .map(|t| Duration::from_nanos(hrl_format::now_ns().saturating_sub(t)))
    }
}
