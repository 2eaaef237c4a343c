//! Writers: one segment ([`SegmentWriter`]) and a rotating log of segments
//! for one disk ([`LogWriter`]).
//!
//! Files are created `O_EXCL` with mode 0600 (they hold disk contents) and
//! the directory is fsynced after each create, so a segment that a reader
//! can see by name survives a crash. A sealed segment is chmod 0400 and never
//! written again. Durability is explicit: a `Tag` is always fsynced before
//! `append` returns; other records are fsynced by [`LogWriter::tick`] at the
//! configured interval, or by [`LogWriter::sync`].

mod config;
mod direct;
mod log;
mod recover;
mod segment;

pub use config::LogConfig;
pub use log::{LogWriter, Position};
pub use recover::RecoveredSegment;
pub use segment::{sync_dir, SegmentWriter};
