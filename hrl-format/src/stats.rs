//! Statistics over a segment or a spool directory: what an operator looking
//! at churn wants to know (`hrl stat`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::Result;
use crate::header::FileHeader;
use crate::reader::{read_segment, RecoveryMode, TornTail};
use crate::record::{DiskMode, ExtentOp, LossReason, PointKind, Record};
use crate::spool::list_segments;

/// Size of the regions `top_regions` ranks (64 MiB).
pub const REGION: u64 = 64 << 20;

/// A set of byte ranges, merged on insert.
#[derive(Debug, Default, Clone)]
pub struct RangeSet {
    // start -> end (exclusive), non-overlapping, non-adjacent.
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn insert(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let mut s = start;
        let mut e = start.saturating_add(len);
        // Merge with a range starting before `s` that reaches it.
        if let Some((&ps, &pe)) = self.map.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
                self.map.remove(&ps);
            }
        }
        // Merge with ranges starting inside [s, e].
        while let Some((&ns, &ne)) = self.map.range(s..=e).next() {
            e = e.max(ne);
            self.map.remove(&ns);
        }
        self.map.insert(s, e);
    }
    /// Total bytes covered.
    pub fn covered(&self) -> u64 {
        self.map.iter().map(|(s, e)| e - s).sum()
    }
    /// The merged ranges as (offset, len).
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(s, e)| (*s, e - s))
    }
    pub fn contains(&self, off: u64) -> bool {
        self.map.range(..=off).next_back().is_some_and(|(_, &e)| off < e)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TagSummary {
    pub disk: Uuid,
    pub seq: u64,
    pub kind: PointKind,
    pub aborted: bool,
    pub time_ns: u64,
    pub freeze_ms: f64,
    pub group: Option<Uuid>,
    /// The label a hook attached (from the Label record before the tag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LossSummary {
    pub disk: Uuid,
    pub reason: LossReason,
    pub offset: Option<u64>,
    pub len: Option<u64>,
    pub time_ns: u64,
    pub detail: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModeSummary {
    pub disk: Uuid,
    pub mode: DiskMode,
    pub time_ns: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TornSummary {
    pub path: PathBuf,
    #[serde(flatten)]
    pub tail: TornTail,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Region {
    pub offset: u64,
    pub len: u64,
    pub written_bytes: u64,
}

/// Statistics over one or more segments.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub files: u64,
    pub sealed_files: u64,
    pub bytes: u64,
    pub records: u64,
    /// Records by type name; unknown (skipped) ones under "unknown".
    pub records_by_type: BTreeMap<String, u64>,
    pub disks: Vec<Uuid>,
    /// Sum of extent lengths (every write, discard and write-zeroes).
    pub extent_bytes: u64,
    pub write_bytes: u64,
    pub discard_bytes: u64,
    pub write_zeroes_bytes: u64,
    pub failed_writes: u64,
    /// Distinct bytes touched by extents (overlaps merged), per disk summed.
    pub dirtied_bytes: u64,
    /// Bytes of captured chunk content in Data records (zero chunks excluded).
    pub data_bytes: u64,
    /// Data records that stand for an all-zero chunk.
    pub zero_chunks: u64,
    pub first_time_ns: Option<u64>,
    pub last_time_ns: Option<u64>,
    pub span_seconds: f64,
    /// `extent_bytes` per second over the span.
    pub write_rate_bytes_per_sec: f64,
    pub tags: Vec<TagSummary>,
    pub losses: Vec<LossSummary>,
    pub modes: Vec<ModeSummary>,
    pub torn_tails: Vec<TornSummary>,
    /// The most written 64 MiB regions, most written first (at most 5).
    pub top_regions: Vec<Region>,
}

/// Accumulates [`Stats`] record by record.
#[derive(Default)]
pub struct StatsBuilder {
    stats: Stats,
    dirtied: HashMap<Uuid, RangeSet>,
    regions: HashMap<u64, u64>,
    /// A Label record waiting for its tag.
    label: Option<crate::record::Label>,
}

impl StatsBuilder {
    fn time(&mut self, t: u64) {
        if t == 0 {
            return;
        }
        let s = &mut self.stats;
        s.first_time_ns = Some(s.first_time_ns.map_or(t, |f| f.min(t)));
        s.last_time_ns = Some(s.last_time_ns.map_or(t, |l| l.max(t)));
    }

    /// Adds one record read from a segment with `header`.
    pub fn add(&mut self, header: &FileHeader, rec: &Record) {
        let disk = header.disk_id;
        self.stats.records += 1;
        *self
            .stats
            .records_by_type
            .entry(rec.type_name().to_string())
            .or_default() += 1;
        if let Some(t) = rec.time_ns() {
            self.time(t);
        }
        let s = &mut self.stats;
        match rec {
            Record::Extent(e) => {
                s.extent_bytes += e.len;
                match e.op {
                    ExtentOp::Write => s.write_bytes += e.len,
                    ExtentOp::Discard => s.discard_bytes += e.len,
                    ExtentOp::WriteZeroes => s.write_zeroes_bytes += e.len,
                }
                if e.failed {
                    s.failed_writes += 1;
                }
                self.dirtied.entry(disk).or_default().insert(e.offset, e.len);
                *self.regions.entry(e.offset / REGION).or_default() += e.len;
            }
            Record::Data(d) if d.is_zero() => s.zero_chunks += 1,
            Record::Data(d) => s.data_bytes += d.data.len() as u64,
            Record::Tag(t) => s.tags.push(TagSummary {
                disk,
                seq: t.seq,
                kind: t.kind,
                aborted: t.aborted,
                time_ns: t.time_ns,
                freeze_ms: t.freeze_ns as f64 / 1e6,
                group: t.group,
                label: self.label.take().filter(|l| l.seq == t.seq).map(|l| l.text),
            }),
            Record::Lost(l) => s.losses.push(LossSummary {
                disk,
                reason: l.reason,
                offset: l.range.map(|r| r.0),
                len: l.range.map(|r| r.1),
                time_ns: l.time_ns,
                detail: l.detail.clone(),
            }),
            Record::Mode(m) => s.modes.push(ModeSummary {
                disk,
                mode: m.mode,
                time_ns: m.time_ns,
            }),
            Record::Label(l) => self.label = Some(l.clone()),
            Record::Flush(_) | Record::Seal(_) | Record::Group(_) | Record::Identity(_) => {}
        }
    }

    /// Adds a whole segment file. Torn tails are tolerated and listed.
    pub fn add_file(&mut self, path: &Path) -> Result<()> {
        let sum = read_segment(path, RecoveryMode::TolerateTornTail, |h, _, r| {
            self.add(h, r);
            Ok(())
        })?;
        self.time(0);
        let s = &mut self.stats;
        s.files += 1;
        s.bytes += sum.bytes;
        if sum.sealed {
            s.sealed_files += 1;
        }
        if sum.unknown_skipped > 0 {
            *s.records_by_type.entry("unknown".into()).or_default() += sum.unknown_skipped;
            s.records += sum.unknown_skipped;
        }
        if !s.disks.contains(&sum.disk_id) {
            s.disks.push(sum.disk_id);
        }
        if let Some(t) = sum.torn_tail {
            s.torn_tails.push(TornSummary {
                path: path.to_path_buf(),
                tail: t,
            });
        }
        Ok(())
    }

    pub fn finish(mut self) -> Stats {
        let s = &mut self.stats;
        s.dirtied_bytes = self.dirtied.values().map(RangeSet::covered).sum();
        if let (Some(a), Some(b)) = (s.first_time_ns, s.last_time_ns) {
            s.span_seconds = (b - a) as f64 / 1e9;
            if s.span_seconds > 0.0 {
                s.write_rate_bytes_per_sec = s.extent_bytes as f64 / s.span_seconds;
            }
        }
        let mut regions: Vec<_> = self.regions.into_iter().collect();
        regions.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        s.top_regions = regions
            .into_iter()
            .take(5)
            .map(|(r, n)| Region {
                offset: r * REGION,
                len: REGION,
                written_bytes: n,
            })
            .collect();
        self.stats
    }
}

/// Stats of a segment file, or of every segment in a directory.
pub fn stat_path(path: &Path) -> Result<Stats> {
    let mut b = StatsBuilder::default();
    if path.is_dir() {
        for seg in list_segments(path, None)? {
            b.add_file(&seg.path)?;
        }
    } else {
        b.add_file(path)?;
    }
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_set_merges() {
        let mut r = RangeSet::default();
        r.insert(10, 10);
        r.insert(30, 10);
        assert_eq!(r.covered(), 20);
        r.insert(15, 20); // bridges both
        assert_eq!(r.ranges().collect::<Vec<_>>(), vec![(10, 30)]);
        r.insert(40, 5); // adjacent merges
        assert_eq!(r.ranges().collect::<Vec<_>>(), vec![(10, 35)]);
        r.insert(0, 1);
        assert_eq!(r.covered(), 36);
        assert!(r.contains(0) && !r.contains(1) && r.contains(44) && !r.contains(45));
    }
}
