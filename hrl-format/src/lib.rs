//! The `.hrl` append-only change-log format.
//!
//! A spool directory holds one rotating log per tracked disk: segments named
//! `{disk-id}-{seq:016}.hrl`, each a 128-byte header followed by framed,
//! checksummed records. This crate is the only code that knows the byte
//! layout; the agent writes through [`LogWriter`], the shipper reads through
//! [`Follower`]. The layout is specified in `docs/hrl-format.md`.

pub mod direct_read;
pub mod error;
pub mod follow;
pub mod header;
pub mod metrics_http;
pub mod reader;
pub mod record;
pub mod replay;
pub mod spool;
pub mod stats;
pub mod stream;
#[doc(hidden)]
pub mod testutil;
pub mod writer;

pub use error::{FormatError, Result};
pub use follow::{Cursor, Followed, Follower};
pub use header::{FileHeader, HEADER_LEN, MAGIC, MAJOR_VERSION, MINOR_VERSION};
pub use reader::{read_header, read_segment, segment_identity, RecoveryMode, SegmentReader, SegmentSummary, TornTail};
pub use record::{
    Data, DiskMode, Extent, ExtentOp, Flush, Group, Identity, Label, LossReason, Lost, ModeChange, PointKind, Record,
    Seal, Tag,
};
pub use replay::{replay, ReplayReport};
pub use spool::{list_disks, list_segments, parse_segment_name, segment_file_name, SegmentName};
pub use stats::{stat_path, RangeSet, Stats, StatsBuilder};
pub use stream::SegmentStream;
pub use writer::{sync_dir, LogConfig, LogWriter, Position, RecoveredSegment, SegmentWriter};

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A byte count for people: `512 B`, `1.5 KiB`, `23.6 MiB`, ...
pub fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
