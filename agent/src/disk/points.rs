//! The disk worker's side of points: it answers point requests in the
//! right mode, and implements [`PointDisk`] so the protocol in
//! `crate::point` drives its tracker, capture and log.

use std::time::Duration;

use hrl_format::{DiskMode, PointKind, Record};

use super::worker::DiskWorker;
use crate::error::Result;
use crate::point::freeze::FsFreezer;
use crate::point::group::{group_freeze, FreezeJob};
use crate::point::hooks::{run_hook, run_hook_while, HookEnv};
use crate::point::protocol::{kind_name, prepare, take_point, Freezer, PointDisk};
use crate::point::{HookPoint, LastPoint, PointReply};

impl DiskWorker {
    /// Runs `f` with the disk's freezer taken out of the worker (so both
    /// can be borrowed); None for a disk without a filesystem.
    fn with_freezer<T>(&mut self, f: impl FnOnce(&mut Self, Option<&mut dyn Freezer>) -> T) -> T {
        let mut fz: Option<FsFreezer> = self.freezer.take();
        let r = f(self, fz.as_mut().map(|z| z as &mut dyn Freezer));
        self.freezer = fz;
        r
    }

    /// A point asked for by the control socket or the timer.
    pub(crate) fn point_request(&mut self, app: bool) -> PointReply {
        let refuse = |why: String| PointReply::refused(&self.name, None, None, why);
        match self.mode {
            DiskMode::Data => {}
            DiskMode::InitialSync | DiskMode::Resync => {
                let p = self.scan_percent();
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
        self.refresh_freezer();
        match self.with_freezer(|w, f| take_point(w, f, app)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(disk = %self.name, error = %e, "point failed");
                PointReply::refused(&self.name, None, None, e.to_string())
            }
        }
    }

    /// Group point, step 1, outside any freeze: flush the filesystem and
    /// pre-copy, so the group freeze has little to do.
    pub(crate) fn group_prepare(&mut self) -> std::result::Result<(), String> {
        if self.mode != DiskMode::Data {
            return Err(format!(
                "disk {} is in {:?}: not ready for a point",
                self.name, self.mode
            ));
        }
        self.refresh_freezer();
        self.with_freezer(|w, f| match f {
            None => Err(format!(
                "disk {} has no mounted filesystem: it cannot be frozen with its group",
                w.name
            )),
            Some(f) => prepare(w, f).map_err(|e| e.to_string()),
        })
    }

    /// Group point, step 2: freeze and wait for the coordinator's decision.
    pub(crate) fn group_freeze(&mut self, job: FreezeJob) -> Result<()> {
        let ready = self.mode == DiskMode::Data;
        self.with_freezer(|w, f| group_freeze(w, f.filter(|_| ready), job))
    }
}

impl PointDisk for DiskWorker {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_freeze(&self) -> Duration {
        self.agent.max_freeze
    }

    fn hook_timeout(&self) -> Duration {
        self.agent.hook_timeout
    }

    fn has_hook(&self, hook: HookPoint) -> bool {
        self.hook_command(hook).is_some()
    }

    fn run_hook(
        &mut self,
        hook: HookPoint,
        seq: u64,
        kind: PointKind,
        timeout: Duration,
    ) -> std::result::Result<Option<String>, String> {
        let Some(cmd) = self.hook_command(hook) else {
            return Ok(None);
        };
        let env = HookEnv {
            disk: self.name.clone(),
            device: self.dev.path.display().to_string(),
            mount: self.mount.as_ref().map(|m| m.display().to_string()).unwrap_or_default(),
            point: seq,
            kind: kind_name(kind),
        };
        match hook {
            // Frozen: nothing writes, and the budget is max_freeze.
            HookPoint::WhileFrozen => run_hook(hook.name(), &cmd, &env, timeout).map(|o| o.label),
            // Outside the freeze the disk keeps tracking (and reporting)
            // while the hook runs, however long it takes.
            HookPoint::PreFreeze | HookPoint::PostThaw => run_hook_while(hook.name(), &cmd, &env, timeout, || {
                if let Err(e) = DiskWorker::track(self) {
                    tracing::warn!(disk = %self.name, error = %e, "tracking during a hook");
                }
                self.update_status();
            })
            .map(|o| o.label),
        }
    }

    fn next_seq(&mut self) -> Result<u64> {
        let seq = self.state.last_point_seq + 1;
        self.state.last_point_seq = seq;
        self.state.save(&self.agent.spool)?;
        Ok(seq)
    }

    fn unlimited_capture(&mut self, on: bool) {
        self.reader.set_rate(if on { 0 } else { self.agent.capture_rate });
    }

    fn track(&mut self) -> Result<()> {
        DiskWorker::track(self).map(|_| ())
    }

    fn precopy_all(&mut self) -> Result<()> {
        self.precopy(true, usize::MAX).map(|_| ())
    }

    fn drain(&mut self) -> Result<bool> {
        let o = self.tracker.drain(&mut self.log)?;
        if o.lost {
            self.on_loss();
        }
        Ok(o.lost)
    }

    fn copy_all_dirty(&mut self) -> Result<u64> {
        let before = self.counters.data_records;
        let dirty = self.dirty.dirty_chunks();
        self.capture_many(&dirty)?;
        Ok(self.counters.data_records - before)
    }

    fn append(&mut self, rec: &Record) -> Result<()> {
        self.log.append_unsynced(rec)?;
        Ok(())
    }

    fn sync_log(&mut self) -> Result<()> {
        DiskWorker::sync_log(self)
    }

    fn point_done(&mut self, seq: u64, kind: PointKind, freeze_ns: u64, _copied: u64) -> Result<()> {
        self.hashes.save()?;
        // Rotate after a point when the segment is big enough, so segments
        // tend to end on point boundaries.
        if self.log.current_len() >= self.agent.segment_size {
            self.log.rotate()?;
        }
        let freeze_ms = freeze_ns as f64 / 1e6;
        self.counters.points_taken += 1;
        self.counters.last_freeze_ms = Some(freeze_ms);
        super::status::observe_freeze(&self.name, freeze_ms / 1e3);
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.last_point = Some(LastPoint {
            seq,
            kind,
            time_ns: hrl_format::now_ns(),
            freeze_ms,
        });
        Ok(())
    }

    fn point_aborted(&mut self) {
        self.counters.points_aborted += 1;
    }
}
