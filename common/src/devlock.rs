//! The device lock: `/run/hrl/dev-MAJ-MIN.lock`, held (exclusive `flock`)
//! by the hrl-agent that tracks the device and by an hrl-shipper while it
//! writes the device (restore, failover, failback), so neither ever works
//! on a device the other holds. The file holds the holder's pid. The kernel
//! drops the lock when the holder dies.

use std::path::{Path, PathBuf};

/// Directory of device locks.
pub const LOCK_DIR: &str = "/run/hrl";

/// The lock file of the device `major:minor` in `dir`.
pub fn lock_path(dir: &Path, major: u64, minor: u64) -> PathBuf {
    dir.join(format!("dev-{major}-{minor}.lock"))
}
