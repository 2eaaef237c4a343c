//! `hrl-agent coordinate`: takes group points across member agents.
//!
//! A round is prepare → freeze (barrier with a deadline) → commit. Every
//! answer must carry the request number of the command it answers. After
//! any failure the round is aborted, every connection is dropped (members
//! thaw at once when their coordinator goes away) and the next round starts
//! from fresh handshakes, so nothing of a failed round can be read as an
//! answer in the next.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use uuid::Uuid;

use super::channel::{coordinator_handshake, Channel};
use super::protocol::{Answer, Command, MemberPoint};
use crate::error::Result;
use crate::point::group::GroupPoint;

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
    pub points: Vec<MemberPoint>,
    pub error: Option<String>,
}

/// A member connection and how many group disks it has.
struct Member {
    ch: Channel,
    disks: u32,
}

/// The coordinator's state between rounds.
struct Coordinator<'a> {
    o: &'a CoordinateOptions,
    /// None after a failed round: every member is connected afresh.
    members: Option<Vec<Member>>,
    req: u64,
}

/// Connects to every member and takes group points until `stop` or
/// `count`; calls `report` after each. Fails at once when a member cannot
/// be reached at the start; later, an unreachable member fails that round.
pub fn coordinate(o: &CoordinateOptions, stop: &AtomicBool, mut report: impl FnMut(&GroupResult)) -> Result<()> {
    let mut c = Coordinator {
        o,
        members: None,
        req: 0,
    };
    c.members = Some(c.connect()?);
    let total: u32 = c.members.iter().flatten().map(|m| m.disks).sum();
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
        let r = c.round(&point);
        taken += 1;
        report(&r);
        let next = t0 + o.interval;
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10).min(next - Instant::now()));
        }
    }
    Ok(())
}

impl Coordinator<'_> {
    fn connect(&self) -> Result<Vec<Member>> {
        let mut v = Vec::new();
        for m in &self.o.members {
            let (ch, disks) = coordinator_handshake(m, &self.o.key, &self.o.group)?;
            v.push(Member { ch, disks });
        }
        Ok(v)
    }

    fn next_req(&mut self) -> u64 {
        self.req += 1;
        self.req
    }

    /// One group point. Any failure aborts it and drops every connection.
    fn round(&mut self, point: &GroupPoint) -> GroupResult {
        let mut res = GroupResult {
            ok: false,
            group: point.name.clone(),
            seq: point.seq,
            id: point.id,
            members: 0,
            window_ms: 0.0,
            max_freeze_ms: 0.0,
            points: Vec::new(),
            error: None,
        };
        let mut members = match self.members.take() {
            Some(m) => m,
            None => match self.connect() {
                Ok(m) => m,
                Err(e) => {
                    res.error = Some(format!("reconnecting to the members: {e}"));
                    tracing::warn!(group = %res.group, point = res.seq, error = %e, "group point not taken");
                    return res;
                }
            },
        };
        res.members = members.iter().map(|m| m.disks).sum();
        match self.steps(&mut members, point, &mut res) {
            Ok(()) => self.members = Some(members),
            Err(why) => {
                // Best effort, no answer read: the connections are dropped
                // next, which makes every member thaw anyway.
                let abort = Command::Abort {
                    req: self.next_req(),
                    point: point.id,
                    why: why.clone(),
                };
                for m in &mut members {
                    let _ = m.ch.send(&abort);
                }
                tracing::warn!(group = %res.group, point = res.seq, error = %why, "group point aborted");
                res.error = Some(why);
            }
        }
        res
    }

    fn steps(
        &mut self,
        members: &mut [Member],
        point: &GroupPoint,
        res: &mut GroupResult,
    ) -> std::result::Result<(), String> {
        // 1. prepare (outside any freeze; a generous limit, no deadline).
        let req = self.next_req();
        let prepared = Instant::now() + Duration::from_secs(120);
        exchange(members, &Command::Prepare { req }, prepared, "prepare")?;
        // 2. freeze barrier with a deadline, counted from the freeze order.
        let t0 = Instant::now();
        let req = self.next_req();
        let freeze = Command::Freeze {
            req,
            point: point.clone(),
        };
        exchange(members, &freeze, t0 + self.o.deadline, "freeze")
            .map_err(|e| format!("{e} (the freeze deadline is {} ms)", self.o.deadline.as_millis()))?;
        if !self.o.pause_frozen.is_zero() {
            std::thread::sleep(self.o.pause_frozen);
        }
        // 3. commit.
        let commit = Command::Commit {
            req: self.next_req(),
            point: point.id,
            members: res.members,
        };
        let answers = exchange_all(members, &commit, Instant::now() + Duration::from_secs(30));
        let mut errs = Vec::new();
        for (peer, a) in answers {
            match a {
                Ok(a) => {
                    for p in a.points {
                        res.max_freeze_ms = res.max_freeze_ms.max(p.freeze_ms.unwrap_or(0.0));
                        res.points.push(p);
                    }
                    if !a.ok {
                        errs.push(format!("{peer}: {}", a.error.unwrap_or_else(|| "commit failed".into())));
                    }
                }
                Err(e) => errs.push(e),
            }
        }
        // A member whose commit failed (its watchdog thawed first) has an
        // aborted tag: the group point is incomplete and never published.
        res.window_ms = t0.elapsed().as_secs_f64() * 1e3;
        res.ok = errs.is_empty() && res.points.len() as u32 == res.members;
        if !errs.is_empty() {
            res.error = Some(errs.join("; "));
        }
        Ok(())
    }
}

/// Sends `cmd` to every member and reads each answer before `until`; the
/// first failure (send, timeout, wrong request number or not ok) is the error.
fn exchange(members: &mut [Member], cmd: &Command, until: Instant, what: &str) -> std::result::Result<(), String> {
    for (peer, a) in exchange_all(members, cmd, until) {
        match a {
            Ok(a) if a.ok => {}
            Ok(a) => {
                return Err(format!(
                    "{peer}: {}",
                    a.error.unwrap_or_else(|| format!("{what} failed"))
                ))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `cmd` to every member, then reads every answer (by `until`).
fn exchange_all(
    members: &mut [Member],
    cmd: &Command,
    until: Instant,
) -> Vec<(String, std::result::Result<Answer, String>)> {
    let sent: Vec<_> = members
        .iter_mut()
        .map(|m| m.ch.send(cmd).map_err(|e| e.to_string()))
        .collect();
    members
        .iter_mut()
        .zip(sent)
        .map(|(m, s)| {
            let a = s.and_then(|()| {
                let left = until.saturating_duration_since(Instant::now());
                let a: Answer = m.ch.recv(left).map_err(|e| e.to_string())?;
                if a.req != cmd.req() {
                    return Err(format!(
                        "{}: answered request {} to request {}",
                        m.ch.peer,
                        a.req,
                        cmd.req()
                    ));
                }
                Ok(a)
            });
            (m.ch.peer.clone(), a)
        })
        .collect()
}
