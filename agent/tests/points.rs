//! Root integration tests of recovery points: every point replays to
//! exactly the device as it was inside the freeze, and the filesystem in the
//! image is clean; under kill -9, and under spool backpressure.

use std::path::Path;
use std::time::{Duration, Instant};

use hrl_format::{DiskMode, Record};
use hrl_testkit::agent::*;
use hrl_testkit::sys::*;
use hrl_testkit::{Need, Rng};

const MIB: u64 = 1 << 20;

fn points_replay_to_the_frozen_hash(fs: &str, size: u64, secs: u64) {
    let dev = LoopDev::new(size, false);
    mkfs(fs, &dev.path);
    let mut m = Mount::new(&dev.path);
    let shas = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir_in("/dev/shm").unwrap();
    let hook = sha_hook(shas.path());
    let mut agent = Agent::run(
        &dev.path,
        spool.path(),
        &["--point-interval", "1s", "--max-freeze", "10s", "--while-frozen", &hook],
    );
    let written = file_workload(m.path(), Instant::now() + Duration::from_secs(secs), 1, 40, 512 * 1024);
    assert_eq!(agent.stop(), 0);
    m.umount();
    let mut points: Vec<u64> = std::fs::read_dir(shas.path())
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    points.sort();
    eprintln!(
        "{fs}: {} points over {secs} s, workload wrote {} MiB",
        points.len(),
        written / MIB
    );
    // Each point hashes the whole device inside its freeze (the hook): on
    // a loaded 2-core machine that takes a second or more, so a point every
    // 1 s interval comes every 2-3 s. A stuck agent takes none.
    assert!(
        points.len() as u64 >= secs / 4,
        "only {} points in {secs} s",
        points.len()
    );
    let tags: Vec<_> = records(spool.path())
        .into_iter()
        .filter_map(|r| match r {
            Record::Tag(t) => Some(t),
            _ => None,
        })
        .collect();
    assert!(tags.iter().all(|t| !t.aborted), "aborted points: {tags:?}");
    let img = spool.path().join("replay.img");
    for p in &points {
        let want = std::fs::read_to_string(shas.path().join(p.to_string())).unwrap();
        replay(spool.path(), *p, &img);
        assert_eq!(
            sha256_file(&img),
            want.trim(),
            "{fs} point {p}: replay differs from the frozen device"
        );
        let check = match fs {
            "ext4" => std::process::Command::new("e2fsck")
                .args(["-fn"])
                .arg(&img)
                .output()
                .unwrap(),
            _ => {
                // A frozen xfs keeps metadata in its log (a plain dd of a
                // frozen xfs fails `xfs_repair -n` the same way): mount the
                // image to replay the log, as a restore would, then check.
                let l = run("losetup", &["--find", "--show", img.to_str().unwrap()]);
                let mnt = tempfile::tempdir().unwrap();
                run("mount", &["-o", "nouuid", &l, mnt.path().to_str().unwrap()]);
                run("umount", &[mnt.path().to_str().unwrap()]);
                run("losetup", &["-d", &l]);
                std::process::Command::new("xfs_repair")
                    .args(["-n", "-f"])
                    .arg(&img)
                    .output()
                    .unwrap()
            }
        };
        assert!(
            check.status.success(),
            "{fs} point {p}: filesystem check of the replayed image failed: {}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
    let freezes: Vec<f64> = tags.iter().map(|t| t.freeze_ns as f64 / 1e6).collect();
    eprintln!("{fs}: freeze ms (incl. the sha256 hook): {freezes:.0?}");
}

fn ext4_points_replay_to_the_frozen_device_and_fsck_clean() {
    hrl_testkit::require("ext4_points_replay_to_the_frozen_device_and_fsck_clean", Need::Root);
    points_replay_to_the_frozen_hash("ext4", 128 * MIB, 60);
}

fn xfs_points_replay_to_the_frozen_device_and_repair_clean() {
    hrl_testkit::require("xfs_points_replay_to_the_frozen_device_and_repair_clean", Need::Root);
    points_replay_to_the_frozen_hash("xfs", 320 * MIB, 60);
}

fn kill9_twenty_times_then_the_next_point_is_exact_and_resync_is_small() {
    hrl_testkit::require(
        "kill9_twenty_times_then_the_next_point_is_exact_and_resync_is_small",
        Need::Root,
    );
    let size = 256 * MIB;
    let dev = LoopDev::new(size, false);
    mkfs("ext4", &dev.path);
    let mut m = Mount::new(&dev.path);
    let spool = tempfile::tempdir_in("/dev/shm").unwrap();
    let shas = tempfile::tempdir().unwrap();
    let hook = sha_hook(shas.path());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let dir = m.path().to_path_buf();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += file_workload(&dir, Instant::now() + Duration::from_millis(200), n + 7, 20, 64 * 1024);
            }
            n
        })
    };
    let mut rng = Rng(99);
    for i in 0..20 {
        let mut a = Agent::spawn_run(&dev.path, spool.path(), &["--point-interval", "300ms"]);
        std::thread::sleep(Duration::from_millis(200 + rng.below(1300)));
        a.kill9();
        eprintln!("kill -9 #{}", i + 1);
    }
    let before = records(spool.path()).len();
    let mut a = Agent::run(
        &dev.path,
        spool.path(),
        &["--point-interval", "0", "--max-freeze", "10s", "--while-frozen", &hook],
    );
    let p = a.point(&dev.path.file_name().unwrap().to_string_lossy(), false);
    assert_eq!(p["ok"], true, "{p}");
    // Status says why this start resynced.
    let st = a.status().expect("status");
    let start = st["start"].as_str().unwrap_or("").to_string();
    assert!(start.contains("unclean stop"), "start: {start:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = load.join().unwrap();
    assert_eq!(a.stop(), 0);
    m.umount();
    let seq = p["seq"].as_u64().unwrap();
    let want = std::fs::read_to_string(shas.path().join(seq.to_string())).unwrap();
    let img = spool.path().join("replay.img");
    replay(spool.path(), seq, &img);
    assert_eq!(
        sha256_file(&img),
        want.trim(),
        "point {seq} after 20 kills differs from the frozen device"
    );
    let out = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "e2fsck: {}", String::from_utf8_lossy(&out.stdout));
    // What the last start's resync emitted: Data bytes from its Lost record
    // to the end of its scan (the Mode(Data) that follows).
    let recs = records(spool.path());
    let mut emitted = 0u64;
    let mut zero = 0u64;
    let mut saw_lost = false;
    for r in &recs[before..] {
        match r {
            Record::Lost(_) => saw_lost = true,
            Record::Data(d) if saw_lost => {
                if d.is_zero() {
                    zero += 1
                } else {
                    emitted += d.data.len() as u64
                }
            }
            Record::Mode(md) if saw_lost && md.mode == DiskMode::Data => break,
            _ => {}
        }
    }
    assert!(saw_lost, "the restart after kill -9 did not record a loss");
    eprintln!(
        "resync after 20 kills: emitted {} KiB of data (+{zero} zero chunks) for a {} MiB device; workload wrote {} MiB",
        emitted / 1024,
        size / MIB,
        written / MIB
    );
    assert!(
        emitted < size / 10,
        "resync emitted {emitted} bytes: not far less than the device"
    );
    for s in hrl_format::list_segments(spool.path(), None).unwrap() {
        hrl_format::read_segment(&s.path, hrl_format::RecoveryMode::AbsoluteConsistency, |_, _, _| Ok(()))
            .unwrap_or_else(|e| panic!("segment left damaged after kills: {e}"));
    }
}

/// Time until a file can be created and fsynced under `dir`.
fn write_latency(dir: &Path) -> Duration {
    let t = Instant::now();
    let f = std::fs::File::create(dir.join(format!("probe-{}", t.elapsed().as_nanos()))).unwrap();
    f.sync_all().unwrap();
    t.elapsed()
}

fn kill9_inside_a_freeze_never_leaves_the_filesystem_frozen() {
    hrl_testkit::require("kill9_inside_a_freeze_never_leaves_the_filesystem_frozen", Need::Root);
    let dev = LoopDev::new(64 * MIB, false);
    run("mkfs.ext4", &["-q", "-F", dev.path.to_str().unwrap()]);
    let m = Mount::new(&dev.path);
    let spool = tempfile::tempdir_in("/dev/shm").unwrap();
    let marker = spool.path().join("in-freeze");
    let hook = format!("exec >/dev/null 2>&1; touch '{}'; sleep 10", marker.display());
    let mut a = Agent::run(
        &dev.path,
        spool.path(),
        &["--point-interval", "0", "--max-freeze", "60s", "--while-frozen", &hook],
    );
    let spool_p = spool.path().to_path_buf();
    let disk = dev.path.file_name().unwrap().to_string_lossy().into_owned();
    let req = std::thread::spawn(move || {
        let _ = std::process::Command::new(agent_bin())
            .args(["point", "--json", "--disk", &disk, "--spool", spool_p.to_str().unwrap()])
            .output();
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the point never reached the frozen hook");
        std::thread::sleep(Duration::from_millis(10));
    }
    a.kill9();
    // The guardian sees the agent's pipe close and thaws at once.
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = m.path().to_path_buf();
    std::thread::spawn(move || tx.send(write_latency(&dir)));
    let lat = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("filesystem still frozen 10 s after the agent was killed inside a freeze");
    eprintln!("write after kill -9 inside a freeze took {lat:?}");
    assert!(lat < Duration::from_secs(3), "thaw after kill -9 took {lat:?}");
    req.join().unwrap();
}

fn a_hook_outliving_max_freeze_aborts_the_point_and_the_watchdog_thaws_on_time() {
    hrl_testkit::require(
        "a_hook_outliving_max_freeze_aborts_the_point_and_the_watchdog_thaws_on_time",
        Need::Root,
    );
    let dev = LoopDev::new(64 * MIB, false);
    run("mkfs.ext4", &["-q", "-F", dev.path.to_str().unwrap()]);
    let m = Mount::new(&dev.path);
    let spool = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut a = Agent::run(
        &dev.path,
        spool.path(),
        &[
            "--point-interval",
            "0",
            "--max-freeze",
            "300ms",
            "--while-frozen",
            "sleep 5",
        ],
    );
    let disk = dev.path.file_name().unwrap().to_string_lossy().into_owned();
    let t = Instant::now();
    let dir = m.path().to_path_buf();
    // A writer blocked by the freeze must get through shortly after 300 ms.
    let w = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        let l = write_latency(&dir);
        (t0, l)
    });
    let p = a.point(&disk, false);
    let (_, lat) = w.join().unwrap();
    eprintln!("point answer after {:?}: {p}; blocked write took {lat:?}", t.elapsed());
    assert_eq!(p["ok"], false, "{p}");
    let err = p["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("while-frozen hook timed out") || err.contains("max_freeze"),
        "{err}"
    );
    assert!(
        lat < Duration::from_millis(1500),
        "a write waited {lat:?} behind a 300 ms max_freeze"
    );
    // A failing pre-freeze hook aborts an app point without freezing.
    assert_eq!(a.stop(), 0);
    let aborted = records(spool.path())
        .iter()
        .filter(|r| matches!(r, Record::Tag(t) if t.aborted))
        .count();
    assert_eq!(aborted, 1, "the aborted point must be recorded as such");
    assert!(write_latency(m.path()) < Duration::from_secs(1));
}

/// Stands in for the shipper: moves sealed segments (mode 0400) out of the
/// spool into `archive` while not paused, and records the largest spool
/// size it saw.
struct FakeShipper {
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    max_seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
    t: Option<std::thread::JoinHandle<()>>,
}

impl FakeShipper {
    fn start(spool: &Path, archive: &Path) -> Self {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let paused = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let max_seen = Arc::new(AtomicU64::new(0));
        let (p, s, m) = (paused.clone(), stop.clone(), max_seen.clone());
        let (spool, archive) = (spool.to_path_buf(), archive.to_path_buf());
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let mut used = 0;
                let Ok(rd) = std::fs::read_dir(&spool) else { break };
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !name.ends_with(".hrl") {
                        continue;
                    }
                    let Ok(md) = e.metadata() else { continue };
                    used += md.len();
                    if !p.load(Ordering::Relaxed) && md.permissions().mode() & 0o777 == 0o400 {
                        let _ = std::fs::rename(e.path(), archive.join(&name));
                    }
                }
                m.fetch_max(used, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        FakeShipper {
            paused,
            stop,
            max_seen,
            t: Some(t),
        }
    }
    fn set_paused(&self, p: bool) {
        self.paused.store(p, std::sync::atomic::Ordering::Relaxed);
    }
    fn finish(mut self) -> u64 {
        self.set_paused(false);
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.t.take() {
            t.join().unwrap();
        }
        self.max_seen.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn a_spool_limit_below_the_churn_switches_to_bitmap_and_back_and_the_next_point_is_exact() {
    hrl_testkit::require(
        "a_spool_limit_below_the_churn_switches_to_bitmap_and_back_and_the_next_point_is_exact",
        Need::Root,
    );
    let dev = LoopDev::new(256 * MIB, false);
    mkfs("ext4", &dev.path);
    let mut m = Mount::new(&dev.path);
    // Random content everywhere, so the initial sync must really copy it.
    {
        let mut rng = Rng(5);
        let mut b = vec![0u8; 4 * MIB as usize];
        for i in 0..25 {
            rng.fill(&mut b);
            std::fs::write(m.path().join(format!("pre{i}")), &b).unwrap();
        }
        run("sync", &[]);
    }
    let spool = tempfile::tempdir_in("/dev/shm").unwrap();
    let archive = tempfile::tempdir_in("/dev/shm").unwrap();
    let shas = tempfile::tempdir().unwrap();
    let hook = sha_hook(shas.path());
    let limit = 48 * MIB;
    let ship = FakeShipper::start(spool.path(), archive.path());
    let mut a = Agent::spawn_run(
        &dev.path,
        spool.path(),
        &[
            "--spool-limit",
            "48MiB",
            "--segment-size",
            "4MiB",
            "--point-interval",
            "0",
            "--max-freeze",
            "10s",
            "--while-frozen",
            &hook,
        ],
    );
    // Initial sync of ~100 MiB of content cannot fit: bitmap mode.
    a.wait_mode("bitmap", Duration::from_secs(60));
    ship.set_paused(false);
    a.wait_mode("data", Duration::from_secs(120));
    // Churn above the limit while nothing ships: bitmap again.
    ship.set_paused(true);
    file_workload(
        m.path(),
        Instant::now() + Duration::from_secs(8),
        3,
        30,
        4 * MIB as usize,
    );
    a.wait_mode("bitmap", Duration::from_secs(60));
    ship.set_paused(false);
    a.wait_mode("data", Duration::from_secs(120));
    let disk = dev.path.file_name().unwrap().to_string_lossy().into_owned();
    // Catching up can refill the spool and bounce the disk back to bitmap,
    // where points are refused (with the reason): retry as an operator would.
    let deadline = Instant::now() + Duration::from_secs(60);
    let p = loop {
        let p = a.point(&disk, false);
        if p["ok"] == true || Instant::now() > deadline {
            break p;
        }
        eprintln!("point refused, retrying: {}", p["error"]);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(p["ok"], true, "{p}");
    assert_eq!(a.stop(), 0);
    m.umount();
    let max_seen = ship.finish();
    eprintln!(
        "spool limit {} MiB, largest spool seen {:.1} MiB",
        limit / MIB,
        max_seen as f64 / MIB as f64
    );
    assert!(
        max_seen <= limit,
        "spool reached {max_seen} bytes, over its {limit}-byte limit"
    );
    let modes: Vec<DiskMode> = records(archive.path())
        .into_iter()
        .filter_map(|r| match r {
            Record::Mode(m) => Some(m.mode),
            _ => None,
        })
        .collect();
    eprintln!("modes: {modes:?}");
    assert!(
        modes.iter().filter(|m| **m == DiskMode::Bitmap).count() >= 2,
        "{modes:?}"
    );
    let seq = p["seq"].as_u64().unwrap();
    let img = archive.path().join("replay.img");
    replay(archive.path(), seq, &img);
    let want = std::fs::read_to_string(shas.path().join(seq.to_string())).unwrap();
    assert_eq!(
        sha256_file(&img),
        want.trim(),
        "point after bitmap mode differs from the frozen device"
    );
    let out = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "e2fsck: {}", String::from_utf8_lossy(&out.stdout));
}

fn a_slow_pre_freeze_hook_does_not_stop_tracking() {
    hrl_testkit::require("a_slow_pre_freeze_hook_does_not_stop_tracking", Need::Root);
    let dev = LoopDev::new(128 * MIB, false);
    mkfs("ext4", &dev.path);
    let mut m = Mount::new(&dev.path);
    let shas = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir_in("/dev/shm").unwrap();
    let hook = sha_hook(shas.path());
    // A 64 KiB trace buffer per CPU holds a few hundred completions; the
    // hook runs for 6 s under a workload that makes thousands.
    let mut a = Agent::run(
        &dev.path,
        spool.path(),
        &[
            "--name",
            "slow",
            "--point-interval",
            "0",
            "--trace-buffer",
            "64KiB",
            "--max-freeze",
            "10s",
            "--pre-freeze",
            "sleep 6",
            "--while-frozen",
            &hook,
        ],
    );
    let dir = m.path().to_path_buf();
    let until = Instant::now() + Duration::from_secs(7);
    let w = std::thread::spawn(move || file_workload(&dir, until, 9, 50, 64 * 1024));
    std::thread::sleep(Duration::from_millis(300));
    let p = a.point("slow", true);
    let written = w.join().unwrap();
    assert_eq!(p["ok"], true, "{p}");
    assert_eq!(p["kind"], "app", "{p}");
    assert_eq!(a.stop(), 0);
    m.umount();
    let lost: Vec<_> = records(spool.path())
        .into_iter()
        .filter(|r| matches!(r, Record::Lost(_)))
        .collect();
    assert!(
        lost.is_empty(),
        "tracking lost events while the hook ran ({written} bytes written): {lost:?}"
    );
    let seq = p["seq"].as_u64().unwrap();
    let img = spool.path().join("replay.img");
    replay(spool.path(), seq, &img);
    let want = std::fs::read_to_string(shas.path().join(seq.to_string())).unwrap();
    assert_eq!(
        sha256_file(&img),
        want.trim(),
        "the point replays to the device inside its freeze"
    );
}

hrl_testkit::tests!(Root: [
    a_slow_pre_freeze_hook_does_not_stop_tracking,
    ext4_points_replay_to_the_frozen_device_and_fsck_clean,
    xfs_points_replay_to_the_frozen_device_and_repair_clean,
    kill9_twenty_times_then_the_next_point_is_exact_and_resync_is_small,
    kill9_inside_a_freeze_never_leaves_the_filesystem_frozen,
    a_hook_outliving_max_freeze_aborts_the_point_and_the_watchdog_thaws_on_time,
    a_spool_limit_below_the_churn_switches_to_bitmap_and_back_and_the_next_point_is_exact,
]);
