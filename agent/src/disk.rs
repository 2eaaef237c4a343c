//! One tracked disk: the worker that owns its tracker, log, capture and
//! points, in modes `initial-sync`, `data`, `bitmap` and `resync`.
//!
//! * initial-sync / resync: a scan reads every chunk (clearing its dirty bit
//!   first) and emits `Data` only where the content differs from what the
//!   stream last carried (the captured-hash map). Tracking is on throughout.
//! * data: pre-copy emits `Data` for dirty chunks that are not hot.
//! * bitmap: the spool is above its high-water mark; no `Data` is captured,
//!   the dirty map keeps growing, extents are still logged. Below the
//!   low-water mark the disk returns to the mode it left and catches up.
//!
//! Points are taken only in data mode (see `point.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hrl_format::{Data, DiskMode, LogConfig, LogWriter, LossReason, ModeChange, Record};
use serde::Serialize;
use uuid::Uuid;

use crate::capture::{ChunkReader, QUEUE_DEPTH};
use crate::config::{AgentConfig, DiskConfig};
use crate::device::BlockDevice;
use crate::dirty::{DirtyMap, HotMap};
use crate::error::{AgentError, Result};
use crate::freeze::find_mount;
use crate::hashes::{hash_chunk, CapturedHashes};
use crate::lock::DeviceLock;
use crate::state::DiskState;
use crate::tracefs::Tracefs;
use crate::tracker::{record_loss, TraceSource, Tracker};

/// What the control socket asks a disk worker.
pub enum Request {
    Point {
        app: bool,
        reply: Sender<PointReply>,
    },
    /// SIGHUP: new capture rate limit (bytes/s, 0 unlimited) and RPO
    /// warning threshold.
    Reload {
        capture_rate: u64,
        rpo_warn: Duration,
    },
    /// Group point, step 1 (outside the freeze).
    GroupPrepare {
        reply: Sender<std::result::Result<(), String>>,
    },
    /// Group point, step 2: freeze and wait for the coordinator's decision.
    GroupFreeze(Box<crate::group::FreezeJob>),
}

/// Answer to a point request.
#[derive(Debug, Clone, Serialize)]
pub struct PointReply {
    pub ok: bool,
    pub disk: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<hrl_format::PointKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copied_chunks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The last point of a disk.
#[derive(Debug, Clone, Serialize)]
pub struct LastPoint {
    pub seq: u64,
    pub kind: hrl_format::PointKind,
    pub time_ns: u64,
    pub freeze_ms: f64,
}

/// What `hrl-agent status` shows for a disk.
#[derive(Debug, Clone, Serialize)]
pub struct DiskStatus {
    pub name: String,
    pub disk_id: Uuid,
    pub device: PathBuf,
    pub mount: Option<PathBuf>,
    /// Size of the device in bytes.
    pub device_bytes: u64,
    pub mode: DiskMode,
    pub dirty_bytes: u64,
    pub spool_bytes: u64,
    pub spool_limit: u64,
    /// Fraction done of the initial-sync or resync scan.
    pub scan_progress: Option<f64>,
    pub last_point: Option<LastPoint>,
    pub points_taken: u64,
    pub points_aborted: u64,
    pub last_freeze_ms: Option<f64>,
    pub capture_bytes: u64,
    pub capture_rate_bps: f64,
    pub write_bytes: u64,
    pub write_rate_bps: f64,
    pub losses: u64,
    /// The newest point is older than `rpo_warn` (or none was taken for
    /// that long since the start).
    pub rpo_exceeded: bool,
    pub last_error: Option<String>,
}

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
    pub tracefs: Tracefs,
}

/// Checks that the spool exists (creating it 0700) and is not on `dev`.
pub fn prepare_spool(spool: &Path, dev: &BlockDevice) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
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

impl DiskSetup {
    /// Opens the device, takes its lock, loads state, opens the log
    /// (recovering segments a crash left open), and starts tracking. Every
    /// completion after this returns is tracked. Writes the first records:
    /// `Mode(InitialSync)` for a new disk, `Lost` + `Mode(Resync)` for a
    /// restart.
    pub fn open(
        name: Option<&str>,
        device: &Path,
        spool: &Path,
        chunk_size: u32,
        trace_buffer_kb: u32,
        segment_size: u64,
    ) -> Result<Self> {
        let dev = BlockDevice::open(device)?;
        prepare_spool(spool, &dev)?;
        let lock = DeviceLock::acquire(&dev)?;
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
            },
        };
        let mut cfg = LogConfig::new(spool, state.disk_id, chunk_size, dev.logical_block_size, dev.size);
        cfg.rotate_bytes = segment_size;
        let mut log = LogWriter::open(cfg)?;
        for r in log.recovered() {
            tracing::warn!(segment = %r.path.display(), records = r.records, torn = ?r.torn_tail, "sealed a segment a previous run left open");
        }
        let source = TraceSource::start(&tracefs, &dev, trace_buffer_kb)?;
        tracing::info!(disk = %name, id = %state.disk_id, device = %dev.path.display(), source = %crate::tracker::ChangeSource::describe(&source), "tracking");
        let dirty = Arc::new(DirtyMap::new(dev.size, chunk_size));
        let tracker = Tracker::new(Box::new(source), dirty.clone());
        dirty.mark_all();
        match &previous {
            None => {
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
            tracefs,
        })
    }
}

/// Spool usage: bytes of `.hrl` files in the spool (all disks), and free
/// bytes on its filesystem.
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

/// The per-disk worker.
pub struct DiskWorker {
    pub name: String,
    pub(crate) cfg: DiskConfig,
    pub(crate) agent: AgentConfig,
    pub(crate) dev: BlockDevice,
    pub(crate) mount: Option<PathBuf>,
    _lock: DeviceLock,
    pub(crate) log: LogWriter,
    pub(crate) tracker: Tracker,
    pub(crate) dirty: Arc<DirtyMap>,
    hot: Arc<HotMap>,
    pub(crate) reader: ChunkReader,
    pub(crate) hashes: CapturedHashes,
    pub(crate) state: DiskState,
    pub(crate) mode: DiskMode,
    /// Next chunk of the initial-sync/resync scan.
    scan: Option<u64>,
    /// Mode to return to when leaving bitmap.
    resume: DiskMode,
    spool_used: u64,
    spool_free: u64,
    /// Free space kept on the spool's filesystem: 64 MiB, or an eighth of
    /// a small filesystem.
    spool_margin: u64,
    spool_checked: Instant,
    last_sync: Instant,
    last_save: Instant,
    hot_rotated: Instant,
    next_point: Instant,
    pub(crate) status: Arc<Mutex<DiskStatus>>,
    pub(crate) guardian: Option<crate::guard::ThawGuardian>,
    requests: Receiver<Request>,
    rate_mark: (Instant, u64, u64),
    scan_log: Instant,
    pub(crate) counters: Counters,
    started_ns: u64,
    rpo_warned: Option<Instant>,
}

#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Counters {
    pub capture_bytes: u64,
    pub data_records: u64,
    pub points_taken: u64,
    pub points_aborted: u64,
    pub last_freeze_ms: Option<f64>,
    pub scan_emitted: u64,
}

/// Chunks handled per loop iteration before the trace buffers are read again.
const BATCH: usize = 64;

impl DiskWorker {
    pub fn open(agent: &AgentConfig, cfg: &DiskConfig, requests: Receiver<Request>) -> Result<Self> {
        let s = DiskSetup::open(
            Some(&cfg.name),
            &cfg.device,
            &agent.spool,
            agent.chunk_size,
            agent.trace_buffer_kb,
            agent.segment_size,
        )?;
        let mount = match &cfg.mount {
            Some(m) => Some(m.clone()),
            None => find_mount(&s.dev),
        };
        let hot = Arc::new(HotMap::new(s.dev.size, agent.chunk_size));
        let tracker = s.tracker.with_hot(hot.clone());
        let reader = ChunkReader::open(&s.dev.path, agent.chunk_size, s.dev.size, agent.capture_rate)?;
        tracing::info!(disk = %cfg.name, io_uring = reader.uses_io_uring(), o_direct = reader.direct, "capture reader");
        let hashes = CapturedHashes::open(&agent.spool.join(format!("{}.hashes", cfg.name)), s.dirty.chunks())?;
        let mode = if s.previous.is_some() {
            DiskMode::Resync
        } else {
            DiskMode::InitialSync
        };
        let status = Arc::new(Mutex::new(DiskStatus {
            name: cfg.name.clone(),
            disk_id: s.state.disk_id,
            device: s.dev.path.clone(),
            mount: mount.clone(),
            device_bytes: s.dev.size,
            mode,
            dirty_bytes: s.dev.size,
            spool_bytes: 0,
            spool_limit: agent.spool_limit,
            scan_progress: Some(0.0),
            last_point: None,
            points_taken: 0,
            points_aborted: 0,
            last_freeze_ms: None,
            capture_bytes: 0,
            capture_rate_bps: 0.0,
            write_bytes: 0,
            write_rate_bps: 0.0,
            losses: 0,
            rpo_exceeded: false,
            last_error: None,
        }));
        let guardian = match &mount {
            Some(m) => {
                tracing::info!(disk = %cfg.name, mount = %m.display(), "points will freeze this filesystem");
                // A previous agent killed inside a freeze (and its guardian
                // with it) leaves the filesystem frozen: thaw it first.
                if crate::guard::thaw_if_frozen(m)? {
                    tracing::warn!(disk = %cfg.name, mount = %m.display(), "the filesystem was frozen (an agent died during a point); thawed it");
                }
                Some(crate::guard::ThawGuardian::spawn(m)?)
            }
            None => {
                tracing::warn!(disk = %cfg.name, "no mounted filesystem found: points will be fuzzy");
                None
            }
        };
        let now = Instant::now();
        Ok(DiskWorker {
            name: cfg.name.clone(),
            cfg: cfg.clone(),
            agent: agent.clone(),
            dev: s.dev,
            mount,
            _lock: s.lock,
            log: s.log,
            tracker,
            dirty: s.dirty,
            hot,
            reader,
            hashes,
            state: s.state,
            mode,
            scan: Some(0),
            resume: mode,
            spool_used: 0,
            spool_free: u64::MAX,
            spool_margin: 64 << 20,
            spool_checked: now - Duration::from_secs(10),
            last_sync: now,
            last_save: now,
            hot_rotated: now,
            next_point: now + agent.point_interval,
            status,
            guardian,
            requests,
            rate_mark: (now, 0, 0),
            scan_log: now,
            counters: Counters::default(),
            started_ns: hrl_format::now_ns(),
            rpo_warned: None,
        })
    }

    pub fn status_handle(&self) -> Arc<Mutex<DiskStatus>> {
        self.status.clone()
    }

    fn set_mode(&mut self, mode: DiskMode) -> Result<()> {
        if mode != self.mode {
            tracing::info!(disk = %self.name, from = ?self.mode, to = ?mode, "mode");
            self.mode = mode;
            self.log.append(&Record::Mode(ModeChange {
                mode,
                time_ns: hrl_format::now_ns(),
            }))?;
        }
        Ok(())
    }

    /// Reads the trace buffers; a loss restarts the resync scan.
    pub(crate) fn track(&mut self) -> Result<()> {
        let o = self.tracker.poll(&mut self.log)?;
        if o.lost {
            self.on_loss();
        }
        Ok(())
    }

    /// After a `Lost` record (the tracker wrote it and marked everything
    /// dirty): rescan the device.
    pub(crate) fn on_loss(&mut self) {
        tracing::warn!(disk = %self.name, "tracking lost events: resync");
        self.scan = Some(0);
        if self.mode == DiskMode::Bitmap {
            self.resume = DiskMode::Resync;
        } else {
            // record_loss already logged Mode(Resync).
            self.mode = DiskMode::Resync;
        }
    }

    /// Whether `bytes` more captured data would cross the high-water mark.
    fn spool_full(&self, bytes: u64) -> bool {
        let high = self.agent.spool_limit / 10 * 9;
        self.spool_used + bytes > high || self.spool_free < bytes + self.spool_margin
    }

    fn enter_bitmap(&mut self) -> Result<()> {
        if self.mode != DiskMode::Bitmap {
            tracing::warn!(disk = %self.name, spool = self.spool_used, limit = self.agent.spool_limit, "spool above high-water: bitmap mode (extents only)");
            self.resume = self.mode;
            self.set_mode(DiskMode::Bitmap)?;
        }
        Ok(())
    }

    fn check_spool(&mut self) -> Result<()> {
        if self.spool_checked.elapsed() < Duration::from_millis(200) {
            return Ok(());
        }
        self.spool_checked = Instant::now();
        let (used, free, total) = spool_usage(&self.agent.spool)?;
        self.spool_used = used;
        self.spool_free = free;
        self.spool_margin = (64u64 << 20).min(total / 8);
        if self.mode == DiskMode::Bitmap {
            let low = self.agent.spool_limit / 10 * 7;
            // Resume with room for more than a burst: twice the margin
            // (on a small spool filesystem, a quarter of it).
            if used < low && free > 2 * self.spool_margin + (4 << 20) {
                tracing::info!(disk = %self.name, spool = used, free, "spool below low-water: capturing data again");
                let r = self.resume;
                self.set_mode(r)?;
            }
        } else if self.spool_full(0) {
            self.enter_bitmap()?;
        }
        Ok(())
    }

    /// Captures those of `chunks` that are dirty: clear each bit, then
    /// read (a write completing after the clear dirties the chunk again),
    /// a queue-depth batch at a time. Emits `Data` only when the content
    /// differs from what the stream last carried. Returns bytes appended.
    pub(crate) fn capture_many(&mut self, chunks: &[u64]) -> Result<u64> {
        let mut appended = 0;
        for part in chunks.chunks(QUEUE_DEPTH) {
            let cleared: Vec<u64> = part.iter().copied().filter(|&c| self.dirty.clear(c)).collect();
            if cleared.is_empty() {
                continue;
            }
            self.reader.read_batch(&cleared)?;
            for (i, &c) in cleared.iter().enumerate() {
                let data = self.reader.batch(i);
                self.counters.capture_bytes += data.len() as u64;
                let h = hash_chunk(data);
                if self.hashes.matches(c, &h) {
                    continue;
                }
                let offset = c * self.reader.chunk_size;
                let rec = if data.iter().all(|&b| b == 0) {
                    Record::Data(Data {
                        offset,
                        flags: Data::ZERO,
                        data: Vec::new(),
                    })
                } else {
                    Record::Data(Data {
                        offset,
                        flags: 0,
                        data: data.to_vec(),
                    })
                };
                self.log.append(&rec)?;
                self.hashes.stage(c, h);
                self.counters.data_records += 1;
                let n = rec.payload_len() as u64 + 12;
                self.spool_used += n;
                // Until the next statvfs, assume the bytes took free space.
                self.spool_free = self.spool_free.saturating_sub(n);
                appended += n;
            }
        }
        Ok(appended)
    }

    fn scan_step(&mut self) -> Result<bool> {
        let Some(c) = self.scan else { return Ok(false) };
        let chunks = self.dirty.chunks();
        let want = (chunks - c).min(BATCH as u64);
        if want > 0 && self.spool_full(want * self.reader.chunk_size) {
            self.enter_bitmap()?;
            return Ok(false);
        }
        let batch: Vec<u64> = (c..c + want).collect();
        self.counters.scan_emitted += self.capture_many(&batch)?;
        let c = c + want;
        self.scan = Some(c);
        if self.scan_log.elapsed() >= Duration::from_secs(5) {
            self.scan_log = Instant::now();
            tracing::info!(disk = %self.name, mode = ?self.mode, progress = format!("{:.1}%", c as f64 * 100.0 / chunks as f64), emitted = self.counters.scan_emitted, "scan");
        }
        if c >= chunks {
            // Everything the scan emitted is made durable before the disk
            // is declared in sync.
            self.sync_log()?;
            tracing::info!(disk = %self.name, mode = ?self.mode, emitted_bytes = self.counters.scan_emitted, "scan complete");
            self.scan = None;
            self.state.initial_sync_done = true;
            self.state.save(&self.agent.spool)?;
            self.set_mode(DiskMode::Data)?;
            self.next_point = Instant::now();
        }
        Ok(true)
    }

    /// Pre-copies dirty chunks that are not hot. `all`: ignore hotness
    /// (just before a freeze). Returns chunks captured.
    pub(crate) fn precopy(&mut self, all: bool, limit: usize) -> Result<usize> {
        let mut todo: Vec<u64> = Vec::new();
        for c in self.dirty.dirty_chunks() {
            if todo.len() >= limit {
                break;
            }
            if !all && self.hot.is_hot(c) {
                continue;
            }
            todo.push(c);
        }
        let mut n = 0;
        for part in todo.chunks(QUEUE_DEPTH) {
            if self.spool_full(part.len() as u64 * self.reader.chunk_size) {
                self.enter_bitmap()?;
                break;
            }
            self.capture_many(part)?;
            n += part.len();
        }
        Ok(n)
    }

    /// fsync the log; captured hashes become committed.
    pub(crate) fn sync_log(&mut self) -> Result<()> {
        self.log.sync()?;
        self.hashes.commit();
        self.last_sync = Instant::now();
        if self.last_save.elapsed() >= Duration::from_secs(5) {
            self.hashes.save()?;
            self.last_save = Instant::now();
        }
        Ok(())
    }

    fn update_status(&mut self) {
        let (t0, c0, w0) = self.rate_mark;
        let el = t0.elapsed().as_secs_f64();
        let w = self.tracker.counters.extent_bytes;
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if el >= 2.0 {
            st.capture_rate_bps = (self.counters.capture_bytes - c0) as f64 / el;
            st.write_rate_bps = (w - w0) as f64 / el;
            self.rate_mark = (Instant::now(), self.counters.capture_bytes, w);
        }
        st.mode = self.mode;
        st.dirty_bytes = self.dirty.count() * self.dirty.chunk_size();
        st.spool_bytes = self.spool_used;
        st.scan_progress = self.scan.map(|c| c as f64 / self.dirty.chunks().max(1) as f64);
        st.points_taken = self.counters.points_taken;
        st.points_aborted = self.counters.points_aborted;
        st.last_freeze_ms = self.counters.last_freeze_ms;
        st.capture_bytes = self.counters.capture_bytes;
        st.write_bytes = w;
        st.losses = self.tracker.counters.losses;
        // RPO: the age of the newest point (or of the agent, before one).
        let since = st.last_point.as_ref().map_or(self.started_ns, |p| p.time_ns);
        let age = Duration::from_nanos(hrl_format::now_ns().saturating_sub(since));
        let exceeded = !self.agent.rpo_warn.is_zero() && age > self.agent.rpo_warn;
        if exceeded && self.rpo_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            tracing::warn!(disk = %self.name, mode = ?self.mode, age_s = age.as_secs(), threshold_s = self.agent.rpo_warn.as_secs(), "RPO threshold exceeded: no point for longer than rpo_warn");
            self.rpo_warned = Some(Instant::now());
        }
        if !exceeded && st.rpo_exceeded {
            tracing::info!(disk = %self.name, "RPO back within rpo_warn");
            self.rpo_warned = None;
        }
        st.rpo_exceeded = exceeded;
    }

    /// Runs until `stop`; then drains, syncs and seals.
    pub fn run(mut self, stop: &AtomicBool) -> Result<()> {
        let r = self.run_loop(stop);
        if let Err(e) = &r {
            tracing::error!(disk = %self.name, error = %e, "disk worker failed");
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            st.last_error = Some(e.to_string());
        }
        self.shutdown(r.is_ok())?;
        r
    }

    fn run_loop(&mut self, stop: &AtomicBool) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            self.track()?;
            if self.hot_rotated.elapsed() >= self.agent.hot_delay / 2 {
                self.hot.rotate();
                self.hot_rotated = Instant::now();
            }
            self.check_spool()?;
            let busy = match self.mode {
                DiskMode::InitialSync | DiskMode::Resync => self.scan_step()?,
                DiskMode::Data => self.precopy(false, BATCH)? > 0,
                DiskMode::Bitmap | DiskMode::Paused => false,
            };
            while let Ok(req) = self.requests.try_recv() {
                match req {
                    Request::Point { app, reply } => {
                        let r = self.point_request(app);
                        let _ = reply.send(r);
                    }
                    Request::GroupPrepare { reply } => {
                        let _ = reply.send(self.group_prepare());
                    }
                    Request::GroupFreeze(job) => self.group_freeze(*job)?,
                    Request::Reload { capture_rate, rpo_warn } => {
                        tracing::info!(disk = %self.name, capture_rate, rpo_warn = ?rpo_warn, "configuration reloaded");
                        self.reader.set_rate(capture_rate);
                        self.agent.capture_rate = capture_rate;
                        self.agent.rpo_warn = rpo_warn;
                    }
                }
            }
            if !self.agent.point_interval.is_zero() && Instant::now() >= self.next_point {
                self.next_point = Instant::now() + self.agent.point_interval;
                if self.mode == DiskMode::Data {
                    let r = self.point_request(self.agent.app_points);
                    if !r.ok {
                        tracing::warn!(disk = %self.name, error = ?r.error, "periodic point not taken");
                    }
                }
            }
            if self.last_sync.elapsed() >= Duration::from_secs(1) {
                self.sync_log()?;
                self.check_size()?;
            }
            self.log.tick()?;
            self.update_status();
            if !busy {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// A device that changed size (or vanished: size 0, or it cannot be
    /// opened) stops the disk with a clear error; the restart that follows
    /// resyncs at the new size.
    fn check_size(&mut self) -> Result<()> {
        let now = self.dev.current_size().unwrap_or(0);
        if now != self.dev.size {
            return Err(AgentError::DeviceChanged {
                device: self.dev.path.clone(),
                old: self.dev.size,
                new: now,
            });
        }
        Ok(())
    }

    fn point_request(&mut self, app: bool) -> PointReply {
        let name = self.name.clone();
        let refuse = |why: String| PointReply {
            ok: false,
            disk: name.clone(),
            seq: None,
            kind: None,
            freeze_ms: None,
            copied_chunks: None,
            error: Some(why),
        };
        match self.mode {
            DiskMode::Data => {}
            DiskMode::InitialSync | DiskMode::Resync => {
                let p = self
                    .scan
                    .map_or(0.0, |c| c as f64 * 100.0 / self.dirty.chunks().max(1) as f64);
                return refuse(format!(
                    "disk {} is in {:?} ({p:.0}% scanned): points resume when it completes",
                    self.name, self.mode
                ));
            }
            DiskMode::Bitmap => {
                return refuse(format!(
                    "disk {} is in bitmap mode (spool above high-water): points resume when the spool drains",
                    self.name
                ))
            }
            DiskMode::Paused => return refuse(format!("disk {} is paused", self.name)),
        }
        match self.take_point(app) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(disk = %self.name, error = %e, "point failed");
                refuse(e.to_string())
            }
        }
    }

    fn shutdown(&mut self, clean: bool) -> Result<()> {
        let _ = self.tracker.drain(&mut self.log);
        self.sync_log()?;
        self.hashes.save()?;
        self.log.finish()?;
        if clean {
            self.state.clean_shutdown = true;
            self.state.save(&self.agent.spool)?;
        }
        tracing::info!(disk = %self.name, points = self.counters.points_taken, captured = self.counters.capture_bytes, "stopped");
        Ok(())
    }
}
