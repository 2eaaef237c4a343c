//! Files that hold secrets (a gateway's TLS key, a machine's identity, the
//! gateway's machine registry): created 0600 with `O_EXCL` or replaced
//! atomically, fsynced, and refused when others can read them.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Result, ShipError};

/// Refuses a secret file that group or others can read or write.
pub fn check_private(path: &Path) -> Result<()> {
    let md = std::fs::metadata(path).map_err(|e| ShipError::io(path, "stat", e))?;
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ShipError::Usage(format!(
            "{}: holds a secret but is readable by others (mode {mode:o}); chmod 600 it",
            path.display()
        )));
    }
    Ok(())
}

/// Creates `path` (it must not exist) with mode 0600 holding `bytes`.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ShipError::io(path, "create", e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| ShipError::io(path, "write", e))
}

/// Replaces `path` atomically (temp file 0600, fsync, rename, fsync of the
/// directory) with `bytes`.
pub fn replace_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| ShipError::io(path, "rename", e))?;
    hrl_format::sync_dir(dir)?;
    Ok(())
}

/// Reads a secret file after [`check_private`].
pub fn read_private(path: &Path) -> Result<Vec<u8>> {
    check_private(path)?;
    std::fs::read(path).map_err(|e| ShipError::io(path, "read", e))
}
