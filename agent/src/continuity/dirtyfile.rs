//! The dirty map saved at a clean stop (`<disk>.dirty` in the spool), so
//! the next start knows which chunks the stream still lacks.
//!
//! ```text
//! 0   8  magic "HRLDIRT1"
//! 8   4  chunk size (LE)
//! 12  8  chunks (LE)
//! 20 16  BLAKE3 (first 16 bytes) of the words that follow
//! 36  .. the map's 64-bit words, little-endian, chunk 0 = bit 0 of word 0
//! ```
//!
//! Written to a temporary name, fsynced and renamed; read in 1 MiB pieces
//! straight into the live map (no second copy of a 16 TiB disk's 32 MiB).

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};
use crate::tracking::dirty::DirtyMap;

const MAGIC: &[u8; 8] = b"HRLDIRT1";
const HEADER: usize = 36;
/// Words per read or write: 1 MiB.
const PIECE: usize = 1 << 17;

pub fn path(spool: &Path, name: &str) -> PathBuf {
    spool.join(format!("{name}.dirty"))
}

/// Saves `dirty` atomically.
pub fn save(spool: &Path, name: &str, dirty: &DirtyMap) -> Result<()> {
    let p = path(spool, name);
    let tmp = spool.join(format!(".{name}.dirty.tmp"));
    let mut h = blake3::Hasher::new();
    let n = dirty.word_count();
    let piece = |i0: usize| -> Vec<u8> {
        (i0..(i0 + PIECE).min(n))
            .flat_map(|i| dirty.word(i).to_le_bytes())
            .collect()
    };
    // The hash first (the words do not change: the disk is frozen or
    // unmounted and its events drained), then the file.
    for i0 in (0..n).step_by(PIECE) {
        h.update(&piece(i0));
    }
    let io = |op, e| AgentError::io(&tmp, op, e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    let mut head = Vec::with_capacity(HEADER);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&(dirty.chunk_size() as u32).to_le_bytes());
    head.extend_from_slice(&dirty.chunks().to_le_bytes());
    head.extend_from_slice(&h.finalize().as_bytes()[..16]);
    f.write_all(&head).map_err(|e| io("write", e))?;
    for i0 in (0..n).step_by(PIECE) {
        f.write_all(&piece(i0)).map_err(|e| io("write", e))?;
    }
    f.sync_all().map_err(|e| io("fsync", e))?;
    std::fs::rename(&tmp, &p).map_err(|e| AgentError::io(&p, "rename", e))?;
    hrl_format::sync_dir(spool)?;
    Ok(())
}

/// Marks in `dirty` every chunk the saved map has, checking its header
/// and hash first; a missing or damaged file is an error (the caller
/// resyncs). The file is removed once read: it is valid for one start.
pub fn load_into(spool: &Path, name: &str, dirty: &DirtyMap) -> std::result::Result<(), String> {
    let p = path(spool, name);
    let r = read_checked(&p, dirty);
    let _ = std::fs::remove_file(&p);
    r
}

fn read_checked(p: &Path, dirty: &DirtyMap) -> std::result::Result<(), String> {
    let fail = |what: &str| format!("{}: {what}", p.display());
    let mut f = std::fs::File::open(p).map_err(|e| fail(&format!("cannot open the saved dirty map: {e}")))?;
    let mut head = [0u8; HEADER];
    f.read_exact(&mut head)
        .map_err(|_| fail("the saved dirty map is truncated"))?;
    let chunk = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default()) as u64;
    let chunks = u64::from_le_bytes(head[12..20].try_into().unwrap_or_default());
    if &head[..8] != MAGIC || chunk != dirty.chunk_size() || chunks != dirty.chunks() {
        return Err(fail("the saved dirty map is for another geometry"));
    }
    let n = dirty.word_count();
    // Checked before any bit is applied: a damaged map marks nothing.
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; PIECE * 8];
    for pass in 0..2 {
        if pass == 1 {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(HEADER as u64))
                .map_err(|e| fail(&e.to_string()))?;
        }
        for i0 in (0..n).step_by(PIECE) {
            let k = (n - i0).min(PIECE);
            let b = &mut buf[..k * 8];
            f.read_exact(b).map_err(|_| fail("the saved dirty map is truncated"))?;
            if pass == 0 {
                h.update(b);
                continue;
            }
            for (j, w) in b.chunks_exact(8).enumerate() {
                dirty.or_word(i0 + j, u64::from_le_bytes(w.try_into().unwrap_or_default()));
            }
        }
        if pass == 0 && h.finalize().as_bytes()[..16] != head[20..36] {
            return Err(fail("the saved dirty map fails its checksum"));
        }
    }
    Ok(())
}
