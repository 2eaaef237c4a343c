//! One agent per device: an exclusive `flock` on `/run/hrl/dev-MAJ-MIN.lock`
//! held for the agent's lifetime. The kernel drops it when the process
//! dies, so a killed agent never blocks its successor.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};
use crate::tracking::device::BlockDevice;

pub use hrl_common::devlock::LOCK_DIR;

/// A held device lock.
pub struct DeviceLock {
    _file: File,
    pub path: PathBuf,
}

impl DeviceLock {
    pub fn acquire(dev: &BlockDevice) -> Result<Self> {
        Self::acquire_in(Path::new(LOCK_DIR), dev)
    }

    pub fn acquire_in(dir: &Path, dev: &BlockDevice) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, "create lock directory", e))?;
        let path = hrl_common::devlock::lock_path(dir, dev.dev.0 as u64, dev.dev.1 as u64);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AgentError::io(&path, "open lock", e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(AgentError::AlreadyTracked {
                device: dev.path.clone(),
                lock: path,
                holder: if holder.is_empty() {
                    String::new()
                } else {
                    format!(" by pid {holder}")
                },
            });
        }
        let _ = f.set_len(0);
        let _ = f.rewind();
        let _ = write!(f, "{}", std::process::id());
        Ok(DeviceLock { _file: f, path })
    }
}
