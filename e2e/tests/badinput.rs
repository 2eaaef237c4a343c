//! Bad conditions on the agent's side: a spool filesystem smaller than the
//! churn (the disk goes to bitmap mode instead of filling it, and comes
//! back when space returns), and a tracked device that shrinks to nothing
//! under the agent (a clear error naming it, exit 1, the spool intact).

use std::io::Write;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use hrl_shipper::repo::{create_key_file, Repo};
use hrl_shipper::restore::{restore, PointSel};
use hrl_shipper::ship::{ship, ShipOptions};
use hrl_testkit::agent::*;
use hrl_testkit::sys::*;
use hrl_testkit::Need;

const MIB: u64 = 1 << 20;

/// stdout of a command, or "" when it fails.
fn run_ok(cmd: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

/// A tmpfs of `mib` MiB mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(mib: u64) -> Self {
        let dir = tempfile::Builder::new().prefix("hrl-spoolfs-").tempdir().unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
                dir.path().to_str().unwrap(),
            ],
        );
        Tmpfs { dir }
    }
    fn used_and_size(&self) -> (u64, u64) {
        let st = nix::sys::statvfs::statvfs(self.dir.path()).unwrap();
        let f = st.fragment_size() as u64;
        ((st.blocks() - st.blocks_free()) as u64 * f, st.blocks() as u64 * f)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn a_full_spool_filesystem_means_bitmap_mode_not_a_crash_and_the_next_point_is_exact() {
    hrl_testkit::require(
        "a_full_spool_filesystem_means_bitmap_mode_not_a_crash_and_the_next_point_is_exact",
        Need::Root,
    );
    let dev = LoopDev::new(384 * MIB, false);
    mkfs("ext4", &dev.path);
    let m = Mount::new(&dev.path);
    let fs = Tmpfs::new(160);
    let spool = fs.dir.path().join("spool");
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let shas = work.path().join("shas");
    std::fs::create_dir_all(&shas).unwrap();
    let hook = sha_hook(&shas);
    // The limit is far above the filesystem: only free space can stop it.
    let mut a = Agent::run(
        &dev.path,
        &spool,
        &[
            "--name",
            "full",
            "--point-interval",
            "0",
            "--spool-limit",
            "64GiB",
            // The hook hashes all 384 MiB inside the freeze; on a loaded
            // 2-core machine that can take more than the default 2 s.
            "--max-freeze",
            "10s",
            "--while-frozen",
            &hook,
        ],
    );
    // 240 MiB of incompressible data: more than the spool filesystem holds.
    let mut seen_bitmap = false;
    let mut peak = 0u64;
    let mut x = 0x1234_5678_9abc_def1u64;
    for i in 0..240 {
        let mut f = std::fs::File::create(m.path().join(format!("f{i}"))).unwrap();
        let buf: Vec<u8> = (0..MIB / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        f.write_all(&buf).unwrap();
        f.sync_all().unwrap();
        seen_bitmap |= a.status().is_some_and(|s| s["mode"] == "bitmap");
        peak = peak.max(fs.used_and_size().0);
    }
    std::thread::sleep(Duration::from_secs(1));
    seen_bitmap |= a.status().is_some_and(|s| s["mode"] == "bitmap");
    let (_, size) = fs.used_and_size();
    assert!(
        seen_bitmap,
        "the agent never went to bitmap mode on a full spool filesystem"
    );
    assert!(peak < size, "the spool filesystem filled up ({peak} of {size} bytes)");
    assert!(a.status().is_some(), "the agent must still be running");
    // A shipper drains the spool; the agent catches up and points resume.
    let key = work.path().join("key");
    create_key_file(&key).unwrap();
    let url = format!("file://{}", work.path().join("repo").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Repo::init(&url, &key, 65536, 16 << 20, 8)).unwrap();
    let t = Instant::now();
    let mut point = serde_json::Value::Null;
    while t.elapsed() < Duration::from_secs(120) {
        rt.block_on(async {
            let repo = Repo::open(&url, &key).await.unwrap();
            let mut o = ShipOptions::new(&spool);
            o.once = true;
            ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
        });
        if a.status().is_some_and(|s| s["mode"] == "data") {
            point = a.point("full", false);
            if point["ok"] == true {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(point["ok"], true, "no point after the spool drained: {point}");
    let seq = point["seq"].as_u64().unwrap();
    assert_eq!(a.stop(), 0);
    rt.block_on(async {
        let repo = Repo::open(&url, &key).await.unwrap();
        let mut o = ShipOptions::new(&spool);
        o.once = true;
        ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
        let disk = hrl_shipper::repo::manifest::list_disks(&repo).await.unwrap()[0];
        let img = work.path().join("p.img");
        restore(&repo, &disk, PointSel::Seq(seq), &img, false).await.unwrap();
        let got = run("sha256sum", &[img.to_str().unwrap()]);
        let want = std::fs::read_to_string(shas.join(seq.to_string())).unwrap();
        assert_eq!(
            got.split_whitespace().next().unwrap(),
            want.trim(),
            "point {seq} after bitmap mode"
        );
    });
    eprintln!(
        "full spool filesystem: bitmap mode entered, peak use {} of {} MiB, point {seq} exact after draining",
        peak >> 20,
        size >> 20
    );
    hrl_format::testutil::reliability_report(
        "full spool filesystem",
        1,
        1,
        1,
        0,
        &format!(
            "bitmap mode, peak {} of {} MiB, drained by the shipper, next point exact",
            peak >> 20,
            size >> 20
        ),
    );
}

fn a_device_that_shrinks_to_nothing_stops_the_disk_with_a_clear_error() {
    hrl_testkit::require(
        "a_device_that_shrinks_to_nothing_stops_the_disk_with_a_clear_error",
        Need::Root,
    );
    let dev = LoopDev::new(64 * MIB, false);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let spool = work.path().join("spool");
    let log_path = work.path().join("agent.log");
    let mut child = Command::new(agent_bin())
        .args([
            "run",
            "--device",
            dev.path.to_str().unwrap(),
            "--spool",
            spool.to_str().unwrap(),
        ])
        .args(["--name", "gone", "--point-interval", "0", "--metrics-listen", ""])
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !run_ok(agent_bin(), &["status", "--json", "--spool", spool.to_str().unwrap()]).contains("\"data\"") {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the agent did not reach data mode"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The device loses its capacity under the agent (the loop device's
    // backing file is emptied and the loop device told so).
    std::fs::File::options()
        .write(true)
        .open(&dev.backing)
        .unwrap()
        .set_len(0)
        .unwrap();
    run("losetup", &["-c", dev.path.to_str().unwrap()]);
    let t = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent kept running on a vanished device");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(1), "a runtime failure exits 1");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains(dev.path.to_str().unwrap()) && log.contains("size changed"),
        "the error must name the device and say what happened: {log}"
    );
    // The spool is intact: every file verifies.
    for s in hrl_format::list_segments(&spool, None).unwrap() {
        hrl_format::read_segment(&s.path, hrl_format::RecoveryMode::TolerateTornTail, |_, _, _| Ok(()))
            .unwrap_or_else(|e| panic!("{}: {e}", s.path.display()));
    }
    eprintln!(
        "device shrunk to 0: agent exited 1 after {:.1}s naming {}",
        t.elapsed().as_secs_f64(),
        dev.path.display()
    );
    hrl_format::testutil::reliability_report(
        "tracked device vanishes (shrinks to 0)",
        1,
        1,
        0,
        0,
        &format!(
            "exit 1 naming the device after {:.1}s; spool segments verify",
            t.elapsed().as_secs_f64()
        ),
    );
}

fn a_grown_device_stops_the_disk_and_the_restart_resyncs_to_an_exact_point() {
    hrl_testkit::require(
        "a_grown_device_stops_the_disk_and_the_restart_resyncs_to_an_exact_point",
        Need::Root,
    );
    let dev = LoopDev::new(64 * MIB, false);
    mkfs("ext4", &dev.path);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let spool = work.path().join("spool");
    let shas = work.path().join("shas");
    std::fs::create_dir_all(&shas).unwrap();
    let hook = sha_hook(&shas);
    let args = [
        "--name",
        "grow",
        "--point-interval",
        "0",
        "--while-frozen",
        hook.as_str(),
    ];
    let mut m = Mount::new(&dev.path);
    let mut a = Agent::run(&dev.path, &spool, &args);
    let first = a.point("grow", false)["seq"].as_u64().unwrap();
    // The device grows by half (as a cloud disk resized online would).
    std::fs::File::options()
        .write(true)
        .open(&dev.backing)
        .unwrap()
        .set_len(96 * MIB)
        .unwrap();
    run("losetup", &["-c", dev.path.to_str().unwrap()]);
    let t = Instant::now();
    while a.status().is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the agent kept capturing against the old size"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    a.kill9(); // reap the exited process
               // Restarted (as systemd would), it resyncs at the new size.
    let mut a = Agent::run(&dev.path, &spool, &args);
    std::fs::write(m.path().join("after"), vec![3u8; 5 << 20]).unwrap();
    run("sync", &[]);
    let r = a.point("grow", false);
    assert_eq!(r["ok"], true, "{r}");
    let seq = r["seq"].as_u64().unwrap();
    assert_eq!(a.stop(), 0);
    m.umount();
    let key = work.path().join("key");
    create_key_file(&key).unwrap();
    let url = format!("file://{}", work.path().join("repo").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let repo = Repo::init(&url, &key, 65536, 4 << 20, 8).await.unwrap();
        let mut o = ShipOptions::new(&spool);
        o.once = true;
        ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
        let disk = hrl_shipper::repo::manifest::list_disks(&repo).await.unwrap()[0];
        for (p, size) in [(first, 64 * MIB), (seq, 96 * MIB)] {
            let img = work.path().join(format!("p{p}.img"));
            let rep = restore(&repo, &disk, PointSel::Seq(p), &img, false).await.unwrap();
            assert_eq!(rep.device_size, size, "point {p}");
            let got = run("sha256sum", &[img.to_str().unwrap()]);
            let want = std::fs::read_to_string(shas.join(p.to_string())).unwrap();
            assert_eq!(got.split_whitespace().next().unwrap(), want.trim(), "point {p}");
        }
    });
    eprintln!(
        "device grown 64 -> 96 MiB: disk stopped, restart resynced, points {first} (64 MiB) and {seq} (96 MiB) exact"
    );
    hrl_format::testutil::reliability_report(
        "tracked device grows",
        1,
        1,
        2,
        0,
        "the disk stops with an error; the restart resyncs; points before and after exact at their sizes",
    );
}

hrl_testkit::tests!(Root: [
    a_full_spool_filesystem_means_bitmap_mode_not_a_crash_and_the_next_point_is_exact,
    a_device_that_shrinks_to_nothing_stops_the_disk_with_a_clear_error,
    a_grown_device_stops_the_disk_and_the_restart_resyncs_to_an_exact_point,
]);
