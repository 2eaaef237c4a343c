//! The point protocol.
//!
//! ```text
//! app: pre-freeze hook
//! syncfs ─► pre-copy every dirty chunk (outside the freeze)
//! FIFREEZE ─► drain trace buffers ─► copy every chunk still dirty
//!          ─► while-frozen hook ─► Tag appended ─► FITHAW      (watchdog: max_freeze)
//! fsync log ─► captured hashes committed ─► app: post-thaw hook
//! ```
//!
//! After FIFREEZE returns, every write the filesystem made has completed, so
//! its completion event is in a ring buffer; draining every CPU's buffer
//! gives the exact dirty set, and copying it makes the stream up to the tag
//! equal the frozen device. A disk without a mounted filesystem gets a
//! `fuzzy` point: the same steps without the freeze, so it is not exact.

use std::time::Duration;

use hrl_format::{PointKind, Record, Tag};

use crate::disk::{DiskWorker, LastPoint, PointReply};
use crate::error::Result;
use crate::freeze::{syncfs, Freeze};
use crate::hooks::{run_hook, HookEnv};

fn kind_name(k: PointKind) -> &'static str {
    match k {
        PointKind::Crash => "crash",
        PointKind::App => "app",
        PointKind::Fuzzy => "fuzzy",
    }
}

impl DiskWorker {
    pub(crate) fn copy_all_dirty(&mut self) -> Result<u64> {
        let before = self.counters.data_records;
        let dirty = self.dirty.dirty_chunks();
        self.capture_many(&dirty)?;
        Ok(self.counters.data_records - before)
    }

    pub(crate) fn abort_point(&mut self, seq: u64, kind: PointKind, why: String) -> Result<PointReply> {
        tracing::warn!(disk = %self.name, point = seq, reason = %why, "point aborted");
        self.log.append(&Record::Tag(Tag {
            seq,
            kind,
            aborted: true,
            time_ns: hrl_format::now_ns(),
            freeze_ns: 0,
            group: None,
        }))?;
        self.sync_log()?;
        self.counters.points_aborted += 1;
        Ok(PointReply {
            ok: false,
            disk: self.name.clone(),
            seq: Some(seq),
            kind: Some(kind),
            freeze_ms: None,
            copied_chunks: None,
            error: Some(why),
        })
    }

    /// Takes a point now (the disk is in data mode).
    pub(crate) fn take_point(&mut self, app: bool) -> Result<PointReply> {
        let seq = self.state.last_point_seq + 1;
        self.state.last_point_seq = seq;
        self.state.save(&self.agent.spool)?;
        let kind = match (&self.mount, app) {
            (None, _) => PointKind::Fuzzy,
            (Some(_), true) => PointKind::App,
            (Some(_), false) => PointKind::Crash,
        };
        let env = HookEnv {
            disk: self.name.clone(),
            device: self.dev.path.display().to_string(),
            mount: self.mount.as_ref().map(|m| m.display().to_string()).unwrap_or_default(),
            point: seq,
            kind: kind_name(kind),
        };
        if app {
            if let Some(cmd) = self.cfg.pre_freeze.clone() {
                if let Err(e) = run_hook("pre-freeze", &cmd, &env, self.agent.hook_timeout) {
                    return self.abort_point(seq, kind, e);
                }
            }
        }
        let max = self.agent.max_freeze;
        // Outside the freeze: flush the filesystem and copy what is dirty so
        // the frozen window has little left to do. No rate limit from here.
        let rate = self.reader.rate();
        self.reader.set_rate(0);
        let r = self.point_inner(seq, kind, &env, max);
        self.reader.set_rate(rate);
        let reply = r?;
        if app && reply.ok {
            if let Some(cmd) = self.cfg.post_thaw.clone() {
                if let Err(e) = run_hook("post-thaw", &cmd, &env, self.agent.hook_timeout) {
                    tracing::warn!(disk = %self.name, point = seq, error = %e, "post-thaw hook failed (the point was taken)");
                }
            }
        }
        Ok(reply)
    }

    fn point_inner(&mut self, seq: u64, kind: PointKind, env: &HookEnv, max: Duration) -> Result<PointReply> {
        let Some(mount) = self.mount.clone() else {
            // Fuzzy: no filesystem to freeze.
            let o = self.tracker.drain(&mut self.log)?;
            if o.lost {
                self.on_loss();
                return self.abort_point(seq, kind, "tracking lost events during the point".into());
            }
            let copied = self.copy_all_dirty()?;
            if let Some(cmd) = self.cfg.while_frozen.clone() {
                if let Err(e) = run_hook("while-frozen", &cmd, env, max) {
                    return self.abort_point(seq, kind, e);
                }
            }
            return self.finish_point(seq, kind, 0, copied);
        };
        syncfs(&mount)?;
        self.track()?;
        self.precopy(true, usize::MAX)?;
        crash_point!("point-before-freeze");
        if let Some(g) = self.guardian.as_mut() {
            g.freezing(max)?;
        }
        let r = self.frozen(seq, kind, env, max, &mount);
        if let Some(g) = self.guardian.as_mut() {
            g.thawed();
        }
        r
    }

    /// From FIFREEZE to FITHAW. Every return path has thawed: explicitly,
    /// by the watchdog, or by dropping the freeze guard.
    fn frozen(
        &mut self,
        seq: u64,
        kind: PointKind,
        env: &HookEnv,
        max: Duration,
        mount: &std::path::Path,
    ) -> Result<PointReply> {
        let freeze = Freeze::start(mount, max)?;
        let o = self.tracker.drain(&mut self.log)?;
        if o.lost {
            drop(freeze);
            self.on_loss();
            return self.abort_point(seq, kind, "tracking lost events during the freeze".into());
        }
        let copied = self.copy_all_dirty()?;
        crash_point!("point-frozen");
        if let Some(cmd) = self.cfg.while_frozen.clone() {
            let left = max.saturating_sub(freeze.elapsed());
            if let Err(e) = run_hook("while-frozen", &cmd, env, left) {
                drop(freeze);
                return self.abort_point(seq, kind, e);
            }
        }
        let log = &mut self.log;
        let r = freeze.commit_and_thaw(|frozen| {
            let r = log.append_unsynced(&Record::Tag(Tag {
                seq,
                kind,
                aborted: false,
                time_ns: hrl_format::now_ns(),
                freeze_ns: frozen.as_nanos() as u64,
                group: None,
            }));
            crash_point!("point-tag-written");
            r
        });
        match r {
            Ok((appended, frozen)) => {
                appended?;
                crash_point!("point-thawed");
                self.finish_point(seq, kind, frozen.as_nanos() as u64, copied)
            }
            Err(after) => self.abort_point(
                seq,
                kind,
                format!(
                    "the freeze exceeded max_freeze ({} ms): the watchdog thawed after {:.1} ms",
                    max.as_millis(),
                    after.as_secs_f64() * 1e3
                ),
            ),
        }
    }

    pub(crate) fn finish_point(
        &mut self,
        seq: u64,
        kind: PointKind,
        freeze_ns: u64,
        copied: u64,
    ) -> Result<PointReply> {
        if kind == PointKind::Fuzzy {
            self.log.append_unsynced(&Record::Tag(Tag {
                seq,
                kind,
                aborted: false,
                time_ns: hrl_format::now_ns(),
                freeze_ns: 0,
                group: None,
            }))?;
        }
        self.sync_log()?;
        self.hashes.save()?;
        // Rotate after a point when the segment is big enough, so segments
        // tend to end on point boundaries.
        if self.log.current_len() >= self.agent.segment_size {
            self.log.rotate()?;
        }
        let freeze_ms = freeze_ns as f64 / 1e6;
        self.counters.points_taken += 1;
        self.counters.last_freeze_ms = Some(freeze_ms);
        crate::metrics::observe_freeze(&self.name, freeze_ms / 1e3);
        {
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            st.last_point = Some(LastPoint {
                seq,
                kind,
                time_ns: hrl_format::now_ns(),
                freeze_ms,
            });
        }
        tracing::info!(disk = %self.name, point = seq, kind = kind_name(kind), freeze_ms = format!("{freeze_ms:.1}"), copied_in_freeze = copied, "point");
        Ok(PointReply {
            ok: true,
            disk: self.name.clone(),
            seq: Some(seq),
            kind: Some(kind),
            freeze_ms: Some(freeze_ms),
            copied_chunks: Some(copied),
            error: None,
        })
    }
}
