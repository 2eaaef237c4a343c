//! The repository's chunk index as a shipper knows it: its own, or one
//! shared by every ship loop of a process server, so content two machines
//! send is stored once (each loop's new chunks are seen by the others as
//! soon as their index object is durable) and the gateway holds one copy
//! of the index, not one per machine.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::RwLock;

use crate::error::Result;
use crate::index::ChunkIndex;
use crate::repo::crypto::ChunkId;
use crate::repo::lock;
use crate::repo::pack::Location;
use crate::repo::Repo;

/// An index several ship loops share, and the version of prune's mark it
/// was loaded after.
pub struct SharedIndex {
    /// A reload holds the write lock from listing to replacing, so no
    /// entry another loop adds meanwhile can be lost.
    inner: RwLock<(ChunkIndex, Option<String>)>,
    /// When index objects other shippers wrote were last looked for.
    refreshed: std::sync::Mutex<Instant>,
    /// A periodic refresh is under way in its own task.
    refreshing: AtomicBool,
}

/// How often a process server reads the index objects other shippers
/// (other process servers) wrote since: their chunks are then not stored
/// again. Until then a chunk stored concurrently elsewhere may
/// be stored twice (counted by `check`), never wrongly.
pub const REFRESH: Duration = Duration::from_secs(60);

/// A periodic refresh is spaced at least this many times its own
/// duration from the next (a shipper spends at most a twentieth of its
/// time reading other shippers' index objects).
const REFRESH_SPACING: u32 = 20;

impl SharedIndex {
    /// Loads the repository's index, into memory or the file `file`.
    pub async fn load(repo: &Repo, file: Option<&Path>) -> Result<Arc<Self>> {
        // The mark first: a prune that ends while the index loads shows
        // as a change at the next point (a reload too many, never one
        // too few).
        let version = lock::pruned_version(repo).await?;
        let index = ChunkIndex::load(repo, file).await?;
        Ok(Arc::new(SharedIndex {
            inner: RwLock::new((index, version)),
            refreshed: std::sync::Mutex::new(Instant::now()),
            refreshing: AtomicBool::new(false),
        }))
    }

    /// Chunks indexed.
    pub async fn chunks(&self) -> Result<u64> {
        self.inner.read().await.0.chunks()
    }

    /// Where each of `ids` is stored, from this index once it has read the
    /// index objects written since its last look (a process server's
    /// restore for a machine: lookups in its index file instead of reading
    /// every index object). None when one is not in it (an index being
    /// rebuilt after a prune; a map, which learns only its own chunks):
    /// the caller then reads the index objects.
    pub async fn locations(&self, repo: &Repo, ids: &[ChunkId]) -> Result<Option<HashMap<ChunkId, Location>>> {
        self.refresh(repo, Duration::ZERO).await?;
        let g = self.inner.read().await;
        let mut out = HashMap::with_capacity(ids.len());
        for batch in ids.chunks(4096) {
            for (id, l) in batch.iter().zip(g.0.get_each(batch)?) {
                let Some(l) = l else { return Ok(None) };
                out.insert(*id, l);
            }
        }
        Ok(Some(out))
    }

    /// When due (at most every [`REFRESH`]), starts reading the index
    /// objects written elsewhere since the last look in a task of its own
    /// and returns at once: the ship loops go on publishing meanwhile (a
    /// loop that waited for the read, on a busy store, held its machine's
    /// points back for as long as the read took).
    pub fn refresh_in_background(self: &Arc<Self>, repo: &Repo) {
        let due = self.refreshed.lock().unwrap_or_else(|p| p.into_inner()).elapsed() >= REFRESH;
        if !due || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (running, repo) = (Refreshing(self.clone()), repo.clone());
        tokio::spawn(async move {
            if let Err(e) = running.0.refresh(&repo, REFRESH).await {
                tracing::warn!(error = %e, "could not read index objects written elsewhere; trying again later");
            }
        });
    }

    /// Reads the index objects written elsewhere unless that was done
    /// within `gap`.
    async fn refresh(&self, repo: &Repo, gap: Duration) -> Result<()> {
        let start = Instant::now();
        {
            let mut t = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
            if t.elapsed() < gap {
                return Ok(());
            }
            *t = start;
        }
        // Under the read lock: lookups and additions go on while the
        // repository is listed and new index objects are read (a reload
        // after a prune takes the write lock and waits for this).
        let n = self.inner.read().await.0.refresh(repo).await?;
        if n > 0 {
            tracing::debug!(index_objects = n, "chunk index: read index objects written elsewhere");
        }
        // The next periodic look waits at least REFRESH_SPACING times as
        // long as this one took: with many shippers on one busy store each
        // reading everyone's objects every minute, the reads were the
        // store's whole load and every loop waited on its own.
        let took = start.elapsed();
        let next = (start + took * REFRESH_SPACING).checked_sub(REFRESH);
        let mut t = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
        *t = next.map_or(start, |n| n.max(start));
        Ok(())
    }
}

/// A background refresh under way; the next may start once it is dropped
/// (however the task ends).
struct Refreshing(Arc<SharedIndex>);

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
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
    pub(super) async fn load(repo: &Repo, file: Option<&Path>) -> Result<Self> {
        let mut k = Self::shared(SharedIndex::load(repo, file).await?).await;
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
    pub(super) async fn contains_each(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        self.shared.inner.read().await.0.contains_each(ids)
    }

    /// Adds the entries of the index object `key`, durable in the store.
    /// A file takes them under the read lock (its writes are serialized
    /// by redb), so a refresh under way does not hold up publishing; the
    /// map needs the write lock.
    pub(super) async fn add(&self, key: &str, entries: impl Iterator<Item = (ChunkId, Location)>) -> Result<()> {
        let entries: Vec<_> = entries.collect();
        if let ChunkIndex::Disk(d) = &self.shared.inner.read().await.0 {
            return d.insert(Some(key), &entries);
        }
        self.shared.inner.write().await.0.add(Some(key), entries)
    }

    /// See [`SharedIndex::refresh_in_background`]; a process server's
    /// loops only. A local shipper reads other shippers' index objects at
    /// start, when it takes a lease and after a prune, not every minute:
    /// with many local shippers on one repository each reading everyone's
    /// objects, the reads grow with the square of the fleet (21 of them
    /// made the store's whole load); a chunk another machine stored since
    /// is stored again (counted by `check`), never wrongly. Fleets that
    /// share content ship through a process server.
    pub(super) fn refresh_in_background(&self, repo: &Repo) {
        if !self.own {
            self.shared.refresh_in_background(repo)
        }
    }

    /// After taking a disk's lease: the disk may have been shipped by
    /// another shipper since this one last looked, and the window about to
    /// be read again holds the chunks it stored; reading its index objects
    /// now keeps them from being stored twice.
    pub(super) async fn refresh_now(&self, repo: &Repo) -> Result<()> {
        self.shared.refresh(repo, Duration::ZERO).await
    }

    /// Whether a prune finished since this loop last checked, given the
    /// mark's `version` just read: one HEAD, where listing every index
    /// object at every point cost the store a listing that grows with the
    /// repository.
    pub(super) fn changed_from(&self, version: &Option<String>) -> bool {
        *version != self.seen
    }

    /// Loads the index again unless another loop on the same shared index
    /// already did after the same prune.
    pub(super) async fn reload(&mut self, repo: &Repo) -> Result<()> {
        let mut g = self.shared.inner.write().await;
        let version = lock::pruned_version(repo).await?;
        if g.1 != version {
            g.0.reload(repo).await?;
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
        if let Err(e) = self.shared.inner.write().await.0.reload(repo).await {
            tracing::debug!(error = %e, "index not reloaded after the failure");
        }
    }
}
