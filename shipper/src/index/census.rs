//! Which stored chunks the points reference, in bounded memory: `prune`
//! (which packs a kept point needs) and `check` (which references point
//! nowhere, which chunks are stored twice) join every index entry of the
//! repository with every reference of the points they look at. Both sides
//! go through one external sort ([`BulkLoader`]: runs of a million
//! records spilled in a temporary directory, merged in chunk id order),
//! so memory is one run whatever the repository's size, and the join
//! reads each side once, sequentially.
//!
//! A reference travels as a record with a length no chunk has
//! ([`REFERENCE`]): its disk and point in the pack field, its chunk index
//! in the offset.

use std::path::Path;

use uuid::Uuid;

use super::bulk::BulkLoader;
use crate::error::Result;
use crate::repo::crypto::ChunkId;
use crate::repo::pack::Location;

/// The length that marks a reference: a stored chunk is at most a few
/// times the chunk size, never 4 GiB.
const REFERENCE: u32 = u32::MAX;

/// A point's use of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference {
    pub disk: Uuid,
    pub seq: u64,
    /// The chunk's index on the disk.
    pub chunk: u64,
}

/// One chunk id and everything the join found for it.
#[derive(Debug)]
pub struct Group<'a> {
    pub id: ChunkId,
    /// Its stored copies (distinct locations; more than one: stored twice).
    pub copies: &'a [Location],
    /// The references pushed for it.
    pub references: &'a [Reference],
}

/// Index entries and references waiting to be joined.
pub struct Census {
    runs: BulkLoader,
}

impl Census {
    /// Spills in a temporary directory inside `work_dir`, removed with it.
    pub fn new(work_dir: &Path) -> Result<Self> {
        Ok(Census {
            runs: BulkLoader::in_dir(work_dir)?,
        })
    }

    /// Adds index entries (from an index object).
    pub fn entries(&mut self, entries: Vec<(ChunkId, Location)>) -> Result<()> {
        // A chunk whose length is the marker cannot exist; an index entry
        // claiming it is damaged and left out rather than taken for a
        // reference.
        self.runs.push(entries.into_iter().filter(|(_, l)| l.len != REFERENCE))
    }

    /// Adds a point's reference to chunk `id`.
    pub fn reference(&mut self, id: ChunkId, r: Reference) -> Result<()> {
        let mut pack = [0u8; 32];
        pack[..16].copy_from_slice(r.disk.as_bytes());
        pack[16..24].copy_from_slice(&r.seq.to_le_bytes());
        let l = Location {
            pack,
            offset: r.chunk,
            len: REFERENCE,
        };
        self.runs.push([(id, l)])
    }

    /// Hands `each` every chunk id pushed, in id order, with its copies and
    /// references.
    pub fn join(self, mut each: impl FnMut(Group) -> Result<()>) -> Result<()> {
        let mut id: Option<ChunkId> = None;
        let mut copies: Vec<Location> = Vec::new();
        let mut refs: Vec<Reference> = Vec::new();
        let mut flush = |id: ChunkId, copies: &mut Vec<Location>, refs: &mut Vec<Reference>| {
            copies.sort_by_key(|l| (l.pack, l.offset, l.len));
            copies.dedup();
            let r = each(Group {
                id,
                copies,
                references: refs,
            });
            copies.clear();
            refs.clear();
            r
        };
        self.runs.merge(|next, l| {
            if let Some(prev) = id.filter(|p| *p != next) {
                flush(prev, &mut copies, &mut refs)?;
            }
            id = Some(next);
            if l.len == REFERENCE {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&l.pack[16..24]);
                let mut disk = [0u8; 16];
                disk.copy_from_slice(&l.pack[..16]);
                refs.push(Reference {
                    disk: Uuid::from_bytes(disk),
                    seq: u64::from_le_bytes(seq),
                    chunk: l.offset,
                });
            } else {
                copies.push(l);
            }
            Ok(())
        })?;
        match id {
            Some(prev) => flush(prev, &mut copies, &mut refs),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_join_groups_copies_and_references_of_each_id() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Census::new(d.path()).unwrap();
        let id = |n: u8| *blake3::hash(&[n]).as_bytes();
        let loc = |p: u8| Location {
            pack: [p; 32],
            offset: p as u64 * 10,
            len: 100,
        };
        let disk = Uuid::from_bytes([9; 16]);
        let r = |seq, chunk| Reference { disk, seq, chunk };
        // 1: stored once, referenced twice; 2: stored twice (and listed
        // twice in one place), unreferenced; 3: referenced, stored nowhere.
        c.entries(vec![(id(1), loc(1)), (id(2), loc(2))]).unwrap();
        c.reference(id(1), r(5, 7)).unwrap();
        c.entries(vec![(id(2), loc(3)), (id(2), loc(2))]).unwrap();
        c.reference(id(3), r(6, 1 << 40)).unwrap();
        c.reference(id(1), r(6, 8)).unwrap();
        let mut got = std::collections::BTreeMap::new();
        c.join(|g| {
            let mut refs = g.references.to_vec();
            refs.sort_by_key(|r| r.seq);
            got.insert(g.id, (g.copies.to_vec(), refs));
            Ok(())
        })
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[&id(1)], (vec![loc(1)], vec![r(5, 7), r(6, 8)]));
        assert_eq!(got[&id(2)], (vec![loc(2), loc(3)], vec![]));
        assert_eq!(got[&id(3)], (vec![], vec![r(6, 1 << 40)]));
    }
}
