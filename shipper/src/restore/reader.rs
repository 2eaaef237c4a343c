//! A point read by chunk range, for a reader that holds no key: the process
//! server opens the point and streams decrypted, re-hashed chunks to the
//! machine that owns the disk (its restore and failback path).
//!
//! Every chunk is authenticated and re-hashed (`Keys::open_chunk`) before
//! it leaves, as in a local restore; a chunk that fails is an error naming
//! it, never bytes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use uuid::Uuid;

use crate::error::{Result, ShipError};
use crate::repo::crypto::ChunkId;
use crate::repo::manifest::{self, ChunkRef, PointHeader};
use crate::repo::{pack_key, Location, Repo};
use crate::ship::SharedIndex;

/// Most chunks one read may ask for.
pub const MAX_CHUNKS: u64 = 256;

/// One point, its chunk map and the index it needs.
pub struct PointReader {
    pub disk: Uuid,
    pub header: PointHeader,
    map: BTreeMap<u64, ChunkRef>,
    index: Arc<HashMap<ChunkId, Location>>,
}

impl PointReader {
    /// Opens point `seq` of `disk` with the repository's index as it is
    /// now: from `shared` (a process server's index file) when it holds
    /// every chunk of the point, else from the index objects.
    pub async fn open(repo: &Repo, disk: &Uuid, seq: u64, shared: Option<&SharedIndex>) -> Result<Self> {
        let (header, map) = manifest::full_map(repo, disk, seq).await?;
        let found = match shared {
            Some(s) => s.locations(repo, &crate::restore::stored_ids(&map)).await?,
            None => None,
        };
        let index = Arc::new(match found {
            Some(i) => i,
            None => crate::restore::index_for(repo, &map).await?,
        });
        Ok(PointReader {
            disk: *disk,
            header,
            map,
            index,
        })
    }

    /// Chunks on the device.
    pub fn chunks(&self) -> u64 {
        self.header.device_size.div_ceil(self.header.chunk_size as u64)
    }

    /// The device's bytes of chunks `from..from + count` (the last chunk may
    /// be shorter), decrypted and verified.
    pub async fn read(&self, repo: &Repo, from: u64, count: u64) -> Result<Vec<u8>> {
        let csize = self.header.chunk_size as u64;
        let end = (from + count.min(MAX_CHUNKS)).min(self.chunks());
        let mut out = Vec::with_capacity(((end.saturating_sub(from)) * csize) as usize);
        for idx in from..end {
            out.extend_from_slice(&self.chunk(repo, idx).await?);
        }
        Ok(out)
    }

    /// Failback through the process server: `theirs` holds the plain
    /// BLAKE3 hash of each of the target's chunks from chunk `from` on (at
    /// most [`MAX_CHUNKS`]); returns each chunk of the point whose hash
    /// differs, with its index. The machine holds no chunk-id key, so it
    /// cannot name its chunks as the repository does: the point's chunks
    /// are read and hashed here instead, and only what differs crosses the
    /// wire.
    pub async fn differing(&self, repo: &Repo, from: u64, theirs: &[[u8; 32]]) -> Result<Vec<(u64, Vec<u8>)>> {
        let end = (from + (theirs.len() as u64).min(MAX_CHUNKS)).min(self.chunks());
        let mut out = Vec::new();
        for (idx, want) in (from..end).zip(theirs) {
            let ours = self.chunk(repo, idx).await?;
            if blake3::hash(&ours).as_bytes() != want {
                out.push((idx, ours));
            }
        }
        Ok(out)
    }

    /// Chunk `idx` of the device (the last may be shorter), decrypted and
    /// verified.
    async fn chunk(&self, repo: &Repo, idx: u64) -> Result<Vec<u8>> {
        let csize = self.header.chunk_size as u64;
        let len = (self.header.device_size - idx * csize).min(csize) as usize;
        let id = match self.map.get(&idx) {
            Some(ChunkRef::Zero) => return Ok(vec![0; len]),
            Some(ChunkRef::Stored(id)) => id,
            None => {
                return Err(ShipError::Point {
                    disk: self.disk.to_string(),
                    why: format!("point {}: chunk {idx} is in no manifest of its chain", self.header.seq),
                })
            }
        };
        let loc = self.index.get(id).ok_or_else(|| ShipError::Point {
            disk: self.disk.to_string(),
            why: format!("chunk {} (chunk {idx} of the device) is in no index", hex::encode(id)),
        })?;
        let key = pack_key(&loc.pack);
        let blob = repo.get_range(&key, loc.offset, loc.offset + loc.len as u64).await?;
        let plain = repo.keys.open_chunk(id, &blob)?;
        if plain.len() != len {
            return Err(ShipError::corrupt(
                format!("chunk {} in pack {key}", hex::encode(id)),
                format!("{} bytes, chunk {idx} of the device needs {len}", plain.len()),
            ));
        }
        Ok(plain)
    }
}
