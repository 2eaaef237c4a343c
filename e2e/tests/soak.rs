//! Soak: agent and shipper (separate processes) under a mixed fio and file
//! workload, a point every second, kill -9 of one or the other every few
//! seconds, endpoint faults on (the fault proxy in front of Azurite). At
//! the end: every published point that is checked restores to the device
//! hash taken inside its freeze (data lost must be 0), `check --read-data`
//! is clean, and the run reports points, kills, faults, RPO, freeze and
//! spool high-water. HRL_SOAK_SECONDS sets the length (CI: 40 s;
//! scripts/reliability.sh: 600 s).

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrl_shipper::repo::{create_key_file, Repo};
use hrl_shipper::restore::{check, restore, PointSel};
use hrl_testkit::agent::*;
use hrl_testkit::fault_proxy::{FaultPlan, FaultProxy};
use hrl_testkit::sys::*;
use hrl_testkit::Need;

const MIB: u64 = 1 << 20;

fn start_shipper(bin: &Path, url: &str, key: &Path, spool: &Path, proxy: &str, log: &Path) -> Child {
    Command::new(bin)
        .args(["run", "--repo", url, "--key-file", key.to_str().unwrap()])
        .args([
            "--spool",
            spool.to_str().unwrap(),
            "--metrics-listen",
            "",
            "--rpo-warn",
            "0",
        ])
        .env("AZURITE_BLOB_STORAGE_URL", proxy)
        .env("HRL_STORE_TIMEOUT", "2s")
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
        .spawn()
        .unwrap()
}

/// The fio process, stopped (and reaped) when dropped, also on a panic.
struct Fio(Option<Child>);

impl Drop for Fio {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

fn soak_with_kills_and_endpoint_faults_loses_nothing() {
    hrl_testkit::require("soak_with_kills_and_endpoint_faults_loses_nothing", Need::RootAzurite);
    let direct = std::env::var("AZURITE_BLOB_STORAGE_URL").unwrap_or_default();
    let shipper = hrl_testkit::bin("hrl-shipper");
    let secs: u64 = std::env::var("HRL_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let kill_every = Duration::from_secs(if secs >= 300 { 30 } else { 8 });
    let dev = LoopDev::new(160 * MIB, false);
    mkfs("ext4", &dev.path);
    let m = Mount::new(&dev.path);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let spool = work.path().join("spool");
    let shas = work.path().join("shas");
    std::fs::create_dir_all(&shas).unwrap();
    let hook = sha_hook(&shas);
    let key = work.path().join("key");
    create_key_file(&key).unwrap();
    let url = format!(
        "az://hrl-soak-{}/repo",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Repo::init(&url, &key, 65536, 4 << 20, 16)).unwrap();
    let upstream: std::net::SocketAddr = direct
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let mut plan = FaultPlan::uniform(0.02, 7);
    plan.stall_for = Duration::from_secs(4);
    let proxy = rt.block_on(FaultProxy::start(upstream, plan)).unwrap();
    let proxy_url = format!("http://{}", proxy.addr);
    let agent_args = [
        "--name",
        "soak",
        "--point-interval",
        "1s",
        "--max-freeze",
        "5s",
        "--spool-limit",
        "512MiB",
        "--while-frozen",
        hook.as_str(),
    ];
    let mut agent = Agent::run(&dev.path, &spool, &agent_args);
    let slog = work.path().join("shipper.log");
    let mut ship = start_shipper(&shipper, &url, &key, &spool, &proxy_url, &slog);
    // Workload: fio random writes (when fio is there) and files fsynced.
    // --thread: fio's jobs are threads of the one process we stop (forked
    // job processes would outlive it and keep the filesystem busy).
    let fio = Fio(Command::new("fio")
        .args([
            "--name=soak",
            "--thread",
            &format!("--directory={}", m.path().display()),
        ])
        .args([
            "--rw=randwrite",
            "--bs=16k",
            "--size=48m",
            "--ioengine=psync",
            "--direct=1",
        ])
        .args([
            "--fsync=8",
            "--time_based",
            &format!("--runtime={}", secs + 60),
            "--rate=4m",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok());
    let stop = Arc::new(AtomicBool::new(false));
    let files = {
        let (stop, dir) = (stop.clone(), m.path().to_path_buf());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut f = std::fs::File::create(dir.join(format!("f{}", i % 200))).unwrap();
                f.write_all(&vec![(i % 251) as u8; 64 * 1024 + (i as usize * 4099) % 200_000])
                    .unwrap();
                f.sync_all().unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            i
        })
    };
    let t0 = Instant::now();
    let mut next_kill = t0 + kill_every;
    let (mut agent_kills, mut shipper_kills) = (0u32, 0u32);
    let mut shipper_exits: Vec<String> = Vec::new();
    let (mut max_rpo, mut max_freeze, mut spool_high) = (0f64, 0f64, 0u64);
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        spool_high = spool_high.max(du(&spool));
        if let Some(s) = agent.status() {
            max_freeze = max_freeze.max(s["last_freeze_ms"].as_f64().unwrap_or(0.0));
        }
        if let Ok(st) = hrl_shipper::ship::status::load(&spool) {
            for d in st.disks.values() {
                max_rpo = max_rpo.max(d.rpo_seconds.unwrap_or(0.0));
            }
        }
        // A shipper that stopped by itself is a finding: keep its log, and
        // restart it as systemd would so the soak goes on.
        if let Some(st) = ship.try_wait().unwrap() {
            let log = std::fs::read_to_string(&slog).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            shipper_exits.push(format!("{st}: {}", tail.join(" | ")));
            ship = start_shipper(&shipper, &url, &key, &spool, &proxy_url, &slog);
        }
        if Instant::now() >= next_kill {
            next_kill = Instant::now() + kill_every;
            if (agent_kills + shipper_kills) % 2 == 0 {
                agent.kill9();
                agent_kills += 1;
                agent = Agent::spawn_run(&dev.path, &spool, &agent_args);
            } else {
                let _ = ship.kill();
                let _ = ship.wait();
                shipper_kills += 1;
                ship = start_shipper(&shipper, &url, &key, &spool, &proxy_url, &slog);
            }
        }
    }
    // Wind down: workload off, a last point once the agent is in data
    // mode, agent stopped, faults off, the shipper catches up.
    stop.store(true, Ordering::Relaxed);
    let written = files.join().unwrap();
    drop(fio);
    assert!(
        shipper_exits.is_empty(),
        "the shipper stopped by itself: {shipper_exits:#?}"
    );
    let t = Instant::now();
    while !agent.status().is_some_and(|s| s["mode"] == "data") {
        if t.elapsed() > Duration::from_secs(300) {
            let log = std::fs::read_to_string(&slog).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "the disk did not return to data mode: {:?}\nshipper running: {:?}\nshipper log, newest first:\n{}",
                agent.status(),
                ship.try_wait().unwrap().is_none(),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let last = loop {
        let r = agent.point("soak", false);
        if r["ok"] == true {
            break r["seq"].as_u64().unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(agent.stop(), 0);
    let faults = proxy.counts();
    proxy.set_enabled(false);
    let verify = rt.block_on(Repo::open(&url, &key)).unwrap();
    let disk = rt.block_on(hrl_shipper::repo::manifest::list_disks(&verify)).unwrap()[0];
    let t = Instant::now();
    let points = loop {
        let p = rt
            .block_on(hrl_shipper::repo::manifest::list_points(&verify, &disk))
            .unwrap();
        // Periodic points may follow the last one asked for.
        if p.last().is_some_and(|&x| x >= last) {
            break p;
        }
        if t.elapsed() > Duration::from_secs(180) || ship.try_wait().unwrap().is_some() {
            let log = std::fs::read_to_string(&slog).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            let segs: Vec<String> = std::fs::read_dir(&spool)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            panic!(
                "the last point {last} was not published: {p:?}\nshipper exited: {:?}\nspool: {segs:?}\nshipper log (last lines, newest first):\n{}",
                ship.try_wait().unwrap(),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let catch_up = t.elapsed();
    let _ = ship.kill();
    let _ = ship.wait();
    // Verify: all points in a short run, an even sample plus the last in a
    // long one.
    let step = (points.len() / 60).max(1);
    let mut sample: Vec<u64> = points.iter().copied().step_by(step).collect();
    sample.extend(points.last());
    sample.dedup();
    let mut lost = 0;
    for &p in &sample {
        let img = work.path().join("v.img");
        let _ = std::fs::remove_file(&img);
        rt.block_on(restore(&verify, &disk, PointSel::Seq(p), &img, false))
            .unwrap();
        let got = run("sha256sum", &[img.to_str().unwrap()]);
        let want = std::fs::read_to_string(shas.join(p.to_string())).unwrap_or_default();
        if got.split_whitespace().next() != Some(want.trim()) {
            lost += 1;
            eprintln!("soak: point {p} differs from its frozen device");
        }
    }
    let c = rt.block_on(check(&verify, true)).unwrap();
    let line = format!(
        "SOAK {secs}s: kills agent {agent_kills} shipper {shipper_kills}; faults {} of {} requests; points published {} verified {} lost {lost}; max RPO {max_rpo:.1}s; max freeze {max_freeze:.0} ms; spool high-water {} MiB; catch-up after faults {:.1}s; {written} files written; check --read-data {} problems",
        faults.faults(),
        faults.requests,
        points.len(),
        sample.len(),
        spool_high >> 20,
        catch_up.as_secs_f64(),
        c.problems.len()
    );
    eprintln!("{line}");
    if let Ok(out) = std::env::var("HRL_SOAK_REPORT") {
        let _ = std::fs::write(out, format!("{line}\n"));
    }
    assert_eq!(lost, 0, "{line}");
    hrl_format::testutil::reliability_report(
        &format!("soak {secs}s (kill -9 every {}s, faults on)", kill_every.as_secs()),
        (agent_kills + shipper_kills) as u64,
        faults.faults() + (agent_kills + shipper_kills) as u64,
        sample.len() as u64,
        lost,
        &format!(
            "{} points published; max RPO {max_rpo:.1}s, max freeze {max_freeze:.0} ms (incl. a sha256 hook), spool high-water {} MiB",
            points.len(),
            spool_high >> 20
        ),
    );
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert!(agent_kills + shipper_kills >= 2, "the soak killed nothing");
    assert!(points.len() as u64 >= secs / 4, "too few points published: {line}");
}

hrl_testkit::tests!(RootAzurite: [soak_with_kills_and_endpoint_faults_loses_nothing]);
