//! The chunk index a shipper dedups against: chunk id → location of every
//! chunk the repository holds. In memory (a map loaded from every index
//! object: about 100-160 bytes per chunk) or, for process servers and
//! `run --repo`, in a local redb file whose memory is bounded by its page
//! cache however large the repository grows (`disk.rs`).
//!
//! Owns: nothing of the repository's format (index objects are read
//! through `crate::repo`); the file is a cache, rebuilt from the
//! repository whenever it cannot be trusted.

pub mod bulk;
pub mod census;
pub mod disk;

use std::collections::HashMap;
use std::path::Path;

pub use disk::DiskIndex;

use crate::error::Result;
use crate::repo::crypto::ChunkId;
use crate::repo::pack::Location;
use crate::repo::Repo;

pub enum ChunkIndex {
    Memory(HashMap<ChunkId, Location>),
    Disk(DiskIndex),
}

impl ChunkIndex {
    /// Loads the repository's index: into memory, or into the file at
    /// `file` (only index objects it has not seen are read).
    pub async fn load(repo: &Repo, file: Option<&Path>) -> Result<Self> {
        match file {
            None => Ok(ChunkIndex::Memory(repo.load_index().await?)),
            Some(p) => {
                let d = DiskIndex::open(p, &repo.config.repo_id.to_string())?;
                let started = std::time::Instant::now();
                let (read, rebuilt) = d.refresh(repo).await?;
                tracing::info!(file = %p.display(), index_objects_read = read, rebuilt, chunks = d.chunks()?, seconds = format!("{:.1}", started.elapsed().as_secs_f64()), "chunk index opened");
                Ok(ChunkIndex::Disk(d))
            }
        }
    }

    /// Which of `ids` are indexed.
    pub fn contains_each(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        match self {
            ChunkIndex::Memory(m) => Ok(ids.iter().map(|id| m.contains_key(id)).collect()),
            ChunkIndex::Disk(d) => d.contains_each(ids),
        }
    }

    /// Where each of `ids` is stored, if indexed.
    pub fn get_each(&self, ids: &[ChunkId]) -> Result<Vec<Option<Location>>> {
        match self {
            ChunkIndex::Memory(m) => Ok(ids.iter().map(|id| m.get(id).copied()).collect()),
            ChunkIndex::Disk(d) => d.get_each(ids),
        }
    }

    /// Adds the entries of the index object `key`, durable in the store.
    pub fn add(&mut self, key: Option<&str>, entries: Vec<(ChunkId, Location)>) -> Result<()> {
        match self {
            ChunkIndex::Memory(m) => {
                m.extend(entries);
                Ok(())
            }
            ChunkIndex::Disk(d) => d.insert(key, &entries),
        }
    }

    /// Catches up with the repository after a prune or a failure: the map
    /// is loaded again; the file reads what it has not seen and drops the
    /// entries of the packs a prune deleted.
    pub async fn reload(&mut self, repo: &Repo) -> Result<()> {
        match self {
            ChunkIndex::Memory(m) => *m = repo.load_index().await?,
            ChunkIndex::Disk(d) => {
                d.refresh(repo).await?;
            }
        }
        Ok(())
    }

    /// Learns the chunks other shippers (other process servers) indexed
    /// since: the file reads the index objects it has not seen; the map
    /// is left alone (a full load would cost a listing and every object).
    /// Takes `&self`: lookups go on meanwhile (one that misses a chunk
    /// being loaded stores it again, never wrongly).
    pub async fn refresh(&self, repo: &Repo) -> Result<usize> {
        match self {
            ChunkIndex::Memory(_) => Ok(0),
            ChunkIndex::Disk(d) => Ok(d.refresh(repo).await?.0),
        }
    }

    pub fn chunks(&self) -> Result<u64> {
        match self {
            ChunkIndex::Memory(m) => Ok(m.len() as u64),
            ChunkIndex::Disk(d) => d.chunks(),
        }
    }
}
