//! The repository's chunk index as this shipper knows it.

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::repo::crypto::ChunkId;
use crate::repo::pack::Location;
use crate::repo::Repo;

/// The repository's index as this shipper knows it, and the index objects
/// it came from (a prune replaces them).
pub(crate) struct Known {
    pub(super) index: HashMap<ChunkId, Location>,
    pub(super) keys: HashSet<String>,
}

impl Known {
    pub(super) async fn load(repo: &Repo) -> Result<Self> {
        let keys = repo.list("index").await?.into_iter().map(|(k, _)| k).collect();
        Ok(Known {
            index: repo.load_index().await?,
            keys,
        })
    }

    /// Whether an index object this shipper knew is gone.
    pub(super) async fn changed(&self, repo: &Repo) -> Result<bool> {
        let now: HashSet<String> = repo.list("index").await?.into_iter().map(|(k, _)| k).collect();
        Ok(self.keys.iter().any(|k| !now.contains(k)))
    }
}
