//! The cursor file of a disk (`{spool}/{disk}.ship-cursor.json`): where
//! the next unpublished record starts. It advances only after a manifest is
//! durable (promise 2), and a restart resumes from it (plus the window
//! journal).

use std::path::{Path, PathBuf};

use hrl_format::Cursor;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::journal::{self, Spilled};
use crate::error::{Result, ShipError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CursorFile {
    pub cursor: Cursor,
}

fn cursor_path(spool: &Path, disk: &Uuid) -> PathBuf {
    spool.join(format!("{disk}.ship-cursor.json"))
}

fn load_cursor(spool: &Path, disk: &Uuid) -> Result<Cursor> {
    let p = cursor_path(spool, disk);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice::<CursorFile>(&b)
            .map(|c| c.cursor)
            .map_err(|e| ShipError::corrupt(p.display().to_string(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
        Err(e) => Err(ShipError::io(p, "read cursor", e)),
    }
}

/// Where to follow from: after the window journal when there is one newer
/// than the published cursor (with its window), else the published cursor.
pub(super) fn resume_point(spool: &Path, disk: &Uuid) -> Result<(Cursor, Spilled)> {
    let c = load_cursor(spool, disk)?;
    Ok(match journal::load(spool, disk, c)? {
        Some(j) => (j.cursor, j),
        None => (c, Spilled::default()),
    })
}

/// Writes the cursor atomically and durably.
pub(super) fn save_cursor(spool: &Path, disk: &Uuid, c: &CursorFile) -> Result<()> {
    use std::io::Write;
    let p = cursor_path(spool, disk);
    let tmp = spool.join(format!(".{disk}.ship-cursor.tmp"));
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        // Spool files are 0600 like the segments they describe.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ShipError::io(&tmp, "create", e))?
    };
    let body = serde_json::to_vec(c).map_err(|e| ShipError::Internal(format!("encode cursor: {e}")))?;
    f.write_all(&body)
        .and_then(|_| f.sync_all())
        .map_err(|e| ShipError::io(&tmp, "write cursor", e))?;
    std::fs::rename(&tmp, &p).map_err(|e| ShipError::io(&p, "rename cursor", e))?;
    hrl_format::sync_dir(spool)?;
    Ok(())
}

/// The newest segment of `disk` wholly published from `spool`: the ship
/// cursor is past it (`None` before the first point). A forwarder with
/// several gateways deletes a segment only then: until a point is
/// published, another gateway may need the segment to take the disk over.
pub fn published_through(spool: &Path, disk: &Uuid) -> Result<Option<u64>> {
    Ok(load_cursor(spool, disk)?.seq.checked_sub(1))
}

/// Forgets where `disk` stands in `spool` (its cursor and window journal):
/// a process server whose cached copy of the disk is stale (another one
/// shipped the disk since) starts it again from what the forwarder sends.
pub fn forget_disk(spool: &Path, disk: &Uuid) -> Result<()> {
    let p = cursor_path(spool, disk);
    match std::fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ShipError::io(p, "remove cursor", e)),
    }
    journal::remove(spool, disk)
}
