//! One shipper per spool: an exclusive `flock` on `{spool}/hrl-shipper.lock`
//! (holding the holder's pid) for as long as a ship loop runs. Two shippers
//! on one spool would race on the cursor and the window journal.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Result, ShipError};

/// The lock's file name in the spool.
pub const LOCK_FILE: &str = "hrl-shipper.lock";

/// A held spool lock; released when dropped (or when the process dies).
pub struct SpoolLock {
    _file: File,
}

impl SpoolLock {
    /// Takes the lock, or refuses naming the shipper that holds it.
    pub fn acquire(spool: &Path) -> Result<Self> {
        let path = spool.join(LOCK_FILE);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| ShipError::io(&path, "open spool lock", e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            return Err(ShipError::Usage(format!(
                "{}: another hrl-shipper ships this spool (pid {}, lock {}); stop it first, one shipper per spool",
                spool.display(),
                holder.trim(),
                path.display()
            )));
        }
        f.set_len(0)
            .and_then(|_| f.rewind())
            .and_then(|_| write!(f, "{}", std::process::id()))
            .map_err(|e| ShipError::io(&path, "write spool lock", e))?;
        Ok(SpoolLock { _file: f })
    }
}
