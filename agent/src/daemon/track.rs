//! `hrl-agent track`: change tracking alone, in the foreground. Writes
//! Extent, Flush, Mode and Lost records for one device until stopped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrl_format::LossReason;
use uuid::Uuid;

use crate::disk::DiskSetup;
use crate::error::Result;
use crate::tracking::device::BlockDevice;
use crate::tracking::dirty::DirtyMap;
use crate::tracking::tracker::{record_loss, TraceSource, Tracker};

/// Options of `hrl-agent track`.
#[derive(Debug, Clone)]
pub struct TrackOptions {
    pub device: PathBuf,
    pub spool: PathBuf,
    /// Disk name (state file, logs); default: the kernel device name.
    pub name: Option<String>,
    pub chunk_size: u32,
    /// Ring buffer per CPU, KiB.
    pub buffer_kb: u32,
    pub poll_interval: Duration,
    pub rotate_bytes: u64,
}

impl TrackOptions {
    pub fn new(device: impl Into<PathBuf>, spool: impl Into<PathBuf>) -> Self {
        TrackOptions {
            device: device.into(),
            spool: spool.into(),
            name: None,
            chunk_size: 64 * 1024,
            buffer_kb: 4096,
            poll_interval: Duration::from_millis(20),
            rotate_bytes: 64 << 20,
        }
    }
}

/// What a tracking run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrackSummary {
    pub disk_id: Uuid,
    pub changes: u64,
    pub extent_records: u64,
    pub losses: u64,
    pub dirty_chunks: u64,
}

/// Runs tracking until `stop` is set; then drains, seals and removes the
/// tracing instance.
pub fn run_track(opts: &TrackOptions, stop: Arc<AtomicBool>) -> Result<TrackSummary> {
    if !opts.chunk_size.is_power_of_two() || opts.chunk_size < 4096 {
        return Err(crate::AgentError::Config(format!(
            "chunk size {} must be a power of two of at least 4 KiB",
            opts.chunk_size
        )));
    }
    let s = DiskSetup::open(
        opts.name.as_deref(),
        &opts.device,
        &opts.spool,
        opts.chunk_size,
        opts.buffer_kb,
        opts.rotate_bytes,
        false,
    )?;
    let (mut dev, _lock, mut log, mut tracker, mut state, tracefs) =
        (s.dev, s.lock, s.log, s.tracker, s.state, s.tracefs);
    let mut last_size_check = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let o = tracker.poll(&mut log)?;
        if o.lost {
            tracing::warn!(disk = %state.disk_id, "tracking lost events; disk marked for resync");
        }
        log.tick()?;
        if last_size_check.elapsed() >= Duration::from_secs(1) {
            last_size_check = Instant::now();
            let size = dev.current_size()?;
            if size != dev.size {
                tracing::warn!(old = dev.size, new = size, "device size changed; resync");
                dev = BlockDevice::open(&opts.device)?;
                log.set_device_size(size)?;
                let source = TraceSource::start(&tracefs, &dev, opts.buffer_kb)?;
                let dirty = Arc::new(DirtyMap::new(size, opts.chunk_size));
                tracker = Tracker::new(Box::new(source), dirty.clone());
                record_loss(
                    &mut log,
                    &dirty,
                    LossReason::Resize,
                    format!("device size changed to {size} bytes"),
                )?;
            }
        }
        std::thread::sleep(opts.poll_interval);
    }
    tracker.drain(&mut log)?;
    let summary = TrackSummary {
        disk_id: state.disk_id,
        changes: tracker.counters.changes,
        extent_records: tracker.counters.extent_records,
        losses: tracker.counters.losses,
        dirty_chunks: tracker.dirty().count(),
    };
    drop(tracker);
    log.close()?;
    state.clean_shutdown = true;
    state.save(&opts.spool)?;
    Ok(summary)
}
