//! The disk worker's stop: drain, seal and, on a clean stop, record the
//! device's fingerprint so the next start can continue without a resync
//! (`crate::continuity`).

use hrl_format::DiskMode;

use super::worker::DiskWorker;
use crate::continuity::{self, Fingerprint};
use crate::error::Result;
use crate::point::freeze::{find_mount, FsFreezer};
use crate::point::protocol::Freezer;

impl DiskWorker {
    /// Drains, syncs and seals; on a clean stop records the fingerprint
    /// first (inside a freeze of the filesystem) and marks the state clean.
    pub(super) fn shutdown(&mut self, clean: bool) -> Result<()> {
        let _ = self.tracker.drain(&mut self.log);
        let fp = if clean && self.agent.resume_after_clean_stop {
            match self.record_continuity() {
                Ok(fp) => {
                    tracing::info!(disk = %self.name, dirty_chunks = fp.dirty_chunks, "recorded the device's fingerprint: the next start can skip the resync");
                    Some(fp)
                }
                Err(why) => {
                    tracing::warn!(disk = %self.name, "the next start will resync: {why}");
                    None
                }
            }
        } else {
            None
        };
        self.sync_log()?;
        self.hashes.save()?;
        self.log.finish()?;
        if clean {
            self.state.clean_shutdown = true;
            self.state.continuity = fp;
            self.state.save(&self.agent.spool)?;
        }
        tracing::info!(disk = %self.name, points = self.counters.points_taken, captured = self.counters.capture_bytes, "stopped");
        Ok(())
    }

    /// Opens a freezer for a filesystem mounted after the agent started
    /// (at boot the agent may start before the mount); without one,
    /// points are fuzzy and a stop cannot be fingerprinted.
    pub(crate) fn refresh_freezer(&mut self) {
        if self.freezer.is_some() || self.cfg.mount.is_some() {
            return;
        }
        let Some(m) = find_mount(&self.dev) else { return };
        match FsFreezer::open(&self.name, &m) {
            Ok(f) => {
                tracing::info!(disk = %self.name, mount = %m.display(), "filesystem mounted: points will freeze it");
                self.freezer = Some(f);
                self.mount = Some(m.clone());
                self.status.lock().unwrap_or_else(|p| p.into_inner()).mount = Some(m);
            }
            Err(e) => {
                tracing::warn!(disk = %self.name, mount = %m.display(), error = %e, "cannot freeze the new mount")
            }
        }
    }

    /// The fingerprint of the device now: frozen when it is mounted,
    /// as it is when it is not. Err says why the next start must resync.
    fn record_continuity(&mut self) -> std::result::Result<Fingerprint, String> {
        if self.mode == DiskMode::Paused {
            return Err("the disk is paused".into());
        }
        self.refresh_freezer();
        let mounted = find_mount(&self.dev).is_some();
        let mut fz = self.freezer.take();
        // Unmounted (the agent stops after the unmount, or the disk was
        // never mounted): nothing writes through a filesystem, and the
        // unmount's own writes were traced; no freeze is needed.
        let r = match (fz.as_mut(), mounted) {
            (_, false) => self.take_fingerprint(false),
            (None, true) => Err("its filesystem is mounted but cannot be frozen".into()),
            (Some(f), true) => self.fingerprint_frozen(f),
        };
        self.freezer = fz;
        r
    }

    fn fingerprint_frozen(&mut self, f: &mut FsFreezer) -> std::result::Result<Fingerprint, String> {
        f.syncfs().map_err(|e| e.to_string())?;
        let frozen = f.freeze(self.agent.max_freeze).map_err(|e| e.to_string())?;
        let mut out = None;
        let r = frozen.thaw_after(&mut |_| {
            out = Some(self.take_fingerprint(true));
            Ok(())
        });
        f.thawed();
        match r {
            Ok(_) => out.unwrap_or_else(|| Err("no fingerprint was taken".into())),
            Err(d) => Err(format!("the watchdog thawed the filesystem after {d:?}")),
        }
    }

    /// Drains every completed write into the dirty map, then records.
    fn take_fingerprint(&mut self, frozen: bool) -> std::result::Result<Fingerprint, String> {
        let o = self.tracker.drain(&mut self.log).map_err(|e| e.to_string())?;
        if o.lost {
            return Err("tracking lost events at the stop".into());
        }
        let mode = if self.mode == DiskMode::Bitmap {
            self.resume
        } else {
            self.mode
        };
        continuity::record(
            &self.dev,
            &self.dirty,
            &self.agent.spool,
            &self.name,
            frozen,
            mode,
            self.scan,
        )
    }
}
