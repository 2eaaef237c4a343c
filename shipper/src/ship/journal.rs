//! The window journal: `{spool}/{disk}.ship-window`.
//!
//! A point can only be published at its tag, but the spool must not have to
//! hold everything since the last tag: an agent whose spool fills up goes
//! to bitmap mode and refuses points until the spool drains, which it never
//! would if only tags let the shipper delete segments. So at the end of
//! each segment (its Seal) the shipper makes the chunks of the unpublished
//! window durable in the repository (packs, then an index), appends the
//! window entries read since the last append to this journal, fsyncs it,
//! and only then deletes the finished segments. A restarted shipper resumes
//! from the journal's cursor with the journal's window. Publishing a point
//! saves the published cursor first and removes the journal after.
//!
//! ```text
//! batch: "HRLWIN01" · count u64 · cursor seq u64 · cursor offset u64
//!        · window data bytes u64 · window new bytes u64
//!        · count × (chunk index u64 · kind u8 (0 zero, 1 stored) · id [32])
//!        · crc32 of everything before it in the batch, u32
//! ```
//!
//! A torn last batch (a crash while appending) is cut off on load: its
//! segments were not deleted, so the shipper reads them again.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hrl_format::Cursor;
use uuid::Uuid;

use crate::error::{Result, ShipError};
use crate::repo::manifest::ChunkRef;

const MAGIC: &[u8; 8] = b"HRLWIN01";
const HEAD: usize = 8 + 8 * 5;
const ENTRY: usize = 41;

pub fn path(spool: &Path, disk: &Uuid) -> PathBuf {
    spool.join(format!("{disk}.ship-window"))
}

/// A window restored from the journal.
#[derive(Debug, Default)]
pub struct Spilled {
    pub cursor: Cursor,
    pub map: BTreeMap<u64, ChunkRef>,
    pub data_bytes: u64,
    pub new_bytes: u64,
}

/// Appends a batch and fsyncs it (and the directory when it is new).
pub fn append(
    spool: &Path,
    disk: &Uuid,
    entries: &[(u64, ChunkRef)],
    cursor: Cursor,
    data_bytes: u64,
    new_bytes: u64,
) -> Result<()> {
    let p = path(spool, disk);
    let fresh = !p.exists();
    let mut b = Vec::with_capacity(HEAD + entries.len() * ENTRY + 4);
    b.extend_from_slice(MAGIC);
    for v in [entries.len() as u64, cursor.seq, cursor.offset, data_bytes, new_bytes] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for (idx, r) in entries {
        b.extend_from_slice(&idx.to_le_bytes());
        match r {
            ChunkRef::Zero => {
                b.push(0);
                b.extend_from_slice(&[0u8; 32]);
            }
            ChunkRef::Stored(id) => {
                b.push(1);
                b.extend_from_slice(id);
            }
        }
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&p)
        .map_err(|e| ShipError::io(&p, "open window journal", e))?;
    f.write_all(&b)
        .and_then(|_| f.sync_all())
        .map_err(|e| ShipError::io(&p, "append window journal", e))?;
    if fresh {
        hrl_format::sync_dir(spool)?;
    }
    Ok(())
}

/// The journaled window, if there is one newer than `published` (a
/// journal at or before the published cursor is left over from a crash
/// between saving the cursor and removing it, and is removed).
pub fn load(spool: &Path, disk: &Uuid, published: Cursor) -> Result<Option<Spilled>> {
    let p = path(spool, disk);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ShipError::io(&p, "read window journal", e)),
    };
    let mut s = Spilled::default();
    let mut at = 0usize;
    let mut good = 0usize;
    while bytes.len() >= at + HEAD + 4 {
        if &bytes[at..at + 8] != MAGIC {
            break;
        }
        let u = |o: usize| u64::from_le_bytes(bytes[at + o..at + o + 8].try_into().unwrap_or_default());
        let n = u(8) as usize;
        let Some(end) = n.checked_mul(ENTRY).and_then(|e| e.checked_add(at + HEAD)) else {
            break;
        };
        if bytes.len() < end + 4 {
            break;
        }
        let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().unwrap_or_default());
        if crc32fast::hash(&bytes[at..end]) != crc {
            break;
        }
        s.cursor = Cursor {
            seq: u(16),
            offset: u(24),
        };
        s.data_bytes = u(32);
        s.new_bytes = u(40);
        for e in bytes[at + HEAD..end].chunks_exact(ENTRY) {
            let idx = u64::from_le_bytes(e[..8].try_into().unwrap_or_default());
            let r = if e[8] == 0 {
                ChunkRef::Zero
            } else {
                let mut id = [0u8; 32];
                id.copy_from_slice(&e[9..41]);
                ChunkRef::Stored(id)
            };
            s.map.insert(idx, r);
        }
        at = end + 4;
        good = at;
    }
    if good < bytes.len() {
        tracing::warn!(journal = %p.display(), kept = good, dropped = bytes.len() - good, "window journal ends in a torn batch: cut off (its segments are read again)");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| ShipError::io(&p, "open window journal", e))?;
        f.set_len(good as u64)
            .and_then(|_| f.sync_all())
            .map_err(|e| ShipError::io(&p, "cut window journal", e))?;
    }
    if good == 0 || s.cursor <= published {
        remove(spool, disk)?;
        return Ok(None);
    }
    Ok(Some(s))
}

/// Removes the journal (after the point that contains its window is
/// published and the cursor saved).
pub fn remove(spool: &Path, disk: &Uuid) -> Result<()> {
    let p = path(spool, disk);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ShipError::io(&p, "remove window journal", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_a_torn_tail_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let disk = Uuid::new_v4();
        let c1 = Cursor { seq: 3, offset: 0 };
        append(
            d.path(),
            &disk,
            &[(1, ChunkRef::Zero), (2, ChunkRef::Stored([5; 32]))],
            c1,
            10,
            7,
        )
        .unwrap();
        let c2 = Cursor { seq: 4, offset: 0 };
        append(d.path(), &disk, &[(2, ChunkRef::Stored([6; 32]))], c2, 20, 9).unwrap();
        let s = load(d.path(), &disk, Cursor::default()).unwrap().unwrap();
        assert_eq!(s.cursor, c2);
        assert_eq!(s.map.len(), 2);
        assert_eq!(s.map[&2], ChunkRef::Stored([6; 32]));
        assert_eq!((s.data_bytes, s.new_bytes), (20, 9));
        // A torn third batch is cut off; the two good ones stay.
        let p = path(d.path(), &disk);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"HRLWIN01\x05\x00").unwrap();
        let s = load(d.path(), &disk, Cursor::default()).unwrap().unwrap();
        assert_eq!(s.cursor, c2);
        // Published past it: the journal is stale and removed.
        assert!(load(d.path(), &disk, c2).unwrap().is_none());
        assert!(!p.exists());
    }
}
