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
//!
//! The protocol is written against two traits, [`PointDisk`] (what a disk
//! worker offers) and [`Freezer`] (the filesystem's freeze ioctls), so its
//! order is unit-tested without root (see the tests below).

use std::path::Path;
use std::time::Duration;

use hrl_format::{Label, PointKind, Record, Tag};

use super::{HookPoint, PointReply};
use crate::error::Result;

/// What the point protocol needs from a disk. The disk worker implements
/// it; the tests implement it with a recorder.
pub trait PointDisk {
    fn name(&self) -> &str;
    /// The watchdog's limit on a freeze.
    fn max_freeze(&self) -> Duration;
    /// The limit on a pre-freeze or post-thaw hook.
    fn hook_timeout(&self) -> Duration;
    fn has_hook(&self, hook: HookPoint) -> bool;
    /// Runs a configured hook: `Ok` with the label it printed
    /// (`HRL_LABEL=...`), or `Err` saying why it failed.
    fn run_hook(
        &mut self,
        hook: HookPoint,
        seq: u64,
        kind: PointKind,
        timeout: Duration,
    ) -> std::result::Result<Option<String>, String>;
    /// Allocates the next point sequence (durably: a sequence is never used twice).
    fn next_seq(&mut self) -> Result<u64>;
    /// Lifts (true) or restores (false) the capture rate limit.
    fn unlimited_capture(&mut self, on: bool);
    /// Reads the trace buffers (a loss restarts the resync scan).
    fn track(&mut self) -> Result<()>;
    /// Pre-copies every dirty chunk, hot or not.
    fn precopy_all(&mut self) -> Result<()>;
    /// Drains every CPU's trace buffer; true when events were lost (the
    /// disk has then written a Lost record and resyncs).
    fn drain(&mut self) -> Result<bool>;
    /// Copies every dirty chunk; returns how many Data records that made.
    fn copy_all_dirty(&mut self) -> Result<u64>;
    /// Appends a record without fsync.
    fn append(&mut self, rec: &Record) -> Result<()>;
    /// fsync of the log (captured hashes become committed).
    fn sync_log(&mut self) -> Result<()>;
    /// After a tag is durable: save state, count, report.
    fn point_done(&mut self, seq: u64, kind: PointKind, freeze_ns: u64, copied: u64) -> Result<()>;
    fn point_aborted(&mut self);
}

/// A frozen filesystem: thawed by [`Frozen::thaw_after`], by the watchdog
/// at `max_freeze`, or when dropped.
pub trait Frozen {
    fn elapsed(&self) -> Duration;
    /// Runs `commit` while still frozen, then thaws: `Ok((commit's result,
    /// freeze time))`, or `Err(freeze time)` without running it when the
    /// watchdog already thawed.
    fn thaw_after(
        self: Box<Self>,
        commit: &mut dyn FnMut(Duration) -> Result<()>,
    ) -> std::result::Result<(Result<()>, Duration), Duration>;
}

/// The filesystem of a disk: flush, freeze (with a guardian that thaws if
/// the agent dies), and the end of a freeze.
pub trait Freezer {
    fn mount(&self) -> &Path;
    fn syncfs(&mut self) -> Result<()>;
    fn freeze(&mut self, max: Duration) -> Result<Box<dyn Frozen>>;
    /// The freeze is over (however it ended): disarm the guardian.
    fn thawed(&mut self);
}

pub fn kind_name(k: PointKind) -> &'static str {
    match k {
        PointKind::Crash => "crash",
        PointKind::App => "app",
        PointKind::Fuzzy => "fuzzy",
    }
}

fn tag(seq: u64, kind: PointKind, aborted: bool, freeze_ns: u64, group: Option<uuid::Uuid>) -> Record {
    Record::Tag(Tag {
        seq,
        kind,
        aborted,
        time_ns: hrl_format::now_ns(),
        freeze_ns,
        group,
    })
}

/// Appends the label a hook gave point `seq` (just before its tag).
pub fn append_label(disk: &mut impl PointDisk, seq: u64, label: Option<&str>) -> Result<()> {
    match label {
        Some(text) => disk.append(&Record::Label(Label {
            seq,
            text: text.to_string(),
        })),
        None => Ok(()),
    }
}

/// Writes an aborted tag (synced) and answers with the reason.
pub fn abort_point(disk: &mut impl PointDisk, seq: u64, kind: PointKind, why: String) -> Result<PointReply> {
    tracing::warn!(disk = %disk.name(), point = seq, reason = %why, "point aborted");
    disk.append(&tag(seq, kind, true, 0, None))?;
    disk.sync_log()?;
    disk.point_aborted();
    Ok(PointReply::refused(disk.name(), Some(seq), Some(kind), why))
}

/// Makes a tag durable and answers.
pub fn finish_point(
    disk: &mut impl PointDisk,
    seq: u64,
    kind: PointKind,
    freeze_ns: u64,
    copied: u64,
    label: Option<String>,
) -> Result<PointReply> {
    if kind == PointKind::Fuzzy {
        append_label(disk, seq, label.as_deref())?;
        disk.append(&tag(seq, kind, false, 0, None))?;
    }
    disk.sync_log()?;
    disk.point_done(seq, kind, freeze_ns, copied)?;
    let freeze_ms = freeze_ns as f64 / 1e6;
    tracing::info!(disk = %disk.name(), point = seq, kind = kind_name(kind), freeze_ms = format!("{freeze_ms:.1}"), copied_in_freeze = copied, "point");
    Ok(PointReply {
        ok: true,
        disk: disk.name().to_string(),
        seq: Some(seq),
        kind: Some(kind),
        freeze_ms: Some(freeze_ms),
        copied_chunks: Some(copied),
        error: None,
        note: None,
        label,
    })
}

/// Takes a point now (the disk is in data mode). `freezer` is None for a
/// disk without a mounted filesystem (a fuzzy point).
pub fn take_point(disk: &mut impl PointDisk, freezer: Option<&mut dyn Freezer>, app: bool) -> Result<PointReply> {
    let seq = disk.next_seq()?;
    // An app point is one a pre-freeze hook made application-consistent;
    // without that hook it is a crash point, and the reply says so.
    let app_hook = app && disk.has_hook(HookPoint::PreFreeze);
    let kind = match (&freezer, app_hook) {
        (None, _) => PointKind::Fuzzy,
        (Some(_), true) => PointKind::App,
        (Some(_), false) => PointKind::Crash,
    };
    let note = (app && !app_hook && freezer.is_some())
        .then(|| "asked for an app point, but this disk has no pre-freeze hook: taken as a crash point".to_string());
    if let Some(n) = &note {
        tracing::warn!(disk = %disk.name(), point = seq, "{n}");
    }
    let mut label = None;
    if app && disk.has_hook(HookPoint::PreFreeze) {
        let t = disk.hook_timeout();
        match disk.run_hook(HookPoint::PreFreeze, seq, kind, t) {
            Ok(l) => label = l,
            Err(e) => return abort_point(disk, seq, kind, e),
        }
    }
    // Outside the freeze: flush the filesystem and copy what is dirty so
    // the frozen window has little left to do. No rate limit from here.
    disk.unlimited_capture(true);
    let r = match freezer {
        None => fuzzy(disk, seq, label),
        Some(f) => frozen_point(disk, f, seq, kind, label),
    };
    disk.unlimited_capture(false);
    let mut reply = r?;
    reply.note = note;
    if app && reply.ok && disk.has_hook(HookPoint::PostThaw) {
        let t = disk.hook_timeout();
        if let Err(e) = disk.run_hook(HookPoint::PostThaw, seq, kind, t) {
            tracing::warn!(disk = %disk.name(), point = seq, error = %e, "post-thaw hook failed (the point was taken)");
        }
    }
    Ok(reply)
}

/// No filesystem to freeze: drain, copy, tag.
fn fuzzy(disk: &mut impl PointDisk, seq: u64, mut label: Option<String>) -> Result<PointReply> {
    let kind = PointKind::Fuzzy;
    if disk.drain()? {
        return abort_point(disk, seq, kind, "tracking lost events during the point".into());
    }
    let copied = disk.copy_all_dirty()?;
    if disk.has_hook(HookPoint::WhileFrozen) {
        let max = disk.max_freeze();
        match disk.run_hook(HookPoint::WhileFrozen, seq, kind, max) {
            Ok(l) => label = l.or(label),
            Err(e) => return abort_point(disk, seq, kind, e),
        }
    }
    finish_point(disk, seq, kind, 0, copied, label)
}

/// Outside the freeze: flush the filesystem and pre-copy, so the freeze
/// has little to do. Shared with group points.
pub fn prepare(disk: &mut impl PointDisk, f: &mut dyn Freezer) -> Result<()> {
    f.syncfs()?;
    disk.track()?;
    disk.precopy_all()
}

fn frozen_point(
    disk: &mut impl PointDisk,
    f: &mut dyn Freezer,
    seq: u64,
    kind: PointKind,
    label: Option<String>,
) -> Result<PointReply> {
    prepare(disk, f)?;
    crash_point!("point-before-freeze");
    let max = disk.max_freeze();
    let r = match f.freeze(max) {
        Ok(frozen) => frozen_steps(disk, frozen, (seq, kind), max, label),
        Err(e) => Err(e),
    };
    f.thawed();
    r
}

/// From FIFREEZE to FITHAW. Every return path has thawed: explicitly,
/// by the watchdog, or by dropping the freeze.
fn frozen_steps(
    disk: &mut impl PointDisk,
    frozen: Box<dyn Frozen>,
    (seq, kind): (u64, PointKind),
    max: Duration,
    mut label: Option<String>,
) -> Result<PointReply> {
    if disk.drain()? {
        drop(frozen);
        return abort_point(disk, seq, kind, "tracking lost events during the freeze".into());
    }
    let copied = disk.copy_all_dirty()?;
    crash_point!("point-frozen");
    if disk.has_hook(HookPoint::WhileFrozen) {
        let left = max.saturating_sub(frozen.elapsed());
        match disk.run_hook(HookPoint::WhileFrozen, seq, kind, left) {
            Ok(l) => label = l.or(label),
            Err(e) => {
                drop(frozen);
                return abort_point(disk, seq, kind, e);
            }
        }
    }
    // The freeze time is FIFREEZE to the Tag (the moment the point's
    // content is fixed), the same number in the tag, the reply, status and
    // metrics; FITHAW follows at once.
    let mut at_tag = Duration::ZERO;
    let r = frozen.thaw_after(&mut |t| {
        at_tag = t;
        append_label(disk, seq, label.as_deref())?;
        let r = disk.append(&tag(seq, kind, false, t.as_nanos() as u64, None));
        crash_point!("point-tag-written");
        r
    });
    match r {
        Ok((appended, _thawed)) => {
            appended?;
            crash_point!("point-thawed");
            finish_point(disk, seq, kind, at_tag.as_nanos() as u64, copied, label)
        }
        Err(after) => abort_point(disk, seq, kind, watchdog_thawed("freeze", max, after)),
    }
}

pub fn watchdog_thawed(what: &str, max: Duration, after: Duration) -> String {
    format!(
        "the {what} exceeded max_freeze ({} ms): the watchdog thawed after {:.1} ms",
        max.as_millis(),
        after.as_secs_f64() * 1e3
    )
}

#[cfg(test)]
pub(crate) mod fake {
    //! A disk and a freezer that record what the protocol asks of them.
    use std::sync::{Arc, Mutex};

    use super::*;

    pub type Journal = Arc<Mutex<Vec<String>>>;

    pub fn log(j: &Journal, what: impl Into<String>) {
        j.lock().unwrap().push(what.into());
    }

    #[derive(Default)]
    pub struct FakeDisk {
        pub journal: Journal,
        pub seq: u64,
        pub hooks: Vec<HookPoint>,
        pub failing_hook: Option<HookPoint>,
        pub lose_on_drain: bool,
        pub records: Vec<Record>,
        /// What each hook prints as its label.
        pub labels: std::collections::HashMap<HookPoint, String>,
    }

    impl PointDisk for FakeDisk {
        fn name(&self) -> &str {
            "fake"
        }
        fn max_freeze(&self) -> Duration {
            Duration::from_secs(1)
        }
        fn hook_timeout(&self) -> Duration {
            Duration::from_secs(5)
        }
        fn has_hook(&self, hook: HookPoint) -> bool {
            self.hooks.contains(&hook)
        }
        fn run_hook(
            &mut self,
            hook: HookPoint,
            _: u64,
            _: PointKind,
            _: Duration,
        ) -> std::result::Result<Option<String>, String> {
            log(&self.journal, format!("hook {hook:?}"));
            if self.failing_hook == Some(hook) {
                return Err(format!("{hook:?} hook failed"));
            }
            Ok(self.labels.get(&hook).cloned())
        }
        fn next_seq(&mut self) -> Result<u64> {
            self.seq += 1;
            Ok(self.seq)
        }
        fn unlimited_capture(&mut self, on: bool) {
            log(&self.journal, if on { "unlimited" } else { "limited" });
        }
        fn track(&mut self) -> Result<()> {
            log(&self.journal, "track");
            Ok(())
        }
        fn precopy_all(&mut self) -> Result<()> {
            log(&self.journal, "precopy");
            Ok(())
        }
        fn drain(&mut self) -> Result<bool> {
            log(&self.journal, "drain");
            Ok(self.lose_on_drain)
        }
        fn copy_all_dirty(&mut self) -> Result<u64> {
            log(&self.journal, "copy");
            Ok(3)
        }
        fn append(&mut self, rec: &Record) -> Result<()> {
            let what = match rec {
                Record::Tag(t) if t.aborted => "aborted tag",
                Record::Tag(_) => "tag",
                Record::Group(_) => "group",
                _ => "record",
            };
            log(&self.journal, what);
            self.records.push(rec.clone());
            Ok(())
        }
        fn sync_log(&mut self) -> Result<()> {
            log(&self.journal, "fsync");
            Ok(())
        }
        fn point_done(&mut self, _: u64, _: PointKind, _: u64, _: u64) -> Result<()> {
            log(&self.journal, "done");
            Ok(())
        }
        fn point_aborted(&mut self) {
            log(&self.journal, "aborted");
        }
    }

    pub struct FakeFreezer {
        pub journal: Journal,
        /// The watchdog "thaws" before the tag (the freeze overran).
        pub overrun: bool,
    }

    struct FakeFrozen {
        journal: Journal,
        overrun: bool,
        thawed: bool,
    }

    impl Frozen for FakeFrozen {
        fn elapsed(&self) -> Duration {
            Duration::from_millis(1)
        }
        fn thaw_after(
            mut self: Box<Self>,
            commit: &mut dyn FnMut(Duration) -> Result<()>,
        ) -> std::result::Result<(Result<()>, Duration), Duration> {
            self.thawed = true;
            if self.overrun {
                log(&self.journal, "watchdog thaw");
                return Err(Duration::from_millis(1500));
            }
            let r = commit(Duration::from_millis(1));
            log(&self.journal, "thaw");
            Ok((r, Duration::from_millis(5)))
        }
    }

    impl Drop for FakeFrozen {
        fn drop(&mut self) {
            if !self.thawed {
                log(&self.journal, "thaw (dropped)");
            }
        }
    }

    impl Freezer for FakeFreezer {
        fn mount(&self) -> &Path {
            Path::new("/fake")
        }
        fn syncfs(&mut self) -> Result<()> {
            log(&self.journal, "syncfs");
            Ok(())
        }
        fn freeze(&mut self, _: Duration) -> Result<Box<dyn Frozen>> {
            log(&self.journal, "freeze");
            Ok(Box::new(FakeFrozen {
                journal: self.journal.clone(),
                overrun: self.overrun,
                thawed: false,
            }))
        }
        fn thawed(&mut self) {
            log(&self.journal, "guardian disarmed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    fn run(disk: &mut FakeDisk, overrun: bool, app: bool) -> (PointReply, Vec<String>) {
        let mut f = FakeFreezer {
            journal: disk.journal.clone(),
            overrun,
        };
        let r = take_point(disk, Some(&mut f), app).unwrap();
        let j = disk.journal.lock().unwrap().clone();
        (r, j)
    }

    #[test]
    fn a_point_follows_the_documented_order() {
        let mut d = FakeDisk {
            hooks: vec![HookPoint::PreFreeze, HookPoint::WhileFrozen, HookPoint::PostThaw],
            ..Default::default()
        };
        let (r, j) = run(&mut d, false, true);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.kind, Some(PointKind::App));
        // One freeze time everywhere: FIFREEZE to the tag, in the tag and the reply.
        let tag_ns = d.records.iter().find_map(|r| match r {
            Record::Tag(t) => Some(t.freeze_ns),
            _ => None,
        });
        assert_eq!(tag_ns, Some(1_000_000));
        assert_eq!(r.freeze_ms, Some(1.0));
        assert_eq!(
            j,
            [
                "hook PreFreeze",
                "unlimited",
                "syncfs",
                "track",
                "precopy",
                "freeze",
                "drain",
                "copy",
                "hook WhileFrozen",
                "tag",
                "thaw",
                "fsync",
                "done",
                "guardian disarmed",
                "limited",
                "hook PostThaw"
            ]
        );
    }

    #[test]
    fn an_app_point_without_a_pre_freeze_hook_is_a_crash_point_and_says_so() {
        let mut d = FakeDisk {
            hooks: vec![HookPoint::PostThaw],
            ..Default::default()
        };
        let (r, _) = run(&mut d, false, true);
        assert!(r.ok);
        assert_eq!(r.kind, Some(PointKind::Crash));
        assert!(r.note.unwrap().contains("no pre-freeze hook"));
        let tag = d.records.iter().find_map(|r| match r {
            Record::Tag(t) => Some(t.kind),
            _ => None,
        });
        assert_eq!(tag, Some(PointKind::Crash), "the tag says crash too");
    }

    #[test]
    fn a_loss_in_the_freeze_thaws_before_the_aborted_tag() {
        let mut d = FakeDisk {
            lose_on_drain: true,
            ..Default::default()
        };
        let (r, j) = run(&mut d, false, false);
        assert!(!r.ok);
        let thaw = j.iter().position(|s| s == "thaw (dropped)").unwrap();
        let tag = j.iter().position(|s| s == "aborted tag").unwrap();
        assert!(thaw < tag, "{j:?}");
        assert!(!j.contains(&"copy".to_string()), "{j:?}");
    }

    #[test]
    fn a_failing_while_frozen_hook_aborts_and_thaws() {
        let mut d = FakeDisk {
            hooks: vec![HookPoint::WhileFrozen],
            failing_hook: Some(HookPoint::WhileFrozen),
            ..Default::default()
        };
        let (r, j) = run(&mut d, false, false);
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("WhileFrozen"));
        assert_eq!(j.iter().filter(|s| s.as_str() == "tag").count(), 0, "{j:?}");
        assert!(j.contains(&"thaw (dropped)".to_string()));
    }

    #[test]
    fn a_watchdog_thaw_turns_the_point_into_an_aborted_one() {
        let mut d = FakeDisk::default();
        let (r, j) = run(&mut d, true, false);
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("watchdog"));
        assert!(!j.contains(&"tag".to_string()), "{j:?}");
        assert!(j.contains(&"aborted tag".to_string()));
    }

    #[test]
    fn a_failing_pre_freeze_hook_never_freezes() {
        let mut d = FakeDisk {
            hooks: vec![HookPoint::PreFreeze],
            failing_hook: Some(HookPoint::PreFreeze),
            ..Default::default()
        };
        let (r, j) = run(&mut d, false, true);
        assert!(!r.ok);
        assert!(!j.contains(&"freeze".to_string()), "{j:?}");
    }

    #[test]
    fn without_a_filesystem_the_point_is_fuzzy_and_never_freezes() {
        let mut d = FakeDisk::default();
        let r = take_point(&mut d, None, true).unwrap();
        assert!(r.ok);
        assert_eq!(r.kind, Some(PointKind::Fuzzy));
        let j = d.journal.lock().unwrap().clone();
        assert_eq!(j, ["unlimited", "drain", "copy", "tag", "fsync", "done", "limited"]);
    }

    #[test]
    fn a_hook_label_goes_just_before_the_tag_and_the_frozen_one_wins() {
        let mut d = FakeDisk {
            hooks: vec![HookPoint::PreFreeze, HookPoint::WhileFrozen],
            labels: [(HookPoint::PreFreeze, "pre".to_string())].into(),
            ..Default::default()
        };
        let (r, _) = run(&mut d, false, true);
        assert_eq!(r.label.as_deref(), Some("pre"));
        let labelled = |d: &FakeDisk| {
            let i = d.records.iter().position(|r| matches!(r, Record::Tag(_))).unwrap();
            match &d.records[i - 1] {
                Record::Label(l) => Some((l.seq, l.text.clone())),
                _ => None,
            }
        };
        assert_eq!(labelled(&d), Some((1, "pre".to_string())));
        let mut d = FakeDisk {
            hooks: vec![HookPoint::PreFreeze, HookPoint::WhileFrozen],
            labels: [
                (HookPoint::PreFreeze, "pre".to_string()),
                (HookPoint::WhileFrozen, "frozen".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let (r, _) = run(&mut d, false, true);
        assert_eq!(r.label.as_deref(), Some("frozen"));
        assert_eq!(labelled(&d), Some((1, "frozen".to_string())));
        // No label: no Label record.
        let mut d = FakeDisk::default();
        run(&mut d, false, false);
        assert!(!d.records.iter().any(|r| matches!(r, Record::Label(_))));
    }
}
