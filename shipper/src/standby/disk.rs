//! One disk's standby page blob: bring it from the point of its newest
//! snapshot to each newer published point in turn, writing only the
//! chunks that differ, and snapshot it after each.
//!
//! Crash safety (kill -9 at any moment): before the first page of point P
//! is written, the blob's metadata says `hrl_applying=P`; a snapshot is
//! taken only after every page of P is acknowledged. On restart the state
//! is the newest snapshot's point S; if the metadata names a point M > S,
//! the blob may hold part of M, so the chunks that differ between S and M
//! are written again (with the next point's content) besides those that
//! differ between S and the next point. When S's or M's manifest is gone
//! (pruned), every chunk is written: slower, never wrong. A half-applied
//! point is never snapshotted.

use std::collections::BTreeMap;
use std::time::Instant;

use futures::StreamExt;
use uuid::Uuid;

use crate::azure::{vhd, BlobProps, PageBlob, SnapshotInfo};
use crate::error::{Result, ShipError};
use crate::repo::manifest::{self, ChunkRef, PointHeader};
use crate::repo::Repo;
use crate::restore::blob::{page_runs, Puts, META_STANDBY};
use crate::restore::fetch::{chunk_stream, plan, Progress};

/// Metadata names on the standby blob and its snapshots.
const META_DISK: &str = "hrl_disk";
const META_POINT: &str = "hrl_point";
const META_APPLYING: &str = "hrl_applying";

/// What one point's application did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    pub disk: Uuid,
    pub point: u64,
    pub snapshot: String,
    /// Chunks written (stored) and cleared (zero).
    pub written: u64,
    pub cleared: u64,
    pub bytes: u64,
    /// Every chunk was written (first point, or a lost base).
    pub full: bool,
    pub seconds: f64,
}

/// The newest snapshot's point and the point the blob was being brought
/// to when the standby stopped (if it did not finish).
#[derive(Debug, Clone, Copy, Default)]
struct State {
    snapshot_point: Option<u64>,
    applying: Option<u64>,
    /// The blob was just created: it reads as zeros.
    fresh: bool,
    /// The blob's size (virtual size + footer).
    len: u64,
}

fn point_of(meta: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    meta.get(key).and_then(|v| v.parse().ok())
}

/// The standby's state, creating the blob (all zeros, with its footer)
/// when it does not exist. Refuses a blob that is not this disk's standby.
async fn state(blob: &PageBlob, disk: &Uuid, h: &PointHeader) -> Result<(State, Vec<SnapshotInfo>)> {
    let virt = vhd::virtual_size(h.device_size);
    let Some(props) = blob.properties(None).await? else {
        let meta = [(META_DISK, disk.to_string()), (META_STANDBY, "1".to_string())];
        blob.create(virt + vhd::FOOTER as u64, false, &meta).await?;
        let footer = vhd::footer(virt, hrl_format::now_ns() / 1_000_000_000, *Uuid::new_v4().as_bytes());
        blob.put_pages(virt, bytes::Bytes::copy_from_slice(&footer)).await?;
        let s = State {
            fresh: true,
            len: virt + vhd::FOOTER as u64,
            ..State::default()
        };
        return Ok((s, Vec::new()));
    };
    check_blob(blob, disk, &props, virt)?;
    let snaps: Vec<SnapshotInfo> = blob
        .snapshots()
        .await?
        .into_iter()
        .filter(|s| s.meta.get(META_DISK).map(String::as_str) == Some(&disk.to_string()))
        .collect();
    let snapshot_point = snaps.iter().filter_map(|s| point_of(&s.meta, META_POINT)).max();
    let applying = point_of(&props.meta, META_APPLYING).filter(|m| Some(*m) > snapshot_point);
    let s = State {
        snapshot_point,
        applying,
        fresh: false,
        len: props.len,
    };
    Ok((s, snaps))
}

fn check_blob(blob: &PageBlob, disk: &Uuid, p: &BlobProps, virt: u64) -> Result<()> {
    let owner = p.meta.get(META_DISK).cloned().unwrap_or_default();
    if p.blob_type != "PageBlob" || owner != disk.to_string() || !p.meta.contains_key(META_STANDBY) {
        return Err(ShipError::Usage(format!(
            "{}: the blob exists and is not the standby of disk {disk} (type {}, {META_DISK}={owner:?}); give another --to prefix",
            blob.url, p.blob_type
        )));
    }
    if p.len != virt + vhd::FOOTER as u64 {
        return Err(ShipError::Usage(format!(
            "{}: the standby holds {} bytes but the disk needs {} (its size changed): delete the blob to start its standby over",
            blob.url,
            p.len,
            virt + vhd::FOOTER as u64
        )));
    }
    Ok(())
}

/// Brings `disk`'s standby to every published point newer than its newest
/// snapshot, in order; stops between points when `stop` says so.
pub async fn catch_up(
    repo: &Repo,
    disk: &Uuid,
    blob: &PageBlob,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(Vec<Applied>, Vec<SnapshotInfo>)> {
    let points = manifest::list_points(repo, disk).await?;
    let Some(&first) = points.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let (h0, _) = manifest::load(repo, disk, first).await?;
    let (mut st, mut snaps) = state(blob, disk, &h0).await?;
    let todo: Vec<u64> = points
        .iter()
        .copied()
        .filter(|&p| st.snapshot_point.is_none_or(|s| p > s))
        .collect();
    let mut done = Vec::new();
    if todo.is_empty() {
        return Ok((done, snaps));
    }
    let index = index_for(repo, disk, &todo).await?;
    for p in todo {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let a = apply(repo, disk, blob, st, p, &index).await?;
        snaps.push(SnapshotInfo {
            snapshot: a.snapshot.clone(),
            meta: [(META_POINT.to_string(), p.to_string())].into(),
        });
        st = State {
            snapshot_point: Some(p),
            applying: None,
            fresh: false,
            len: st.len,
        };
        done.push(a);
    }
    Ok((done, snaps))
}

/// The index entries of every chunk the points `todo` (ascending) may
/// write: the first one's full map and the later ones' own maps. Memory
/// follows the disk, not the repository.
async fn index_for(
    repo: &Repo,
    disk: &Uuid,
    todo: &[u64],
) -> Result<std::collections::HashMap<crate::repo::crypto::ChunkId, crate::repo::Location>> {
    let mut ids = std::collections::HashSet::new();
    if let Some((&first, rest)) = todo.split_first() {
        ids.extend(crate::restore::stored_ids(
            &manifest::full_map(repo, disk, first).await?.1,
        ));
        for &p in rest {
            ids.extend(crate::restore::stored_ids(&manifest::load(repo, disk, p).await?.1));
        }
    }
    repo.load_index_where(|id| ids.contains(id)).await
}

/// The chunks of `p` to write given the standby's state; None: all.
async fn changed(repo: &Repo, disk: &Uuid, st: State, map_p: &BTreeMap<u64, ChunkRef>) -> Result<Option<Vec<u64>>> {
    let Some(s) = st.snapshot_point else {
        return Ok(None);
    };
    let map_s = match manifest::full_map(repo, disk, s).await {
        Ok((_, m)) => m,
        Err(ShipError::Point { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut idx: Vec<u64> = differ(&map_s, map_p);
    if let Some(m) = st.applying {
        match manifest::full_map(repo, disk, m).await {
            Ok((_, map_m)) => idx.extend(differ(&map_s, &map_m)),
            Err(ShipError::Point { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    idx.sort_unstable();
    idx.dedup();
    Ok(Some(idx))
}

/// Chunk indexes whose entry differs between two full maps.
fn differ(a: &BTreeMap<u64, ChunkRef>, b: &BTreeMap<u64, ChunkRef>) -> Vec<u64> {
    let mut out: Vec<u64> = b.iter().filter(|(i, r)| a.get(i) != Some(r)).map(|(i, _)| *i).collect();
    out.extend(a.keys().filter(|i| !b.contains_key(i)));
    out
}

/// Writes point `p` over the standby and snapshots it.
async fn apply(
    repo: &Repo,
    disk: &Uuid,
    blob: &PageBlob,
    st: State,
    p: u64,
    index: &std::collections::HashMap<crate::repo::crypto::ChunkId, crate::repo::Location>,
) -> Result<Applied> {
    let t0 = Instant::now();
    let (h, map_p) = manifest::full_map(repo, disk, p).await?;
    if vhd::virtual_size(h.device_size) + vhd::FOOTER as u64 != st.len {
        return Err(ShipError::Usage(format!(
            "{}: disk {} has {} bytes at point {p}, the standby was made for another size (the disk was resized): delete the blob to start its standby over",
            blob.url,
            h.disk_label(),
            h.device_size
        )));
    }
    let chunks = h.device_size.div_ceil(h.chunk_size as u64);
    let which = changed(repo, disk, st, &map_p).await?;
    let full = which.is_none();
    let mut skip = vec![which.is_some(); chunks as usize];
    for i in which.iter().flatten() {
        if let Some(s) = skip.get_mut(*i as usize) {
            *s = false;
        }
    }
    let mut meta = vec![
        (META_DISK, disk.to_string()),
        (META_STANDBY, "1".to_string()),
        (META_APPLYING, p.to_string()),
    ];
    if let Some(s) = st.snapshot_point {
        meta.push((META_POINT, s.to_string()));
    }
    blob.set_metadata(&meta).await?;
    let incomplete = |why: String| ShipError::Point {
        disk: disk.to_string(),
        why: format!("standby of point {p}: {why}"),
    };
    let plan = plan(&h, &map_p, index, &skip, &incomplete)?;
    let mut a = Applied {
        disk: *disk,
        point: p,
        snapshot: String::new(),
        written: 0,
        cleared: 0,
        bytes: 0,
        full,
        seconds: 0.0,
    };
    let mut puts = Puts::new(blob);
    if !st.fresh {
        clear_zeros(&mut puts, &h, &plan.zeros, &mut a).await?;
    }
    let (total, fetches) = chunk_stream(repo, &h, plan.by_pack);
    let mut fetches = std::pin::pin!(fetches);
    // A first point (or a full rewrite) of a big disk takes long: progress.
    let mut shown = Progress::new(Some(&format!("standby {} point {p}", h.disk_label())), total);
    while let Some(r) = fetches.next().await {
        let (_, mut got) = r.map_err(incomplete)?;
        got.sort_by_key(|(o, _)| *o);
        a.written += got.len() as u64;
        // A fresh blob reads as zeros: its zero sectors need not be sent.
        for (off, data) in page_runs(&got, st.fresh) {
            a.bytes += data.len() as u64;
            puts.put(off, data).await?;
        }
        shown.step(a.bytes, t0);
    }
    puts.finish().await?;
    shown.finish();
    crash_point!("standby-before-snapshot");
    let meta = [
        (META_DISK, disk.to_string()),
        (META_STANDBY, "1".to_string()),
        (META_POINT, p.to_string()),
    ];
    a.snapshot = blob.snapshot(&meta).await?;
    blob.set_metadata(&meta).await?;
    a.seconds = t0.elapsed().as_secs_f64();
    Ok(a)
}

/// Clears the zero chunks, adjacent ones in one request.
async fn clear_zeros(puts: &mut Puts<'_>, h: &PointHeader, zeros: &[u64], a: &mut Applied) -> Result<()> {
    let csize = h.chunk_size as u64;
    let end_of_disk = h.device_size.next_multiple_of(512);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &i in zeros {
        let (s, e) = (i * csize, ((i + 1) * csize).min(end_of_disk));
        match runs.last_mut() {
            Some((_, last_e)) if *last_e == s => *last_e = e,
            _ => runs.push((s, e)),
        }
    }
    a.cleared += zeros.len() as u64;
    for (s, e) in runs {
        puts.clear(s, e - s).await?;
    }
    Ok(())
}

/// Deletes the snapshots of points no longer in the repository (pruned),
/// then the oldest beyond `keep` (0: no limit). The newest is never
/// deleted. Returns how many were deleted.
pub async fn retain(repo: &Repo, disk: &Uuid, blob: &PageBlob, snaps: &[SnapshotInfo], keep: usize) -> Result<usize> {
    let points = manifest::list_points(repo, disk).await?;
    let mut live: Vec<(u64, &SnapshotInfo)> = Vec::new();
    let mut gone: Vec<&SnapshotInfo> = Vec::new();
    for s in snaps {
        match point_of(&s.meta, META_POINT) {
            Some(p) if points.binary_search(&p).is_ok() => live.push((p, s)),
            _ => gone.push(s),
        }
    }
    // A snapshot request retried after its answer was lost leaves two
    // snapshots of one point: the older goes.
    live.sort_by(|a, b| (a.0, &a.1.snapshot).cmp(&(b.0, &b.1.snapshot)));
    let mut unique: Vec<(u64, &SnapshotInfo)> = Vec::new();
    for (p, s) in live {
        match unique.last_mut() {
            Some(last) if last.0 == p => gone.push(std::mem::replace(&mut last.1, s)),
            _ => unique.push((p, s)),
        }
    }
    let mut live = unique;
    let newest = live.last().map(|(_, s)| s.snapshot.clone());
    if keep > 0 && live.len() > keep {
        let extra = live.len() - keep;
        gone.extend(live.drain(..extra).map(|(_, s)| s));
    }
    let mut n = 0;
    for s in gone {
        if Some(&s.snapshot) != newest.as_ref() && blob.delete(Some(&s.snapshot)).await? {
            n += 1;
        }
    }
    Ok(n)
}

/// The snapshot of point `seq` in `blob`'s snapshots, and the points it
/// has (for the error when it has not that one).
pub async fn snapshot_of(blob: &PageBlob, disk: &Uuid, seq: u64) -> Result<std::result::Result<String, Vec<u64>>> {
    let snaps = blob.snapshots().await?;
    let mut have = Vec::new();
    for s in snaps {
        if s.meta.get(META_DISK).map(String::as_str) != Some(&disk.to_string()) {
            continue;
        }
        match point_of(&s.meta, META_POINT) {
            Some(p) if p == seq => return Ok(Ok(s.snapshot)),
            Some(p) => have.push(p),
            None => {}
        }
    }
    have.sort_unstable();
    Ok(Err(have))
}
