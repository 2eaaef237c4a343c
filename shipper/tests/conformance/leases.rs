//! Disk leases: one shipper per disk, and a stale holder, whose clock says
//! its lease is still good, cannot publish after another took the disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hrl_shipper::repo::lease::{self, Claim, ManualClock, Watch};
use hrl_shipper::repo::manifest;
use hrl_shipper::ship::{ship, ShipOptions, Throttle};
use hrl_shipper::ShipError;
use hrl_testkit::spool::SpoolWriter;
use uuid::Uuid;

use super::{env, Backend};

const PERIOD: Duration = Duration::from_secs(3);

/// Writes the initial copy and points `from..=to` (same seed, same bytes).
fn points(w: &mut SpoolWriter, from: u64, to: u64) {
    if from == 1 {
        w.full_copy();
    }
    for p in from..=to {
        for _ in 0..3 {
            let c = w.any_chunk();
            w.random(c);
        }
        w.tag(p, false);
    }
}

fn options(spool: &std::path::Path, clock: Arc<ManualClock>) -> ShipOptions {
    let mut o = ShipOptions::new(spool);
    o.lease.period = PERIOD;
    o.lease.clock = clock;
    o.poll = Duration::from_millis(50);
    o
}

/// Shipper A follows its spool with a clock that never moves (it believes
/// its lease good forever and never renews). B sees A's lease unchanged
/// for a period of its own clock and takes it over. A's next point is
/// refused by the fence (generation 2 exists), and A publishes nothing
/// more; B publishes the rest under its generation, skipping what A
/// published. Every manifest's generation never goes down.
pub async fn a_stale_lease_holder_with_a_stopped_clock_cannot_publish(backend: Backend) {
    let (e, repo) = env(backend).await;
    let (spool_a, spool_b) = (e.root.join("a"), e.root.join("b"));
    let disk = Uuid::new_v4();
    std::fs::create_dir_all(&spool_a).unwrap();
    std::fs::create_dir_all(&spool_b).unwrap();
    let mut wa = SpoolWriter::new(&spool_a, disk, 16, 1 << 20, 5);
    points(&mut wa, 1, 3);
    let a_clock = Arc::new(ManualClock::default());
    let a = options(&spool_a, a_clock.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (repo, a, stop) = (repo.clone(), a.clone(), stop.clone());
        tokio::spawn(async move { ship(&repo, &a, &stop).await })
    };
    for _ in 0..200 {
        if manifest::list_points(&repo, &disk).await.unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(manifest::list_points(&repo, &disk).await.unwrap(), vec![1, 2, 3]);

    // B: busy while A's lease is younger than a period of B's clock.
    let b_clock = Arc::new(ManualClock::default());
    let b = options(&spool_b, b_clock.clone());
    let mut watch = Watch::default();
    match lease::claim(&repo, &disk, &b.lease, &mut watch).await.unwrap() {
        Claim::Busy { holder, generation } => {
            assert_eq!(holder, a.lease.holder);
            assert_eq!(generation, 1);
        }
        c => panic!("B took a live lease: {c:?}"),
    }
    b_clock.advance(PERIOD / 2);
    assert!(matches!(
        lease::claim(&repo, &disk, &b.lease, &mut watch).await.unwrap(),
        Claim::Busy { .. }
    ));
    b_clock.advance(PERIOD / 2);
    let Claim::Held(held) = lease::claim(&repo, &disk, &b.lease, &mut watch).await.unwrap() else {
        panic!("B did not take a lease unchanged for a whole period");
    };
    assert_eq!(held.generation, 2);

    // A's clock still says its lease is good: the fence refuses.
    points(&mut wa, 4, 6);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        manifest::list_points(&repo, &disk).await.unwrap(),
        vec![1, 2, 3],
        "the stale holder published after the takeover"
    );
    stop.store(true, Ordering::Relaxed);
    let rep_a = task.await.unwrap().unwrap();
    assert_eq!(rep_a.points_published, 3);
    // A stopped without its lease: generation 2 is still B's.
    assert!(matches!(
        lease::claim(&repo, &disk, &a.lease, &mut Watch::default())
            .await
            .unwrap(),
        Claim::Busy { generation: 2, .. }
    ));
    wa.close();

    // B ships the same disk from its own spool: 1-3 are there already.
    let mut wb = SpoolWriter::new(&spool_b, disk, 16, 1 << 20, 5);
    points(&mut wb, 1, 6);
    wb.close();
    let mut b_once = b.clone();
    b_once.once = true;
    let rep_b = ship(&repo, &b_once, &AtomicBool::new(false)).await.unwrap();
    assert_eq!((rep_b.points_published, rep_b.points_already_published), (3, 3));
    let mut gens = Vec::new();
    for s in manifest::list_points(&repo, &disk).await.unwrap() {
        gens.push(manifest::load(&repo, &disk, s).await.unwrap().0.lease.unwrap());
    }
    assert_eq!(gens, vec![1, 1, 1, 3, 3, 3], "B retook its own lease as generation 3");

    // While B holds the disk (a daemon's lease), a third shipper is told who.
    let Claim::Held(_b_again) = lease::claim(&repo, &disk, &b.lease, &mut Watch::default())
        .await
        .unwrap()
    else {
        panic!("B could not take back its released lease");
    };
    let mut c = options(&e.root.join("c"), Arc::new(ManualClock::default()));
    c.once = true;
    std::fs::create_dir_all(&c.spool).unwrap();
    let mut wc = SpoolWriter::new(&c.spool, disk, 16, 1 << 20, 5);
    points(&mut wc, 1, 1);
    wc.close();
    match ship(&repo, &c, &AtomicBool::new(false)).await {
        Err(ShipError::Leased { holder, generation, .. }) => {
            assert_eq!(holder, b.lease.holder);
            assert_eq!(generation, 4);
        }
        r => panic!("a second shipper of a leased disk was not refused: {r:?}"),
    }
}

/// An upload limit that holds each pack back longer than a lease lasts
/// unrenewed (a 1 MiB pack at 256 KiB/s waits 4 s; a 3 s lease is lost
/// after 2.5 s) ships with the lease renewed while it waits: no lease lost
/// (with `--once` that is an error), every point under generation 1.
pub async fn an_upload_limit_slower_than_the_lease_keeps_the_lease(backend: Backend) {
    let (e, repo) = env(backend).await;
    let spool = e.root.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let disk = Uuid::new_v4();
    let mut w = SpoolWriter::new(&spool, disk, 16, 1 << 20, 7);
    points(&mut w, 1, 2);
    w.close();
    let mut o = ShipOptions::new(&spool);
    o.lease.period = PERIOD;
    o.once = true;
    o.upload = Arc::new(Throttle::new(256 << 10));
    let t = std::time::Instant::now();
    let rep = ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
    assert!(
        t.elapsed() >= PERIOD,
        "the limit did not hold the packs back longer than a lease period"
    );
    assert_eq!(rep.points_published, 2);
    for s in manifest::list_points(&repo, &disk).await.unwrap() {
        assert_eq!(manifest::load(&repo, &disk, s).await.unwrap().0.lease, Some(1));
    }
}
