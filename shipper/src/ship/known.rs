//! The repository's chunk index as a shipper knows it: its own, or one
//! shared by every ship loop of a process server, so content two machines
//! send is stored once (each loop's new chunks are seen by the others as
//! soon as their index object is durable) and the gateway holds one copy
//! of the index, not one per machine.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::RwLock;

use crate::error::Result;
use crate::repo::crypto::ChunkId;
use crate::repo::lock;
use crate::repo::pack::Location;
use crate::repo::Repo;

/// An index several ship loops share, and the version of prune's mark it
/// was loaded after.
pub struct SharedIndex {
    /// A reload holds the write lock from listing to replacing, so no
    /// entry another loop adds meanwhile can be lost.
    inner: RwLock<(HashMap<ChunkId, Location>, Option<String>)>,
}

impl SharedIndex {
    /// Loads the repository's index.
    pub async fn load(repo: &Repo) -> Result<Arc<Self>> {
        // The mark first: a prune that ends while the index loads shows
        // as a change at the next point (a reload too many, never one
        // too few).
        let version = lock::pruned_version(repo).await?;
        let map = repo.load_index().await?;
        Ok(Arc::new(SharedIndex {
            inner: RwLock::new((map, version)),
        }))
    }

    /// Chunks indexed.
    pub async fn chunks(&self) -> usize {
        self.inner.read().await.0.len()
    }
}

impl std::fmt::Debug for SharedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedIndex")
    }
}

/// One ship loop's view: the (possibly shared) index and the version of
/// prune's mark this loop last checked its points against.
pub(crate) struct Known {
    shared: Arc<SharedIndex>,
    seen: Option<String>,
    /// The index is this loop's alone (see [`Known::after_failure`]).
    own: bool,
}

impl Known {
    /// A loop's own index, loaded now.
    pub(super) async fn load(repo: &Repo) -> Result<Self> {
        let mut k = Self::shared(SharedIndex::load(repo).await?).await;
        k.own = true;
        Ok(k)
    }

    /// A loop on an index shared with others.
    pub(super) async fn shared(shared: Arc<SharedIndex>) -> Self {
        let seen = shared.inner.read().await.1.clone();
        Known {
            shared,
            seen,
            own: false,
        }
    }

    /// Which of `ids` are indexed (one lock for the batch).
    pub(super) async fn contains_each(&self, ids: &[ChunkId]) -> Vec<bool> {
        let g = self.shared.inner.read().await;
        ids.iter().map(|id| g.0.contains_key(id)).collect()
    }

    /// Adds entries whose index object is durable.
    pub(super) async fn add(&self, entries: impl Iterator<Item = (ChunkId, Location)>) {
        self.shared.inner.write().await.0.extend(entries);
    }

    /// Whether a prune finished since this loop last checked: one HEAD,
    /// where listing every index object at every point cost the store a
    /// listing that grows with the repository.
    pub(super) async fn changed(&self, repo: &Repo) -> Result<bool> {
        Ok(lock::pruned_version(repo).await? != self.seen)
    }

    /// Loads the index again unless another loop on the same shared index
    /// already did after the same prune.
    pub(super) async fn reload(&mut self, repo: &Repo) -> Result<()> {
        let mut g = self.shared.inner.write().await;
        let version = lock::pruned_version(repo).await?;
        if g.1 != version {
            g.0 = repo.load_index().await?;
            g.1 = version.clone();
        }
        self.seen = version;
        Ok(())
    }

    /// After an endpoint failure: a loop with its own index loads it again
    /// to find what the failed attempt made durable (else it is stored
    /// again: harmless). A shared index is left alone: a store outage
    /// would otherwise have every machine's loop load the whole index.
    pub(super) async fn after_failure(&mut self, repo: &Repo) {
        if !self.own {
            return;
        }
        match repo.load_index().await {
            Ok(map) => self.shared.inner.write().await.0 = map,
            Err(e) => tracing::debug!(error = %e, "index not reloaded after the failure"),
        }
    }
}
