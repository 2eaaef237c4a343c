//! The chunk index in a local redb file: chunk id → location, and the
//! names of the repository's index objects it holds, so a refresh reads
//! only index objects it has not seen. Memory is redb's page cache
//! ([`CACHE`]), whatever the repository's size.
//!
//! The file is a cache of the repository's index objects, never the truth:
//! it is rebuilt when missing, damaged or of another repository. When an
//! index object it holds is gone (a prune replaced it), it drops the
//! entries of every pack no listed object names any more (it records
//! each object's packs), which are the packs the prune deleted. Writes are
//! committed without fsync (a crash loses at most the newest entries and
//! their index object names together, which the next refresh reads again).

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::error::{Result, ShipError};
use crate::repo::crypto::ChunkId;
use crate::repo::pack::Location;
use crate::repo::Repo;

/// chunk id → pack id (32) ‖ offset (u64 LE) ‖ length (u32 LE).
const CHUNKS: TableDefinition<&[u8; 32], &[u8; 44]> = TableDefinition::new("chunks");
/// Names of the index objects whose entries are in `chunks`.
const SEEN: TableDefinition<&str, ()> = TableDefinition::new("seen");
/// `repo_id`: the repository the file indexes.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// Index object name → the distinct packs it lists (32 bytes each), so
/// a refresh after a prune drops only the entries of packs no listed
/// object names any more instead of starting afresh.
const OBJECT_PACKS: TableDefinition<&str, &[u8]> = TableDefinition::new("object_packs");

/// redb's page cache: the index's whole memory.
pub const CACHE: usize = 64 << 20;

/// More unseen index objects than this are loaded sorted (`bulk.rs`).
const BULK_OBJECTS: usize = 64;

/// Index objects (bytes) below which a file always follows a prune
/// instead of starting afresh (see `refresh`).
const FOLLOW_LIMIT: u64 = 64 << 20;

/// Entries per write transaction while loading index objects.
const BATCH: usize = 1 << 20;

pub struct DiskIndex {
    db: Database,
    path: PathBuf,
}

fn err(path: &Path, op: &str, e: impl std::fmt::Display) -> ShipError {
    ShipError::Index {
        path: path.to_path_buf(),
        why: format!("{op}: {e}"),
    }
}

fn encode(l: &Location) -> [u8; 44] {
    let mut v = [0u8; 44];
    v[..32].copy_from_slice(&l.pack);
    v[32..40].copy_from_slice(&l.offset.to_le_bytes());
    v[40..].copy_from_slice(&l.len.to_le_bytes());
    v
}

fn decode(v: &[u8; 44]) -> Location {
    let mut pack = [0u8; 32];
    pack.copy_from_slice(&v[..32]);
    let mut o = [0u8; 8];
    o.copy_from_slice(&v[32..40]);
    let mut l = [0u8; 4];
    l.copy_from_slice(&v[40..]);
    Location {
        pack,
        offset: u64::from_le_bytes(o),
        len: u32::from_le_bytes(l),
    }
}

/// The distinct packs of `entries`, concatenated.
fn packs_of(entries: &[(ChunkId, Location)]) -> Vec<u8> {
    let mut ps: Vec<[u8; 32]> = entries.iter().map(|(_, l)| l.pack).collect();
    ps.sort_unstable();
    ps.dedup();
    ps.concat()
}

impl DiskIndex {
    /// Opens (or creates) the file for `repo_id`; a file that cannot be
    /// opened or belongs to another repository is started afresh.
    pub fn open(path: &Path, repo_id: &str) -> Result<Self> {
        let open = || redb::Builder::new().set_cache_size(CACHE).create(path);
        let db = match open() {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "chunk index file unusable: rebuilding it from the repository");
                std::fs::remove_file(path).map_err(|e| ShipError::io(path, "remove damaged index", e))?;
                open().map_err(|e| err(path, "create", e))?
            }
        };
        let idx = DiskIndex {
            db,
            path: path.to_path_buf(),
        };
        if idx.repo_id()?.as_deref() != Some(repo_id) {
            idx.clear(Some(repo_id))?;
        }
        Ok(idx)
    }

    fn repo_id(&self) -> Result<Option<String>> {
        let tx = self.db.begin_read().map_err(|e| err(&self.path, "read", e))?;
        let t = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(err(&self.path, "open table", e)),
        };
        let v = t.get("repo_id").map_err(|e| err(&self.path, "read", e))?;
        Ok(v.map(|g| g.value().to_string()))
    }

    /// Empties the file (and records the repository it is for).
    pub fn clear(&self, repo_id: Option<&str>) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(|e| err(&self.path, "write", e))?;
        tx.set_durability(Durability::Immediate);
        let e = |e| err(&self.path, "clear", e);
        tx.delete_table(CHUNKS).map_err(e)?;
        tx.delete_table(SEEN).map_err(e)?;
        tx.delete_table(OBJECT_PACKS).map_err(e)?;
        if let Some(id) = repo_id {
            let mut m = tx.open_table(META).map_err(e)?;
            m.insert("repo_id", id).map_err(|e| err(&self.path, "clear", e))?;
        }
        tx.open_table(CHUNKS).map_err(e)?;
        tx.open_table(SEEN).map_err(e)?;
        tx.open_table(OBJECT_PACKS).map_err(e)?;
        tx.commit().map_err(|e| err(&self.path, "commit", e))
    }

    /// Index object names already held.
    pub fn seen(&self) -> Result<Vec<String>> {
        let tx = self.db.begin_read().map_err(|e| err(&self.path, "read", e))?;
        let t = tx.open_table(SEEN).map_err(|e| err(&self.path, "open table", e))?;
        let mut v = Vec::new();
        for r in t.iter().map_err(|e| err(&self.path, "read", e))? {
            let (k, _) = r.map_err(|e| err(&self.path, "read", e))?;
            v.push(k.value().to_string());
        }
        Ok(v)
    }

    /// Adds the entries of index object `key` (and records it as seen).
    pub fn insert(&self, key: Option<&str>, entries: &[(ChunkId, Location)]) -> Result<()> {
        // An index object without entries is still recorded as seen.
        let parts: Vec<&[(ChunkId, Location)]> = match entries.is_empty() {
            true => vec![entries],
            false => entries.chunks(BATCH).collect(),
        };
        for (i, part) in parts.into_iter().enumerate() {
            let mut tx = self.db.begin_write().map_err(|e| err(&self.path, "write", e))?;
            tx.set_durability(Durability::Eventual);
            {
                let mut t = tx.open_table(CHUNKS).map_err(|e| err(&self.path, "open table", e))?;
                for (id, loc) in part {
                    t.insert(id, &encode(loc)).map_err(|e| err(&self.path, "insert", e))?;
                }
            }
            // The name with the last batch: a crash before it leaves the
            // object unseen, so it is read again.
            if let Some(k) = key.filter(|_| (i + 1) * BATCH >= entries.len()) {
                let mut s = tx.open_table(SEEN).map_err(|e| err(&self.path, "open table", e))?;
                s.insert(k, ()).map_err(|e| err(&self.path, "insert", e))?;
                let mut o = tx
                    .open_table(OBJECT_PACKS)
                    .map_err(|e| err(&self.path, "open table", e))?;
                o.insert(k, packs_of(entries).as_slice())
                    .map_err(|e| err(&self.path, "insert", e))?;
            }
            tx.commit().map_err(|e| err(&self.path, "commit", e))?;
        }
        Ok(())
    }

    /// Adds entries sorted by id, skipping those already held as they are
    /// (after a prune most entries of its new objects are): an unchanged
    /// page is then not copied. Looking up in id order touches each leaf
    /// once.
    fn insert_changed(&self, entries: &[(ChunkId, Location)]) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(|e| err(&self.path, "write", e))?;
        tx.set_durability(Durability::Immediate);
        {
            let mut t = tx.open_table(CHUNKS).map_err(|e| err(&self.path, "open table", e))?;
            for (id, loc) in entries {
                let v = encode(loc);
                let same = t
                    .get(id)
                    .map_err(|e| err(&self.path, "read", e))?
                    .is_some_and(|g| *g.value() == v);
                if !same {
                    t.insert(id, &v).map_err(|e| err(&self.path, "insert", e))?;
                }
            }
        }
        tx.commit().map_err(|e| err(&self.path, "commit", e))
    }

    /// Which of `ids` are held (one read transaction).
    pub fn contains_each(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        let tx = self.db.begin_read().map_err(|e| err(&self.path, "read", e))?;
        let t = tx.open_table(CHUNKS).map_err(|e| err(&self.path, "open table", e))?;
        ids.iter()
            .map(|id| Ok(t.get(id).map_err(|e| err(&self.path, "read", e))?.is_some()))
            .collect()
    }

    /// Where each of `ids` is (one read transaction).
    pub fn get_each(&self, ids: &[ChunkId]) -> Result<Vec<Option<Location>>> {
        let tx = self.db.begin_read().map_err(|e| err(&self.path, "read", e))?;
        let t = tx.open_table(CHUNKS).map_err(|e| err(&self.path, "open table", e))?;
        ids.iter()
            .map(|id| {
                Ok(t.get(id)
                    .map_err(|e| err(&self.path, "read", e))?
                    .map(|g| decode(g.value())))
            })
            .collect()
    }

    pub fn get(&self, id: &ChunkId) -> Result<Option<Location>> {
        Ok(self.get_each(std::slice::from_ref(id))?.pop().flatten())
    }

    pub fn chunks(&self) -> Result<u64> {
        let tx = self.db.begin_read().map_err(|e| err(&self.path, "read", e))?;
        let t = tx.open_table(CHUNKS).map_err(|e| err(&self.path, "open table", e))?;
        t.len().map_err(|e| err(&self.path, "read", e))
    }

    /// Brings the file up to the repository's index objects: reads only
    /// those not seen yet. When one it holds is gone (a prune replaced
    /// it), the entries of packs that no listed object names any more are
    /// dropped (the packs a prune deletes); it starts afresh instead when
    /// over a quarter of a large index is new (cheaper), or when it does
    /// not know which packs an object names (a file written before it
    /// recorded them). Returns (objects read, rebuilt).
    pub async fn refresh(&self, repo: &Repo) -> Result<(usize, bool)> {
        let sized = repo.list("index").await?;
        let listed: Vec<String> = sized.iter().map(|(k, _)| k.clone()).collect();
        let seen: std::collections::HashSet<String> = self.seen()?.into_iter().collect();
        let set: std::collections::HashSet<&str> = listed.iter().map(String::as_str).collect();
        let gone: Vec<&String> = seen.iter().filter(|k| !set.contains(k.as_str())).collect();
        // Following costs a scan of the file and a copy of every page it
        // changes: past a quarter of a large index new, starting afresh
        // (a sorted load) is cheaper (50 M entries: 236 s afresh; following
        // a prune that replaced every object wrote over 100 GB).
        let all: u64 = sized.iter().map(|(_, n)| n).sum();
        let unseen: u64 = sized.iter().filter(|(k, _)| !seen.contains(k)).map(|(_, n)| n).sum();
        let rebuilt = !gone.is_empty()
            && ((all > FOLLOW_LIMIT && unseen * 4 > all) || {
                let known = self.object_packs()?;
                seen.iter().any(|k| !known.contains_key(k))
            });
        if rebuilt {
            self.clear(Some(&repo.config.repo_id.to_string()))?;
        }
        let new: Vec<String> = listed
            .iter()
            .filter(|k| rebuilt || !seen.contains(*k))
            .cloned()
            .collect();
        // Many objects at once (a first start, a prune that replaced
        // many, the objects other shippers wrote since the last refresh):
        // sorted bulk load; a few: straight inserts. Either way read a few
        // at a time: one after another, 1 260 small objects on a busy store
        // took minutes, with this shipper's publishing waiting on them.
        if new.len() > BULK_OBJECTS {
            let mut bulk = super::bulk::BulkLoader::new(&self.path)?;
            let mut packs = Vec::with_capacity(new.len());
            repo.each_index_object(&new, |_, entries| {
                packs.push(packs_of(&entries));
                bulk.push(entries)
            })
            .await?;
            // Into an empty file plain inserts; else skip what it holds.
            let fresh = rebuilt || seen.is_empty();
            bulk.finish(|e| match fresh {
                true => self.insert(None, e),
                false => self.insert_changed(e),
            })?;
            self.mark_seen(&new, &packs)?;
        } else {
            repo.each_index_object(&new, |i, entries| self.insert(Some(&new[i]), &entries))
                .await?;
        }
        if !rebuilt && !gone.is_empty() {
            self.forget(&gone, &listed)?;
        }
        Ok((new.len(), rebuilt))
    }

    /// Every recorded object's packs.
    fn object_packs(&self) -> Result<std::collections::HashMap<String, Vec<[u8; 32]>>> {
        let tx = self.db.begin_read().map_err(|e| err(&self.path, "read", e))?;
        let t = match tx.open_table(OBJECT_PACKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Default::default()),
            Err(e) => return Err(err(&self.path, "open table", e)),
        };
        let mut m = std::collections::HashMap::new();
        for r in t.iter().map_err(|e| err(&self.path, "read", e))? {
            let (k, v) = r.map_err(|e| err(&self.path, "read", e))?;
            let packs = v.value().chunks_exact(32).filter_map(|c| c.try_into().ok()).collect();
            m.insert(k.value().to_string(), packs);
        }
        Ok(m)
    }

    /// Drops the objects `gone` and the entries of every pack they named
    /// that no object of `listed` names (one write transaction: a reader
    /// sees the entries before or after, never half).
    fn forget(&self, gone: &[&String], listed: &[String]) -> Result<()> {
        let known = self.object_packs()?;
        let live: std::collections::HashSet<[u8; 32]> =
            listed.iter().filter_map(|k| known.get(k)).flatten().copied().collect();
        let dead: std::collections::HashSet<[u8; 32]> = gone
            .iter()
            .filter_map(|k| known.get(*k))
            .flatten()
            .filter(|p| !live.contains(*p))
            .copied()
            .collect();
        // One transaction per first byte of the ids: one over the whole
        // table would keep every page it copies until it commits (a file
        // of 50 M entries grew by over 20 GB). A reader may see some
        // ranges done and others not: a stale entry is then still there,
        // as before the refresh, and a shipper's publish after a prune
        // checks its chunks only once this returned.
        if !dead.is_empty() {
            for b in 0..=255u8 {
                let mut lo = [0u8; 32];
                lo[0] = b;
                let mut hi = [0u8; 32];
                hi[0] = b.wrapping_add(1);
                let mut tx = self.db.begin_write().map_err(|e| err(&self.path, "write", e))?;
                tx.set_durability(Durability::Immediate);
                {
                    let mut c = tx.open_table(CHUNKS).map_err(|e| err(&self.path, "open table", e))?;
                    let keep = |_: &[u8; 32], v: &[u8; 44]| !dead.contains(&decode(v).pack);
                    match b {
                        255 => c.retain_in::<&[u8; 32], _>((&lo).., keep),
                        _ => c.retain_in::<&[u8; 32], _>((&lo)..(&hi), keep),
                    }
                    .map_err(|e| err(&self.path, "forget", e))?;
                }
                tx.commit().map_err(|e| err(&self.path, "commit", e))?;
            }
        }
        let mut tx = self.db.begin_write().map_err(|e| err(&self.path, "write", e))?;
        tx.set_durability(Durability::Immediate);
        {
            let e = |e| err(&self.path, "forget", e);
            let mut s = tx.open_table(SEEN).map_err(e)?;
            let mut o = tx.open_table(OBJECT_PACKS).map_err(e)?;
            for k in gone {
                s.remove(k.as_str()).map_err(|e| err(&self.path, "forget", e))?;
                o.remove(k.as_str()).map_err(|e| err(&self.path, "forget", e))?;
            }
        }
        tx.commit().map_err(|e| err(&self.path, "commit", e))?;
        tracing::info!(path = %self.path.display(), objects = gone.len(), packs_dropped = dead.len(), "chunk index: dropped what a prune replaced");
        Ok(())
    }

    /// Fills the file from `entries` (the benchmark's synthetic index).
    pub fn bulk_load(&self, entries: impl Iterator<Item = (ChunkId, Location)>) -> Result<u64> {
        let mut bulk = super::bulk::BulkLoader::new(&self.path)?;
        bulk.push(entries)?;
        bulk.finish(|e| self.insert(None, e))
    }

    /// Records index object names (and their packs) as held, once their
    /// entries are in.
    fn mark_seen(&self, keys: &[String], packs: &[Vec<u8>]) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(|e| err(&self.path, "write", e))?;
        tx.set_durability(Durability::Immediate);
        {
            let mut s = tx.open_table(SEEN).map_err(|e| err(&self.path, "open table", e))?;
            let mut o = tx
                .open_table(OBJECT_PACKS)
                .map_err(|e| err(&self.path, "open table", e))?;
            for (k, p) in keys.iter().zip(packs) {
                s.insert(k.as_str(), ()).map_err(|e| err(&self.path, "insert", e))?;
                o.insert(k.as_str(), p.as_slice())
                    .map_err(|e| err(&self.path, "insert", e))?;
            }
        }
        tx.commit().map_err(|e| err(&self.path, "commit", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sorted_load_into_a_full_file_keeps_what_is_held_and_changes_what_differs() {
        let d = tempfile::tempdir().unwrap();
        let i = DiskIndex::open(&d.path().join("i.redb"), "r1").unwrap();
        let loc = |n: u8| Location {
            pack: [n; 32],
            offset: n as u64,
            len: 100,
        };
        i.insert(Some("index/a"), &[([1; 32], loc(1)), ([2; 32], loc(2))])
            .unwrap();
        i.insert_changed(&[([1; 32], loc(1)), ([2; 32], loc(9)), ([3; 32], loc(3))])
            .unwrap();
        assert_eq!(i.chunks().unwrap(), 3);
        let got = i.get_each(&[[1; 32], [2; 32], [3; 32], [4; 32]]).unwrap();
        assert_eq!(got, vec![Some(loc(1)), Some(loc(9)), Some(loc(3)), None]);
    }

    #[test]
    fn entries_survive_reopening_and_another_repository_starts_afresh() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("i.redb");
        let loc = Location {
            pack: [7; 32],
            offset: 1 << 40,
            len: 65_000,
        };
        {
            let i = DiskIndex::open(&p, "r1").unwrap();
            i.insert(Some("index/a"), &[([1; 32], loc), ([2; 32], loc)]).unwrap();
            assert_eq!(i.contains_each(&[[1; 32], [3; 32]]).unwrap(), vec![true, false]);
        }
        let i = DiskIndex::open(&p, "r1").unwrap();
        assert_eq!(i.chunks().unwrap(), 2);
        assert_eq!(i.get(&[2; 32]).unwrap(), Some(loc));
        assert_eq!(i.seen().unwrap(), vec!["index/a".to_string()]);
        drop(i);
        let i = DiskIndex::open(&p, "r2").unwrap();
        assert_eq!((i.chunks().unwrap(), i.seen().unwrap().len()), (0, 0));
        drop(i);
        std::fs::write(&p, b"not a database").unwrap();
        let i = DiskIndex::open(&p, "r2").unwrap();
        assert_eq!(i.chunks().unwrap(), 0);
    }
}
