//! Point manifests: a header and a list of (chunk index, zero | chunk id).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::crypto::{ChunkId, Keys};
use super::repository::Repo;
use crate::error::{to_json, Result, ShipError};

/// What a chunk of a point holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkRef {
    Zero,
    Stored(ChunkId),
}

/// Manifest header (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointHeader {
    pub disk: Uuid,
    pub seq: u64,
    pub kind: hrl_format::PointKind,
    pub time_ns: u64,
    pub freeze_ns: u64,
    pub device_size: u64,
    pub chunk_size: u32,
    pub checkpoint: bool,
    pub base: Option<u64>,
    pub entries: u64,
    /// Bytes newly stored in packs for this point (after dedup, compression
    /// and encryption).
    pub new_bytes: u64,
    /// Bytes of chunk content the point carried (zero chunks excluded).
    pub data_bytes: u64,
    pub published_ns: u64,
    /// The consistency-group point this point is a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupRef>,
    /// The machine's host name, from the spool's Identity record (format
    /// 1.2); absent in manifests of older spools, which list by UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The disk's name in the agent's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A label a point hook attached (`HRL_LABEL=...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The lease generation its shipper held (`repo::lease`); absent in
    /// manifests written before leases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
}

impl PointHeader {
    /// `host/name` when the manifest names its disk, else the disk's UUID.
    pub fn disk_label(&self) -> String {
        match (&self.host, &self.name) {
            (Some(h), Some(n)) => format!("{h}/{n}"),
            _ => self.disk.to_string(),
        }
    }
}

/// The group point a member point belongs to (from the spool's Group record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    pub id: Uuid,
    pub name: String,
    pub seq: u64,
    pub members: u32,
}

pub fn point_key(disk: &Uuid, seq: u64) -> String {
    format!("points/{disk}/{seq:016}")
}

fn aad(disk: &Uuid, seq: u64) -> Vec<u8> {
    let mut a = b"point".to_vec();
    a.extend_from_slice(disk.as_bytes());
    a.extend_from_slice(&seq.to_le_bytes());
    a
}

pub fn encode(repo: &Repo, h: &PointHeader, map: &BTreeMap<u64, ChunkRef>) -> Result<Vec<u8>> {
    encode_with(&repo.keys, h, map)
}

/// [`encode`] with the keys only.
pub fn encode_with(keys: &Keys, h: &PointHeader, map: &BTreeMap<u64, ChunkRef>) -> Result<Vec<u8>> {
    let mut plain = to_json(h, "point header")?;
    plain.push(b'\n');
    plain.reserve(map.len() * 41);
    for (idx, r) in map {
        plain.extend_from_slice(&idx.to_le_bytes());
        match r {
            ChunkRef::Zero => {
                plain.push(0);
                plain.extend_from_slice(&[0u8; 32]);
            }
            ChunkRef::Stored(id) => {
                plain.push(1);
                plain.extend_from_slice(id);
            }
        }
    }
    Ok(keys.seal_meta(&aad(&h.disk, h.seq), &plain))
}

/// Seals `plain` as the manifest of `disk` point `seq` (for the fuzz
/// target, which feeds arbitrary plaintext to the parser).
#[doc(hidden)]
pub fn seal_plain(keys: &Keys, disk: &Uuid, seq: u64, plain: &[u8]) -> Vec<u8> {
    keys.seal_meta(&aad(disk, seq), plain)
}

pub fn decode(repo: &Repo, disk: &Uuid, seq: u64, blob: &[u8]) -> Result<(PointHeader, BTreeMap<u64, ChunkRef>)> {
    decode_with(&repo.keys, disk, seq, blob)
}

/// [`decode`] with the keys only (the fuzz target calls it).
pub fn decode_with(keys: &Keys, disk: &Uuid, seq: u64, blob: &[u8]) -> Result<(PointHeader, BTreeMap<u64, ChunkRef>)> {
    let what = format!("point manifest {}", point_key(disk, seq));
    let plain = keys.open_meta(&what, &aad(disk, seq), blob)?;
    let nl = plain
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| ShipError::corrupt(&what, "no header line"))?;
    let h: PointHeader = serde_json::from_slice(&plain[..nl]).map_err(|e| ShipError::corrupt(&what, e.to_string()))?;
    let body = &plain[nl + 1..];
    if body.len() % 41 != 0 || (body.len() / 41) as u64 != h.entries {
        return Err(ShipError::corrupt(&what, "entry count does not match the header"));
    }
    let mut map = BTreeMap::new();
    for e in body.chunks_exact(41) {
        let idx = u64::from_le_bytes(e[..8].try_into().unwrap_or_default());
        let r = match e[8] {
            0 => ChunkRef::Zero,
            1 => {
                let mut id = [0u8; 32];
                id.copy_from_slice(&e[9..41]);
                ChunkRef::Stored(id)
            }
            k => return Err(ShipError::corrupt(&what, format!("unknown entry kind {k}"))),
        };
        map.insert(idx, r);
    }
    Ok((h, map))
}

/// Sequences of the published points of `disk`, ascending.
pub async fn list_points(repo: &Repo, disk: &Uuid) -> Result<Vec<u64>> {
    repo.list_numbered(&format!("points/{disk}")).await
}

/// Disks with points in the repository.
pub async fn list_disks(repo: &Repo) -> Result<Vec<Uuid>> {
    let mut v: Vec<Uuid> = repo
        .list("points")
        .await?
        .into_iter()
        .filter_map(|(k, _)| k.split('/').nth(1)?.parse().ok())
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}

pub async fn load(repo: &Repo, disk: &Uuid, seq: u64) -> Result<(PointHeader, BTreeMap<u64, ChunkRef>)> {
    let blob = repo.get(&point_key(disk, seq)).await?;
    decode(repo, disk, seq, &blob)
}

/// The full chunk map of point `seq`: the newest checkpoint at or before it
/// plus every delta after that, in order.
pub async fn full_map(repo: &Repo, disk: &Uuid, seq: u64) -> Result<(PointHeader, BTreeMap<u64, ChunkRef>)> {
    let points = list_points(repo, disk).await?;
    if !points.contains(&seq) {
        return Err(ShipError::Point {
            disk: disk.to_string(),
            why: format!(
                "no point {seq} in the repository (points: {})",
                if points.is_empty() {
                    "none".to_string()
                } else {
                    format!("{}..={}, {} in all", points[0], points[points.len() - 1], points.len())
                }
            ),
        });
    }
    // Walk back to a checkpoint.
    let mut chain = Vec::new();
    for &p in points.iter().rev().filter(|&&p| p <= seq) {
        let (h, m) = load(repo, disk, p).await?;
        let cp = h.checkpoint;
        chain.push((h, m));
        if cp {
            break;
        }
    }
    if !chain.last().is_some_and(|(h, _)| h.checkpoint) {
        return Err(ShipError::Point {
            disk: disk.to_string(),
            why: format!("no checkpoint at or before point {seq}: the chain is broken"),
        });
    }
    let mut full = BTreeMap::new();
    let mut header = None;
    for (h, m) in chain.into_iter().rev() {
        full.extend(m);
        header = Some(h);
    }
    let header = header.ok_or_else(|| ShipError::corrupt("manifest chain", "empty"))?;
    let chunks = header.device_size.div_ceil(header.chunk_size as u64);
    full.retain(|idx, _| *idx < chunks);
    Ok((header, full))
}
