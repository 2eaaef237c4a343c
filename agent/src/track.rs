//! `hrl-agent track`: change tracking alone, in the foreground. Writes
//! Extent, Flush, Mode and Lost records for one device until stopped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrl_format::{DiskMode, LogConfig, LogWriter, LossReason, ModeChange, Record};
use uuid::Uuid;

use crate::device::BlockDevice;
use crate::dirty::DirtyMap;
use crate::error::{AgentError, Result};
use crate::lock::DeviceLock;
use crate::state::DiskState;
use crate::tracefs::Tracefs;
use crate::tracker::{record_loss, TraceSource, Tracker};

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

/// Parses sizes like `65536`, `64K`, `64KiB`, `1M`, `1MiB`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| AgentError::Config(format!("bad size {s:?}: expected a number with an optional unit")))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(AgentError::Config(format!("bad size {s:?}: unknown unit {u:?}"))),
    };
    Ok(n * mult)
}

/// Checks that the spool exists (creating it 0700) and is not on `dev`.
pub fn prepare_spool(spool: &Path, dev: &BlockDevice) -> Result<()> {
    if !spool.exists() {
        std::fs::create_dir_all(spool).map_err(|e| AgentError::io(spool, "create spool directory", e))?;
        std::fs::set_permissions(spool, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| AgentError::io(spool, "chmod 0700", e))?;
    }
    if dev.contains_path(spool)? {
        return Err(AgentError::SpoolOnTrackedDevice {
            spool: spool.into(),
            device: dev.path.clone(),
        });
    }
    Ok(())
}

/// Runs tracking until `stop` is set; then drains, seals and removes the
/// tracing instance.
pub fn run_track(opts: &TrackOptions, stop: Arc<AtomicBool>) -> Result<TrackSummary> {
    if !opts.chunk_size.is_power_of_two() || opts.chunk_size < 4096 {
        return Err(AgentError::Config(format!(
            "chunk size {} must be a power of two of at least 4 KiB",
            opts.chunk_size
        )));
    }
    let mut dev = BlockDevice::open(&opts.device)?;
    prepare_spool(&opts.spool, &dev)?;
    let _lock = DeviceLock::acquire(&dev)?;
    let tracefs = Tracefs::locate_or_mount()?;
    for name in tracefs.remove_stale_instances()? {
        tracing::info!(instance = %name, "removed a tracefs instance left by a dead agent");
    }
    let name = opts.name.clone().unwrap_or_else(|| dev.name.clone());
    let previous = DiskState::load(&opts.spool, &name)?;
    let mut state = match &previous {
        Some(s) => {
            if s.chunk_size != opts.chunk_size {
                return Err(AgentError::Config(format!(
                    "disk {name} was tracked with chunk size {} in {}; keep it or use a new spool",
                    s.chunk_size,
                    opts.spool.display()
                )));
            }
            s.clone()
        }
        None => DiskState {
            name: name.clone(),
            disk_id: Uuid::new_v4(),
            device: dev.path.clone(),
            chunk_size: opts.chunk_size,
            clean_shutdown: false,
            initial_sync_done: false,
        },
    };
    let mut cfg = LogConfig::new(
        &opts.spool,
        state.disk_id,
        opts.chunk_size,
        dev.logical_block_size,
        dev.size,
    );
    cfg.rotate_bytes = opts.rotate_bytes;
    let mut log = LogWriter::open(cfg)?;
    for r in log.recovered() {
        tracing::warn!(segment = %r.path.display(), records = r.records, torn = ?r.torn_tail, "sealed a segment a previous run left open");
    }
    // Tracking on first: every completion from here on is seen.
    let source = TraceSource::start(&tracefs, &dev, opts.buffer_kb)?;
    tracing::info!(device = %dev.path.display(), disk = %state.disk_id, source = %source_desc(&source), "tracking");
    let dirty = Arc::new(DirtyMap::new(dev.size, opts.chunk_size));
    let mut tracker = Tracker::new(Box::new(source), dirty.clone());
    match &previous {
        None => {
            dirty.mark_all();
            log.append(&Record::Mode(ModeChange {
                mode: DiskMode::InitialSync,
                time_ns: hrl_format::now_ns(),
            }))?;
        }
        Some(p) => {
            let (reason, why) = if p.clean_shutdown {
                (
                    LossReason::Restart,
                    "agent restarted: writes while it was stopped are unknown",
                )
            } else {
                (LossReason::Unclean, "the previous agent run ended uncleanly")
            };
            record_loss(&mut log, &dirty, reason, why.into())?;
        }
    }
    state.clean_shutdown = false;
    state.save(&opts.spool)?;
    log.sync()?;

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

fn source_desc(s: &TraceSource) -> String {
    use crate::tracker::ChangeSource;
    s.describe()
}
