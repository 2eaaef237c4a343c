//! The member endpoint of an agent: serves one coordinator connection at a
//! time and runs its commands on the group's disks through their workers.
//! A closed or unauthenticated connection ends the session, and dropping
//! the pending decisions makes every frozen worker thaw at once.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::channel::{member_handshake, read_key, Channel};
use super::protocol::{Answer, Command, MemberPoint};
use crate::config::GroupConfig;
use crate::disk::{DiskHandle, Request};
use crate::error::{AgentError, Result};
use crate::point::group::{Decision, FreezeJob, GroupPoint};
use crate::point::PointReply;

/// Serves the group's coordinator on `cfg.listen` until `stop`.
pub fn serve(cfg: GroupConfig, disks: Vec<DiskHandle>, stop: Arc<AtomicBool>) -> Result<SocketAddr> {
    let key = read_key(&cfg.key_file)?;
    let members: Vec<DiskHandle> = disks
        .into_iter()
        .filter(|d| cfg.disks.is_empty() || cfg.disks.contains(&d.name))
        .collect();
    serve_with_key(&cfg.name, &cfg.listen, key, members, stop)
}

/// [`serve`] with the key in hand and the member disks chosen.
pub fn serve_with_key(
    group: &str,
    listen: &str,
    key: [u8; 32],
    members: Vec<DiskHandle>,
    stop: Arc<AtomicBool>,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(listen).map_err(|e| AgentError::io(listen, "listen for the group", e))?;
    let addr = listener.local_addr().map_err(|e| AgentError::io(listen, "listen", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| AgentError::io(listen, "listen", e))?;
    tracing::info!(group = %group, address = %addr, disks = members.len(), "group member listening");
    let group = group.to_string();
    std::thread::Builder::new()
        .name("group".into())
        .spawn(move || accept_loop(listener, &key, &group, &members, &stop))
        .map_err(|e| AgentError::io("group thread", "spawn", e))?;
    Ok(addr)
}

fn accept_loop(listener: TcpListener, key: &[u8; 32], group: &str, members: &[DiskHandle], stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, peer)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_nodelay(true);
                match member_handshake(s, key, group, members.len()) {
                    Ok(ch) => {
                        tracing::info!(group = %group, coordinator = %peer, "coordinator connected");
                        let mut m = Session {
                            ch,
                            disks: members,
                            group,
                            pending: None,
                        };
                        if let Err(e) = m.run(stop) {
                            tracing::warn!(group = %group, coordinator = %peer, error = %e, "coordinator session ended");
                        }
                    }
                    Err(e) => tracing::warn!(group = %group, peer = %peer, error = %e, "group connection refused"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                tracing::warn!(error = %e, "group accept failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// The point a member holds frozen: its id and, per disk, the decision
/// sender and the answer receiver.
struct Pending {
    point: Uuid,
    disks: Vec<(Sender<Decision>, Receiver<PointReply>)>,
}

/// One coordinator's session.
struct Session<'a> {
    ch: Channel,
    disks: &'a [DiskHandle],
    group: &'a str,
    pending: Option<Pending>,
}

impl Session<'_> {
    fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            // Between messages keep listening (frozen workers have their
            // own watchdog); an error ends the session, and dropping
            // `pending` thaws every frozen worker.
            let Some(cmd) = self.ch.recv_opt::<Command>(Duration::from_millis(200))? else {
                continue;
            };
            let req = cmd.req();
            let answer = match cmd {
                Command::Prepare { .. } => self.prepare(req),
                Command::Freeze { point, .. } => self.freeze(req, point),
                Command::Commit { point, members, .. } => self.commit(req, point, members),
                Command::Abort { point, why, .. } => self.abort(req, point, why),
            };
            self.ch.send(&answer)?;
        }
        Ok(())
    }

    fn prepare(&mut self, req: u64) -> Answer {
        let mut errs = Vec::new();
        for d in self.disks {
            let (tx, rx) = channel();
            if d.requests.send(Request::GroupPrepare { reply: tx }).is_err() {
                errs.push(format!("disk {} is not running", d.name));
                continue;
            }
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errs.push(e),
                Err(_) => errs.push(format!("disk {}: no answer to prepare", d.name)),
            }
        }
        Answer::from_errors(req, errs)
    }

    fn freeze(&mut self, req: u64, point: GroupPoint) -> Answer {
        tracing::debug!(group = %self.group, point = point.seq, "group freeze");
        // A new freeze replaces a point left pending: its workers thaw.
        self.pending = None;
        let mut pending = Pending {
            point: point.id,
            disks: Vec::new(),
        };
        let mut waits = Vec::new();
        for d in self.disks {
            let (ftx, frx) = channel();
            let (dtx, drx) = channel();
            let (otx, orx) = channel();
            let job = FreezeJob {
                point: point.clone(),
                frozen: ftx,
                decision: drx,
                done: otx,
            };
            if d.requests.send(Request::GroupFreeze(Box::new(job))).is_ok() {
                pending.disks.push((dtx, orx));
            }
            // A worker that is gone drops `ftx`: its wait fails at once.
            waits.push((d.name.clone(), frx));
        }
        let mut errs = Vec::new();
        let mut worst: f64 = 0.0;
        for (name, rx) in waits {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok(ms)) => worst = worst.max(ms),
                Ok(Err(e)) => errs.push(format!("disk {name}: {e}")),
                Err(_) => errs.push(format!("disk {name}: did not freeze")),
            }
        }
        if !errs.is_empty() {
            for (tx, _) in &pending.disks {
                let _ = tx.send(Decision::Abort(errs.join("; ")));
            }
        }
        self.pending = Some(pending);
        Answer {
            frozen_ms: Some(worst),
            ..Answer::from_errors(req, errs)
        }
    }

    /// The pending point if it is `point`; otherwise an answer that says so.
    fn take_pending(&mut self, req: u64, point: Uuid, what: &str) -> std::result::Result<Pending, Answer> {
        match self.pending.take() {
            Some(p) if p.point == point => Ok(p),
            other => {
                let holding = other.as_ref().map(|p| p.point.to_string());
                self.pending = other;
                tracing::warn!(group = %self.group, point = %point, holding = ?holding, "{what} for a point not in progress: ignored");
                Err(Answer::from_errors(
                    req,
                    vec![format!(
                        "{what} for point {point}, which is not in progress here: ignored"
                    )],
                ))
            }
        }
    }

    fn commit(&mut self, req: u64, point: Uuid, members: u32) -> Answer {
        let p = match self.take_pending(req, point, "commit") {
            Ok(p) => p,
            Err(a) => return a,
        };
        for (tx, _) in &p.disks {
            let _ = tx.send(Decision::Commit { members });
        }
        let mut points = Vec::new();
        let mut errs = Vec::new();
        for (_, rx) in p.disks {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(r) if r.ok => points.push(MemberPoint {
                    disk: r.disk,
                    seq: r.seq,
                    freeze_ms: r.freeze_ms,
                }),
                Ok(r) => errs.push(format!("disk {}: {}", r.disk, r.error.unwrap_or_default())),
                Err(_) => errs.push("a disk did not answer the commit".into()),
            }
        }
        Answer {
            points,
            ..Answer::from_errors(req, errs)
        }
    }

    fn abort(&mut self, req: u64, point: Uuid, why: String) -> Answer {
        let p = match self.take_pending(req, point, "abort") {
            Ok(p) => p,
            Err(a) => return a,
        };
        for (tx, _) in &p.disks {
            let _ = tx.send(Decision::Abort(why.clone()));
        }
        for (_, rx) in p.disks {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
        Answer::ok(req)
    }
}
