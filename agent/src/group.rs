//! Consistency groups: one recovery point across several disks, of one
//! agent or of several agents on several machines.
//!
//! ```text
//! coordinator                     member agent (per group disk: its worker)
//!   ── connect ──────────────────►  challenge
//!   ◄─ hello + mac ───────────────  (mutual HMAC-SHA256 with the group key)
//!   prepare ─────────────────────►  syncfs + pre-copy          ─► ok
//!   freeze (deadline) ───────────►  FIFREEZE, drain, copy dirty ─► frozen
//!       every member frozen before the deadline? (barrier)
//!   commit (members) ────────────►  Group + Tag records, FITHAW ─► points
//!   otherwise: abort ────────────►  FITHAW, aborted tag
//! ```
//!
//! All filesystems are frozen at one moment (after the barrier, before any
//! commit), so a write that depends on an earlier write to another member
//! can never be in a group point without it. A member that loses its
//! coordinator (connection closed) thaws at once and aborts the point; one
//! that hears nothing thaws at its own `max_freeze` (watchdog). The group
//! point id is in every member's Tag; the Group record before it names the
//! group, its sequence and how many disks it has, so a repository publishes
//! the group point only when every member's point is there.
//!
//! Messages are JSON lines, each authenticated with HMAC-SHA256 under a key
//! derived from the shared group key and both sides' random challenges, with
//! a per-direction counter: a peer without the key cannot freeze anyone, and
//! a recorded message cannot be replayed into another session.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use hrl_format::{DiskMode, Group, PointKind, Record, Tag};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use uuid::Uuid;

use crate::control::DiskHandle;
use crate::disk::{DiskWorker, PointReply, Request};
use crate::error::{AgentError, Result};
use crate::freeze::{syncfs, Freeze};
use crate::hooks::{run_hook, HookEnv};

/// A member of a group, as configured in the agent.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    /// Address the member endpoint listens on (e.g. 10.0.0.5:7701).
    pub listen: String,
    /// The shared group key: 64 hex characters, mode 0600.
    pub key_file: std::path::PathBuf,
    /// Which of this agent's disks are members (default: all).
    #[serde(default)]
    pub disks: Vec<String>,
}

/// The group point a member is asked to take.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// A worker's group-freeze request.
pub struct FreezeJob {
    pub point: GroupPoint,
    pub frozen: Sender<std::result::Result<f64, String>>,
    pub decision: Receiver<Decision>,
    pub done: Sender<PointReply>,
}

type HmacSha = Hmac<Sha256>;

/// Reads a group key file (64 hex characters); refuses one others can read.
pub fn read_key(path: &Path) -> Result<[u8; 32]> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(path).map_err(|e| AgentError::io(path, "read group key", e))?;
    if md.permissions().mode() & 0o077 != 0 {
        return Err(AgentError::Config(format!(
            "{}: the group key is readable by others (mode {:o}); chmod 600 it",
            path.display(),
            md.permissions().mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, "read group key", e))?;
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| AgentError::Config(format!("{}: a group key is 64 hex characters", path.display())))
}

/// Writes a new random group key (0600); refuses to overwrite one.
pub fn create_key(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut k = [0u8; 32];
    getrandom::getrandom(&mut k).map_err(|e| AgentError::Config(format!("random source: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AgentError::io(path, "create group key", e))?;
    f.write_all(format!("{}\n", hex::encode(k)).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| AgentError::io(path, "write group key", e))
}

/// HMAC-SHA256 over length-prefixed parts (so parts cannot run together).
fn keyed(key: &[u8], parts: &[&[u8]]) -> HmacSha {
    // HMAC takes keys of any length.
    let mut m = <HmacSha as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(&(p.len() as u64).to_le_bytes());
        m.update(p);
    }
    m
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    keyed(key, parts).finalize().into_bytes().to_vec()
}

/// Constant-time check of a hex tag.
fn verify(key: &[u8], parts: &[&[u8]], tag_hex: &str) -> bool {
    let Ok(tag) = hex::decode(tag_hex) else { return false };
    keyed(key, parts).verify_slice(&tag).is_ok()
}

fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    // getrandom only fails when the OS has no entropy source at all.
    getrandom::getrandom(&mut n).unwrap_or_else(|e| panic!("random source: {e}"));
    n
}

/// One authenticated connection (either side).
struct Channel {
    reader: BufReader<TcpStream>,
    /// A line read in part before a read timeout.
    partial: String,
    writer: TcpStream,
    session: Vec<u8>,
    sent: u64,
    received: u64,
    peer: String,
}

fn io_err(peer: &str, what: impl std::fmt::Display) -> AgentError {
    AgentError::Config(format!("group peer {peer}: {what}"))
}

impl Channel {
    fn raw_send(&mut self, v: &Value) -> Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| io_err(&self.peer, format!("send: {e}")))
    }

    /// The next line, or `None` when nothing complete arrived in `timeout`.
    fn raw_recv_opt(&mut self, timeout: Duration) -> Result<Option<Value>> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|e| io_err(&self.peer, e))?;
        match self.reader.read_line(&mut self.partial) {
            Ok(0) => Err(io_err(&self.peer, "connection closed")),
            Ok(_) if self.partial.ends_with('\n') => {
                let line = std::mem::take(&mut self.partial);
                serde_json::from_str(&line)
                    .map(Some)
                    .map_err(|e| io_err(&self.peer, format!("bad message: {e}")))
            }
            Ok(_) => Ok(None),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(io_err(&self.peer, format!("receive: {e}"))),
        }
    }

    fn raw_recv(&mut self, timeout: Duration) -> Result<Value> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(v) = self.raw_recv_opt(until.saturating_duration_since(Instant::now()))? {
                return Ok(v);
            }
            if Instant::now() >= until {
                return Err(io_err(
                    &self.peer,
                    format!("no answer within {} ms", timeout.as_millis()),
                ));
            }
        }
    }

    fn send(&mut self, body: &Value) -> Result<()> {
        let b = body.to_string();
        let t = mac(&self.session, &[b"msg", &self.sent.to_le_bytes(), b.as_bytes()]);
        self.sent += 1;
        self.raw_send(&json!({"b": b, "m": hex::encode(t)}))
    }

    fn recv(&mut self, timeout: Duration) -> Result<Value> {
        let v = self.raw_recv(timeout)?;
        self.open(v)
    }

    fn recv_opt(&mut self, timeout: Duration) -> Result<Option<Value>> {
        match self.raw_recv_opt(timeout)? {
            Some(v) => self.open(v).map(Some),
            None => Ok(None),
        }
    }

    fn open(&mut self, v: Value) -> Result<Value> {
        let (Some(b), Some(m)) = (v["b"].as_str(), v["m"].as_str()) else {
            return Err(io_err(&self.peer, "unauthenticated message"));
        };
        if !verify(&self.session, &[b"msg", &self.received.to_le_bytes(), b.as_bytes()], m) {
            return Err(io_err(&self.peer, "message authentication failed"));
        }
        self.received += 1;
        serde_json::from_str(b).map_err(|e| io_err(&self.peer, format!("bad message body: {e}")))
    }
}

/// Member side of the handshake: challenge, check the coordinator's proof,
/// prove ourselves.
fn member_handshake(stream: TcpStream, key: &[u8; 32], group: &str, disks: usize) -> Result<Channel> {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let reader = BufReader::new(stream.try_clone().map_err(|e| io_err(&peer, e))?);
    let mut ch = Channel {
        reader,
        partial: String::new(),
        writer: stream,
        session: Vec::new(),
        sent: 0,
        received: 0,
        peer,
    };
    let mine = nonce();
    ch.raw_send(&json!({"challenge": hex::encode(mine), "group": group}))?;
    let hello = ch.raw_recv(Duration::from_secs(10))?;
    let theirs = hello["nonce"]
        .as_str()
        .and_then(|n| hex::decode(n).ok())
        .ok_or_else(|| io_err(&ch.peer, "no nonce in hello"))?;
    let proof = hello["mac"].as_str().unwrap_or("");
    if hello["group"].as_str() != Some(group)
        || !verify(key, &[b"coordinator", group.as_bytes(), &mine, &theirs], proof)
    {
        return Err(io_err(
            &ch.peer,
            "not authenticated as a coordinator of this group: refused",
        ));
    }
    let reply = mac(key, &[b"member", group.as_bytes(), &theirs, &mine]);
    ch.raw_send(&json!({"mac": hex::encode(reply), "disks": disks}))?;
    ch.session = mac(key, &[b"session", &mine, &theirs]);
    Ok(ch)
}

/// Coordinator side of the handshake. Returns the channel and how many
/// group disks the member has.
fn coordinator_handshake(addr: &str, key: &[u8; 32], group: &str) -> Result<(Channel, u32)> {
    let sa: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| AgentError::Config(format!("member address {addr}: {e}")))?;
    let stream =
        TcpStream::connect_timeout(&sa, Duration::from_secs(5)).map_err(|e| io_err(addr, format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let reader = BufReader::new(stream.try_clone().map_err(|e| io_err(addr, e))?);
    let mut ch = Channel {
        reader,
        partial: String::new(),
        writer: stream,
        session: Vec::new(),
        sent: 0,
        received: 0,
        peer: addr.into(),
    };
    let c = ch.raw_recv(Duration::from_secs(10))?;
    if c["group"].as_str() != Some(group) {
        return Err(io_err(
            addr,
            format!("is a member of group {:?}, not {group:?}", c["group"]),
        ));
    }
    let theirs = c["challenge"]
        .as_str()
        .and_then(|n| hex::decode(n).ok())
        .ok_or_else(|| io_err(addr, "no challenge"))?;
    let mine = nonce();
    let proof = mac(key, &[b"coordinator", group.as_bytes(), &theirs, &mine]);
    ch.raw_send(&json!({"group": group, "nonce": hex::encode(mine), "mac": hex::encode(proof)}))?;
    let r = ch.raw_recv(Duration::from_secs(10))?;
    if !verify(
        key,
        &[b"member", group.as_bytes(), &mine, &theirs],
        r["mac"].as_str().unwrap_or(""),
    ) {
        return Err(io_err(addr, "member not authenticated (wrong group key?)"));
    }
    let disks = r["disks"].as_u64().unwrap_or(0) as u32;
    ch.session = mac(key, &[b"session", &theirs, &mine]);
    Ok((ch, disks))
}

// ---------------------------------------------------------------- worker

impl DiskWorker {
    /// Outside any freeze: flush the filesystem and pre-copy, so the group
    /// freeze has little to do.
    pub(crate) fn group_prepare(&mut self) -> std::result::Result<(), String> {
        if self.mode != DiskMode::Data {
            return Err(format!(
                "disk {} is in {:?}: not ready for a point",
                self.name, self.mode
            ));
        }
        let Some(mount) = self.mount.clone() else {
            return Err(format!(
                "disk {} has no mounted filesystem: it cannot be frozen with its group",
                self.name
            ));
        };
        syncfs(&mount).map_err(|e| e.to_string())?;
        self.track().map_err(|e| e.to_string())?;
        self.precopy(true, usize::MAX).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Freezes, drains and copies, says so, then waits for the decision;
    /// thaws on commit (after the Group and Tag records), on abort, on a
    /// lost coordinator, or at `max_freeze` (watchdog).
    pub(crate) fn group_freeze(&mut self, job: FreezeJob) -> Result<()> {
        let FreezeJob {
            point,
            frozen,
            decision,
            done,
        } = job;
        let name = self.name.clone();
        let refuse = |why: String| PointReply {
            ok: false,
            disk: name.clone(),
            seq: None,
            kind: None,
            freeze_ms: None,
            copied_chunks: None,
            error: Some(why),
        };
        let Some(mount) = self.mount.clone().filter(|_| self.mode == DiskMode::Data) else {
            let why = format!("disk {} is not ready for a group point", self.name);
            let _ = frozen.send(Err(why.clone()));
            let _ = done.send(refuse(why));
            return Ok(());
        };
        let seq = self.state.last_point_seq + 1;
        self.state.last_point_seq = seq;
        self.state.save(&self.agent.spool)?;
        let max = self.agent.max_freeze;
        let rate = self.reader.rate();
        self.reader.set_rate(0);
        if let Some(g) = self.guardian.as_mut() {
            g.freezing(max)?;
        }
        let r = self.group_frozen(seq, &point, &mount, max, &frozen, &decision);
        if let Some(g) = self.guardian.as_mut() {
            g.thawed();
        }
        self.reader.set_rate(rate);
        let reply = match r {
            Ok(rep) => rep,
            Err(e) => {
                let _ = frozen.send(Err(e.to_string()));
                refuse(e.to_string())
            }
        };
        let _ = done.send(reply);
        Ok(())
    }

    fn group_frozen(
        &mut self,
        seq: u64,
        point: &GroupPoint,
        mount: &Path,
        max: Duration,
        frozen: &Sender<std::result::Result<f64, String>>,
        decision: &Receiver<Decision>,
    ) -> Result<PointReply> {
        let kind = PointKind::Crash;
        let freeze = Freeze::start(mount, max)?;
        let o = self.tracker.drain(&mut self.log)?;
        if o.lost {
            drop(freeze);
            self.on_loss();
            let _ = frozen.send(Err("tracking lost events during the freeze".into()));
            return self.abort_point(seq, kind, "tracking lost events during the group freeze".into());
        }
        let copied = self.copy_all_dirty()?;
        if let Some(cmd) = self.cfg.while_frozen.clone() {
            let env = HookEnv {
                disk: self.name.clone(),
                device: self.dev.path.display().to_string(),
                mount: mount.display().to_string(),
                point: seq,
                kind: "crash",
            };
            if let Err(e) = run_hook("while-frozen", &cmd, &env, max.saturating_sub(freeze.elapsed())) {
                drop(freeze);
                let _ = frozen.send(Err(e.clone()));
                return self.abort_point(seq, kind, e);
            }
        }
        let _ = frozen.send(Ok(freeze.elapsed().as_secs_f64() * 1e3));
        let members = match decision.recv_timeout(max.saturating_sub(freeze.elapsed())) {
            Ok(Decision::Commit { members }) => members,
            Ok(Decision::Abort(why)) => {
                drop(freeze);
                return self.abort_point(
                    seq,
                    kind,
                    format!("group {} point {} aborted: {why}", point.name, point.seq),
                );
            }
            Err(RecvTimeoutError::Disconnected) => {
                drop(freeze);
                return self.abort_point(
                    seq,
                    kind,
                    format!("group {} point {}: lost the coordinator; thawed", point.name, point.seq),
                );
            }
            Err(RecvTimeoutError::Timeout) => {
                drop(freeze);
                return self.abort_point(
                    seq,
                    kind,
                    format!(
                        "group {} point {}: no decision within max_freeze ({} ms); thawed",
                        point.name,
                        point.seq,
                        max.as_millis()
                    ),
                );
            }
        };
        let log = &mut self.log;
        let r = freeze.commit_and_thaw(|frozen| -> Result<()> {
            log.append_unsynced(&Record::Group(Group {
                id: point.id,
                seq: point.seq,
                members,
                name: point.name.clone(),
            }))?;
            log.append_unsynced(&Record::Tag(Tag {
                seq,
                kind,
                aborted: false,
                time_ns: hrl_format::now_ns(),
                freeze_ns: frozen.as_nanos() as u64,
                group: Some(point.id),
            }))?;
            Ok(())
        });
        match r {
            Ok((appended, frozen_for)) => {
                appended?;
                self.finish_point(seq, kind, frozen_for.as_nanos() as u64, copied)
            }
            Err(after) => self.abort_point(
                seq,
                kind,
                format!(
                    "the group freeze exceeded max_freeze ({} ms): the watchdog thawed after {:.1} ms",
                    max.as_millis(),
                    after.as_secs_f64() * 1e3
                ),
            ),
        }
    }
}

// ---------------------------------------------------------------- member

/// Serves the group's coordinator on `cfg.listen` until `stop`. One
/// coordinator connection at a time.
pub fn serve(cfg: GroupConfig, disks: Vec<DiskHandle>, stop: Arc<AtomicBool>) -> Result<std::net::SocketAddr> {
    let key = read_key(&cfg.key_file)?;
    let listener =
        TcpListener::bind(&cfg.listen).map_err(|e| AgentError::io(&cfg.listen, "listen for the group", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| AgentError::io(&cfg.listen, "listen", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| AgentError::io(&cfg.listen, "listen", e))?;
    let members: Vec<DiskHandle> = disks
        .into_iter()
        .filter(|d| cfg.disks.is_empty() || cfg.disks.contains(&d.name))
        .collect();
    tracing::info!(group = %cfg.name, address = %addr, disks = members.len(), "group member listening");
    std::thread::Builder::new()
        .name("group".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_nodelay(true);
                        match member_handshake(s, &key, &cfg.name, members.len()) {
                            Ok(ch) => {
                                tracing::info!(group = %cfg.name, coordinator = %peer, "coordinator connected");
                                if let Err(e) = member_session(ch, &members, &cfg.name, &stop) {
                                    tracing::warn!(group = %cfg.name, coordinator = %peer, error = %e, "coordinator session ended");
                                }
                            }
                            Err(e) => tracing::warn!(group = %cfg.name, peer = %peer, error = %e, "group connection refused"),
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
                    Err(e) => {
                        tracing::warn!(error = %e, "group accept failed");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        })
        .map_err(|e| AgentError::io("group thread", "spawn", e))?;
    Ok(addr)
}

/// One coordinator's session: prepare / freeze / commit / abort.
fn member_session(mut ch: Channel, disks: &[DiskHandle], group: &str, stop: &AtomicBool) -> Result<()> {
    // Decision senders of the point in progress; dropping them (the
    // coordinator went away) makes every frozen worker thaw at once.
    let mut pending: Vec<(Sender<Decision>, Receiver<PointReply>)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Between messages: keep listening (frozen workers have their own
        // watchdog); a closed or unauthenticated connection ends the
        // session, and dropping `pending` thaws every frozen worker.
        let Some(msg) = ch.recv_opt(Duration::from_millis(200))? else {
            continue;
        };
        let answer = match msg["cmd"].as_str().unwrap_or("") {
            "prepare" => {
                let mut errs = Vec::new();
                for d in disks {
                    let (tx, rx) = std::sync::mpsc::channel();
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
                json!({"ok": errs.is_empty(), "error": errs.join("; ")})
            }
            "freeze" => {
                let point: GroupPoint = serde_json::from_value(msg["point"].clone())
                    .map_err(|e| io_err(&ch.peer, format!("bad freeze: {e}")))?;
                tracing::debug!(group, point = point.seq, "group freeze");
                let mut waits = Vec::new();
                pending.clear();
                for d in disks {
                    let (ftx, frx) = std::sync::mpsc::channel();
                    let (dtx, drx) = std::sync::mpsc::channel();
                    let (otx, orx) = std::sync::mpsc::channel();
                    let job = FreezeJob {
                        point: point.clone(),
                        frozen: ftx,
                        decision: drx,
                        done: otx,
                    };
                    if d.requests.send(Request::GroupFreeze(Box::new(job))).is_ok() {
                        waits.push((d.name.clone(), frx));
                        pending.push((dtx, orx));
                    } else {
                        waits.push((d.name.clone(), std::sync::mpsc::channel().1));
                    }
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
                    for (tx, _) in pending.drain(..) {
                        let _ = tx.send(Decision::Abort(errs.join("; ")));
                    }
                }
                json!({"ok": errs.is_empty(), "error": errs.join("; "), "frozen_ms": worst})
            }
            "commit" => {
                let members = msg["members"].as_u64().unwrap_or(0) as u32;
                for (tx, _) in &pending {
                    let _ = tx.send(Decision::Commit { members });
                }
                let mut points = Vec::new();
                let mut errs = Vec::new();
                for (_, rx) in pending.drain(..) {
                    match rx.recv_timeout(Duration::from_secs(30)) {
                        Ok(r) if r.ok => points.push(json!({"disk": r.disk, "seq": r.seq, "freeze_ms": r.freeze_ms})),
                        Ok(r) => errs.push(format!("disk {}: {}", r.disk, r.error.unwrap_or_default())),
                        Err(_) => errs.push("a disk did not answer the commit".into()),
                    }
                }
                json!({"ok": errs.is_empty(), "error": errs.join("; "), "points": points})
            }
            "abort" => {
                let why = msg["why"].as_str().unwrap_or("coordinator aborted").to_string();
                for (tx, _) in &pending {
                    let _ = tx.send(Decision::Abort(why.clone()));
                }
                for (_, rx) in pending.drain(..) {
                    let _ = rx.recv_timeout(Duration::from_secs(30));
                }
                json!({"ok": true})
            }
            other => json!({"ok": false, "error": format!("unknown command {other:?}")}),
        };
        ch.send(&answer)?;
    }
    Ok(())
}

// ----------------------------------------------------------- coordinator

/// Options of `hrl-agent coordinate`.
#[derive(Debug, Clone)]
pub struct CoordinateOptions {
    pub group: String,
    pub members: Vec<String>,
    pub key: [u8; 32],
    /// Every member must be frozen this long after the freeze is sent.
    pub deadline: Duration,
    pub interval: Duration,
    /// Points to take (0: until stopped).
    pub count: u64,
    /// Test hook: wait this long after the barrier before committing.
    pub pause_frozen: Duration,
}

/// The outcome of one group point.
#[derive(Debug, Clone, Serialize)]
pub struct GroupResult {
    pub ok: bool,
    pub group: String,
    pub seq: u64,
    pub id: Uuid,
    pub members: u32,
    /// From sending the freeze to the last member's commit answer.
    pub window_ms: f64,
    /// Longest FIFREEZE-to-FITHAW of any member disk.
    pub max_freeze_ms: f64,
    pub points: Vec<Value>,
    pub error: Option<String>,
}

/// Connects to every member and takes group points until `stop` or
/// `count`; calls `report` after each.
pub fn coordinate(o: &CoordinateOptions, stop: &AtomicBool, mut report: impl FnMut(&GroupResult)) -> Result<()> {
    let mut conns = Vec::new();
    let mut total = 0u32;
    for m in &o.members {
        let (ch, n) = coordinator_handshake(m, &o.key, &o.group)?;
        total += n;
        conns.push(ch);
    }
    tracing::info!(group = %o.group, members = o.members.len(), disks = total, "coordinating");
    let mut taken = 0u64;
    let mut last_seq = 0u64;
    while !stop.load(Ordering::Relaxed) && (o.count == 0 || taken < o.count) {
        let t0 = Instant::now();
        // Group sequences: milliseconds since the epoch, strictly increasing.
        let seq = (hrl_format::now_ns() / 1_000_000).max(last_seq + 1);
        last_seq = seq;
        let point = GroupPoint {
            id: Uuid::new_v4(),
            seq,
            name: o.group.clone(),
        };
        let r = one_point(&mut conns, o, &point, total);
        taken += 1;
        report(&r);
        let next = t0 + o.interval;
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10).min(next - Instant::now()));
        }
    }
    Ok(())
}

fn one_point(conns: &mut [Channel], o: &CoordinateOptions, point: &GroupPoint, total: u32) -> GroupResult {
    let mut res = GroupResult {
        ok: false,
        group: point.name.clone(),
        seq: point.seq,
        id: point.id,
        members: total,
        window_ms: 0.0,
        max_freeze_ms: 0.0,
        points: Vec::new(),
        error: None,
    };
    let fail = |conns: &mut [Channel], res: &mut GroupResult, why: String| {
        for c in conns.iter_mut() {
            if c.send(&json!({"cmd": "abort", "why": why})).is_ok() {
                let _ = c.recv(Duration::from_secs(30));
            }
        }
        tracing::warn!(group = %res.group, point = res.seq, error = %why, "group point aborted");
        res.error = Some(why);
    };
    // 1. prepare (outside any freeze; no deadline but a generous one).
    for c in conns.iter_mut() {
        if let Err(e) = c.send(&json!({"cmd": "prepare"})) {
            fail(conns, &mut res, e.to_string());
            return res;
        }
    }
    for i in 0..conns.len() {
        match conns[i].recv(Duration::from_secs(120)) {
            Ok(a) if a["ok"] == true => {}
            Ok(a) => {
                let why = format!("{}: {}", conns[i].peer, a["error"].as_str().unwrap_or("prepare failed"));
                fail(conns, &mut res, why);
                return res;
            }
            Err(e) => {
                fail(conns, &mut res, e.to_string());
                return res;
            }
        }
    }
    // 2. freeze barrier with a deadline.
    let t0 = Instant::now();
    for c in conns.iter_mut() {
        if let Err(e) = c.send(&json!({"cmd": "freeze", "point": point})) {
            fail(conns, &mut res, e.to_string());
            return res;
        }
    }
    let deadline = t0 + o.deadline;
    for i in 0..conns.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match conns[i].recv(left) {
            Ok(a) if a["ok"] == true => {}
            Ok(a) => {
                let why = format!("{}: {}", conns[i].peer, a["error"].as_str().unwrap_or("freeze failed"));
                fail(conns, &mut res, why);
                return res;
            }
            Err(e) => {
                let why = format!(
                    "{} missed the freeze deadline ({} ms): {e}",
                    conns[i].peer,
                    o.deadline.as_millis()
                );
                fail(conns, &mut res, why);
                return res;
            }
        }
    }
    if !o.pause_frozen.is_zero() {
        std::thread::sleep(o.pause_frozen);
    }
    // 3. commit.
    for c in conns.iter_mut() {
        let _ = c.send(&json!({"cmd": "commit", "members": total}));
    }
    let mut errs = Vec::new();
    for c in conns.iter_mut() {
        match c.recv(Duration::from_secs(30)) {
            Ok(a) => {
                for p in a["points"].as_array().into_iter().flatten() {
                    res.max_freeze_ms = res.max_freeze_ms.max(p["freeze_ms"].as_f64().unwrap_or(0.0));
                    res.points.push(p.clone());
                }
                if a["ok"] != true {
                    errs.push(format!(
                        "{}: {}",
                        c.peer,
                        a["error"].as_str().unwrap_or("commit failed")
                    ));
                }
            }
            Err(e) => errs.push(e.to_string()),
        }
    }
    res.window_ms = t0.elapsed().as_secs_f64() * 1e3;
    // A member whose commit failed (its watchdog thawed first) has an
    // aborted tag: the group point is incomplete and never published.
    res.ok = errs.is_empty() && res.points.len() as u32 == total;
    if !errs.is_empty() {
        res.error = Some(errs.join("; "));
    }
    res
}

/// `hrl-agent group-key FILE`.
pub fn new_key_file(path: &Path) -> Result<()> {
    create_key(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(member_key: [u8; 32], coord_key: [u8; 32]) -> (Result<Channel>, Result<(Channel, u32)>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            member_handshake(s, &member_key, "g", 3)
        });
        let c = coordinator_handshake(&addr, &coord_key, "g");
        (t.join().unwrap(), c)
    }

    #[test]
    fn only_a_peer_with_the_group_key_gets_a_session() {
        let (m, c) = pair([7; 32], [8; 32]);
        let e = m
            .err()
            .expect("member must refuse a coordinator without the key")
            .to_string();
        assert!(e.contains("not authenticated"), "{e}");
        assert!(c.is_err());
        let (m, c) = pair([7; 32], [7; 32]);
        let mut m = m.unwrap();
        let (mut c, disks) = c.unwrap();
        assert_eq!(disks, 3);
        c.send(&json!({"cmd": "prepare"})).unwrap();
        assert_eq!(m.recv(Duration::from_secs(5)).unwrap()["cmd"], "prepare");
        // A forged message (right shape, no valid mac) is refused, and so
        // is a replay of a genuine one (the counter moved on).
        let body = json!({"cmd": "freeze"}).to_string();
        c.raw_send(&json!({"b": body, "m": "00".repeat(32)})).unwrap();
        let e = m.recv(Duration::from_secs(5)).unwrap_err().to_string();
        assert!(e.contains("authentication failed"), "{e}");
        let t = mac(&c.session, &[b"msg", &0u64.to_le_bytes(), b"{\"cmd\":\"prepare\"}"]);
        c.raw_send(&json!({"b": "{\"cmd\":\"prepare\"}", "m": hex::encode(t)}))
            .unwrap();
        let e = m.recv(Duration::from_secs(5)).unwrap_err().to_string();
        assert!(e.contains("authentication failed"), "{e}");
    }
}
