//! Restore through the process server, for a machine that holds no key:
//! the gateway decrypts and verifies every chunk and streams the point;
//! this side writes it onto the target with the same refusals as a local
//! restore (mounted, tracked, an existing file without `--force`).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use reqwest::Method;
use uuid::Uuid;

use super::client::GatewayClient;
use super::identity::Identity;
use crate::error::{Result, ShipError};
use crate::repo::disks::{select, DiskInfo};
use crate::repo::manifest::PointHeader;
use crate::restore::target::{self, Mode};
use crate::restore::{PointSel, RestoreReport};

/// Chunks asked for per request.
const BATCH: u64 = 128;

async fn get_json<T: serde::de::DeserializeOwned>(c: &GatewayClient, path: &str) -> Result<T> {
    match c.call(Method::GET, path, None).await? {
        Ok(v) => serde_json::from_value(v).map_err(|e| ShipError::Gateway {
            url: c.url.clone(),
            why: format!("{path}: {e}"),
        }),
        Err(a) if a.status == 401 || a.status == 403 || a.status == 404 => {
            Err(ShipError::Usage(format!("gateway {}: {}", c.url, a.error())))
        }
        Err(a) => Err(ShipError::Gateway {
            url: c.url.clone(),
            why: format!("HTTP {}: {}", a.status, a.error()),
        }),
    }
}

/// This machine's disks with points, as the gateway names them.
pub async fn disks(id: &Identity) -> Result<Vec<DiskInfo>> {
    get_json(&id.client(&id.gateway)?, "/v1/disks").await
}

/// The published points of one of this machine's disks.
pub async fn points(id: &Identity, disk: &Uuid) -> Result<Vec<PointHeader>> {
    get_json(&id.client(&id.gateway)?, &format!("/v1/disks/{disk}/points")).await
}

/// The disk `sel` names among this machine's disks (as `--disk` does).
pub async fn resolve(id: &Identity, sel: Option<&str>) -> Result<DiskInfo> {
    let all = disks(id).await?;
    Ok(select(&all, sel, &id.gateway)?.clone())
}

/// Restores a point of one of this machine's disks onto `to`.
pub async fn restore(
    id: &Identity,
    disk: &DiskInfo,
    p: PointSel,
    before: Option<u64>,
    to: &Path,
    force: bool,
) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let c = id.client(&id.gateway)?;
    let h = pick(id, disk, p, before).await?;
    let target = target::open(to, Mode::Write { force })?;
    let r = write(&c, &h, &target, to).await;
    if r.is_err() && target.created {
        let _ = std::fs::remove_file(to);
    }
    let (written, zeros) = r?;
    let mut rep = RestoreReport::new(disk.id, h.seq, &h, to);
    rep.stored_chunks = rep.chunks - zeros;
    rep.zero_chunks = zeros;
    rep.bytes_written = written;
    rep.bytes_fetched = h.device_size;
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}

/// The header of the point `p` (or the newest at or before `before`).
pub async fn pick(id: &Identity, disk: &DiskInfo, p: PointSel, before: Option<u64>) -> Result<PointHeader> {
    let pts = points(id, &disk.id).await?;
    match (p, before) {
        (PointSel::Seq(s), _) => pts.iter().find(|h| h.seq == s),
        (PointSel::Latest, Some(t)) => pts.iter().rev().find(|h| h.time_ns <= t),
        (PointSel::Latest, None) => pts.last(),
    }
    .cloned()
    .ok_or_else(|| ShipError::Point {
        disk: disk.label(),
        why: format!("no such point (points: {})", pts.len()),
    })
}

/// Checks that a device target holds the disk, or sizes an image to it.
pub fn size_target(target: &target::Target, h: &PointHeader, to: &Path) -> Result<()> {
    if target.is_device {
        let len = std::io::Seek::seek(&mut &target.file, std::io::SeekFrom::End(0))
            .map_err(|e| ShipError::io(to, "size", e))?;
        if len < h.device_size {
            return Err(ShipError::Usage(format!(
                "{}: {len} bytes, the disk is {}; nothing was written",
                to.display(),
                h.device_size
            )));
        }
        return Ok(());
    }
    target
        .file
        .set_len(h.device_size)
        .map_err(|e| ShipError::io(to, "size image", e))
}

/// Fetches every chunk in batches and writes it; a fresh target skips
/// zero chunks (it reads as zeros already). Returns bytes written and zero
/// chunks.
async fn write(c: &GatewayClient, h: &PointHeader, target: &target::Target, to: &Path) -> Result<(u64, u64)> {
    let csize = h.chunk_size as u64;
    let chunks = h.device_size.div_ceil(csize);
    size_target(target, h, to)?;
    let (mut written, mut zeros) = (0u64, 0u64);
    let mut last_report = Instant::now();
    for from in (0..chunks).step_by(BATCH as usize) {
        let path = format!("/v1/disks/{}/points/{}/chunks?from={from}&count={BATCH}", h.disk, h.seq);
        let bytes = c.get_bytes(&path).await?;
        let want = (h.device_size - from * csize).min(BATCH * csize);
        if bytes.len() as u64 != want {
            return Err(ShipError::Gateway {
                url: c.url.clone(),
                why: format!(
                    "{path}: {} bytes, expected {want}; the restore target {} is incomplete",
                    bytes.len(),
                    to.display()
                ),
            });
        }
        for (i, chunk) in bytes.chunks(csize as usize).enumerate() {
            let off = (from + i as u64) * csize;
            if chunk.iter().all(|&b| b == 0) {
                zeros += 1;
                if target.fresh {
                    continue;
                }
            }
            target
                .file
                .write_all_at(chunk, off)
                .map_err(|e| ShipError::io(to, "write", e))?;
            written += chunk.len() as u64;
        }
        if last_report.elapsed().as_secs() >= 2 {
            last_report = Instant::now();
            eprintln!("restore: {} of {} chunks", (from + BATCH).min(chunks), chunks);
        }
    }
    target.file.sync_all().map_err(|e| ShipError::io(to, "fsync", e))?;
    Ok((written, zeros))
}
