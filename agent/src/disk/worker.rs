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
//! Points are taken only in data mode (see `crate::point`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hrl_format::{DiskMode, LogWriter, ModeChange, Record};

use super::setup::{spool_usage, DiskSetup};
use super::state::DiskState;
use super::status::DiskStatus;
use super::Request;
use crate::capture::hashes::CapturedHashes;
use crate::capture::reader::ChunkReader;
use crate::config::{AgentConfig, DiskConfig};
use crate::error::{AgentError, Result};
use crate::point::freeze::{find_mount, FsFreezer};
use crate::point::HookPoint;
use crate::tracking::device::BlockDevice;
use crate::tracking::dirty::{DirtyMap, HotMap};
use crate::tracking::lock::DeviceLock;
use crate::tracking::tracker::Tracker;

/// The per-disk worker.
pub struct DiskWorker {
    pub name: String,
    pub(crate) cfg: DiskConfig,
    pub(crate) agent: AgentConfig,
    pub(crate) dev: BlockDevice,
    pub(crate) mount: Option<PathBuf>,
    pub(super) _lock: DeviceLock,
    pub(crate) log: LogWriter,
    pub(crate) tracker: Tracker,
    pub(crate) dirty: Arc<DirtyMap>,
    pub(super) hot: Arc<HotMap>,
    pub(crate) reader: ChunkReader,
    pub(crate) hashes: CapturedHashes,
    pub(crate) state: DiskState,
    pub(crate) mode: DiskMode,
    /// Next chunk of the initial-sync/resync scan.
    pub(super) scan: Option<u64>,
    /// Mode to return to when leaving bitmap.
    pub(super) resume: DiskMode,
    pub(super) spool_used: u64,
    pub(super) spool_free: u64,
    /// Free space kept on the spool's filesystem: 64 MiB, or an eighth of
    /// a small filesystem.
    pub(super) spool_margin: u64,
    pub(super) spool_checked: Instant,
    pub(super) last_sync: Instant,
    pub(super) last_save: Instant,
    pub(super) hot_rotated: Instant,
    pub(super) next_point: Instant,
    pub(crate) status: Arc<Mutex<DiskStatus>>,
    /// The filesystem to freeze (None: points are fuzzy).
    pub(crate) freezer: Option<FsFreezer>,
    pub(super) requests: Receiver<Request>,
    pub(super) rate_mark: (Instant, u64, u64),
    pub(super) scan_log: Instant,
    /// When the running scan was first seen at chunk `.1` (for its end time).
    pub(super) scan_mark: Option<(Instant, u64)>,
    pub(crate) counters: Counters,
    pub(super) started_ns: u64,
    pub(super) rpo_warned: Option<Instant>,
    /// The agent's own values of what a policy may set.
    pub(super) own: super::policy::Own,
    /// The process server's policy (empty: none applied).
    pub(super) policy: super::policy::PolicyOverride,
    /// When the periodic point is next an app point (app_point_interval).
    pub(super) next_app: Option<Instant>,
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
pub(super) const BATCH: usize = 64;
/// The loop's wait between turns with nothing to capture while the disk is
/// being written: the trace buffers are read every 50 ms. Each turn costs
/// the agent a wake-up and the writes it waits for; at 10 ms, under 20 MB/s
/// of writes, the wake-ups were a fifth of its CPU, and the chunks a turn
/// finds cool (not written for `hot_delay`, 500 ms) wait at most 10% longer.
const WAIT_MIN: Duration = Duration::from_millis(50);
/// A disk with no writes doubles the wait up to this, so an idle agent
/// wakes 10 times a second. A burst after a quiet spell waits at most this
/// long in the trace buffer (4 MiB per CPU holds tens of thousands of
/// completions); a request (a point, a group freeze) wakes the loop at once.
const WAIT_MAX: Duration = Duration::from_millis(100);

impl DiskWorker {
    pub fn open(agent: &AgentConfig, cfg: &DiskConfig, requests: Receiver<Request>) -> Result<Self> {
        let s = DiskSetup::open(
            Some(&cfg.name),
            &cfg.device,
            &agent.spool,
            agent.chunk_size,
            agent.trace_buffer_kb,
            agent.segment_size,
            agent.resume_after_clean_stop,
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
        let (mode, scan) = match (&s.previous, &s.resumed) {
            (_, Some(r)) => (r.mode, r.scan),
            (Some(_), None) => (DiskMode::Resync, Some(0)),
            (None, None) => (DiskMode::InitialSync, Some(0)),
        };
        let status = Arc::new(Mutex::new(DiskStatus {
            disk_id: s.state.disk_id,
            device: s.dev.path.clone(),
            mount: mount.clone(),
            device_bytes: s.dev.size,
            mode,
            dirty_bytes: s.dev.size,
            spool_limit: agent.spool_limit,
            start: s.start.clone(),
            scan_progress: scan.map(|c| c as f64 / s.dirty.chunks().max(1) as f64),
            ..DiskStatus::new(&cfg.name)
        }));
        let freezer = match &mount {
            Some(m) => {
                tracing::info!(disk = %cfg.name, mount = %m.display(), "points will freeze this filesystem");
                Some(FsFreezer::open(&cfg.name, m)?)
            }
            None => {
                tracing::warn!(disk = %cfg.name, "no mounted filesystem found: points will be fuzzy");
                None
            }
        };
        let now = Instant::now();
        let own = super::policy::Own {
            point_interval: agent.point_interval,
            app_point_interval: agent.app_point_interval,
            rpo_warn: agent.rpo_warn,
        };
        let mut w = DiskWorker {
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
            scan,
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
            freezer,
            requests,
            rate_mark: (now, 0, 0),
            scan_log: now,
            scan_mark: None,
            counters: Counters::default(),
            started_ns: hrl_format::now_ns(),
            rpo_warned: None,
            own,
            policy: Default::default(),
            next_app: None,
        };
        w.show_settings();
        Ok(w)
    }

    pub fn status_handle(&self) -> Arc<Mutex<DiskStatus>> {
        self.status.clone()
    }

    /// The configured command of a hook.
    pub(super) fn hook_command(&self, hook: HookPoint) -> Option<String> {
        match hook {
            HookPoint::PreFreeze => self.cfg.pre_freeze.clone(),
            HookPoint::WhileFrozen => self.cfg.while_frozen.clone(),
            HookPoint::PostThaw => self.cfg.post_thaw.clone(),
        }
    }

    /// How far the initial-sync or resync scan is, in percent.
    pub(super) fn scan_percent(&self) -> f64 {
        self.scan
            .map_or(0.0, |c| c as f64 * 100.0 / self.dirty.chunks().max(1) as f64)
    }

    pub(super) fn set_mode(&mut self, mode: DiskMode) -> Result<()> {
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

    /// Reads the trace buffers; a loss restarts the resync scan. Returns
    /// the changes seen.
    pub(crate) fn track(&mut self) -> Result<u64> {
        let o = self.tracker.poll(&mut self.log)?;
        if o.lost {
            self.on_loss();
        }
        Ok(o.changes)
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
    pub(super) fn spool_full(&self, bytes: u64) -> bool {
        let high = self.agent.spool_limit / 10 * 9;
        self.spool_used + bytes > high || self.spool_free < bytes + self.spool_margin
    }

    pub(super) fn enter_bitmap(&mut self) -> Result<()> {
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

    /// The running scan's end time at its rate since it was first seen
    /// (a scan that restarted, after a loss, starts a new mark).
    fn scan_end(&mut self) -> Option<u64> {
        let Some(c) = self.scan else {
            self.scan_mark = None;
            return None;
        };
        let (t0, c0) = match self.scan_mark {
            Some((t, c0)) if c0 <= c => (t, c0),
            _ => {
                self.scan_mark = Some((Instant::now(), c));
                return None;
            }
        };
        let el = t0.elapsed().as_secs_f64();
        if c <= c0 || el < 1.0 {
            return None;
        }
        let left = (self.dirty.chunks() - c) as f64 * el / (c - c0) as f64;
        Some(hrl_format::now_ns() + (left * 1e9) as u64)
    }

    pub(super) fn update_status(&mut self) {
        let (t0, c0, w0) = self.rate_mark;
        let el = t0.elapsed().as_secs_f64();
        let w = self.tracker.counters.extent_bytes;
        let scan_end = self.scan_end();
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.scan_end_ns = scan_end;
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
        let mut wait = WAIT_MIN;
        while !stop.load(Ordering::Relaxed) {
            let changes = self.track()?;
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
                self.handle_request(req)?;
            }
            if !self.agent.point_interval.is_zero() && Instant::now() >= self.next_point {
                self.next_point = Instant::now() + self.agent.point_interval;
                if self.mode == DiskMode::Data {
                    self.periodic_point();
                }
            }
            if self.last_sync.elapsed() >= Duration::from_secs(1) {
                self.sync_log()?;
                self.check_size()?;
            }
            self.log.tick()?;
            self.update_status();
            if busy {
                continue;
            }
            // A quiet disk is looked at less and less often; a write seen
            // brings the loop back to its shortest wait.
            wait = if changes > 0 {
                WAIT_MIN
            } else {
                (wait * 2).min(WAIT_MAX)
            };
            match self.requests.recv_timeout(wait) {
                Ok(req) => {
                    wait = WAIT_MIN;
                    self.handle_request(req)?;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
        }
        Ok(())
    }

    /// A request from the daemon or the group coordinator.
    fn handle_request(&mut self, req: Request) -> Result<()> {
        match req {
            Request::Point { app, reply } => {
                let r = self.point_request(app);
                // Any point restarts the periodic interval: no crash
                // point a moment after an asked-for app point.
                if r.ok {
                    self.next_point = Instant::now() + self.agent.point_interval;
                }
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
                self.own.rpo_warn = rpo_warn;
                self.apply_policy(self.policy.clone());
            }
            Request::Policy(p) => self.apply_policy(p),
        }
        Ok(())
    }

    /// The periodic point: an app point when app_points says so or
    /// app_point_interval has passed since the last one, else a crash point.
    fn periodic_point(&mut self) {
        let every = self.agent.app_point_interval;
        let at = Instant::now();
        let due = !every.is_zero() && self.next_app.is_none_or(|t| at >= t);
        let app = self.agent.app_points || due;
        let r = self.point_request(app);
        if !r.ok {
            tracing::warn!(disk = %self.name, error = ?r.error, "periodic point not taken");
        } else if due {
            // From when this point was due, as the periodic timer counts:
            // app points every `every`, not every `every` + a point's time.
            self.next_app = Some(at + every);
        }
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
}
