//! Filling an index file from scratch in bounded memory: entries come in
//! the repository's order (random ids), are sorted in runs of [`RUN`]
//! spilled to temporary files beside the index, and are merged into the
//! file in id order, so each B-tree page is written once instead of every
//! entry landing on a random page of a file larger than the cache.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::error::{Result, ShipError};
use crate::repo::crypto::ChunkId;
use crate::repo::pack::Location;

/// Entries sorted in memory at a time: 76 MiB.
const RUN: usize = 1 << 20;
/// Bytes of one spilled entry: id ‖ pack ‖ offset ‖ length.
const REC: usize = 76;
/// Entries per write transaction while merging.
const TXN: usize = 1 << 20;

/// Sorted runs of entries waiting to be merged into an index file.
pub struct BulkLoader {
    dir: tempfile::TempDir,
    runs: Vec<std::path::PathBuf>,
    buf: Vec<(ChunkId, Location)>,
    run: usize,
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl Fn(std::io::Error) -> ShipError + 'a {
    move |e| ShipError::io(path, op, e)
}

fn put(w: &mut impl Write, id: &ChunkId, l: &Location) -> std::io::Result<()> {
    w.write_all(id)?;
    w.write_all(&l.pack)?;
    w.write_all(&l.offset.to_le_bytes())?;
    w.write_all(&l.len.to_le_bytes())
}

fn get(r: &mut impl Read) -> std::io::Result<Option<(ChunkId, Location)>> {
    let mut b = [0u8; REC];
    match r.read_exact(&mut b) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut id = [0u8; 32];
    let mut pack = [0u8; 32];
    id.copy_from_slice(&b[..32]);
    pack.copy_from_slice(&b[32..64]);
    let mut o = [0u8; 8];
    o.copy_from_slice(&b[64..72]);
    let mut n = [0u8; 4];
    n.copy_from_slice(&b[72..]);
    let l = Location {
        pack,
        offset: u64::from_le_bytes(o),
        len: u32::from_le_bytes(n),
    };
    Ok(Some((id, l)))
}

impl BulkLoader {
    /// Runs are spilled in a temporary directory beside `index_file`.
    pub fn new(index_file: &Path) -> Result<Self> {
        Self::in_dir(index_file.parent().unwrap_or(Path::new(".")))
    }

    /// Runs are spilled in a temporary directory inside `parent`.
    pub fn in_dir(parent: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(".hrl-index-load-")
            .tempdir_in(parent)
            .map_err(io(parent, "create a temporary directory"))?;
        Ok(BulkLoader {
            dir,
            runs: Vec::new(),
            buf: Vec::new(),
            run: RUN,
        })
    }

    pub fn push(&mut self, entries: impl IntoIterator<Item = (ChunkId, Location)>) -> Result<()> {
        for e in entries {
            if self.buf.capacity() == 0 {
                // At once: growing by doubling would hold the old and the
                // new buffer together (a run and a half).
                self.buf.reserve_exact(self.run);
            }
            self.buf.push(e);
            if self.buf.len() >= self.run {
                self.spill()?;
            }
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.buf.sort_unstable_by_key(|e| e.0);
        let p = self.dir.path().join(format!("run-{}", self.runs.len()));
        let f = File::create(&p).map_err(io(&p, "create"))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        for (id, l) in self.buf.drain(..) {
            put(&mut w, &id, &l).map_err(io(&p, "write"))?;
        }
        w.flush().map_err(io(&p, "write"))?;
        self.runs.push(p);
        Ok(())
    }

    /// Merges every run in id order, handing `insert` batches of entries
    /// (one write transaction each). Returns the entries written (an id
    /// pushed several times counts once; any of its locations is kept:
    /// each is a valid copy).
    pub fn finish(self, mut insert: impl FnMut(&[(ChunkId, Location)]) -> Result<()>) -> Result<u64> {
        let mut out: Vec<(ChunkId, Location)> = Vec::with_capacity(TXN);
        let mut written = 0u64;
        self.merge(|id, l| {
            if out.last().is_some_and(|(last, _)| *last == id) {
                out.pop();
                written -= 1;
            }
            out.push((id, l));
            written += 1;
            if out.len() >= TXN {
                // Keep the newest id back: a later run may hold it again.
                let keep = out.pop();
                insert(&out)?;
                out.clear();
                out.extend(keep);
            }
            Ok(())
        })?;
        insert(&out)?;
        Ok(written)
    }

    /// Hands `each` every entry pushed, in id order (the entries of one id
    /// one after another, in no particular order among themselves).
    pub fn merge(mut self, mut each: impl FnMut(ChunkId, Location) -> Result<()>) -> Result<()> {
        self.spill()?;
        let mut readers = Vec::new();
        for p in &self.runs {
            let f = File::open(p).map_err(io(p, "open"))?;
            // Small buffers: one per run, and a run is 76 MiB.
            readers.push(BufReader::with_capacity(64 << 10, f));
        }
        // (id, run) of each run's next entry; its location in `heads`.
        let mut heap = BinaryHeap::new();
        let mut heads: Vec<Option<Location>> = vec![None; readers.len()];
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(e) = get(r).map_err(io(&self.runs[i], "read"))? {
                heap.push(Reverse((e.0, i)));
                heads[i] = Some(e.1);
            }
        }
        while let Some(Reverse((id, i))) = heap.pop() {
            let Some(l) = heads[i].take() else { continue };
            each(id, l)?;
            if let Some(e) = get(&mut readers[i]).map_err(io(&self.runs[i], "read"))? {
                heap.push(Reverse((e.0, i)));
                heads[i] = Some(e.1);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_in_id_order_and_the_last_entry_of_an_id_wins() {
        let d = tempfile::tempdir().unwrap();
        let mut b = BulkLoader::new(&d.path().join("i.redb")).unwrap();
        b.run = 7;
        let loc = |n: u64| Location {
            pack: [n as u8; 32],
            offset: n,
            len: n as u32,
        };
        let mut want = std::collections::BTreeMap::new();
        for n in 0..40u64 {
            // ids repeat every 25 entries, across runs.
            let id = *blake3::hash(&(n % 25).to_le_bytes()).as_bytes();
            b.push([(id, loc(n))]).unwrap();
            want.insert(id, loc(n));
        }
        let mut got = Vec::new();
        let n = b
            .finish(|e| {
                got.extend_from_slice(e);
                Ok(())
            })
            .unwrap();
        assert_eq!(n, 25);
        assert_eq!(got, want.into_iter().collect::<Vec<_>>());
    }
}
