//! Opening a disk: device, lock, spool, state, log (recovering segments a
//! crash left open) and tracking, shared by `hrl-agent track` and `run`.

use std::path::Path;
use std::sync::Arc;

use hrl_format::{DiskMode, LogConfig, LogWriter, LossReason, ModeChange, Record};
use uuid::Uuid;

use super::state::DiskState;
use crate::continuity::{self, Resumed};
use crate::error::{AgentError, Result};
use crate::tracking::device::BlockDevice;
use crate::tracking::dirty::DirtyMap;
use crate::tracking::lock::DeviceLock;
use crate::tracking::tracefs::Tracefs;
use crate::tracking::tracker::{record_loss, TraceSource, Tracker};

/// What opening a disk sets up, shared by `track` and `run`.
pub struct DiskSetup {
    pub dev: BlockDevice,
    pub lock: DeviceLock,
    pub log: LogWriter,
    pub tracker: Tracker,
    pub dirty: Arc<DirtyMap>,
    pub state: DiskState,
    /// The disk was tracked here before (this start is a restart).
    pub previous: Option<DiskState>,
    /// The previous clean stop's fingerprint matched: no resync.
    pub resumed: Option<Resumed>,
    /// Why this start began as it did (for `hrl-agent status`).
    pub start: String,
    pub tracefs: Tracefs,
}

/// Checks that the spool exists (creating it 0700) and is not on `dev`.
pub fn prepare_spool(spool: &Path, dev: &BlockDevice) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Checked before anything is created: a refused start leaves no spool
    // directory behind. A new spool lands on its nearest existing ancestor's
    // filesystem.
    let existing = spool.ancestors().find(|p| p.exists()).unwrap_or(spool);
    if dev.contains_path(existing)? {
        return Err(AgentError::SpoolOnTrackedDevice {
            spool: spool.into(),
            device: dev.path.clone(),
        });
    }
    if !spool.exists() {
        std::fs::create_dir_all(spool).map_err(|e| AgentError::io(spool, "create spool directory", e))?;
        std::fs::set_permissions(spool, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| AgentError::io(spool, "chmod 0700", e))?;
    }
    Ok(())
}

impl DiskSetup {
    /// Opens the device, takes its lock, loads state, opens the log
    /// (recovering segments a crash left open), and starts tracking. Every
    /// completion after this returns is tracked. Writes the first records:
    /// `Mode(InitialSync)` for a new disk, `Lost` + `Mode(Resync)` for a
    /// restart, or only the mode it resumes in when `resume_ok` and the
    /// previous clean stop's fingerprint still matches the device.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        name: Option<&str>,
        device: &Path,
        spool: &Path,
        chunk_size: u32,
        trace_buffer_kb: u32,
        segment_size: u64,
        resume_ok: bool,
    ) -> Result<Self> {
        let dev = BlockDevice::open(device)?;
        let lock = DeviceLock::acquire(&dev)?;
        prepare_spool(spool, &dev)?;
        let tracefs = Tracefs::locate_or_mount()?;
        for n in tracefs.remove_stale_instances()? {
            tracing::info!(instance = %n, "removed a tracefs instance left by a dead agent");
        }
        let name = name.map(str::to_string).unwrap_or_else(|| dev.name.clone());
        let previous = DiskState::load(spool, &name)?;
        let mut state = match &previous {
            Some(s) => {
                if s.chunk_size != chunk_size {
                    return Err(AgentError::Config(format!(
                        "disk {name} was tracked with chunk size {} in {}; keep it or use a new spool",
                        s.chunk_size,
                        spool.display()
                    )));
                }
                s.clone()
            }
            None => DiskState {
                name: name.clone(),
                disk_id: Uuid::new_v4(),
                device: dev.path.clone(),
                chunk_size,
                clean_shutdown: false,
                initial_sync_done: false,
                last_point_seq: 0,
                continuity: None,
            },
        };
        let mut cfg = LogConfig::new(spool, state.disk_id, chunk_size, dev.logical_block_size, dev.size);
        cfg.rotate_bytes = segment_size;
        cfg.identity = Some(hrl_format::Identity {
            host: hrl_common::host_name(),
            name: name.clone(),
        });
        let mut log = LogWriter::open(cfg)?;
        for r in log.recovered() {
            tracing::warn!(segment = %r.path.display(), records = r.records, torn = ?r.torn_tail, "sealed a segment a previous run left open");
        }
        let source = TraceSource::start(&tracefs, &dev, trace_buffer_kb)?;
        tracing::info!(disk = %name, id = %state.disk_id, device = %dev.path.display(), source = %crate::tracking::tracker::ChangeSource::describe(&source), "tracking");
        let dirty = Arc::new(DirtyMap::new(dev.size, chunk_size));
        let tracker = Tracker::new(Box::new(source), dirty.clone());
        let (resumed, start) = start_mode(previous.as_ref(), resume_ok, &dev, &dirty, spool, &name);
        match (&previous, &resumed) {
            (None, _) => {
                dirty.mark_all();
                log.append(&Record::Mode(ModeChange {
                    mode: DiskMode::InitialSync,
                    time_ns: hrl_format::now_ns(),
                }))?;
            }
            (Some(_), Some(r)) => {
                tracing::info!(disk = %name, dirty_chunks = r.dirty_chunks, mode = ?r.mode, "continuing after a clean stop: the device's fingerprint matches, no resync");
                log.append(&Record::Mode(ModeChange {
                    mode: r.mode,
                    time_ns: hrl_format::now_ns(),
                }))?;
            }
            (Some(p), None) => {
                let reason = if p.clean_shutdown {
                    LossReason::Restart
                } else {
                    LossReason::Unclean
                };
                tracing::warn!(disk = %name, "{start}");
                record_loss(&mut log, &dirty, reason, start.clone())?;
            }
        }
        state.continuity = None;
        state.clean_shutdown = false;
        state.device = dev.path.clone();
        state.save(spool)?;
        log.sync()?;
        Ok(DiskSetup {
            dev,
            lock,
            log,
            tracker,
            dirty,
            state,
            previous,
            resumed,
            start,
            tracefs,
        })
    }
}

/// Whether this start continues from the previous clean stop, and the
/// sentence `hrl-agent status` shows about it.
fn start_mode(
    previous: Option<&DiskState>,
    resume_ok: bool,
    dev: &BlockDevice,
    dirty: &DirtyMap,
    spool: &Path,
    name: &str,
) -> (Option<Resumed>, String) {
    let Some(p) = previous else {
        return (
            None,
            "first start on this disk: the initial sync reads every chunk".into(),
        );
    };
    if !p.clean_shutdown {
        return (
            None,
            "restart after an unclean stop (crash, kill or power loss): the resync reads every chunk".into(),
        );
    }
    let why = match (&p.continuity, resume_ok) {
        (_, false) => "resume_after_clean_stop is off".to_string(),
        (None, true) => "that stop recorded no fingerprint of the device".to_string(),
        (Some(fp), true) => match continuity::resume(fp, dev, dirty, spool, name) {
            Ok(r) => {
                let s = format!(
                    "restart after a clean stop: no resync (the device's fingerprint matched; {} dirty chunks carried over)",
                    r.dirty_chunks
                );
                return (Some(r), s);
            }
            Err(e) => e,
        },
    };
    (
        None,
        format!("restart after a clean stop: the resync reads every chunk because {why}"),
    )
}

/// Bytes of `.hrl` files in the spool, bytes free on its filesystem, and
/// the filesystem's size.
pub fn spool_usage(spool: &Path) -> Result<(u64, u64, u64)> {
    let mut used = 0;
    let rd = std::fs::read_dir(spool).map_err(|e| AgentError::io(spool, "read spool", e))?;
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().ends_with(".hrl") {
            used += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    let st = nix::sys::statvfs::statvfs(spool).map_err(|e| AgentError::io(spool, "statvfs", e.into()))?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    let total = st.blocks() as u64 * st.fragment_size() as u64;
    Ok((used, free, total))
}
