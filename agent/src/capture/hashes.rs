//! The map of captured chunk hashes: for every chunk, a 16-byte BLAKE3 of
//! the content the replication stream last carried for it. Resync reads
//! every chunk and emits `Data` only where the hash differs.
//!
//! Updates are staged and applied only after the spool data they describe
//! is durable ([`CapturedHashes::commit`] is called after an fsync of the
//! log), so a crash can never leave the map claiming content the stream
//! does not have. An all-zero entry means "never captured".

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};

pub type ChunkHash = [u8; 16];

pub fn hash_chunk(data: &[u8]) -> ChunkHash {
    let h = blake3::hash(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    if out == [0u8; 16] {
        out[0] = 1; // keep zero for "never captured"
    }
    out
}

pub struct CapturedHashes {
    file: File,
    path: PathBuf,
    map: Vec<ChunkHash>,
    /// Captures appended since the last fsync, by chunk (the last wins).
    staged: HashMap<u64, ChunkHash>,
    /// Chunks whose committed entry is not yet written to the file.
    unsaved: Vec<u64>,
}

impl CapturedHashes {
    /// Opens (or creates, 0600) the map file for a device of `chunks` chunks.
    pub fn open(path: &Path, chunks: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| AgentError::io(path, "open hash map", e))?;
        let want = chunks * 16;
        let have = file.metadata().map_err(|e| AgentError::io(path, "stat", e))?.len();
        if have != want {
            file.set_len(want)
                .map_err(|e| AgentError::io(path, "size hash map", e))?;
        }
        let mut bytes = vec![0u8; want as usize];
        file.read_exact_at(&mut bytes, 0)
            .map_err(|e| AgentError::io(path, "read hash map", e))?;
        let map = bytes
            .chunks_exact(16)
            .map(|c| {
                let mut h = [0u8; 16];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(CapturedHashes {
            file,
            path: path.into(),
            map,
            staged: HashMap::new(),
            unsaved: Vec::new(),
        })
    }

    /// The committed hash of chunk `c`.
    pub fn get(&self, c: u64) -> Option<&ChunkHash> {
        self.map.get(c as usize).filter(|h| **h != [0u8; 16])
    }

    /// Whether `h` equals what is committed for chunk `c`, taking staged
    /// (not yet durable) captures into account last-wins.
    pub fn matches(&self, c: u64, h: &ChunkHash) -> bool {
        if let Some(s) = self.staged.get(&c) {
            return s == h;
        }
        self.get(c) == Some(h)
    }

    /// Records that a `Data` record with this hash was appended (not yet
    /// durable).
    pub fn stage(&mut self, c: u64, h: ChunkHash) {
        self.staged.insert(c, h);
    }

    /// The log was fsynced: staged entries become committed.
    pub fn commit(&mut self) {
        for (c, h) in self.staged.drain() {
            if let Some(slot) = self.map.get_mut(c as usize) {
                *slot = h;
                self.unsaved.push(c);
            }
        }
    }

    /// Writes committed entries to the file and fdatasyncs it.
    pub fn save(&mut self) -> Result<()> {
        if self.unsaved.is_empty() {
            return Ok(());
        }
        self.unsaved.sort_unstable();
        self.unsaved.dedup();
        for &c in &self.unsaved {
            self.file
                .write_all_at(&self.map[c as usize], c * 16)
                .map_err(|e| AgentError::io(&self.path, "write hash map", e))?;
        }
        self.file
            .sync_data()
            .map_err(|e| AgentError::io(&self.path, "fsync hash map", e))?;
        self.unsaved.clear();
        Ok(())
    }

    /// Forgets everything (device resized: chunk geometry changed).
    pub fn reset(&mut self, chunks: u64) -> Result<()> {
        self.staged.clear();
        self.unsaved.clear();
        self.map = vec![[0u8; 16]; chunks as usize];
        self.file
            .set_len(0)
            .and_then(|_| self.file.set_len(chunks * 16))
            .map_err(|e| AgentError::io(&self.path, "reset hash map", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_entries_count_only_after_commit_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h");
        let mut m = CapturedHashes::open(&p, 10).unwrap();
        let h = hash_chunk(b"abc");
        m.stage(3, h);
        assert!(m.matches(3, &h));
        assert!(m.get(3).is_none());
        drop(m);
        let mut m = CapturedHashes::open(&p, 10).unwrap();
        assert!(m.get(3).is_none(), "uncommitted entry must not persist");
        // Captured twice before an fsync: the last capture wins.
        let first = hash_chunk(b"first");
        m.stage(3, first);
        m.stage(3, h);
        assert!(m.matches(3, &h) && !m.matches(3, &first));
        m.commit();
        m.save().unwrap();
        let m = CapturedHashes::open(&p, 10).unwrap();
        assert_eq!(m.get(3), Some(&h));
    }
}
