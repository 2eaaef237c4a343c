//! The coordinator and the member endpoint against fake disk workers (no
//! root): real sockets, real handshakes, typed messages; the workers only
//! record when they froze and thawed.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::channel::{coordinator_handshake, Channel};
use super::coordinator::{coordinate, CoordinateOptions, GroupResult};
use super::member::serve_with_key;
use super::protocol::{Answer, Command};
use crate::disk::{DiskHandle, DiskStatus, Request};
use crate::point::group::{Decision, GroupPoint};
use crate::point::PointReply;

const KEY: [u8; 32] = [5; 32];

/// (point id, frozen at, thawed at, committed)
type Events = Arc<Mutex<Vec<(Uuid, Instant, Instant, bool)>>>;

/// A disk worker that answers group requests: prepare fails on the calls
/// listed in `fail_prepare` (1-based), a freeze holds until the decision.
fn fake_worker(name: &str, fail_prepare: Vec<u32>, events: Events, stop: Arc<AtomicBool>) -> DiskHandle {
    slow_worker(name, fail_prepare, Duration::ZERO, events, stop)
}

/// [`fake_worker`] whose prepare takes `prepare_time`.
fn slow_worker(
    name: &str,
    fail_prepare: Vec<u32>,
    prepare_time: Duration,
    events: Events,
    stop: Arc<AtomicBool>,
) -> DiskHandle {
    let (tx, rx) = channel::<Request>();
    let disk = name.to_string();
    std::thread::spawn(move || {
        let mut prepares = 0;
        let mut seq = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok(req) = rx.recv_timeout(Duration::from_millis(50)) else {
                continue;
            };
            match req {
                Request::GroupPrepare { reply } => {
                    std::thread::sleep(prepare_time);
                    prepares += 1;
                    let r = if fail_prepare.contains(&prepares) {
                        Err(format!("disk {disk}: prepare failed (test)"))
                    } else {
                        Ok(())
                    };
                    let _ = reply.send(r);
                }
                Request::GroupFreeze(job) => {
                    let frozen_at = Instant::now();
                    let _ = job.frozen.send(Ok(0.5));
                    let d = job.decision.recv_timeout(Duration::from_secs(5));
                    let committed = matches!(d, Ok(Decision::Commit { .. }));
                    events
                        .lock()
                        .unwrap()
                        .push((job.point.id, frozen_at, Instant::now(), committed));
                    seq += 1;
                    let reply = if committed {
                        PointReply {
                            ok: true,
                            disk: disk.clone(),
                            seq: Some(seq),
                            kind: Some(hrl_format::PointKind::Crash),
                            freeze_ms: Some(0.5),
                            copied_chunks: Some(0),
                            error: None,
                            note: None,
                            label: None,
                        }
                    } else {
                        PointReply::refused(&disk, Some(seq), None, "aborted".into())
                    };
                    let _ = job.done.send(reply);
                }
                Request::Point { .. } | Request::Reload { .. } | Request::Policy(_) => {}
            }
        }
    });
    DiskHandle {
        name: name.into(),
        requests: tx,
        status: Arc::new(Mutex::new(DiskStatus::new(name))),
    }
}

fn member(name: &str, fail_prepare: Vec<u32>, events: &Events, stop: &Arc<AtomicBool>) -> String {
    let h = fake_worker(name, fail_prepare, events.clone(), stop.clone());
    serve_with_key("g", "127.0.0.1:0", KEY, vec![h], stop.clone())
        .unwrap()
        .to_string()
}

#[test]
fn a_failed_prepare_aborts_one_round_and_the_next_rounds_freeze_together() {
    let stop = Arc::new(AtomicBool::new(false));
    let events: Events = Arc::default();
    let members = vec![
        member("a", vec![], &events, &stop),
        member("b", vec![1], &events, &stop),
        member("c", vec![], &events, &stop),
    ];
    let o = CoordinateOptions {
        group: "g".into(),
        members,
        key: KEY,
        deadline: Duration::from_secs(2),
        interval: Duration::from_millis(50),
        count: 4,
        pause_frozen: Duration::from_millis(20),
    };
    let mut results: Vec<GroupResult> = Vec::new();
    coordinate(&o, &AtomicBool::new(false), |r| results.push(r.clone())).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    assert_eq!(results.len(), 4);
    let first = &results[0];
    assert!(!first.ok);
    assert!(
        first.error.as_deref().unwrap_or("").contains("disk b: prepare failed"),
        "{first:?}"
    );
    for r in &results[1..] {
        assert!(r.ok, "{r:?}");
        assert_eq!((r.members, r.points.len()), (3, 3), "{r:?}");
    }
    let ev = events.lock().unwrap().clone();
    assert!(ev.iter().all(|e| e.0 != first.id), "nobody froze for the failed round");
    let mut by_point: HashMap<Uuid, Vec<(Instant, Instant, bool)>> = HashMap::new();
    for (id, f, t, c) in ev {
        by_point.entry(id).or_default().push((f, t, c));
    }
    for r in &results[1..] {
        let w = &by_point[&r.id];
        assert_eq!(w.len(), 3, "every member froze for point {}", r.seq);
        assert!(w.iter().all(|e| e.2), "every member committed point {}", r.seq);
        let last_freeze = w.iter().map(|e| e.0).max().unwrap();
        let first_thaw = w.iter().map(|e| e.1).min().unwrap();
        assert!(
            last_freeze < first_thaw,
            "the freeze windows of point {} overlap",
            r.seq
        );
    }
}

#[test]
fn a_slow_prepare_does_not_eat_the_freeze_deadline() {
    // The deadline bounds the freeze barrier only: members may take their
    // time to flush and pre-copy before it.
    let stop = Arc::new(AtomicBool::new(false));
    let events: Events = Arc::default();
    let h = slow_worker("slow", vec![], Duration::from_millis(400), events.clone(), stop.clone());
    let addr = serve_with_key("g", "127.0.0.1:0", KEY, vec![h], stop.clone()).unwrap();
    let o = CoordinateOptions {
        group: "g".into(),
        members: vec![addr.to_string(), member("fast", vec![], &events, &stop)],
        key: KEY,
        deadline: Duration::from_millis(200),
        interval: Duration::from_millis(10),
        count: 2,
        pause_frozen: Duration::ZERO,
    };
    let mut results: Vec<GroupResult> = Vec::new();
    coordinate(&o, &AtomicBool::new(false), |r| results.push(r.clone())).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(results.iter().all(|r| r.ok), "{results:?}");
}

fn session(addr: &str) -> Channel {
    coordinator_handshake(addr, &KEY, "g").unwrap().0
}

fn ask(ch: &mut Channel, c: Command) -> Answer {
    ch.send(&c).unwrap();
    let a: Answer = ch.recv(Duration::from_secs(10)).unwrap();
    assert_eq!(a.req, c.req());
    a
}

#[test]
fn a_member_ignores_a_commit_or_abort_for_another_point() {
    let stop = Arc::new(AtomicBool::new(false));
    let events: Events = Arc::default();
    let addr = member("a", vec![], &events, &stop);
    let mut ch = session(&addr);
    let point = GroupPoint {
        id: Uuid::new_v4(),
        seq: 1,
        name: "g".into(),
    };
    assert!(ask(&mut ch, Command::Prepare { req: 1 }).ok);
    assert!(
        ask(
            &mut ch,
            Command::Freeze {
                req: 2,
                point: point.clone()
            }
        )
        .ok
    );
    let other = Uuid::new_v4();
    let a = ask(
        &mut ch,
        Command::Commit {
            req: 3,
            point: other,
            members: 1,
        },
    );
    assert!(!a.ok && a.error.unwrap().contains("not in progress"));
    let a = ask(
        &mut ch,
        Command::Abort {
            req: 4,
            point: other,
            why: "x".into(),
        },
    );
    assert!(!a.ok);
    assert!(
        events.lock().unwrap().is_empty(),
        "the disk is still frozen for its point"
    );
    let a = ask(
        &mut ch,
        Command::Commit {
            req: 5,
            point: point.id,
            members: 1,
        },
    );
    assert!(a.ok && a.points.len() == 1, "{a:?}");
    let ev = events.lock().unwrap().clone();
    assert_eq!(ev.len(), 1);
    assert!(ev[0].0 == point.id && ev[0].3);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn a_dropped_coordinator_thaws_the_member_at_once() {
    let stop = Arc::new(AtomicBool::new(false));
    let events: Events = Arc::default();
    let addr = member("a", vec![], &events, &stop);
    let mut ch = session(&addr);
    let point = GroupPoint {
        id: Uuid::new_v4(),
        seq: 1,
        name: "g".into(),
    };
    assert!(ask(&mut ch, Command::Prepare { req: 1 }).ok);
    assert!(ask(&mut ch, Command::Freeze { req: 2, point }).ok);
    let t = Instant::now();
    drop(ch);
    let thawed = wait_for(&events, Duration::from_secs(3));
    assert!(thawed.is_some_and(|e| !e.3), "thawed without committing");
    assert!(t.elapsed() < Duration::from_secs(3));
    // and a fresh coordinator is served afterwards
    let mut ch = session(&addr);
    assert!(ask(&mut ch, Command::Prepare { req: 1 }).ok);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn wait_for(events: &Events, limit: Duration) -> Option<(Uuid, Instant, Instant, bool)> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(e) = events.lock().unwrap().first() {
            return Some(*e);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}
