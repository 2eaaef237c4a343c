//! One shipper per spool: an exclusive `flock` on `{spool}/hrl-shipper.lock`
//! (holding the holder's pid) for as long as a ship loop runs. Two shippers
//! on one spool would race on the cursor and the window journal.

use std::path::Path;

use hrl_common::pidlock::{LockError, PidLock};

use crate::error::{Result, ShipError};

/// The lock's file name in the spool.
pub const LOCK_FILE: &str = "hrl-shipper.lock";

/// A held spool lock; released when dropped (or when the process dies).
pub struct SpoolLock {
    _lock: PidLock,
}

impl SpoolLock {
    /// Takes the lock, or refuses naming the shipper that holds it.
    pub fn acquire(spool: &Path) -> Result<Self> {
        let path = spool.join(LOCK_FILE);
        match PidLock::acquire(&path) {
            Ok(l) => Ok(SpoolLock { _lock: l }),
            Err(LockError::Held(holder)) => Err(ShipError::Usage(format!(
                "{}: another hrl-shipper ships this spool (pid {holder}, lock {}); stop it first, one shipper per spool",
                spool.display(),
                path.display()
            ))),
            Err(LockError::Io(e)) => Err(ShipError::io(&path, "open spool lock", e)),
        }
    }
}
