//! The process server's shared state: the registry (re-read when its
//! file changes), machine authentication and disk ownership, the cache,
//! the repository, the fleet view; and the answers a request gets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::ingest::Ingest;
use super::machines::Registry;
use crate::error::{Result, ShipError};
use crate::repo::Repo;
use crate::restore::reader::PointReader;

/// The state every connection shares.
pub struct Gateway {
    pub state_dir: PathBuf,
    pub ingest: Ingest,
    pub repo: Repo,
    registry: Mutex<(Option<SystemTime>, Registry)>,
    contact: Mutex<HashMap<String, Instant>>,
    /// Every machine's newest request, ns since the epoch.
    contact_ns: Mutex<HashMap<String, u64>>,
    /// The point each machine is reading (restore through the gateway).
    pub(super) readers: tokio::sync::Mutex<HashMap<String, Arc<PointReader>>>,
    /// What the fleet view shows, and its alerts.
    pub fleet: super::fleet::Fleet,
    /// The fleet view's credential (never logged).
    pub(super) admin_secret: String,
    /// The policy file, re-read when it changes.
    pub policies: super::policy::Policies,
    /// Merges with the registry the repository's other process servers share.
    pub registry_sync: super::shared_registry::SyncState,
    /// Every machine's ship task (paused to drop a stale disk).
    pub ship_tasks: Arc<super::ship::ShipTasks>,
}

/// A 200 answer: JSON, the bytes of a point's chunks, a fleet page, or
/// metrics.
pub enum Body {
    Json(Value),
    Bytes(Vec<u8>),
    Html(String),
    Text(String),
}

/// An answer other than 200.
pub(super) struct Reply(pub(super) StatusCode, pub(super) Value);

pub(super) fn refuse(status: StatusCode, why: impl Into<String>) -> Reply {
    Reply(status, json!({ "error": why.into() }))
}

/// The `Bearer MACHINE:SECRET` of a request.
fn credential(req: &Request<Incoming>) -> Option<(&str, &str)> {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|v| v.split_once(':'))
}

impl Gateway {
    pub fn new(
        state_dir: PathBuf,
        ingest: Ingest,
        repo: Repo,
        fleet: super::config::FleetSettings,
        policies: super::policy::Policies,
    ) -> Result<Self> {
        let reg = Registry::load(&state_dir)?;
        let admin_secret = super::admin::load_or_create(&state_dir)?;
        let fleet = super::fleet::Fleet::new(fleet, ingest.root());
        Ok(Gateway {
            fleet,
            admin_secret,
            policies,
            state_dir,
            ingest,
            repo,
            registry: Mutex::new((None, reg)),
            contact: Mutex::new(HashMap::new()),
            contact_ns: Mutex::new(HashMap::new()),
            readers: tokio::sync::Mutex::new(HashMap::new()),
            registry_sync: Default::default(),
            ship_tasks: Default::default(),
        })
    }

    /// Refuses a disk that is not this machine's (reading never claims).
    pub(super) fn owned(&self, machine: &str, disk: &Uuid, peer: SocketAddr) -> std::result::Result<(), Reply> {
        let reg = self
            .registry()
            .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if reg.owner(disk) == Some(machine) {
            return Ok(());
        }
        tracing::warn!(machine = %machine, peer = %peer, disk = %disk, "refused: reading a disk that is not this machine's");
        Err(refuse(
            StatusCode::FORBIDDEN,
            format!("disk {disk} is not one of this machine's disks"),
        ))
    }

    /// What `GET /v1/policy` answers `machine`: its policy's name and the
    /// settings its agent applies (None where the agent keeps its own).
    pub fn policy_for(&self, machine: &str) -> Value {
        let secs = |d: Option<hrl_common::HumanDuration>| d.map(|d| Duration::from(d).as_secs_f64());
        match self.policies.current().for_machine(machine) {
            None => json!({ "policy": null, "renew_s": super::policy::RENEW.as_secs() }),
            Some((name, p)) => json!({
                "policy": name,
                "point_interval_s": secs(p.point_interval),
                "app_point_interval_s": secs(p.app_point_interval),
                "rpo_warn_s": secs(p.rpo_warn),
                "renew_s": super::policy::RENEW.as_secs(),
            }),
        }
    }

    /// The fleet view now.
    pub fn fleet_view(&self) -> Result<super::fleet::FleetView> {
        let mut reg = self.registry()?;
        let seen = self.contact_ns.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (name, t) in seen {
            if let Some(m) = reg.machines.get_mut(&name) {
                m.last_contact_ns = m.last_contact_ns.max(Some(t));
            }
        }
        Ok(self.fleet.view(&reg, self.ingest.root(), &self.policies.current()))
    }

    /// The registry, re-read when its file changed.
    pub(super) fn registry(&self) -> Result<Registry> {
        let p = Registry::path(&self.state_dir);
        let mtime = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
        let mut g = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 != mtime || mtime.is_none() {
            *g = (mtime, Registry::load(&self.state_dir)?);
        }
        Ok(g.1.clone())
    }

    /// [`Gateway::authenticate`], first merging the shared registry when
    /// the credential is not known here (the machine may have enrolled on
    /// another process server of the repository).
    pub(super) async fn authenticate_shared(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
    ) -> std::result::Result<String, Reply> {
        let known = credential(req)
            .zip(self.registry().ok())
            .is_some_and(|((n, s), reg)| reg.authenticate(n, s).is_ok());
        if !known && credential(req).is_some() {
            self.registry_sync.on_demand(&self.repo, &self.state_dir).await;
        }
        self.authenticate(req, peer)
    }

    /// The machine a request authenticates as.
    pub(super) fn authenticate(&self, req: &Request<Incoming>, peer: SocketAddr) -> std::result::Result<String, Reply> {
        let Some((name, secret)) = credential(req) else {
            tracing::warn!(peer = %peer, "refused: no machine credential");
            return Err(refuse(StatusCode::UNAUTHORIZED, "no machine credential (enroll first)"));
        };
        let reg = self
            .registry()
            .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if let Err(r) = reg.authenticate(name, secret) {
            tracing::warn!(machine = %name, peer = %peer, reason = %r, "refused");
            return Err(refuse(StatusCode::UNAUTHORIZED, format!("machine {name}: {r}")));
        }
        self.touch(name);
        Ok(name.to_string())
    }

    /// Records the machine's last contact: in memory at every request (the
    /// fleet view), in the registry at most every 30 s.
    pub(super) fn touch(&self, name: &str) {
        {
            let mut n = self.contact_ns.lock().unwrap_or_else(|e| e.into_inner());
            n.insert(name.to_string(), hrl_format::now_ns());
        }
        let mut c = self.contact.lock().unwrap_or_else(|e| e.into_inner());
        if c.get(name).is_some_and(|t| t.elapsed() < Duration::from_secs(30)) {
            return;
        }
        c.insert(name.to_string(), Instant::now());
        let now = hrl_format::now_ns();
        let r = Registry::update(&self.state_dir, |r| {
            if let Some(m) = r.machines.get_mut(name) {
                m.last_contact_ns = Some(now);
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::warn!(machine = %name, error = %e, "could not record the last contact");
        }
    }

    /// Refuses a disk another machine sent; claims a new one.
    pub(super) fn own_disk(&self, machine: &str, disk: &Uuid, peer: SocketAddr) -> std::result::Result<(), Reply> {
        let reg = self
            .registry()
            .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        match reg.owner(disk) {
            Some(m) if m == machine => Ok(()),
            Some(other) => {
                tracing::warn!(machine = %machine, peer = %peer, disk = %disk, owner = %other, "refused: another machine's disk");
                Err(refuse(
                    StatusCode::FORBIDDEN,
                    format!("disk {disk} belongs to another machine"),
                ))
            }
            None => Registry::update(&self.state_dir, |r| {
                if let Some(other) = r.owner(disk) {
                    if other != machine {
                        return Err(ShipError::Usage(format!("disk {disk} belongs to another machine")));
                    }
                    return Ok(());
                }
                if let Some(m) = r.machines.get_mut(machine) {
                    m.disks.push(*disk);
                }
                tracing::info!(machine = %machine, disk = %disk, "new disk");
                Ok(())
            })
            .map_err(|e| refuse(StatusCode::FORBIDDEN, e.to_string())),
        }
    }
}
