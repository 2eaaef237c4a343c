//! A disk's part of a consistency-group point: freeze, drain and copy, say
//! so, then wait for the coordinator's decision; thaw on commit (after the
//! Group and Tag records), on abort, on a lost coordinator, or at
//! `max_freeze` (watchdog). The network side is in `crate::group`.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use hrl_format::{Group, PointKind, Record, Tag};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::protocol::{abort_point, append_label, finish_point, watchdog_thawed, Freezer, Frozen, PointDisk};
use super::{HookPoint, PointReply};
use crate::error::Result;

/// The group point a member is asked to take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPoint {
    pub id: Uuid,
    pub seq: u64,
    pub name: String,
}

/// What the member tells a frozen worker.
#[derive(Debug)]
pub enum Decision {
    Commit { members: u32 },
    Abort(String),
}

/// A worker's group-freeze request: it answers on `frozen` (freeze time in
/// ms, or why not), waits on `decision`, and reports the point on `done`.
pub struct FreezeJob {
    pub point: GroupPoint,
    pub frozen: Sender<std::result::Result<f64, String>>,
    pub decision: Receiver<Decision>,
    pub done: Sender<PointReply>,
}

/// Runs a group freeze on a disk in data mode with a filesystem (`freezer`
/// None: the disk cannot take part, and says so).
pub fn group_freeze(disk: &mut impl PointDisk, freezer: Option<&mut dyn Freezer>, job: FreezeJob) -> Result<()> {
    let FreezeJob {
        point,
        frozen,
        decision,
        done,
    } = job;
    let Some(f) = freezer else {
        let why = format!("disk {} is not ready for a group point", disk.name());
        let _ = frozen.send(Err(why.clone()));
        let _ = done.send(PointReply::refused(disk.name(), None, None, why));
        return Ok(());
    };
    let seq = disk.next_seq()?;
    let max = disk.max_freeze();
    disk.unlimited_capture(true);
    let r = match f.freeze(max) {
        Ok(fz) => frozen_member(disk, fz, seq, &point, max, &frozen, &decision),
        Err(e) => Err(e),
    };
    f.thawed();
    disk.unlimited_capture(false);
    let reply = match r {
        Ok(rep) => rep,
        Err(e) => {
            let _ = frozen.send(Err(e.to_string()));
            PointReply::refused(disk.name(), None, None, e.to_string())
        }
    };
    let _ = done.send(reply);
    Ok(())
}

fn frozen_member(
    disk: &mut impl PointDisk,
    fz: Box<dyn Frozen>,
    seq: u64,
    point: &GroupPoint,
    max: Duration,
    frozen: &Sender<std::result::Result<f64, String>>,
    decision: &Receiver<Decision>,
) -> Result<PointReply> {
    let kind = PointKind::Crash;
    if disk.drain()? {
        drop(fz);
        let _ = frozen.send(Err("tracking lost events during the freeze".into()));
        return abort_point(disk, seq, kind, "tracking lost events during the group freeze".into());
    }
    let copied = disk.copy_all_dirty()?;
    let mut label = None;
    if disk.has_hook(HookPoint::WhileFrozen) {
        let left = max.saturating_sub(fz.elapsed());
        match disk.run_hook(HookPoint::WhileFrozen, seq, kind, left) {
            Ok(l) => label = l,
            Err(e) => {
                drop(fz);
                let _ = frozen.send(Err(e.clone()));
                return abort_point(disk, seq, kind, e);
            }
        }
    }
    let _ = frozen.send(Ok(fz.elapsed().as_secs_f64() * 1e3));
    let p = format!("group {} point {}", point.name, point.seq);
    let members = match decision.recv_timeout(max.saturating_sub(fz.elapsed())) {
        Ok(Decision::Commit { members }) => members,
        Ok(Decision::Abort(why)) => {
            drop(fz);
            return abort_point(disk, seq, kind, format!("{p} aborted: {why}"));
        }
        Err(RecvTimeoutError::Disconnected) => {
            drop(fz);
            return abort_point(disk, seq, kind, format!("{p}: lost the coordinator; thawed"));
        }
        Err(RecvTimeoutError::Timeout) => {
            drop(fz);
            let why = format!("{p}: no decision within max_freeze ({} ms); thawed", max.as_millis());
            return abort_point(disk, seq, kind, why);
        }
    };
    let mut at_tag = Duration::ZERO;
    let r = fz.thaw_after(&mut |t| {
        at_tag = t;
        append_label(disk, seq, label.as_deref())?;
        disk.append(&Record::Group(Group {
            id: point.id,
            seq: point.seq,
            members,
            name: point.name.clone(),
        }))?;
        disk.append(&Record::Tag(Tag {
            seq,
            kind,
            aborted: false,
            time_ns: hrl_format::now_ns(),
            freeze_ns: t.as_nanos() as u64,
            group: Some(point.id),
        }))
    });
    match r {
        Ok((appended, _thawed)) => {
            appended?;
            finish_point(disk, seq, kind, at_tag.as_nanos() as u64, copied, label)
        }
        Err(after) => abort_point(disk, seq, kind, watchdog_thawed("group freeze", max, after)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;

    use super::super::protocol::fake::*;
    use super::*;

    type Frozen = Receiver<std::result::Result<f64, String>>;

    fn job() -> (FreezeJob, Frozen, Sender<Decision>, Receiver<PointReply>) {
        let (ftx, frx) = channel();
        let (dtx, drx) = channel();
        let (rtx, rrx) = channel();
        let point = GroupPoint {
            id: Uuid::new_v4(),
            seq: 7,
            name: "g".into(),
        };
        let job = FreezeJob {
            point,
            frozen: ftx,
            decision: drx,
            done: rtx,
        };
        (job, frx, dtx, rrx)
    }

    #[test]
    fn a_commit_writes_group_then_tag_inside_the_freeze() {
        let mut d = FakeDisk::default();
        let mut f = FakeFreezer {
            journal: d.journal.clone(),
            overrun: false,
        };
        let (job, frozen, decide, done) = job();
        decide.send(Decision::Commit { members: 2 }).unwrap();
        group_freeze(&mut d, Some(&mut f), job).unwrap();
        assert!(frozen.recv().unwrap().is_ok());
        assert!(done.recv().unwrap().ok);
        let j = d.journal.lock().unwrap().clone();
        let at = |s: &str| j.iter().position(|x| x == s).unwrap();
        assert!(at("freeze") < at("drain") && at("drain") < at("copy"));
        assert!(
            at("copy") < at("group") && at("group") < at("tag") && at("tag") < at("thaw"),
            "{j:?}"
        );
    }

    #[test]
    fn a_lost_coordinator_thaws_and_aborts() {
        let mut d = FakeDisk::default();
        let mut f = FakeFreezer {
            journal: d.journal.clone(),
            overrun: false,
        };
        let (job, _frozen, decide, done) = job();
        drop(decide);
        group_freeze(&mut d, Some(&mut f), job).unwrap();
        let r = done.recv().unwrap();
        assert!(!r.ok && r.error.unwrap().contains("lost the coordinator"));
        let j = d.journal.lock().unwrap().clone();
        assert!(
            j.contains(&"thaw (dropped)".into()) && !j.contains(&"tag".into()),
            "{j:?}"
        );
    }
}
