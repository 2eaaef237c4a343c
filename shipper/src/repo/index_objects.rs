//! The repository's index objects: reading them (all, or only the entries
//! one restore needs) and writing one for a batch of packs.

use std::collections::HashMap;

use futures::StreamExt;

use super::crypto::ChunkId;
use super::pack::{decode_index, encode_index, Location, PackEntries};
use super::repository::Repo;
use crate::error::Result;

impl Repo {
    /// Every index: chunk id -> location; objects read 16 at a time (a
    /// remote store's round trips), merged in name order.
    pub async fn load_index(&self) -> Result<HashMap<ChunkId, Location>> {
        self.load_index_where(|_| true).await
    }

    /// The index entries of the chunks `keep` accepts (a restore: those
    /// of one point), so memory follows the point, not the repository.
    pub async fn load_index_where(&self, keep: impl Fn(&ChunkId) -> bool) -> Result<HashMap<ChunkId, Location>> {
        let keys = self.list("index").await?.into_iter().map(|(k, _)| (self.clone(), k));
        let mut objects = futures::stream::iter(keys)
            .map(|(r, k)| async move { r.load_index_object(&k).await })
            .buffered(16);
        let mut map = HashMap::new();
        while let Some(entries) = objects.next().await {
            map.extend(entries?.into_iter().filter(|(id, _)| keep(id)));
        }
        Ok(map)
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
