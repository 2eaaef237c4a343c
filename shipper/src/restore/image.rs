//! Writing a point onto an image file or block device: plan every chunk
//! first (each must be locatable before a byte is written), then fetch
//! ranged reads from the packs (8 at a time, opened on all cores) and write
//! them through io_uring; failback first hashes the target and skips the
//! chunks already right.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use uuid::Uuid;

use super::fetch::{chunk_stream, plan, PackPlan, Progress};
use super::target::{self, Mode, Target};
use super::write::BatchWriter;
use super::{resolve, same, PointSel, RestoreReport};
use crate::error::{Result, ShipError};
use crate::repo::crypto::ChunkId;
use crate::repo::manifest::{self, ChunkRef, PointHeader};
use crate::repo::{Location, Repo};

/// How a restore treats its target.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Progress on stderr: a bar on a terminal, plain lines otherwise.
    pub progress: bool,
    /// Overwrite an existing non-empty image file.
    pub force: bool,
}

/// Restores point `p` of `disk` onto `to`: a new image file (created 0600),
/// an empty file, or a block device at least as large as the disk that is
/// neither mounted nor tracked. An existing non-empty file is refused.
pub async fn restore(repo: &Repo, disk: &Uuid, p: PointSel, to: &Path, progress: bool) -> Result<RestoreReport> {
    let o = RestoreOptions { progress, force: false };
    restore_to(repo, disk, p, to, o).await
}

/// [`restore`] with options (`--force`).
pub async fn restore_to(repo: &Repo, disk: &Uuid, p: PointSel, to: &Path, o: RestoreOptions) -> Result<RestoreReport> {
    let mode = Mode::Write { force: o.force };
    restore_with(repo, disk, p, to, o.progress, mode).await
}

/// Brings an existing device or image to point `p` by reading and hashing
/// each of its chunks and writing only those that differ. The device must
/// be neither mounted nor tracked.
pub async fn failback(repo: &Repo, disk: &Uuid, p: PointSel, to: &Path, progress: bool) -> Result<RestoreReport> {
    restore_with(repo, disk, p, to, progress, Mode::Failback).await
}

/// Failback: hashes every chunk of the target; true where it already holds
/// what the point says.
fn compare_target(
    repo: &Repo,
    h: &PointHeader,
    map: &BTreeMap<u64, ChunkRef>,
    f: &File,
    to: &Path,
) -> Result<Vec<bool>> {
    let csize = h.chunk_size as u64;
    let chunks = h.device_size.div_ceil(csize);
    let mut buf = vec![0u8; csize as usize];
    let mut skip = vec![false; chunks as usize];
    for idx in 0..chunks {
        let n = (h.device_size - idx * csize).min(csize) as usize;
        f.read_exact_at(&mut buf[..n], idx * csize)
            .map_err(|e| ShipError::io(to, "read failback target", e))?;
        if let Some(r) = map.get(&idx) {
            skip[idx as usize] = same(repo, r, &buf[..n]);
        }
    }
    Ok(skip)
}

/// Checks the size of a device target, or sizes an image.
fn size_target(t: &Target, to: &Path, h: &PointHeader, disk: &Uuid, seq: u64) -> Result<()> {
    if t.is_device {
        let size = block_size(&t.file).map_err(|e| ShipError::io(to, "BLKGETSIZE64", e))?;
        if size < h.device_size {
            return Err(ShipError::Usage(format!(
                "{}: the device has {size} bytes, point {seq} of disk {disk} needs {}; nothing was written",
                to.display(),
                h.device_size
            )));
        }
        return Ok(());
    }
    t.file
        .set_len(h.device_size)
        .map_err(|e| ShipError::io(to, "size image", e))
}

async fn restore_with(
    repo: &Repo,
    disk: &Uuid,
    p: PointSel,
    to: &Path,
    progress: bool,
    mode: Mode,
) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let seq = resolve(repo, disk, p).await?;
    let (h, map) = manifest::full_map(repo, disk, seq).await?;
    let index = crate::restore::index_for(repo, &map).await?;
    let target = target::open(to, mode)?;
    let job = Job {
        repo,
        disk,
        seq,
        h: &h,
        map: &map,
        index: &index,
        to,
        progress,
        mode,
        t0,
    };
    let r = write_point(&job, &target).await;
    // A refused or failed restore leaves no file it created itself behind.
    if r.is_err() && target.created {
        let _ = std::fs::remove_file(to);
    }
    r
}

/// One restore: the point and where it goes.
struct Job<'a> {
    repo: &'a Repo,
    disk: &'a Uuid,
    seq: u64,
    h: &'a PointHeader,
    map: &'a BTreeMap<u64, ChunkRef>,
    index: &'a HashMap<ChunkId, Location>,
    to: &'a Path,
    progress: bool,
    mode: Mode,
    t0: Instant,
}

async fn write_point(j: &Job<'_>, target: &Target) -> Result<RestoreReport> {
    let Job {
        repo,
        disk,
        seq,
        h,
        map,
        index,
        to,
        progress,
        mode,
        t0,
    } = *j;
    let only_differing = mode == Mode::Failback;
    let incomplete = |why: String| ShipError::Point {
        disk: disk.to_string(),
        why: format!(
            "restore of point {seq} failed: {why}; the restore target {} is incomplete",
            to.display()
        ),
    };
    let chunks = h.device_size.div_ceil(h.chunk_size as u64);
    let csize = h.chunk_size as u64;
    let skip = if only_differing {
        compare_target(repo, h, map, &target.file, to)?
    } else {
        Vec::new()
    };
    let plan = plan(h, map, index, &skip, &incomplete)?;
    size_target(target, to, h, disk, seq)?;
    let mut rep = RestoreReport {
        zero_chunks: plan.zeros.len() as u64,
        compared: if only_differing { chunks } else { 0 },
        skipped: plan.skipped,
        ..RestoreReport::new(*disk, seq, h, to)
    };
    if !target.fresh {
        let z = vec![0u8; csize as usize];
        for &idx in &plan.zeros {
            let n = (h.device_size - idx * csize).min(csize) as usize;
            target
                .file
                .write_all_at(&z[..n], idx * csize)
                .map_err(|e| incomplete(format!("write at {}: {e}", idx * csize)))?;
            rep.bytes_written += n as u64;
        }
    }
    let label = if only_differing { "failback" } else { "restore" };
    let out = &target.file;
    fetch_and_write(
        repo,
        h,
        plan.by_pack,
        out,
        &mut rep,
        progress.then_some(label),
        &incomplete,
    )
    .await?;
    out.sync_all().map_err(|e| incomplete(format!("fsync: {e}")))?;
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}

/// Fetches every ranged read (8 in flight; each authenticated, decompressed
/// and re-hashed on a blocking thread) and writes the chunks that are ready.
async fn fetch_and_write(
    repo: &Repo,
    h: &PointHeader,
    by_pack: BTreeMap<[u8; 32], PackPlan>,
    target: &File,
    rep: &mut RestoreReport,
    progress: Option<&str>,
    incomplete: &dyn Fn(String) -> ShipError,
) -> Result<()> {
    let t0 = Instant::now();
    let (total, fetches) = chunk_stream(repo, h, by_pack);
    let mut fetches = std::pin::pin!(fetches);
    let mut writer = BatchWriter::new(target);
    tracing::debug!(io_uring = writer.uses_io_uring(), "restore writer");
    let mut shown = Progress::new(progress, total);
    while let Some(r) = fetches.next().await {
        let (fetched, chunks) = r.map_err(incomplete)?;
        rep.bytes_fetched += fetched;
        writer.write_all(&chunks).map_err(incomplete)?;
        rep.stored_chunks += chunks.len() as u64;
        rep.bytes_written += chunks.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
        shown.step(rep.bytes_written, t0);
    }
    shown.finish();
    Ok(())
}

fn block_size(f: &std::fs::File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), 0x8008_1272u64 as _, &mut size) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}
