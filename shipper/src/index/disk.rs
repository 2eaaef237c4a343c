//! The chunk index in a local redb file: chunk id → location, and the
//! names of the repository's index objects it holds, so a refresh reads
//! only index objects it has not seen. Memory is redb's page cache
//! ([`CACHE`]), whatever the repository's size.
//!
//! The file is a cache of the repository's index objects, never the truth:
//! it is rebuilt when missing, damaged, of another repository, or when an
//! index object it holds is gone (a prune replaced the indexes). Writes are
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

/// redb's page cache: the index's whole memory.
pub const CACHE: usize = 64 << 20;

/// More unseen index objects than this are loaded sorted (`bulk.rs`).
const BULK_OBJECTS: usize = 64;

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
        if let Some(id) = repo_id {
            let mut m = tx.open_table(META).map_err(e)?;
            m.insert("repo_id", id).map_err(|e| err(&self.path, "clear", e))?;
        }
        tx.open_table(CHUNKS).map_err(e)?;
        tx.open_table(SEEN).map_err(e)?;
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
            }
            tx.commit().map_err(|e| err(&self.path, "commit", e))?;
        }
        Ok(())
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
        let tx = self.db.begin_read().map_err(|e| err(&self.path, "read", e))?;
        let t = tx.open_table(CHUNKS).map_err(|e| err(&self.path, "open table", e))?;
        Ok(t.get(id)
            .map_err(|e| err(&self.path, "read", e))?
            .map(|g| decode(g.value())))
    }

    pub fn chunks(&self) -> Result<u64> {
        let tx = self.db.begin_read().map_err(|e| err(&self.path, "read", e))?;
        let t = tx.open_table(CHUNKS).map_err(|e| err(&self.path, "open table", e))?;
        t.len().map_err(|e| err(&self.path, "read", e))
    }

    /// Brings the file up to the repository's index objects: reads only
    /// those not seen yet; when one it holds is gone (a prune replaced the
    /// indexes), starts afresh. Returns (objects read, rebuilt).
    pub async fn refresh(&self, repo: &Repo) -> Result<(usize, bool)> {
        let listed: Vec<String> = repo.list("index").await?.into_iter().map(|(k, _)| k).collect();
        let seen: std::collections::HashSet<String> = self.seen()?.into_iter().collect();
        let set: std::collections::HashSet<&str> = listed.iter().map(String::as_str).collect();
        let rebuilt = seen.iter().any(|k| !set.contains(k.as_str()));
        if rebuilt {
            self.clear(Some(&repo.config.repo_id.to_string()))?;
        }
        let new: Vec<&String> = listed.iter().filter(|k| rebuilt || !seen.contains(*k)).collect();
        // Many objects at once (a first start, after a prune): sorted bulk
        // load; a few (the usual refresh): straight inserts.
        if new.len() > BULK_OBJECTS {
            let mut bulk = super::bulk::BulkLoader::new(&self.path)?;
            for key in &new {
                bulk.push(repo.load_index_object(key).await?)?;
            }
            bulk.finish(|e| self.insert(None, e))?;
            self.mark_seen(&new)?;
        } else {
            for key in &new {
                let entries = repo.load_index_object(key).await?;
                self.insert(Some(key), &entries)?;
            }
        }
        Ok((new.len(), rebuilt))
    }

    /// Fills the file from `entries` (the benchmark's synthetic index).
    pub fn bulk_load(&self, entries: impl Iterator<Item = (ChunkId, Location)>) -> Result<u64> {
        let mut bulk = super::bulk::BulkLoader::new(&self.path)?;
        bulk.push(entries)?;
        bulk.finish(|e| self.insert(None, e))
    }

    /// Records index object names as held, once their entries are in.
    fn mark_seen(&self, keys: &[&String]) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(|e| err(&self.path, "write", e))?;
        tx.set_durability(Durability::Immediate);
        {
            let mut s = tx.open_table(SEEN).map_err(|e| err(&self.path, "open table", e))?;
            for k in keys {
                s.insert(k.as_str(), ()).map_err(|e| err(&self.path, "insert", e))?;
            }
        }
        tx.commit().map_err(|e| err(&self.path, "commit", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
