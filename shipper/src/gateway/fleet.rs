//! The fleet view: every machine, its disks and their health, built from
//! what the gateway already holds: the machine registry (contact,
//! revocation), the records it received (`observe`: mode, points, losses),
//! and each machine's ship status in the cache (newest published point,
//! bytes not yet published). Alerts are derived from it against the
//! thresholds of gateway.toml; `watch` logs them as they rise and clear,
//! keeps 24 h of RPO per disk, and posts them to the webhook.
//!
//! Read-only: nothing here changes a machine, a disk or the repository.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;

use hrl_format::DiskMode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::config::FleetSettings;
use super::machines::Registry;
use super::observe::{Observations, SeenPoint};
use super::policy::PolicyFile;

const SEC: u64 = 1_000_000_000;
/// RPO history kept per disk: 24 h at one sample a minute.
const HISTORY: usize = 24 * 60;

/// One disk in the fleet view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskView {
    pub id: Uuid,
    /// host/name from the agent, or the id before the first segment.
    pub label: String,
    pub mode: String,
    pub mode_since_ns: Option<u64>,
    /// The newest point the agent tagged (taken or aborted).
    pub last_point: Option<SeenPoint>,
    pub last_app_point: Option<SeenPoint>,
    /// The newest point published in the repository, and its time.
    pub published: Option<u64>,
    pub published_ns: Option<u64>,
    /// Age of the newest published point: what a failover now would lose.
    pub rpo_seconds: Option<f64>,
    /// The RPO threshold of this disk: its machine's policy's `rpo_warn`,
    /// else the gateway's.
    pub rpo_warn_seconds: u64,
    /// Bytes received but not yet in a published point.
    pub backlog_bytes: u64,
    /// Bytes per second received over the last minute.
    pub throughput_bps: f64,
    pub losses: u64,
    pub last_error: Option<String>,
}

/// One machine in the fleet view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineView {
    pub name: String,
    /// The replication policy assigned to the machine, if any.
    pub policy: Option<String>,
    pub connected: bool,
    pub revoked: bool,
    pub last_contact_ns: Option<u64>,
    pub disks: Vec<DiskView>,
}

/// Something an operator must look at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// The newest published point is older than `rpo_warn`.
    Rpo,
    /// No request from the machine for longer than `silent_after`.
    Silent,
    /// In bitmap or resync for longer than `stuck_after`.
    Stuck,
    /// The newest point was aborted (a failed hook, a freeze too long).
    PointAborted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub machine: String,
    pub disk: Option<Uuid>,
    /// machine or host/name.
    pub label: String,
    pub message: String,
}

impl Alert {
    fn key(&self) -> (AlertKind, String, Option<Uuid>) {
        (self.kind.clone(), self.machine.clone(), self.disk)
    }
}

/// The whole view, as `fleet --json` and `/fleet.json` give it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    pub time_ns: u64,
    /// The gateway's RPO threshold (a policy's `rpo_warn` overrides it
    /// per machine: each disk has its own).
    pub rpo_warn_seconds: u64,
    pub machines: Vec<MachineView>,
    pub alerts: Vec<Alert>,
}

impl FleetView {
    pub fn disk(&self, id: &Uuid) -> Option<(&MachineView, &DiskView)> {
        self.machines
            .iter()
            .find_map(|m| m.disks.iter().find(|d| d.id == *id).map(|d| (m, d)))
    }
}

/// The fleet state the gateway keeps between requests.
pub struct Fleet {
    pub settings: FleetSettings,
    pub seen: Observations,
    history: Mutex<HashMap<Uuid, VecDeque<(u64, f64)>>>,
    raised: Mutex<Vec<Alert>>,
}

/// A duration for people: 45s, 7m12s, 3h05m, 2d4h.
pub fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// A point kind as the agent and the pages write it: crash, app, fuzzy.
pub fn kind_name(k: hrl_format::PointKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn mode_name(m: Option<DiskMode>) -> String {
    match m {
        Some(DiskMode::InitialSync) => "initial-sync",
        Some(DiskMode::Data) => "data",
        Some(DiskMode::Bitmap) => "bitmap",
        Some(DiskMode::Resync) => "resync",
        Some(DiskMode::Paused) => "paused",
        None => "unknown",
    }
    .to_string()
}

/// Bytes of `disk`'s segments still in the machine's cache.
fn cached_bytes(spool: &Path, disk: &Uuid) -> u64 {
    hrl_format::list_segments(spool, Some(*disk))
        .map(|v| {
            v.iter()
                .filter_map(|s| std::fs::metadata(&s.path).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

impl Fleet {
    pub fn new(settings: FleetSettings, cache: &Path) -> Self {
        Fleet {
            settings,
            seen: Observations::load(cache),
            history: Mutex::new(HashMap::new()),
            raised: Mutex::new(Vec::new()),
        }
    }

    /// The view now; `policies` gives each machine's policy (and so its
    /// RPO threshold).
    pub fn view(&self, reg: &Registry, cache: &Path, policies: &PolicyFile) -> FleetView {
        let now = hrl_format::now_ns();
        let mut machines = Vec::new();
        for (name, m) in &reg.machines {
            let policy = policies.for_machine(name);
            let warn = policy
                .as_ref()
                .and_then(|p| p.1.rpo_warn)
                .map_or(self.settings.rpo_warn, Into::into)
                .as_secs();
            let spool = cache.join(name);
            let status = crate::ship::status::load(&spool).ok();
            let disks = m
                .disks
                .iter()
                .map(|id| {
                    let seen = self.seen.get(name, id).unwrap_or_default();
                    let ship = status.as_ref().and_then(|s| s.disks.get(id));
                    let published_ns = ship.and_then(|s| s.last_point_time_ns);
                    let label = match (&seen.host, &seen.name) {
                        (Some(h), Some(n)) => format!("{h}/{n}"),
                        _ => id.to_string(),
                    };
                    DiskView {
                        id: *id,
                        label,
                        mode: mode_name(seen.mode),
                        mode_since_ns: seen.mode_since_ns,
                        last_point: seen.last_tag,
                        last_app_point: seen.last_app_point,
                        published: ship.and_then(|s| s.last_point),
                        published_ns,
                        rpo_seconds: published_ns.map(|t| now.saturating_sub(t) as f64 / 1e9),
                        rpo_warn_seconds: warn,
                        backlog_bytes: ship.map_or(0, |s| s.unpublished_bytes) + cached_bytes(&spool, id),
                        throughput_bps: self.seen.throughput(name, id, 60 * SEC),
                        losses: seen.losses,
                        last_error: seen.last_loss,
                    }
                })
                .collect();
            machines.push(MachineView {
                name: name.clone(),
                policy: policy.map(|p| p.0),
                connected: m.last_contact_ns.is_some_and(|t| {
                    now.saturating_sub(t) < (60 * SEC).min(self.settings.silent_after.as_nanos() as u64)
                }),
                revoked: m.revoked(),
                last_contact_ns: m.last_contact_ns,
                disks,
            });
        }
        let mut v = FleetView {
            time_ns: now,
            rpo_warn_seconds: self.settings.rpo_warn.as_secs(),
            machines,
            alerts: Vec::new(),
        };
        v.alerts = self.alerts(&v);
        v
    }

    fn alerts(&self, v: &FleetView) -> Vec<Alert> {
        let s = &self.settings;
        let mut out = Vec::new();
        for m in v.machines.iter().filter(|m| !m.revoked) {
            let quiet = m.last_contact_ns.map(|t| v.time_ns.saturating_sub(t) as f64 / 1e9);
            if let Some(q) = quiet.filter(|q| *q > s.silent_after.as_secs_f64()) {
                out.push(Alert {
                    kind: AlertKind::Silent,
                    machine: m.name.clone(),
                    disk: None,
                    label: m.name.clone(),
                    message: format!(
                        "no contact for {} (threshold {})",
                        age(q),
                        age(s.silent_after.as_secs_f64())
                    ),
                });
            }
            for d in &m.disks {
                let mut push = |kind, message| {
                    out.push(Alert {
                        kind,
                        machine: m.name.clone(),
                        disk: Some(d.id),
                        label: d.label.clone(),
                        message,
                    })
                };
                let warn = d.rpo_warn_seconds as f64;
                if let Some(r) = d.rpo_seconds.filter(|r| *r > warn) {
                    push(AlertKind::Rpo, format!("RPO {} exceeds {}", age(r), age(warn)));
                }
                let stuck = matches!(d.mode.as_str(), "bitmap" | "resync");
                let since = d.mode_since_ns.map(|t| v.time_ns.saturating_sub(t) as f64 / 1e9);
                if let Some(t) = since.filter(|t| stuck && *t > s.stuck_after.as_secs_f64()) {
                    push(AlertKind::Stuck, format!("in {} for {}", d.mode, age(t)));
                }
                if let Some(p) = d.last_point.filter(|p| p.aborted) {
                    push(
                        AlertKind::PointAborted,
                        format!(
                            "{} point {} was aborted: a hook failed or the freeze ran out",
                            kind_name(p.kind),
                            p.seq
                        ),
                    );
                }
            }
        }
        out
    }

    /// RPO samples of `disk` over the last 24 h: (time ns, seconds).
    pub fn history(&self, disk: &Uuid) -> Vec<(u64, f64)> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.get(disk).map(|q| q.iter().copied().collect()).unwrap_or_default()
    }

    /// One step of the watch: records RPO samples (one a minute per disk)
    /// and returns the alerts raised and cleared since the last step.
    pub fn step(&self, v: &FleetView) -> (Vec<Alert>, Vec<Alert>) {
        {
            let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
            for d in v.machines.iter().flat_map(|m| &m.disks) {
                let Some(r) = d.rpo_seconds else { continue };
                let q = h.entry(d.id).or_default();
                if q.back().is_none_or(|(t, _)| v.time_ns.saturating_sub(*t) >= 60 * SEC) {
                    q.push_back((v.time_ns, r));
                }
                while q.len() > HISTORY {
                    q.pop_front();
                }
            }
        }
        let mut raised = self.raised.lock().unwrap_or_else(|e| e.into_inner());
        let before: BTreeMap<_, _> = raised.iter().map(|a| (a.key(), a.clone())).collect();
        let now: BTreeMap<_, _> = v.alerts.iter().map(|a| (a.key(), a.clone())).collect();
        let new = now
            .iter()
            .filter(|(k, _)| !before.contains_key(k))
            .map(|(_, a)| a.clone())
            .collect();
        let gone = before
            .iter()
            .filter(|(k, _)| !now.contains_key(k))
            .map(|(_, a)| a.clone())
            .collect();
        *raised = v.alerts.clone();
        (new, gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(mode: &str, since_s: u64, rpo: Option<f64>, warn: u64, now: u64) -> DiskView {
        DiskView {
            id: Uuid::new_v4(),
            label: format!("h/{mode}"),
            mode: mode.into(),
            mode_since_ns: Some(now - since_s * SEC),
            last_point: None,
            last_app_point: None,
            published: Some(1),
            published_ns: None,
            rpo_seconds: rpo,
            rpo_warn_seconds: warn,
            backlog_bytes: 0,
            throughput_bps: 0.0,
            losses: 0,
            last_error: None,
        }
    }

    #[test]
    fn alerts_follow_each_disks_threshold_and_skip_revoked_machines() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fleet::new(FleetSettings::default(), dir.path());
        let now = 1_000_000 * SEC;
        let machine = |name: &str, contact_s: u64, revoked: bool, disks| MachineView {
            name: name.into(),
            policy: None,
            connected: false,
            revoked,
            last_contact_ns: Some(now - contact_s * SEC),
            disks,
        };
        let v = FleetView {
            time_ns: now,
            rpo_warn_seconds: 300,
            machines: vec![
                machine(
                    "a",
                    10,
                    false,
                    vec![
                        disk("bitmap", 7200, Some(30.0), 300, now),
                        disk("resync", 60, Some(100.0), 60, now),
                        disk("data", 9000, Some(200.0), 300, now),
                    ],
                ),
                machine("b", 500, false, vec![]),
                machine("gone", 5000, true, vec![disk("bitmap", 9000, Some(9e5), 300, now)]),
            ],
            alerts: Vec::new(),
        };
        let got: Vec<(AlertKind, String)> = f.alerts(&v).into_iter().map(|a| (a.kind, a.label)).collect();
        assert_eq!(
            got,
            vec![
                (AlertKind::Stuck, "h/bitmap".to_string()),
                (AlertKind::Rpo, "h/resync".to_string()),
                (AlertKind::Silent, "b".to_string()),
            ]
        );
        // Raised once, cleared once.
        let mut v2 = v.clone();
        v2.alerts = f.alerts(&v);
        assert_eq!(f.step(&v2).0.len(), 3);
        assert_eq!(f.step(&v2), (vec![], vec![]));
        v2.alerts.pop();
        assert_eq!(f.step(&v2).1.len(), 1);
    }

    #[test]
    fn ages_read_like_people_write_them() {
        assert_eq!(age(5.2), "5s");
        assert_eq!(age(432.0), "7m12s");
        assert_eq!(age(3.0 * 3600.0 + 300.0), "3h05m");
        assert_eq!(age(2.0 * 86400.0 + 4.0 * 3600.0), "2d4h");
        assert_eq!(age(-3.0), "0s");
    }
}
