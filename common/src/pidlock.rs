//! An exclusive `flock` on a file that holds the holder's pid: the device
//! lock (agent, and a shipper writing a device) and the spool lock (one
//! shipper per spool). The kernel drops it when the holder dies, so a
//! killed process never blocks its successor.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct PidLock {
    _file: File,
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it; its pid as the file says (may be empty).
    #[error("held by pid {0}")]
    Held(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl PidLock {
    /// Takes the lock at `path` (created 0600), writing this process's pid.
    pub fn acquire(path: &Path) -> Result<Self, LockError> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            return Err(LockError::Held(holder.trim().to_string()));
        }
        f.set_len(0)?;
        f.rewind()?;
        write!(f, "{}", std::process::id())?;
        Ok(PidLock { _file: f })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        let first = PidLock::acquire(&p).unwrap();
        match PidLock::acquire(&p) {
            Err(LockError::Held(pid)) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("{other:?}"),
        }
        drop(first);
        PidLock::acquire(&p).unwrap();
    }
}
