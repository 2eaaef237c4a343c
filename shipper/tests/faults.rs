//! Endpoint faults: the shipper runs as a daemon against Azurite through
//! the fault proxy (500, 503 with Retry-After, resets, stalls past the
//! client timeout, truncated bodies). It must lose nothing and publish no
//! broken point, and its lag must recover once the faults stop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrl_shipper::repo::{create_key_file, Repo};
use hrl_shipper::restore::{check, restore, PointSel};
use hrl_shipper::ship::{ship, ShipOptions};
use hrl_testkit::fault_proxy::{FaultPlan, FaultProxy};
use hrl_testkit::spool::{SpoolWriter, CHUNK};
use hrl_testkit::Need;
use uuid::Uuid;

/// A spool written over time: an initial copy, then a point every 100 ms.
fn write_spool(spool: &Path, disk: Uuid, chunks: u64, points: u64) -> std::thread::JoinHandle<()> {
    let spool = spool.to_path_buf();
    std::thread::spawn(move || {
        let mut w = SpoolWriter::new(&spool, disk, chunks, 2 << 20, 0x9E37_79B9_7F4A_7C15);
        w.full_copy();
        for p in 1..=points {
            for _ in 0..4 {
                let c = w.any_chunk();
                w.random(c);
            }
            w.tag(p, false);
            std::thread::sleep(Duration::from_millis(100));
        }
        w.close();
    })
}

fn shipping_through_endpoint_faults_loses_nothing_and_lag_recovers() {
    hrl_testkit::require(
        "shipping_through_endpoint_faults_loses_nothing_and_lag_recovers",
        Need::Azurite,
    );
    hrl_testkit::block_on(through_faults());
}

async fn through_faults() {
    let direct = std::env::var("AZURITE_BLOB_STORAGE_URL").unwrap_or_default();
    let upstream: SocketAddr = direct
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("AZURITE_BLOB_STORAGE_URL is http://host:port");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    create_key_file(&key).unwrap();
    let url = format!("az://hrl-faults-{}/repo", &Uuid::new_v4().simple().to_string()[..12]);
    Repo::init(&url, &key, CHUNK, 1 << 20, 4).await.unwrap();
    let mut plan = FaultPlan::uniform(0.06, 42);
    plan.stall_for = Duration::from_secs(3);
    let proxy = FaultProxy::start(upstream, plan).await.unwrap();
    // From here the shipper's store client talks to the proxy, with a
    // request timeout shorter than the proxy's stalls.
    std::env::set_var("AZURITE_BLOB_STORAGE_URL", format!("http://{}", proxy.addr));
    std::env::set_var("HRL_STORE_TIMEOUT", "1s");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let disk = Uuid::new_v4();
    let points = 60u64;
    let writer = write_spool(&spool, disk, 96, points);
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(std::sync::Mutex::new(hrl_shipper::ship::status::ShipStatus::default()));
    let shipper = {
        let (url, key, spool, stop, status) = (url.clone(), key.clone(), spool.clone(), stop.clone(), status.clone());
        tokio::spawn(async move {
            // Opening goes through the faults too.
            let repo = loop {
                match Repo::open(&url, &key).await {
                    Ok(r) => break r,
                    Err(e) => {
                        eprintln!("open through faults: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            };
            let mut o = ShipOptions::new(&spool);
            o.delete_shipped = false;
            o.poll = Duration::from_millis(50);
            o.status = Some(status);
            ship(&repo, &o, &stop).await
        })
    };
    writer.join().unwrap();
    // Faults until every kind was injected (and 15 in all), then none.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        let c = proxy.counts();
        let kinds = [c.error_500, c.busy_503, c.reset, c.stall, c.truncate];
        if c.faults() >= 15 && kinds.iter().all(|&k| k > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.set_enabled(false);
    let faults = proxy.counts();
    let off = Instant::now();
    // Lag recovers: every point published within a bounded time.
    let verify = Repo::open(&url, &key).await.unwrap();
    let mut published;
    loop {
        published = hrl_shipper::repo::manifest::list_points(&verify, &disk).await.unwrap();
        if published.last() == Some(&points) || off.elapsed() > Duration::from_secs(150) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered = off.elapsed();
    stop.store(true, Ordering::Relaxed);
    let rep = shipper.await.unwrap().unwrap();
    let st = status.lock().unwrap().clone();
    eprintln!(
        "faults injected: {faults:?}; endpoint errors seen by the ship loop {}, disk restarts {}; all {points} points published {:.1}s after the faults stopped; report {:?}",
        st.endpoint_errors,
        st.retries,
        recovered.as_secs_f64(),
        (rep.points_published, rep.points_already_published, rep.packs)
    );
    assert!(faults.faults() >= 15, "the proxy must have injected faults: {faults:?}");
    assert!(
        faults.error_500 > 0 && faults.busy_503 > 0 && faults.reset > 0 && faults.stall > 0 && faults.truncate > 0,
        "{faults:?}"
    );
    assert_eq!(
        published,
        (1..=points).collect::<Vec<_>>(),
        "every point published exactly once"
    );
    // Nothing broken: verify directly against Azurite.
    std::env::set_var("AZURITE_BLOB_STORAGE_URL", &direct);
    let verify = Repo::open(&url, &key).await.unwrap();
    let c = check(&verify, true).await.unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    for p in (1..=points).step_by(7).chain([points]) {
        let want = dir.path().join(format!("want-{p}"));
        hrl_format::replay(&spool, Some(disk), Some(p), &want).unwrap();
        let got = dir.path().join(format!("got-{p}"));
        restore(&verify, &disk, PointSel::Seq(p), &got, false).await.unwrap();
        assert!(
            std::fs::read(&want).unwrap() == std::fs::read(&got).unwrap(),
            "point {p} differs from the spool"
        );
        std::fs::remove_file(&want).unwrap();
        std::fs::remove_file(&got).unwrap();
    }
    hrl_format::testutil::reliability_report(
        "endpoint faults (Azurite via the fault proxy)",
        faults.requests,
        faults.faults(),
        (1..=points).step_by(7).count() as u64 + 1,
        0,
        &format!(
            "500, 503+Retry-After, resets, stalls, truncated bodies; {points} points published once each; all out {:.1}s after the faults stopped",
            recovered.as_secs_f64()
        ),
    );
}

hrl_testkit::tests!(Azurite: [shipping_through_endpoint_faults_loses_nothing_and_lag_recovers]);
