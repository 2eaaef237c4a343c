//! What a rotating log is configured with.

use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

use crate::record::Identity;

/// Configuration of a rotating log for one disk.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub disk_id: Uuid,
    pub chunk_size: u32,
    pub logical_block_size: u32,
    pub device_size: u64,
    /// Rotate once a segment reaches this many bytes.
    pub rotate_bytes: u64,
    /// Rotate a non-empty segment older than this.
    pub rotate_age: Duration,
    /// Longest time an appended record may stay unsynced (checked by
    /// [`LogWriter::tick`] and on every append).
    pub sync_interval: Duration,
    /// Longest time an appended record may wait in the writer's buffer
    /// before [`LogWriter::tick`] makes it visible to followers. Each flush
    /// is a write the agent waits for (a wake-up), so it is not done on
    /// every turn of its loop; a forwarder looks only twice a second
    /// anyway. A point's tag is synced, and
    /// so made visible, at once whatever this says.
    pub flush_interval: Duration,
    /// Host and disk name, written first in every segment (an Identity
    /// record) so whoever reads any segment can name the disk.
    pub identity: Option<Identity>,
}

impl LogConfig {
    /// Defaults: 64 MiB or 60 s segments, fsync at least every second,
    /// records visible to followers within 200 ms.
    pub fn new(
        dir: impl Into<PathBuf>,
        disk_id: Uuid,
        chunk_size: u32,
        logical_block_size: u32,
        device_size: u64,
    ) -> Self {
        LogConfig {
            dir: dir.into(),
            disk_id,
            chunk_size,
            logical_block_size,
            device_size,
            rotate_bytes: 64 << 20,
            rotate_age: Duration::from_secs(60),
            sync_interval: Duration::from_secs(1),
            flush_interval: Duration::from_millis(200),
            identity: None,
        }
    }
}
