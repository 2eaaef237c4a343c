//! The map of captured chunk hashes: for every chunk, a 16-byte BLAKE3 of
//! the content the replication stream last carried for it. Resync reads
//! every chunk and emits `Data` only where the hash differs.
//!
//! Updates are staged and applied only after the spool data they describe
//! is durable ([`CapturedHashes::commit`] is called after an fsync of the
//! log), so a crash can never leave the map claiming content the stream
//! does not have. An all-zero entry means "never captured".

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};

pub type ChunkHash = [u8; 16];

/// Entries per cached page of the map file (4 KiB pages).
const PER_PAGE: u64 = 256;
/// Pages kept in memory: 1024 x 4 KiB = 4 MiB, whatever the disk's size
/// (the whole map is 256 MiB per TiB of disk at 64 KiB chunks).
const CACHE_PAGES: usize = 1024;

pub fn hash_chunk(data: &[u8]) -> ChunkHash {
    let h = blake3::hash(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    if out == [0u8; 16] {
        out[0] = 1; // keep zero for "never captured"
    }
    out
}

/// The map lives in its file; a bounded cache of its pages is kept in
/// memory, so the agent's memory does not grow with the disk. Reads that
/// miss the cache cost one 4 KiB pread per 256 chunks (16 MiB of disk).
pub struct CapturedHashes {
    file: File,
    path: PathBuf,
    chunks: u64,
    /// Cached pages of the file, with the tick they were last used.
    pages: HashMap<u64, (Box<[u8; 4096]>, u64)>,
    tick: u64,
    /// Captures appended since the last fsync, by chunk (the last wins).
    staged: HashMap<u64, ChunkHash>,
    /// Committed entries not yet written to the file.
    unsaved: BTreeMap<u64, ChunkHash>,
}

impl CapturedHashes {
    /// Opens (or creates, 0600) the map file for a device of `chunks`
    /// chunks. Nothing of it is read until asked for.
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
        Ok(CapturedHashes {
            file,
            path: path.into(),
            chunks,
            pages: HashMap::new(),
            tick: 0,
            staged: HashMap::new(),
            unsaved: BTreeMap::new(),
        })
    }

    /// The page holding chunk `c`'s entry, read on a miss; the least
    /// recently used page goes when the cache is full.
    fn page(&mut self, c: u64) -> Result<&[u8; 4096]> {
        let p = c / PER_PAGE;
        self.tick += 1;
        if !self.pages.contains_key(&p) {
            if self.pages.len() >= CACHE_PAGES {
                if let Some(old) = self.pages.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                    self.pages.remove(&old);
                }
            }
            let mut buf = Box::new([0u8; 4096]);
            let at = p * PER_PAGE * 16;
            let len = ((self.chunks - p * PER_PAGE).min(PER_PAGE) * 16) as usize;
            self.file
                .read_exact_at(&mut buf[..len], at)
                .map_err(|e| AgentError::io(&self.path, "read hash map", e))?;
            self.pages.insert(p, (buf, 0));
        }
        let tick = self.tick;
        let e = self
            .pages
            .get_mut(&p)
            .ok_or_else(|| AgentError::Internal("hash map page vanished".into()))?;
        e.1 = tick;
        Ok(&e.0)
    }

    /// The committed hash of chunk `c`.
    pub fn get(&mut self, c: u64) -> Result<Option<ChunkHash>> {
        if c >= self.chunks {
            return Ok(None);
        }
        if let Some(h) = self.unsaved.get(&c) {
            return Ok(Some(*h));
        }
        let off = ((c % PER_PAGE) * 16) as usize;
        let mut h = [0u8; 16];
        h.copy_from_slice(&self.page(c)?[off..off + 16]);
        Ok((h != [0u8; 16]).then_some(h))
    }

    /// Whether `h` equals what is committed for chunk `c`, taking staged
    /// (not yet durable) captures into account last-wins.
    pub fn matches(&mut self, c: u64, h: &ChunkHash) -> Result<bool> {
        if let Some(s) = self.staged.get(&c) {
            return Ok(s == h);
        }
        Ok(self.get(c)? == Some(*h))
    }

    /// Records that a `Data` record with this hash was appended (not yet
    /// durable).
    pub fn stage(&mut self, c: u64, h: ChunkHash) {
        self.staged.insert(c, h);
    }

    /// The log was fsynced: staged entries become committed.
    pub fn commit(&mut self) {
        for (c, h) in self.staged.drain() {
            if c < self.chunks {
                self.unsaved.insert(c, h);
            }
        }
    }

    /// Writes committed entries to the file (and into cached pages) and
    /// fdatasyncs it.
    pub fn save(&mut self) -> Result<()> {
        if self.unsaved.is_empty() {
            return Ok(());
        }
        for (&c, h) in &self.unsaved {
            self.file
                .write_all_at(h, c * 16)
                .map_err(|e| AgentError::io(&self.path, "write hash map", e))?;
            if let Some((page, _)) = self.pages.get_mut(&(c / PER_PAGE)) {
                let off = ((c % PER_PAGE) * 16) as usize;
                page[off..off + 16].copy_from_slice(h);
            }
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
        self.pages.clear();
        self.chunks = chunks;
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
        assert!(m.matches(3, &h).unwrap());
        assert!(m.get(3).unwrap().is_none());
        drop(m);
        let mut m = CapturedHashes::open(&p, 10).unwrap();
        assert!(m.get(3).unwrap().is_none(), "uncommitted entry must not persist");
        // Captured twice before an fsync: the last capture wins.
        let first = hash_chunk(b"first");
        m.stage(3, first);
        m.stage(3, h);
        assert!(m.matches(3, &h).unwrap() && !m.matches(3, &first).unwrap());
        m.commit();
        assert_eq!(m.get(3).unwrap(), Some(h), "committed, not yet saved");
        m.save().unwrap();
        let mut m = CapturedHashes::open(&p, 10).unwrap();
        assert_eq!(m.get(3).unwrap(), Some(h));
    }

    #[test]
    fn a_map_larger_than_the_cache_reads_back_every_entry() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h");
        // 3000 pages: three times the cache, and a short last page.
        let chunks = PER_PAGE * CACHE_PAGES as u64 * 3 + 17;
        let mut m = CapturedHashes::open(&p, chunks).unwrap();
        let every = 97;
        for c in (0..chunks).step_by(every) {
            m.stage(c, hash_chunk(&c.to_le_bytes()));
        }
        let last = chunks - 1;
        m.stage(last, hash_chunk(&last.to_le_bytes()));
        m.commit();
        m.save().unwrap();
        for c in (0..chunks).step_by(every) {
            assert_eq!(m.get(c).unwrap(), Some(hash_chunk(&c.to_le_bytes())), "chunk {c}");
            if c + 1 < last {
                assert_eq!(m.get(c + 1).unwrap(), None);
            }
        }
        assert!(m.pages.len() <= CACHE_PAGES);
        assert_eq!(m.get(chunks).unwrap(), None);
        let mut m = CapturedHashes::open(&p, chunks).unwrap();
        assert_eq!(
            m.get(last).unwrap(),
            Some(hash_chunk(&last.to_le_bytes())),
            "in the short last page"
        );
    }
}
