//! Writing a point as a fixed VHD page blob, the disk format Azure creates
//! a managed disk (and so a VM) from: the point's bytes, zeros up to a
//! whole MiB, then the 512-byte VHD footer.
//!
//! Only non-zero 512-byte sectors are sent (a new page blob reads as
//! zeros): zero chunks are never fetched, and zero sectors inside a chunk
//! are skipped. Adjacent sectors are merged into Put Page requests of up
//! to 4 MiB, 16 in flight. An existing blob is refused unless `force`; a
//! restore that fails deletes the blob it created, so a half-written VHD
//! is never left looking like a disk.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::fetch::{chunk_stream, plan, Progress};
use super::{resolve, PointSel, RestoreOptions, RestoreReport};
use crate::azure::blob::MAX_PAGE_WRITE;
use crate::azure::{self, vhd, Account, BlobUrl, PageBlob};
use crate::error::{Result, ShipError};
use crate::repo::crypto::ChunkId;
use crate::repo::manifest::{self, ChunkRef, PointHeader};
use crate::repo::{Location, Repo};

/// Marks a standby blob (`crate::standby`): restore refuses to overwrite
/// one, even with --force.
pub(crate) const META_STANDBY: &str = "hrl_standby";

/// Put Page requests in flight.
const IN_FLIGHT: usize = 16;
const SECTOR: usize = 512;

/// Restores point `p` of `disk` as a fixed VHD page blob at `to`.
pub async fn restore_to_blob(
    repo: &Repo,
    disk: &Uuid,
    p: PointSel,
    to: &BlobUrl,
    o: RestoreOptions,
) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let seq = resolve(repo, disk, p).await?;
    let (h, map) = manifest::full_map(repo, disk, seq).await?;
    let index = crate::restore::index_for(repo, &map).await?;
    let blob = open_blob(to).await?;
    if let Some(props) = blob.properties(None).await? {
        if props.meta.contains_key(META_STANDBY) {
            return Err(ShipError::Usage(format!(
                "{to}: this is a standby blob (`hrl-shipper standby` keeps it point by point); restore into another name, or fail over with --standby; nothing was written"
            )));
        }
        if !o.force {
            return Err(ShipError::Usage(format!(
                "{to}: the blob exists ({} bytes, {}); restore writes a new VHD: give a new name, or --force to overwrite it; nothing was written",
                props.len, props.blob_type
            )));
        }
    }
    let virt = vhd::virtual_size(h.device_size);
    let meta = [("hrl_disk", disk.to_string()), ("hrl_point", seq.to_string())];
    blob.create(virt + vhd::FOOTER as u64, o.force, &meta).await?;
    let job = Job {
        repo,
        disk,
        seq,
        h: &h,
        map: &map,
        index: &index,
        blob: &blob,
        progress: o.progress,
    };
    match write_vhd(&job, virt).await {
        Ok(mut rep) => {
            rep.seconds = t0.elapsed().as_secs_f64();
            Ok(rep)
        }
        Err(e) => {
            // Never leave a half-written VHD that looks like a disk.
            let removed = matches!(blob.delete(None).await, Ok(true));
            let what = if removed {
                "deleted"
            } else {
                "left incomplete (delete it)"
            };
            Err(ShipError::Point {
                disk: h.disk_label(),
                why: format!("restore of point {seq} to {to} failed: {e}; the blob was {what}"),
            })
        }
    }
}

/// The page blob at `to` in the environment's account; its container is
/// created when missing.
pub(crate) async fn open_blob(to: &BlobUrl) -> Result<PageBlob> {
    if to.path.is_empty() || !to.path.ends_with(".vhd") {
        return Err(ShipError::Usage(format!(
            "{to}: a VHD target is az://CONTAINER/NAME.vhd; nothing was written"
        )));
    }
    let acct = Account::from_env(&format!("writing {to}"))?;
    let http = azure::request::client();
    azure::container::create_in(&http, &acct, &to.container).await?;
    Ok(PageBlob::new(http, acct, to.clone()))
}

struct Job<'a> {
    repo: &'a Repo,
    disk: &'a Uuid,
    seq: u64,
    h: &'a PointHeader,
    map: &'a std::collections::BTreeMap<u64, ChunkRef>,
    index: &'a HashMap<ChunkId, Location>,
    blob: &'a PageBlob,
    progress: bool,
}

async fn write_vhd(j: &Job<'_>, virt: u64) -> Result<RestoreReport> {
    let h = j.h;
    let incomplete = |why: String| ShipError::Point {
        disk: j.disk.to_string(),
        why,
    };
    let plan = plan(h, j.map, j.index, &[], &incomplete)?;
    let mut rep = RestoreReport {
        zero_chunks: plan.zeros.len() as u64,
        ..RestoreReport::new(*j.disk, j.seq, h, j.blob.url.to_string())
    };
    let t0 = Instant::now();
    let (total, fetches) = chunk_stream(j.repo, h, plan.by_pack);
    let mut fetches = std::pin::pin!(fetches);
    let mut shown = Progress::new(j.progress.then_some("restore"), total);
    let mut puts = Puts::new(j.blob);
    while let Some(r) = fetches.next().await {
        let (fetched, mut chunks) = r.map_err(incomplete)?;
        rep.bytes_fetched += fetched;
        rep.stored_chunks += chunks.len() as u64;
        chunks.sort_by_key(|(o, _)| *o);
        for (off, data) in nonzero_runs(&chunks) {
            rep.bytes_written += data.len() as u64;
            puts.put(off, data).await?;
        }
        shown.step(rep.bytes_written, t0);
    }
    let footer = vhd::footer(virt, hrl_format::now_ns() / 1_000_000_000, *Uuid::new_v4().as_bytes());
    puts.put(virt, Bytes::copy_from_slice(&footer)).await?;
    puts.finish().await?;
    shown.finish();
    Ok(rep)
}

/// Page writes in flight (16), each on its own task; the first failure
/// is returned by the next call.
pub(crate) struct Puts<'a> {
    blob: &'a PageBlob,
    set: JoinSet<Result<()>>,
}

impl<'a> Puts<'a> {
    pub(crate) fn new(blob: &'a PageBlob) -> Self {
        Puts {
            blob,
            set: JoinSet::new(),
        }
    }

    pub(crate) async fn put(&mut self, off: u64, data: Bytes) -> Result<()> {
        while self.set.len() >= IN_FLIGHT {
            self.next().await?;
        }
        let b = self.blob.clone();
        self.set.spawn(async move { b.put_pages(off, data).await });
        Ok(())
    }

    /// Clears `len` bytes at `off` (they read as zeros again).
    pub(crate) async fn clear(&mut self, off: u64, len: u64) -> Result<()> {
        while self.set.len() >= IN_FLIGHT {
            self.next().await?;
        }
        let b = self.blob.clone();
        self.set.spawn(async move { b.clear_pages(off, len).await });
        Ok(())
    }

    async fn next(&mut self) -> Result<()> {
        match self.set.join_next().await {
            Some(r) => r.map_err(|e| ShipError::Internal(format!("page write task: {e}")))?,
            None => Ok(()),
        }
    }

    pub(crate) async fn finish(mut self) -> Result<()> {
        while !self.set.is_empty() {
            self.next().await?;
        }
        Ok(())
    }
}

/// The non-zero 512-byte sectors of `chunks` (`(offset, bytes)` in offset
/// order, offsets multiples of 512), merged where adjacent into runs of
/// at most 4 MiB. A last sector shorter than 512 bytes is padded with
/// zeros (the VHD reads as zeros past the disk's end).
pub(crate) fn nonzero_runs(chunks: &[(u64, Vec<u8>)]) -> Vec<(u64, Bytes)> {
    page_runs(chunks, true)
}

/// [`nonzero_runs`], or with `skip_zero` false every sector (a page that
/// held data must be overwritten with the zeros it holds now).
pub(crate) fn page_runs(chunks: &[(u64, Vec<u8>)], skip_zero: bool) -> Vec<(u64, Bytes)> {
    let mut out: Vec<(u64, Bytes)> = Vec::new();
    let mut cur: Option<(u64, Vec<u8>)> = None;
    for (off, data) in chunks {
        for (i, sector) in data.chunks(SECTOR).enumerate() {
            if skip_zero && sector.iter().all(|&b| b == 0) {
                continue;
            }
            let at = off + (i * SECTOR) as u64;
            let joins = matches!(&cur, Some((s, d)) if s + d.len() as u64 == at && d.len() + SECTOR <= MAX_PAGE_WRITE);
            if !joins {
                if let Some((s, d)) = cur.take() {
                    out.push((s, Bytes::from(d)));
                }
                cur = Some((at, Vec::with_capacity(64 << 10)));
            }
            if let Some((_, d)) = cur.as_mut() {
                d.extend_from_slice(sector);
                d.resize(d.len().next_multiple_of(SECTOR), 0);
            }
        }
    }
    if let Some((s, d)) = cur {
        out.push((s, Bytes::from(d)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nonzero_sectors_are_sent_merged_up_to_4_mib() {
        let mut a = vec![0u8; 4096];
        a[0] = 1; // sector 0
        a[1024] = 2; // sector 2
        a[1535] = 3; // sector 2
        a[1536] = 4; // sector 3
        let b = vec![9u8; 700]; // short: padded to 1024
        let runs = nonzero_runs(&[(0, a), (4096, vec![0; 4096]), (8192, b)]);
        let got: Vec<(u64, usize)> = runs.iter().map(|(o, d)| (*o, d.len())).collect();
        assert_eq!(got, vec![(0, 512), (1024, 1024), (8192, 1024)]);
        assert!(runs[2].1[700..].iter().all(|&x| x == 0));
        // 80 adjacent non-zero 64 KiB chunks: 4 MiB, then the rest.
        let big: Vec<(u64, Vec<u8>)> = (0..80u64).map(|i| (i << 16, vec![1u8; 1 << 16])).collect();
        let got: Vec<(u64, usize)> = nonzero_runs(&big).iter().map(|(o, d)| (*o, d.len())).collect();
        assert_eq!(got, vec![(0, 4 << 20), (4 << 20, 16 << 16)]);
    }
}
