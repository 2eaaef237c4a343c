//! End to end, as an operator runs it: agent and shipper on a mounted ext4
//! or xfs, into a local-directory repository or Azurite. Every published
//! point restores to exactly the device as it was inside its freeze, the
//! filesystem checks clean, and every file the workload fsynced before the
//! point's tag is in the restored image with the right checksum.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrl_shipper::repo::{create_key_file, Repo};
use hrl_shipper::restore::{restore, PointSel};
use hrl_shipper::ship::{ship, ShipOptions};
use hrl_testkit::agent::*;
use hrl_testkit::sys::*;
use hrl_testkit::{Need, Rng};

const MIB: u64 = 1 << 20;

/// sha256 of bytes via the sha256sum command (no hashing crate needed).
fn sha256_bytes(b: &[u8]) -> String {
    let mut c = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b).unwrap();
    let o = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn e2e(fs: &str, size: u64, azurite: bool) {
    let dev = LoopDev::new(size, false);
    mkfs(fs, &dev.path);
    let mut m = Mount::new(&dev.path);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let spool = work.path().join("spool");
    let shas = work.path().join("shas");
    std::fs::create_dir_all(&shas).unwrap();
    let key = work.path().join("key");
    create_key_file(&key).unwrap();
    let url = if azurite {
        format!("az://hrl-e2e-{}/repo", &uuid::Uuid::new_v4().simple().to_string()[..16])
    } else {
        format!("file://{}", work.path().join("repo").display())
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Repo::init(&url, &key, 65536, 4 << 20, 8)).unwrap();
    // The hook also labels its point, as a database hook would label it
    // with its WAL position.
    let hook = format!("{}; echo HRL_LABEL=wal-$HRL_POINT", sha_hook(&shas));
    let mut agent = Agent::run(
        &dev.path,
        &spool,
        &[
            "--name",
            "e2e",
            "--point-interval",
            "2s",
            "--max-freeze",
            "10s",
            "--while-frozen",
            &hook,
        ],
    );
    // The shipper runs alongside, as a daemon would.
    let stop = Arc::new(AtomicBool::new(false));
    let shipper = {
        let (url, key, spool, stop) = (url.clone(), key.clone(), spool.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let repo = Repo::open(&url, &key).await.unwrap();
                let o = ShipOptions::new(&spool);
                ship(&repo, &o, &stop).await.unwrap()
            })
        })
    };
    // Workload: new files, each fsynced; remember (fsync time, name, sha).
    let mut files: Vec<(u64, String, String)> = Vec::new();
    let mut rng = Rng(17);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while Instant::now() < deadline {
        let n = 1 + rng.below(300_000) as usize;
        let mut b = vec![0u8; n];
        rng.fill(&mut b);
        let name = format!("f{i:05}");
        let mut f = std::fs::File::create(m.path().join(&name)).unwrap();
        f.write_all(&b).unwrap();
        f.sync_all().unwrap();
        // The directory entry must be durable too.
        std::fs::File::open(m.path()).unwrap().sync_all().unwrap();
        files.push((hrl_format::now_ns(), name, sha256_bytes(&b)));
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(agent.stop(), 0);
    m.umount();
    // Let the shipper publish what is left, then stop it.
    let t = Instant::now();
    while hrl_format::list_segments(&spool, None)
        .map(|s| !s.is_empty())
        .unwrap_or(false)
        && t.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let rep = shipper.join().unwrap();
    let repo = rt.block_on(Repo::open(&url, &key)).unwrap();
    let disk = rt.block_on(hrl_shipper::repo::manifest::list_disks(&repo)).unwrap()[0];
    let points = rt
        .block_on(hrl_shipper::repo::manifest::list_points(&repo, &disk))
        .unwrap();
    let frozen: BTreeMap<u64, String> = std::fs::read_dir(&shas)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let p: u64 = e.file_name().to_str()?.parse().ok()?;
            Some((p, std::fs::read_to_string(e.path()).ok()?.trim().to_string()))
        })
        .collect();
    eprintln!(
        "{fs} {}: {} files written, {} points published, {} MiB stored",
        if azurite { "azurite" } else { "local" },
        files.len(),
        points.len(),
        rep.stored_bytes / MIB
    );
    assert!(points.len() >= 5, "only {} points published", points.len());
    let img = work.path().join("restore.img");
    let mnt = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for &p in &points {
        let _ = std::fs::remove_file(&img);
        let r = rt
            .block_on(restore(&repo, &disk, PointSel::Seq(p), &img, false))
            .unwrap();
        if let Some(want) = frozen.get(&p) {
            assert_eq!(
                &sha256_file(&img),
                want,
                "{fs} point {p}: restore differs from the device in the freeze"
            );
        } else {
            panic!("point {p} published but its in-freeze hash is missing");
        }
        let (manifest, _) = rt.block_on(hrl_shipper::repo::manifest::load(&repo, &disk, p)).unwrap();
        // Named as the operator named it, labelled by its hook.
        assert_eq!(manifest.host.as_deref(), Some(hrl_common::host_name().as_str()));
        assert_eq!(manifest.name.as_deref(), Some("e2e"));
        assert_eq!(manifest.label, Some(format!("wal-{p}")), "point {p}");
        let ok = match fs {
            "ext4" => std::process::Command::new("e2fsck")
                .args(["-fn"])
                .arg(&img)
                .status()
                .unwrap()
                .success(),
            _ => true, // checked below after the log is replayed by mounting
        };
        assert!(ok, "{fs} point {p}: e2fsck of the restored image failed");
        let l = run("losetup", &["--find", "--show", img.to_str().unwrap()]);
        let opts = if fs == "xfs" { "nouuid" } else { "rw" };
        run("mount", &["-o", opts, &l, mnt.path().to_str().unwrap()]);
        let mut present = 0;
        for (t, name, sha) in &files {
            if *t >= manifest.time_ns {
                continue;
            }
            let got = std::fs::read(mnt.path().join(name))
                .unwrap_or_else(|e| panic!("{fs} point {p}: {name}, fsynced before the tag, is missing: {e}"));
            assert_eq!(&sha256_bytes(&got), sha, "{fs} point {p}: {name} has the wrong content");
            present += 1;
        }
        run("umount", &[mnt.path().to_str().unwrap()]);
        run("losetup", &["-d", &l]);
        if fs == "xfs" {
            let o = std::process::Command::new("xfs_repair")
                .args(["-n", "-f"])
                .arg(&img)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "xfs point {p}: xfs_repair -n: {}",
                String::from_utf8_lossy(&o.stdout)
            );
        }
        assert!(r.stored_chunks > 0);
        checked += present;
    }
    eprintln!(
        "{fs}: {checked} fsynced files checked across {} restored points",
        points.len()
    );
    assert!(checked > files.len(), "too few fsynced files were checked ({checked})");
}

fn e2e_ext4_local_store() {
    hrl_testkit::require("e2e_ext4_local_store", Need::Root);
    e2e("ext4", 128 * MIB, false);
}

fn e2e_xfs_local_store() {
    hrl_testkit::require("e2e_xfs_local_store", Need::Root);
    e2e("xfs", 320 * MIB, false);
}

fn e2e_ext4_azurite() {
    hrl_testkit::require("e2e_ext4_azurite", Need::RootAzurite);
    e2e("ext4", 128 * MIB, true);
}

fn e2e_xfs_azurite() {
    hrl_testkit::require("e2e_xfs_azurite", Need::RootAzurite);
    e2e("xfs", 320 * MIB, true);
}

fn reprotecting_a_failed_over_disk_uploads_almost_nothing() {
    hrl_testkit::require("reprotecting_a_failed_over_disk_uploads_almost_nothing", Need::Root);
    let dev = LoopDev::new(128 * MIB, false);
    mkfs("ext4", &dev.path);
    let mut m = Mount::new(&dev.path);
    let mut rng = Rng(23);
    for i in 0..40 {
        let mut b = vec![0u8; 1 << 20];
        rng.fill(&mut b);
        std::fs::write(m.path().join(format!("f{i}")), &b).unwrap();
    }
    run("sync", &[]);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let key = work.path().join("key");
    create_key_file(&key).unwrap();
    let url = format!("file://{}", work.path().join("repo").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Repo::init(&url, &key, 65536, 4 << 20, 8)).unwrap();
    let ship_once = |spool: &std::path::Path| {
        rt.block_on(async {
            let repo = Repo::open(&url, &key).await.unwrap();
            let mut o = ShipOptions::new(spool);
            o.once = true;
            ship(&repo, &o, &AtomicBool::new(false)).await.unwrap()
        })
    };
    // Protect the source disk.
    let spool_a = work.path().join("spool-a");
    let mut a = Agent::run(&dev.path, &spool_a, &["--name", "source", "--point-interval", "0"]);
    assert_eq!(a.point("source", false)["ok"], true);
    assert_eq!(a.stop(), 0);
    m.umount();
    let first = ship_once(&spool_a);
    // Fail over: restore its latest point to a new disk.
    let repo = rt.block_on(Repo::open(&url, &key)).unwrap();
    let disk = rt.block_on(hrl_shipper::repo::manifest::list_disks(&repo)).unwrap()[0];
    let img = work.path().join("failed-over.img");
    rt.block_on(restore(&repo, &disk, PointSel::Latest, &img, false))
        .unwrap();
    let l = run("losetup", &["--find", "--show", img.to_str().unwrap()]);
    // Reprotect: the failed-over disk as a new disk of the same repository.
    let spool_b = work.path().join("spool-b");
    let mut b = Agent::run(
        Path::new(&l),
        &spool_b,
        &["--name", "reprotected", "--point-interval", "0"],
    );
    assert_eq!(b.point("reprotected", false)["ok"], true);
    assert_eq!(b.stop(), 0);
    run("losetup", &["-d", &l]);
    let second = ship_once(&spool_b);
    eprintln!(
        "source: {} MiB of data stored as {} MiB; reprotected: {} MiB of data, {} new chunks ({} KiB stored), {} deduplicated",
        first.data_bytes / MIB,
        first.stored_bytes / MIB,
        second.data_bytes / MIB,
        second.chunks_new,
        second.stored_bytes / 1024,
        second.chunks_deduplicated
    );
    assert!(
        second.data_bytes > 30 * MIB,
        "the reprotected disk's initial sync carried its data"
    );
    assert!(
        second.stored_bytes * 100 < second.data_bytes,
        "reprotect stored {} of {} bytes: more than 1%",
        second.stored_bytes,
        second.data_bytes
    );
}

/// The value of the first sample of `name` whose labels contain `label`
/// (all samples summed when `label` is empty).
fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (key, val) = l.rsplit_once(' ')?;
        let base = key.split('{').next().unwrap_or("");
        if base == name && key.contains(label) {
            let v: f64 = val.parse().ok()?;
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// Agent and shipper run with points every second; both metrics endpoints
/// answer on loopback with every documented metric and plausible values;
/// when points stop, the shipper's RPO warning shows in metrics and status.
fn metrics_endpoints_report_every_metric_and_the_rpo_warning() {
    hrl_testkit::require("metrics_endpoints_report_every_metric_and_the_rpo_warning", Need::Root);
    let dev = LoopDev::new(256 * MIB, false);
    mkfs("ext4", &dev.path);
    let m = Mount::new(&dev.path);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let spool = work.path().join("spool");
    let key = work.path().join("key");
    create_key_file(&key).unwrap();
    let url = format!("file://{}", work.path().join("repo").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Repo::init(&url, &key, 65536, 4 << 20, 8)).unwrap();
    let mut agent = Agent::run(
        &dev.path,
        &spool,
        &[
            "--name",
            "met",
            "--point-interval",
            "1s",
            "--spool-limit",
            "1GiB",
            "--rpo-warn",
            "3s",
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(std::sync::Mutex::new(hrl_shipper::ship::status::ShipStatus {
        repo: url.clone(),
        pid: std::process::id(),
        ..Default::default()
    }));
    let shipper_addr = hrl_shipper::ship::status::serve_metrics(&status, "127.0.0.1:0").expect("shipper metrics bound");
    assert!(shipper_addr.ip().is_loopback());
    let shipper = {
        let (url, key, spool, stop, status) = (url.clone(), key.clone(), spool.clone(), stop.clone(), status.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let repo = Repo::open(&url, &key).await.unwrap();
                let mut o = ShipOptions::new(&spool);
                o.status = Some(status);
                o.rpo_warn.store(3, Ordering::Relaxed);
                ship(&repo, &o, &stop).await.unwrap()
            })
        })
    };
    // Some churn, with points every second.
    for i in 0..40 {
        let mut f = std::fs::File::create(m.path().join(format!("f{i}"))).unwrap();
        f.write_all(&vec![i as u8 + 1; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let st: serde_json::Value = serde_json::from_str(&run(
        agent_bin(),
        &["status", "--json", "--spool", spool.to_str().unwrap()],
    ))
    .unwrap();
    let agent_addr: std::net::SocketAddr = st["metrics"]
        .as_str()
        .expect("agent status names its metrics address")
        .parse()
        .unwrap();
    assert!(
        agent_addr.ip().is_loopback(),
        "agent metrics bind to localhost by default"
    );
    let a = hrl_format::metrics_http::scrape(agent_addr).unwrap();
    let d = "disk=\"met\"";
    assert_eq!(metric(&a, "hrl_agent_disk_mode", "mode=\"data\""), Some(1.0), "{a}");
    assert_eq!(metric(&a, "hrl_agent_disk_mode", "mode=\"bitmap\""), Some(0.0));
    assert!(metric(&a, "hrl_agent_points_taken_total", d).unwrap() >= 3.0);
    assert_eq!(metric(&a, "hrl_agent_points_aborted_total", d), Some(0.0));
    assert!(metric(&a, "hrl_agent_freeze_seconds_count", d).unwrap() >= 3.0);
    let fsum = metric(&a, "hrl_agent_freeze_seconds_sum", d).unwrap();
    assert!(fsum > 0.0 && fsum < 10.0, "freeze sum {fsum}");
    assert!(metric(&a, "hrl_agent_capture_bytes_total", d).unwrap() >= 40.0 * MIB as f64);
    assert!(metric(&a, "hrl_agent_write_bytes_total", d).unwrap() >= 40.0 * MIB as f64);
    assert_eq!(metric(&a, "hrl_agent_spool_limit_bytes", d), Some(1024.0 * MIB as f64));
    assert!(metric(&a, "hrl_agent_spool_bytes", d).is_some());
    assert!(metric(&a, "hrl_agent_dirty_bytes", d).is_some());
    assert!(metric(&a, "hrl_agent_last_point_age_seconds", d).unwrap() < 3.0);
    assert_eq!(metric(&a, "hrl_agent_rpo_exceeded", d), Some(0.0));
    assert_eq!(metric(&a, "hrl_agent_losses_total", d), Some(0.0));
    assert_eq!(metric(&a, "hrl_agent_scan_progress_ratio", d), Some(1.0));
    let s = hrl_format::metrics_http::scrape(shipper_addr).unwrap();
    assert!(
        metric(&s, "hrl_shipper_points_published_total", "").unwrap() >= 2.0,
        "{s}"
    );
    assert!(metric(&s, "hrl_shipper_ship_bytes_total", "").unwrap() >= 40.0 * MIB as f64);
    assert!(metric(&s, "hrl_shipper_upload_bytes_total", "").unwrap() > 0.0);
    assert!(metric(&s, "hrl_shipper_stored_bytes_total", "").unwrap() > 0.0);
    assert!(metric(&s, "hrl_shipper_chunks_new_total", "").unwrap() > 0.0);
    assert!(metric(&s, "hrl_shipper_chunks_deduplicated_total", "").is_some());
    // 40 files of one repeated byte: lz4 shrinks them a lot.
    assert!(metric(&s, "hrl_shipper_compression_ratio", "").unwrap() > 2.0);
    assert!(metric(&s, "hrl_shipper_dedup_ratio", "").unwrap() >= 1.0);
    assert_eq!(metric(&s, "hrl_shipper_endpoint_errors_total", ""), Some(0.0));
    let rpo = metric(&s, "hrl_shipper_rpo_seconds", "disk=").unwrap();
    assert!(rpo < 3.0, "rpo {rpo}");
    assert_eq!(metric(&s, "hrl_shipper_rpo_exceeded", "disk="), Some(0.0));
    // Points stop: after rpo_warn the shipper says so.
    assert_eq!(agent.stop(), 0);
    std::thread::sleep(Duration::from_secs(5));
    let s = hrl_format::metrics_http::scrape(shipper_addr).unwrap();
    assert_eq!(metric(&s, "hrl_shipper_rpo_exceeded", "disk="), Some(1.0), "{s}");
    let file = hrl_shipper::ship::status::load(&spool).unwrap();
    assert!(file.disks.values().all(|d| d.rpo_exceeded), "{file:?}");
    stop.store(true, Ordering::Relaxed);
    shipper.join().unwrap();
    eprintln!(
        "metrics: agent {} lines, shipper {} lines; rpo before stop {rpo:.1}s",
        a.lines().count(),
        s.lines().count()
    );
}

hrl_testkit::tests!(
    Root: [
        e2e_ext4_local_store,
        e2e_xfs_local_store,
        reprotecting_a_failed_over_disk_uploads_almost_nothing,
        metrics_endpoints_report_every_metric_and_the_rpo_warning,
    ],
    RootAzurite: [e2e_ext4_azurite, e2e_xfs_azurite],
);
