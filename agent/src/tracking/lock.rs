//! One agent per device: an exclusive `flock` on `/run/hrl/dev-MAJ-MIN.lock`
//! held for the agent's lifetime. The kernel drops it when the process
//! dies, so a killed agent never blocks its successor.

use std::path::{Path, PathBuf};

use hrl_common::pidlock::{LockError, PidLock};

use crate::error::{AgentError, Result};
use crate::tracking::device::BlockDevice;

pub use hrl_common::devlock::LOCK_DIR;

/// A held device lock.
pub struct DeviceLock {
    _lock: PidLock,
    pub path: PathBuf,
}

impl DeviceLock {
    pub fn acquire(dev: &BlockDevice) -> Result<Self> {
        Self::acquire_in(Path::new(LOCK_DIR), dev)
    }

    pub fn acquire_in(dir: &Path, dev: &BlockDevice) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, "create lock directory", e))?;
        let path = hrl_common::devlock::lock_path(dir, dev.dev.0 as u64, dev.dev.1 as u64);
        match PidLock::acquire(&path) {
            Ok(l) => Ok(DeviceLock { _lock: l, path }),
            Err(LockError::Held(holder)) => Err(AgentError::AlreadyTracked {
                device: dev.path.clone(),
                lock: path,
                holder: if holder.is_empty() {
                    String::new()
                } else {
                    format!(" by pid {holder}")
                },
            }),
            Err(LockError::Io(e)) => Err(AgentError::io(&path, "open lock", e)),
        }
    }
}
