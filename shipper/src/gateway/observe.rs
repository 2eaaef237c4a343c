//! What the gateway has seen of each disk in the records it received:
//! the disk's names, its mode and since when, its newest point and newest
//! app point (and whether the newest was aborted: a failed hook or
//! freeze), its losses, and how many bytes arrived. The fleet view reads
//! it; nothing here decides anything.
//!
//! Kept in memory and, on every change other than byte counts, in
//! `CACHE/<machine>/<disk>.seen.json` (replaced by rename, not fsynced: a
//! crash loses at most the newest change, which the next record brings
//! back), so a restarted gateway still knows a disk that has been in data
//! mode for days.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hrl_format::{DiskMode, PointKind, Record};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A point as its tag announced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenPoint {
    pub seq: u64,
    pub kind: PointKind,
    pub time_ns: u64,
    pub aborted: bool,
}

/// One disk as its records showed it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Seen {
    pub host: Option<String>,
    pub name: Option<String>,
    pub mode: Option<DiskMode>,
    pub mode_since_ns: Option<u64>,
    /// The newest tag, taken or aborted.
    pub last_tag: Option<SeenPoint>,
    pub last_app_point: Option<SeenPoint>,
    pub losses: u64,
    /// The newest `Lost` record: reason and detail.
    pub last_loss: Option<String>,
    pub bytes_received: u64,
    /// When a range last arrived (ns since the epoch).
    pub last_bytes_ns: Option<u64>,
}

/// Recent arrivals per disk: (time ns, bytes).
type Arrivals = HashMap<(String, Uuid), VecDeque<(u64, u64)>>;

/// Every disk's observations, and recent arrivals for throughput.
pub struct Observations {
    root: PathBuf,
    disks: Mutex<HashMap<(String, Uuid), Seen>>,
    /// (time ns, bytes) of recent ranges per disk, at most 10 minutes.
    arrivals: Mutex<Arrivals>,
}

fn seen_path(root: &Path, machine: &str, disk: &Uuid) -> PathBuf {
    root.join(machine).join(format!("{disk}.seen.json"))
}

impl Observations {
    /// Loads what earlier runs saw from the cache directory `root`.
    pub fn load(root: &Path) -> Self {
        let mut disks = HashMap::new();
        for m in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let machine = m.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(m.path()).into_iter().flatten().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_suffix(".seen.json").and_then(|d| d.parse::<Uuid>().ok()) else {
                    continue;
                };
                match std::fs::read(f.path()).map(|b| serde_json::from_slice::<Seen>(&b)) {
                    Ok(Ok(s)) => {
                        disks.insert((machine.clone(), id), s);
                    }
                    _ => tracing::warn!(file = %f.path().display(), "unreadable fleet observations ignored"),
                }
            }
        }
        Observations {
            root: root.to_path_buf(),
            disks: Mutex::new(disks),
            arrivals: Mutex::new(HashMap::new()),
        }
    }

    /// Takes in the records and byte count of a range just accepted.
    pub fn observe(&self, machine: &str, disk: &Uuid, records: &[Record], bytes: u64) {
        let now = hrl_format::now_ns();
        let key = (machine.to_string(), *disk);
        {
            let mut a = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
            let q = a.entry(key.clone()).or_default();
            q.push_back((now, bytes));
            while q.front().is_some_and(|(t, _)| now.saturating_sub(*t) > 600_000_000_000) {
                q.pop_front();
            }
        }
        let mut g = self.disks.lock().unwrap_or_else(|e| e.into_inner());
        let s = g.entry(key).or_default();
        s.bytes_received += bytes;
        s.last_bytes_ns = Some(now);
        let mut changed = false;
        for r in records {
            changed |= apply(s, r);
        }
        if changed {
            let p = seen_path(&self.root, machine, disk);
            let _ = std::fs::create_dir_all(self.root.join(machine));
            let body = serde_json::to_vec_pretty(&*s).unwrap_or_default();
            // Advisory (the fleet view's): replaced by rename, not fsynced,
            // since this runs on the ingest path at every point.
            let tmp = p.with_extension("json.tmp");
            if let Err(e) = std::fs::write(&tmp, &body).and_then(|_| std::fs::rename(&tmp, &p)) {
                tracing::warn!(file = %p.display(), error = %e, "could not save fleet observations");
            }
        }
    }

    /// A copy of what was seen of `machine`'s `disk`.
    pub fn get(&self, machine: &str, disk: &Uuid) -> Option<Seen> {
        let g = self.disks.lock().unwrap_or_else(|e| e.into_inner());
        g.get(&(machine.to_string(), *disk)).cloned()
    }

    /// Bytes per second received for the disk over the last `window_ns`.
    pub fn throughput(&self, machine: &str, disk: &Uuid, window_ns: u64) -> f64 {
        let now = hrl_format::now_ns();
        let a = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = a.get(&(machine.to_string(), *disk)) else {
            return 0.0;
        };
        let bytes: u64 = q
            .iter()
            .filter(|(t, _)| now.saturating_sub(*t) <= window_ns)
            .map(|(_, b)| b)
            .sum();
        bytes as f64 / (window_ns as f64 / 1e9)
    }
}

/// Applies one record; true when something worth saving changed.
fn apply(s: &mut Seen, r: &Record) -> bool {
    match r {
        Record::Identity(i) => {
            let same = s.host.as_deref() == Some(&i.host) && s.name.as_deref() == Some(&i.name);
            s.host = Some(i.host.clone());
            s.name = Some(i.name.clone());
            !same
        }
        Record::Mode(m) => {
            if s.mode != Some(m.mode) {
                s.mode = Some(m.mode);
                s.mode_since_ns = Some(m.time_ns);
            }
            true
        }
        Record::Tag(t) => {
            let p = SeenPoint {
                seq: t.seq,
                kind: t.kind,
                time_ns: t.time_ns,
                aborted: t.aborted,
            };
            s.last_tag = Some(p);
            if t.kind == PointKind::App && !t.aborted {
                s.last_app_point = Some(p);
            }
            true
        }
        Record::Lost(l) => {
            s.losses += 1;
            s.last_loss = Some(format!("{:?}: {}", l.reason, l.detail));
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrl_format::{Identity, LossReason, Lost, ModeChange, Tag};

    #[test]
    fn records_become_a_disk_view_that_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Uuid::new_v4();
        let o = Observations::load(dir.path());
        let tag = |seq, kind, aborted| {
            Record::Tag(Tag {
                seq,
                kind,
                aborted,
                time_ns: seq * 1000,
                freeze_ns: 1,
                group: None,
            })
        };
        let recs = vec![
            Record::Identity(Identity {
                host: "db01".into(),
                name: "data".into(),
            }),
            Record::Mode(ModeChange {
                mode: DiskMode::Data,
                time_ns: 5,
            }),
            tag(1, PointKind::App, false),
            tag(2, PointKind::Crash, false),
            tag(3, PointKind::App, true),
            Record::Lost(Lost {
                reason: LossReason::Overrun,
                range: None,
                time_ns: 9,
                detail: "ring buffer".into(),
            }),
        ];
        o.observe("m1", &disk, &recs, 4096);
        let again = Observations::load(dir.path());
        let s = again.get("m1", &disk).expect("saved");
        assert_eq!((s.host.as_deref(), s.name.as_deref()), (Some("db01"), Some("data")));
        assert_eq!((s.mode, s.mode_since_ns), (Some(DiskMode::Data), Some(5)));
        assert_eq!(s.last_tag.map(|p| (p.seq, p.aborted)), Some((3, true)));
        assert_eq!(s.last_app_point.map(|p| p.seq), Some(1));
        assert_eq!(s.losses, 1);
        assert!(s.last_loss.unwrap().contains("ring buffer"));
        assert!(o.throughput("m1", &disk, 60_000_000_000) > 0.0);
        assert!(again.get("m2", &disk).is_none());
    }
}
