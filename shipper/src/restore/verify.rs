//! `verify`: compares a device or image with a point by hashing each of
//! its chunks; nothing is fetched from the store.

use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;
use uuid::Uuid;

use super::{resolve, same, PointSel};
use crate::error::{Result, ShipError};
use crate::repo::manifest;
use crate::repo::Repo;

/// A byte range where a device differs from a point.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub offset: u64,
    pub len: u64,
}

/// Compares `against` with point `p` by hash; returns the differing ranges
/// (adjacent chunks merged). Nothing is fetched from the store.
pub async fn verify(repo: &Repo, disk: &Uuid, p: PointSel, against: &Path) -> Result<(u64, Vec<Difference>)> {
    let seq = resolve(repo, disk, p).await?;
    let (h, map) = manifest::full_map(repo, disk, seq).await?;
    let f = std::fs::File::open(against).map_err(|e| ShipError::io(against, "open", e))?;
    let csize = h.chunk_size as u64;
    let chunks = h.device_size.div_ceil(csize);
    let mut buf = vec![0u8; csize as usize];
    let mut diffs: Vec<Difference> = Vec::new();
    for idx in 0..chunks {
        let n = (h.device_size - idx * csize).min(csize) as usize;
        let ok = match f.read_exact_at(&mut buf[..n], idx * csize) {
            Ok(()) => map.get(&idx).is_some_and(|r| same(repo, r, &buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
            Err(e) => return Err(ShipError::io(against, "read", e)),
        };
        if !ok {
            match diffs.last_mut() {
                Some(d) if d.offset + d.len == idx * csize => d.len += n as u64,
                _ => diffs.push(Difference {
                    offset: idx * csize,
                    len: n as u64,
                }),
            }
        }
    }
    Ok((seq, diffs))
}
