//! Replay: apply a disk's `Data` records up to a recovery point onto an
//! image file. A local replica, and the test oracle that needs no blob store.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{FormatError, Result};
use crate::reader::{read_segment, RecoveryMode};
use crate::record::{PointKind, Record, Tag};
use crate::spool::{list_segments, SegmentName};

/// Result of a replay.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    pub disk: Uuid,
    pub point_seq: u64,
    pub kind: PointKind,
    pub device_size: u64,
    pub segments: u64,
    pub data_records: u64,
    pub data_bytes: u64,
    pub image: PathBuf,
}

/// Picks the disk in `dir` (the only one, or `disk`).
pub fn choose_disk(dir: &Path, disk: Option<Uuid>) -> Result<Uuid> {
    if let Some(d) = disk {
        return Ok(d);
    }
    let disks = crate::spool::list_disks(dir)?;
    match disks.as_slice() {
        [d] => Ok(*d),
        [] => Err(FormatError::Invalid(format!("{}: no .hrl segments", dir.display()))),
        _ => Err(FormatError::Invalid(format!(
            "{}: segments of {} disks; choose one with --disk ({})",
            dir.display(),
            disks.len(),
            disks.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn check_gapless(dir: &Path, disk: Uuid, segs: &[SegmentName]) -> Result<()> {
    for w in segs.windows(2) {
        if w[1].seq != w[0].seq + 1 {
            return Err(FormatError::MissingSegment {
                dir: dir.to_path_buf(),
                disk,
                seq: w[0].seq + 1,
                detail: format!("segments {} and {} are present", w[0].seq, w[1].seq),
            });
        }
    }
    Ok(())
}

/// Applies every `Data` record of `disk` before the tag of point `point`
/// (or the last completed tag) onto `image`, creating it sparse and sized to
/// the device if needed. Aborted points cannot be replayed.
pub fn replay(dir: &Path, disk: Option<Uuid>, point: Option<u64>, image: &Path) -> Result<ReplayReport> {
    let disk = choose_disk(dir, disk)?;
    let segs = list_segments(dir, Some(disk))?;
    check_gapless(dir, disk, &segs)?;
    // Pass 1: where is the tag?
    let mut target: Option<(u64, u64, Tag, u64)> = None;
    for s in &segs {
        read_segment(&s.path, RecoveryMode::TolerateTornTail, |h, off, r| {
            if let Record::Tag(t) = r {
                let wanted = match point {
                    Some(p) => t.seq == p,
                    None => !t.aborted,
                };
                if wanted {
                    target = Some((s.seq, off, *t, h.device_size));
                }
            }
            Ok(())
        })?;
    }
    let Some((tseq, toff, tag, device_size)) = target else {
        return Err(FormatError::Invalid(match point {
            Some(p) => format!("{}: disk {disk} has no point {p}", dir.display()),
            None => format!("{}: disk {disk} has no completed point yet", dir.display()),
        }));
    };
    if tag.aborted {
        return Err(FormatError::Invalid(format!(
            "point {} of disk {disk} was aborted and cannot be replayed",
            tag.seq
        )));
    }
    let img = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(image)
        .map_err(|e| FormatError::io(image, "open image", e))?;
    let meta = img.metadata().map_err(|e| FormatError::io(image, "stat", e))?;
    if meta.is_file() && meta.len() < device_size {
        img.set_len(device_size)
            .map_err(|e| FormatError::io(image, "size image", e))?;
    }
    let mut report = ReplayReport {
        disk,
        point_seq: tag.seq,
        kind: tag.kind,
        device_size,
        segments: 0,
        data_records: 0,
        data_bytes: 0,
        image: image.to_path_buf(),
    };
    // Pass 2: apply Data in log order up to the tag.
    let mut zeros: Vec<u8> = Vec::new();
    for s in segs.iter().filter(|s| s.seq <= tseq) {
        report.segments += 1;
        read_segment(&s.path, RecoveryMode::TolerateTornTail, |h, off, r| {
            if s.seq == tseq && off >= toff {
                return Ok(());
            }
            if let Record::Data(d) = r {
                let bytes: &[u8] = if d.is_zero() {
                    let n = (h.chunk_size as u64).min(h.device_size.saturating_sub(d.offset)) as usize;
                    zeros.resize(n, 0);
                    &zeros
                } else {
                    &d.data
                };
                img.write_all_at(bytes, d.offset)
                    .map_err(|e| FormatError::io(image, "write image", e))?;
                report.data_records += 1;
                report.data_bytes += bytes.len() as u64;
            }
            Ok(())
        })?;
    }
    img.sync_all().map_err(|e| FormatError::io(image, "fsync image", e))?;
    Ok(report)
}
