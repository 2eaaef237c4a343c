//! Restore a point to an image file or block device, compare a device
//! with a point (verify), bring a device back to a point by writing only
//! what differs (failback), and check a repository.
//!
//! Owns: promise 3 (exact points, byte for byte) and promise 4 on the way
//! out (every chunk is authenticated and re-hashed before it is written;
//! any failure names the chunk and pack and says the target is incomplete).
//! It writes only the target it is given.

pub mod blob;
pub mod check;
pub(crate) mod fetch;
pub mod group;
mod image;
pub mod reader;
pub mod target;
pub mod verify;
pub mod write;

use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;

use crate::error::{Result, ShipError};
use crate::repo::manifest::{self, ChunkRef};
use crate::repo::Repo;

pub use blob::restore_to_blob;
pub use check::{check, CheckReport, Problem};
pub use image::{failback, restore, restore_to, RestoreOptions};
pub use verify::{verify, Difference};

/// Which point.
#[derive(Debug, Clone, Copy)]
pub enum PointSel {
    Latest,
    Seq(u64),
}

impl std::str::FromStr for PointSel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "latest" {
            Ok(PointSel::Latest)
        } else {
            s.parse()
                .map(PointSel::Seq)
                .map_err(|_| format!("{s:?}: expected `latest` or a point sequence"))
        }
    }
}

/// The sequence of point `p` of `disk`.
pub async fn resolve(repo: &Repo, disk: &Uuid, p: PointSel) -> Result<u64> {
    match p {
        PointSel::Seq(s) => Ok(s),
        PointSel::Latest => manifest::list_points(repo, disk)
            .await?
            .last()
            .copied()
            .ok_or_else(|| ShipError::Point {
                disk: disk.to_string(),
                why: "has no published point".into(),
            }),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub disk: Uuid,
    /// `host/name` from the manifest, or the UUID for older manifests.
    pub disk_label: String,
    pub point: u64,
    pub kind: hrl_format::PointKind,
    pub device_size: u64,
    pub chunks: u64,
    pub stored_chunks: u64,
    pub zero_chunks: u64,
    pub bytes_written: u64,
    pub bytes_fetched: u64,
    pub seconds: f64,
    pub target: PathBuf,
    /// Failback: chunks of the target read and hashed.
    pub compared: u64,
    /// Failback: chunks already right, not written.
    pub skipped: u64,
}

impl RestoreReport {
    /// A report of point `seq` of `disk` (header `h`) onto `target`, with
    /// nothing counted yet.
    pub fn new(disk: Uuid, seq: u64, h: &manifest::PointHeader, target: impl Into<PathBuf>) -> Self {
        RestoreReport {
            disk,
            disk_label: h.disk_label(),
            point: seq,
            kind: h.kind,
            device_size: h.device_size,
            chunks: h.device_size.div_ceil(h.chunk_size as u64),
            stored_chunks: 0,
            zero_chunks: 0,
            bytes_written: 0,
            bytes_fetched: 0,
            seconds: 0.0,
            target: target.into(),
            compared: 0,
            skipped: 0,
        }
    }
}

/// The index entries of the chunks `map` (one point) uses: memory follows
/// the point restored, not the repository's size.
pub async fn index_for(
    repo: &Repo,
    map: &std::collections::BTreeMap<u64, crate::repo::manifest::ChunkRef>,
) -> Result<std::collections::HashMap<crate::repo::crypto::ChunkId, crate::repo::pack::Location>> {
    let ids: std::collections::HashSet<crate::repo::crypto::ChunkId> = stored_ids(map).into_iter().collect();
    repo.load_index_where(|id| ids.contains(id)).await
}

/// The distinct chunk ids `map` stores.
pub fn stored_ids(
    map: &std::collections::BTreeMap<u64, crate::repo::manifest::ChunkRef>,
) -> Vec<crate::repo::crypto::ChunkId> {
    let mut ids: Vec<crate::repo::crypto::ChunkId> = map
        .values()
        .filter_map(|r| match r {
            crate::repo::manifest::ChunkRef::Stored(id) => Some(*id),
            crate::repo::manifest::ChunkRef::Zero => None,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The newest point of `disk` taken at or before `before_ns` (tag time).
pub async fn newest_before(repo: &Repo, disk: &Uuid, before_ns: u64) -> Result<u64> {
    for seq in manifest::list_points(repo, disk).await?.into_iter().rev() {
        if manifest::load(repo, disk, seq).await?.0.time_ns <= before_ns {
            return Ok(seq);
        }
    }
    Err(ShipError::Point {
        disk: disk.to_string(),
        why: format!(
            "has no point taken at or before {}",
            hrl_common::time::rfc3339(before_ns)
        ),
    })
}

pub(crate) fn same(repo: &Repo, r: &ChunkRef, have: &[u8]) -> bool {
    match r {
        ChunkRef::Zero => have.iter().all(|&b| b == 0),
        ChunkRef::Stored(id) => repo.keys.chunk_id(have) == *id,
    }
}
