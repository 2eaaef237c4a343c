//! The repository's index objects: reading them (all, or only the entries
//! one restore needs) and writing one for a batch of packs.

use std::collections::HashMap;

use futures::StreamExt;

use super::crypto::ChunkId;
use super::pack::{decode_index, encode_index, Location, PackEntries};
use super::repository::Repo;
use crate::error::Result;

/// Index objects read at once.
pub const INDEX_READS: usize = 4;

impl Repo {
    /// Every index: chunk id -> location, merged in name order.
    pub async fn load_index(&self) -> Result<HashMap<ChunkId, Location>> {
        self.load_index_where(|_| true).await
    }

    /// The index entries of the chunks `keep` accepts (a restore: those
    /// of one point), so memory follows the point, not the repository.
    pub async fn load_index_where(&self, keep: impl Fn(&ChunkId) -> bool) -> Result<HashMap<ChunkId, Location>> {
        let keys: Vec<String> = self.list("index").await?.into_iter().map(|(k, _)| k).collect();
        let mut map = HashMap::new();
        self.each_index_object(&keys, |_, entries| {
            map.extend(entries.into_iter().filter(|(id, _)| keep(id)));
            Ok(())
        })
        .await?;
        Ok(map)
    }

    /// Hands `each` the entries of every index object of `keys` with its
    /// position there, in that order; objects are read [`INDEX_READS`] at a time (a remote
    /// store's round trips), so memory is that many objects.
    pub async fn each_index_object(
        &self,
        keys: &[String],
        mut each: impl FnMut(usize, Vec<(ChunkId, Location)>) -> Result<()>,
    ) -> Result<()> {
        // Owned keys and repository handles: a borrowing future makes the
        // callers' tasks not `Send` (a higher-ranked lifetime).
        let owned: Vec<(Repo, String)> = keys.iter().map(|k| (self.clone(), k.clone())).collect();
        let mut objects = futures::stream::iter(owned)
            .map(|(r, k)| async move { r.load_index_object(&k).await })
            .buffered(INDEX_READS)
            .enumerate();
        while let Some((i, entries)) = objects.next().await {
            each(i, entries?)?;
        }
        Ok(())
    }

    /// The entries of one index object.
    pub async fn load_index_object(&self, key: &str) -> Result<Vec<(ChunkId, Location)>> {
        let blob = self.get(key).await?;
        decode_index(&self.keys, key, &blob)
    }

    /// Writes an index object for `packs` (durably); returns its key.
    pub async fn write_index(&self, packs: &[PackEntries]) -> Result<String> {
        let (key, body) = encode_index(&self.keys, packs)?;
        self.put(&key, body, true).await?;
        Ok(key)
    }
}
