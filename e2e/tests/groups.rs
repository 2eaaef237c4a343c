//! Consistency groups, two agent processes on loopback, one filesystem
//! each: a workload writes record N to A, then to B; at every restored
//! group point B's last record is never ahead of A's, and each image equals
//! the device hash its while-frozen hook recorded. Killing the coordinator
//! or a member mid-point never leaves a filesystem frozen past max_freeze
//! and never publishes a partial group point.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrl_shipper::repo::{create_key_file, Repo};
use hrl_shipper::restore::PointSel;
use hrl_shipper::ship::{ship, ShipOptions};
use hrl_testkit::agent::*;
use hrl_testkit::sys::*;
use hrl_testkit::Need;

const MIB: u64 = 1 << 20;

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Fields drop in order: the agent first (it holds the mount open to
/// freeze it), then the mount, then the loop device, so a failed test
/// leaves nothing mounted or attached.
struct Member {
    agent: Option<Agent>,
    mount: Mount,
    dev: LoopDev,
    spool: PathBuf,
    shas: PathBuf,
    addr: String,
}

fn member(work: &Path, name: &str, key: &Path, max_freeze: &str) -> Member {
    let dev = LoopDev::new(128 * MIB, false);
    mkfs("ext4", &dev.path);
    let mount = Mount::new(&dev.path);
    let spool = work.join(format!("spool-{name}"));
    let shas = work.join(format!("shas-{name}"));
    std::fs::create_dir_all(&shas).unwrap();
    let addr = free_port();
    let hook = sha_hook(&shas);
    let agent = Agent::run(
        &dev.path,
        &spool,
        &[
            "--name",
            name,
            "--point-interval",
            "0",
            "--max-freeze",
            max_freeze,
            "--group",
            "app",
            "--group-listen",
            &addr,
            "--group-key",
            key.to_str().unwrap(),
            "--while-frozen",
            &hook,
        ],
    );
    Member {
        dev,
        mount,
        spool,
        shas,
        addr,
        agent: Some(agent),
    }
}

fn coordinator(key: &Path, members: &[&Member], extra: &[&str]) -> Child {
    let mut c = Command::new(agent_bin());
    c.args([
        "coordinate",
        "--group",
        "app",
        "--key-file",
        key.to_str().unwrap(),
        "--json",
    ]);
    for m in members {
        c.args(["--member", &m.addr]);
    }
    c.args(extra).stdout(Stdio::piped()).stderr(Stdio::inherit());
    c.spawn().unwrap()
}

/// A writer that appends "N\n" to A's file then B's, fsyncing each, and
/// records the longest time one write+fsync took (a frozen filesystem
/// blocks it).
struct Workload {
    stop: Arc<AtomicBool>,
    longest_us: Arc<AtomicU64>,
    t: Option<std::thread::JoinHandle<u64>>,
}

impl Workload {
    fn start(a: &Path, b: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let longest_us = Arc::new(AtomicU64::new(0));
        let (fa, fb) = (a.join("seq"), b.join("seq"));
        let (s, l) = (stop.clone(), longest_us.clone());
        let t = std::thread::spawn(move || {
            let mut a = std::fs::OpenOptions::new().create(true).append(true).open(fa).unwrap();
            let mut b = std::fs::OpenOptions::new().create(true).append(true).open(fb).unwrap();
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                for f in [&mut a, &mut b] {
                    let t0 = Instant::now();
                    f.write_all(format!("{n}\n").as_bytes()).unwrap();
                    f.sync_all().unwrap();
                    l.fetch_max(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        });
        Workload {
            stop,
            longest_us,
            t: Some(t),
        }
    }
    fn longest(&self) -> Duration {
        Duration::from_micros(self.longest_us.load(Ordering::Relaxed))
    }
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.t.take().unwrap().join().unwrap()
    }
}

/// The last number in `seq` of an ext4 image (mounted read-only).
fn last_record(image: &Path) -> u64 {
    let lo = run("losetup", &["--find", "--show", "--read-only", image.to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    let m = Command::new("mount")
        .args(["-o", "ro,noload", &lo, dir.path().to_str().unwrap()])
        .status()
        .unwrap();
    let mut text = String::new();
    if m.success() {
        if let Ok(mut f) = std::fs::File::open(dir.path().join("seq")) {
            f.read_to_string(&mut text).unwrap();
        }
        let _ = Command::new("umount").arg(dir.path()).status();
    }
    let _ = Command::new("losetup").args(["-d", &lo]).status();
    assert!(m.success(), "mount of {} failed", image.display());
    text.lines().rev().find_map(|l| l.parse().ok()).unwrap_or(0)
}

/// The disk id the agent gave a disk (its state file in the spool).
fn disk_id(spool: &Path, name: &str) -> uuid::Uuid {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(spool.join(format!("{name}.state.json"))).unwrap()).unwrap();
    v["disk_id"].as_str().unwrap().parse().unwrap()
}

fn sha256_file(p: &Path) -> String {
    run("sha256sum", &[p.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Ships both spools into one local repository.
fn ship_all(url: &str, key: &Path, spools: &[&Path]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let repo = Repo::open(url, key).await.unwrap();
        for s in spools {
            let mut o = ShipOptions::new(*s);
            o.once = true;
            ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
        }
    });
}

fn group_points_are_consistent_across_two_agents() {
    hrl_testkit::require("group_points_are_consistent_across_two_agents", Need::Root);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let gkey = work.path().join("group.key");
    run(agent_bin(), &["group-key", gkey.to_str().unwrap()]);
    let mut a = member(work.path(), "a", &gkey, "5s");
    let mut b = member(work.path(), "b", &gkey, "5s");
    let w = Workload::start(a.mount.path(), b.mount.path());
    std::thread::sleep(Duration::from_millis(300));
    let c = coordinator(
        &gkey,
        &[&a, &b],
        // The while-frozen hook hashes 128 MiB with O_DIRECT: 0.3 s idle, up
        // to 1.8 s seen on a loaded 2-core CI machine, so the deadline leaves room.
        &["--interval", "700ms", "--count", "10", "--deadline", "4500ms"],
    );
    let out = c.wait_with_output().unwrap();
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let written = w.finish();
    assert_eq!(results.len(), 10);
    assert!(out.status.success(), "coordinator: {results:?}");
    assert!(
        results.iter().all(|r| r["ok"] == true && r["members"] == 2),
        "{results:?}"
    );
    for m in [&mut a, &mut b] {
        assert_eq!(m.agent.as_mut().unwrap().stop(), 0);
    }
    let rkey = work.path().join("repo.key");
    create_key_file(&rkey).unwrap();
    let url = format!("file://{}", work.path().join("repo").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Repo::init(&url, &rkey, 65536, 4 << 20, 8)).unwrap();
    ship_all(&url, &rkey, &[&a.spool, &b.spool]);
    let repo = rt.block_on(Repo::open(&url, &rkey)).unwrap();
    let groups = rt.block_on(hrl_shipper::repo::groups::list(&repo, "app")).unwrap();
    assert_eq!(groups.len(), 10);
    assert!(groups.iter().all(|g| g.complete && g.members == 2));
    let mut pairs = Vec::new();
    for g in &groups {
        let dir = work.path().join(format!("restore-{}", g.seq));
        let reps = rt
            .block_on(hrl_shipper::restore::group::restore_group(
                &repo,
                "app",
                PointSel::Seq(g.seq),
                &dir,
            ))
            .unwrap();
        assert_eq!(reps.len(), 2);
        let mut last = [0u64; 2];
        for rep in &reps {
            let which = if rep.disk == disk_id(&a.spool, "a") { 0 } else { 1 };
            let shas = if which == 0 { &a.shas } else { &b.shas };
            let want = std::fs::read_to_string(shas.join(rep.point.to_string())).unwrap();
            assert_eq!(
                sha256_file(&rep.target),
                want.trim(),
                "group point {} member {which}: image differs from the frozen device",
                g.seq
            );
            last[which] = last_record(&rep.target);
        }
        assert!(
            last[1] <= last[0],
            "group point {}: B has record {} but A only {}",
            g.seq,
            last[1],
            last[0]
        );
        pairs.push((last[0], last[1]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let windows: Vec<f64> = results.iter().map(|r| r["window_ms"].as_f64().unwrap()).collect();
    eprintln!(
        "10 group points, both members restored to their frozen hashes; (A, B) last records: {pairs:?}; {written} records written; window ms {windows:.1?}"
    );
    hrl_format::testutil::reliability_report(
        "group points across two agents",
        10,
        0,
        20,
        0,
        "every member image equals its frozen hash; B's last record never ahead of A's",
    );
    assert!(
        pairs.iter().any(|&(x, _)| x > 0),
        "the workload wrote during the points"
    );
}

fn losing_the_coordinator_or_a_member_mid_point_thaws_and_publishes_nothing_partial() {
    hrl_testkit::require(
        "losing_the_coordinator_or_a_member_mid_point_thaws_and_publishes_nothing_partial",
        Need::Root,
    );
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let gkey = work.path().join("group.key");
    run(agent_bin(), &["group-key", gkey.to_str().unwrap()]);
    let max_freeze = Duration::from_secs(3);
    let mut a = member(work.path(), "a", &gkey, "3s");
    let mut b = member(work.path(), "b", &gkey, "3s");
    let w = Workload::start(a.mount.path(), b.mount.path());
    // 1. The coordinator dies between the barrier and the commit.
    let mut c = coordinator(
        &gkey,
        &[&a, &b],
        &["--count", "1", "--pause-frozen", "2500ms", "--deadline", "2s"],
    );
    std::thread::sleep(Duration::from_millis(1200));
    let _ = c.kill();
    let _ = c.wait();
    std::thread::sleep(Duration::from_millis(500));
    let stall_coordinator = w.longest();
    assert!(
        stall_coordinator < max_freeze,
        "after the coordinator died a write waited {stall_coordinator:?}: members must thaw when they lose it"
    );
    // 2. Member B dies inside the freeze.
    let mut c = coordinator(
        &gkey,
        &[&a, &b],
        &["--count", "1", "--pause-frozen", "1500ms", "--deadline", "2s"],
    );
    std::thread::sleep(Duration::from_millis(1000));
    b.agent.as_mut().unwrap().kill9();
    let out = {
        let mut s = String::new();
        c.stdout.take().unwrap().read_to_string(&mut s).unwrap();
        let _ = c.wait();
        s
    };
    std::thread::sleep(Duration::from_millis(500));
    let stall_member = w.longest();
    let written = w.finish();
    let r: serde_json::Value = serde_json::from_str(out.lines().next().expect("a result line")).unwrap();
    assert_eq!(r["ok"], false, "a group point with a dead member is not ok: {r}");
    assert!(
        stall_member < max_freeze + Duration::from_millis(500),
        "a write waited {stall_member:?}: longer than max_freeze"
    );
    eprintln!(
        "longest write stall: {stall_coordinator:?} after the coordinator died, {stall_member:?} overall with a member killed (max_freeze {max_freeze:?}); {written} records"
    );
    assert_eq!(a.agent.as_mut().unwrap().stop(), 0);
    // B restarts (a resync) and shuts down cleanly, so its spool is whole.
    drop(b.agent.take());
    let mut b2 = Agent::run(&b.dev.path, &b.spool, &["--name", "b", "--point-interval", "0"]);
    assert_eq!(b2.stop(), 0);
    let rkey = work.path().join("repo.key");
    create_key_file(&rkey).unwrap();
    let url = format!("file://{}", work.path().join("repo").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Repo::init(&url, &rkey, 65536, 4 << 20, 8)).unwrap();
    ship_all(&url, &rkey, &[&a.spool, &b.spool]);
    let repo = rt.block_on(Repo::open(&url, &rkey)).unwrap();
    let groups = rt.block_on(hrl_shipper::repo::groups::list(&repo, "app")).unwrap();
    // The coordinator died before any commit: no member wrote a group tag.
    // With B dead, A may have committed: an incomplete group point, never
    // offered for restore.
    assert!(groups.iter().all(|g| !g.complete), "{groups:?}");
    for g in &groups {
        let e = rt
            .block_on(hrl_shipper::restore::group::restore_group(
                &repo,
                "app",
                PointSel::Seq(g.seq),
                &work.path().join("x"),
            ))
            .unwrap_err()
            .to_string();
        assert!(e.contains("incomplete"), "{e}");
    }
    let latest = rt.block_on(hrl_shipper::restore::group::restore_group(
        &repo,
        "app",
        PointSel::Latest,
        &work.path().join("y"),
    ));
    assert!(latest.is_err(), "no complete group point may be restorable");
    eprintln!(
        "group points in the repository: {} (all incomplete, none restorable)",
        groups.len()
    );
    hrl_format::testutil::reliability_report(
        "group: coordinator and member killed mid-point",
        2,
        2,
        0,
        0,
        &format!(
            "longest write stall {:.0} ms then {:.0} ms (max_freeze 3 s); no partial group point restorable",
            stall_coordinator.as_secs_f64() * 1e3,
            stall_member.as_secs_f64() * 1e3
        ),
    );
}

/// Two disks of one agent in one group (from a config file): one freeze
/// window for both filesystems of the same process.
fn two_disks_of_one_agent_take_consistent_group_points() {
    hrl_testkit::require("two_disks_of_one_agent_take_consistent_group_points", Need::Root);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let gkey = work.path().join("group.key");
    run(agent_bin(), &["group-key", gkey.to_str().unwrap()]);
    let (da, db) = (LoopDev::new(96 * MIB, false), LoopDev::new(96 * MIB, false));
    mkfs("ext4", &da.path);
    mkfs("ext4", &db.path);
    let (ma, mb) = (Mount::new(&da.path), Mount::new(&db.path));
    let spool = work.path().join("spool");
    let (sha_a, sha_b) = (work.path().join("shas-a"), work.path().join("shas-b"));
    std::fs::create_dir_all(&sha_a).unwrap();
    std::fs::create_dir_all(&sha_b).unwrap();
    let addr = free_port();
    let cfg = work.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "spool = {spool:?}\npoint_interval = \"0\"\nmax_freeze = \"5s\"\nmetrics_listen = \"\"\n\
             [group]\nname = \"app\"\nlisten = {addr:?}\nkey_file = {gkey:?}\n\
             [[disk]]\nname = \"a\"\ndevice = {:?}\nwhile_frozen = {:?}\n\
             [[disk]]\nname = \"b\"\ndevice = {:?}\nwhile_frozen = {:?}\n",
            da.path,
            sha_hook(&sha_a),
            db.path,
            sha_hook(&sha_b)
        ),
    )
    .unwrap();
    let child = Command::new(agent_bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut agent = Agent {
        child: Some(child),
        spool: spool.clone(),
    };
    let t = Instant::now();
    loop {
        let o = Command::new(agent_bin())
            .args(["status", "--json", "--spool", spool.to_str().unwrap()])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let disks = v["disks"].as_array().cloned().unwrap_or_default();
        if disks.len() == 2 && disks.iter().all(|d| d["mode"] == "data") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "both disks in data mode: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let w = Workload::start(ma.path(), mb.path());
    let m = Member {
        dev: da,
        mount: ma,
        spool: spool.clone(),
        shas: sha_a.clone(),
        addr: addr.clone(),
        agent: None,
    };
    let c = coordinator(
        &gkey,
        &[&m],
        &["--interval", "600ms", "--count", "5", "--deadline", "4500ms"],
    );
    let out = c.wait_with_output().unwrap();
    w.finish();
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        results.len() == 5 && results.iter().all(|r| r["ok"] == true && r["members"] == 2),
        "{results:?}"
    );
    assert_eq!(agent.stop(), 0);
    let rkey = work.path().join("repo.key");
    create_key_file(&rkey).unwrap();
    let url = format!("file://{}", work.path().join("repo").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Repo::init(&url, &rkey, 65536, 4 << 20, 8)).unwrap();
    ship_all(&url, &rkey, &[&spool]);
    let repo = rt.block_on(Repo::open(&url, &rkey)).unwrap();
    let groups = rt.block_on(hrl_shipper::repo::groups::list(&repo, "app")).unwrap();
    assert_eq!(groups.len(), 5);
    let id_a = disk_id(&spool, "a");
    for g in &groups {
        assert!(g.complete, "{g:?}");
        let dir = work.path().join(format!("r-{}", g.seq));
        let reps = rt
            .block_on(hrl_shipper::restore::group::restore_group(
                &repo,
                "app",
                PointSel::Seq(g.seq),
                &dir,
            ))
            .unwrap();
        let mut last = [0u64; 2];
        for rep in &reps {
            let which = usize::from(rep.disk != id_a);
            let shas = if which == 0 { &sha_a } else { &sha_b };
            let want = std::fs::read_to_string(shas.join(rep.point.to_string())).unwrap();
            assert_eq!(
                sha256_file(&rep.target),
                want.trim(),
                "group point {} disk {which}",
                g.seq
            );
            last[which] = last_record(&rep.target);
        }
        assert!(
            last[1] <= last[0],
            "group point {}: B {} ahead of A {}",
            g.seq,
            last[1],
            last[0]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    drop(m);
    eprintln!("one agent, two disks: 5 group points, both images exact, order kept");
}

hrl_testkit::tests!(Root: [
    group_points_are_consistent_across_two_agents,
    losing_the_coordinator_or_a_member_mid_point_thaws_and_publishes_nothing_partial,
    two_disks_of_one_agent_take_consistent_group_points,
]);
