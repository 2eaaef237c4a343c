//! Spool directory layout: segment file names and listing.
//!
//! A segment is named `{disk-id}-{seq:016}.hrl`, the disk id a hyphenated
//! UUID and the sequence zero-padded so names sort in sequence order. One
//! spool directory may hold the segments of several disks.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{FormatError, Result};

/// File name extension of segments.
pub const EXTENSION: &str = "hrl";

/// One segment found in a spool directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    pub disk_id: Uuid,
    pub seq: u64,
    pub path: PathBuf,
}

/// The file name of a segment.
pub fn segment_file_name(disk_id: Uuid, seq: u64) -> String {
    format!("{}-{seq:016}.{EXTENSION}", disk_id.hyphenated())
}

/// Parses a segment file name; `None` for anything else.
pub fn parse_segment_name(name: &str) -> Option<(Uuid, u64)> {
    let stem = name.strip_suffix(".hrl")?;
    let (disk, seq) = stem.rsplit_once('-')?;
    if seq.len() != 16 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((Uuid::parse_str(disk).ok()?, seq.parse().ok()?))
}

/// Segments in `dir`, sorted by disk then sequence; only those of `disk`
/// when given.
pub fn list_segments(dir: &Path, disk: Option<Uuid>) -> Result<Vec<SegmentName>> {
    let rd = std::fs::read_dir(dir).map_err(|e| FormatError::io(dir, "read directory", e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| FormatError::io(dir, "read directory", e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((d, seq)) = parse_segment_name(name) {
            if disk.is_none_or(|want| want == d) {
                out.push(SegmentName {
                    disk_id: d,
                    seq,
                    path: ent.path(),
                });
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The disks that have segments in `dir`.
pub fn list_disks(dir: &Path) -> Result<Vec<Uuid>> {
    let mut d: Vec<Uuid> = list_segments(dir, None)?.into_iter().map(|s| s.disk_id).collect();
    d.dedup();
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        let d = Uuid::new_v4();
        let n = segment_file_name(d, 42);
        assert_eq!(parse_segment_name(&n), Some((d, 42)));
        assert!(segment_file_name(d, 9) < segment_file_name(d, 10));
        assert_eq!(parse_segment_name("x-0000000000000001.hrl"), None);
        assert_eq!(parse_segment_name(&format!("{d}-1.hrl")), None);
        assert_eq!(parse_segment_name(&format!("{d}-0000000000000001.hrl.damaged")), None);
    }
}
