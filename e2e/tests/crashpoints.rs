//! Crash matrix of the point protocol: the agent aborts (as a kill -9
//! would) before the freeze, inside it after the copy, after the tag is
//! appended (still frozen), and after the thaw. Each time: the filesystem
//! is writable again within max_freeze (the thaw guardian), the restarted
//! agent resyncs and takes a point, and every point the shipper publishes
//! restores to exactly the device hash taken inside its freeze. Needs root
//! and the `failpoints` feature (scripts/test.sh enables both).

#[cfg(not(feature = "failpoints"))]
fn crash_matrix_needs_the_failpoints_feature() {
    hrl_testkit::failpoints_missing("hrl-e2e/failpoints");
}

#[cfg(feature = "failpoints")]
fn a_crash_at_every_step_of_a_point_leaves_every_published_point_exact() {
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

    hrl_testkit::require(
        "a_crash_at_every_step_of_a_point_leaves_every_published_point_exact",
        Need::Root,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lines = Vec::new();
    let mut verified = 0u64;
    for fp in [
        "point-before-freeze",
        "point-frozen",
        "point-tag-written",
        "point-thawed",
    ] {
        let dev = LoopDev::new(96 << 20, false);
        mkfs("ext4", &dev.path);
        let m = Mount::new(&dev.path);
        let work = tempfile::tempdir_in("/dev/shm").unwrap();
        let spool = work.path().join("spool");
        let shas = work.path().join("shas");
        std::fs::create_dir_all(&shas).unwrap();
        let hook = sha_hook(&shas);
        let args = [
            "--name",
            "cp",
            "--point-interval",
            "0",
            "--max-freeze",
            "3s",
            "--while-frozen",
            hook.as_str(),
        ];
        let write = |name: &str| {
            let t = Instant::now();
            let mut f = std::fs::File::create(m.path().join(name)).unwrap();
            f.write_all(&vec![7u8; 300_000]).unwrap();
            f.sync_all().unwrap();
            t.elapsed()
        };
        std::env::set_var("FAILPOINTS", format!("{fp}=return"));
        let mut a = Agent::run(&dev.path, &spool, &args);
        std::env::remove_var("FAILPOINTS");
        write("before");
        let o = Command::new(agent_bin())
            .args(["point", "--json", "--disk", "cp", "--spool", spool.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{fp}: the point must not succeed: {:?}", o);
        // The agent aborted; this reaps it. The filesystem must be
        // writable again (the guardian thawed it).
        a.kill9();
        let stall = write("after-crash");
        assert!(
            stall < Duration::from_secs(4),
            "{fp}: a write waited {stall:?} after the crash"
        );
        let mut a = Agent::run(&dev.path, &spool, &args);
        write("after-restart");
        let r = a.point("cp", false);
        assert_eq!(r["ok"], true, "{fp}: point after restart: {r}");
        let last = r["seq"].as_u64().unwrap();
        assert_eq!(a.stop(), 0);
        let key = work.path().join("key");
        create_key_file(&key).unwrap();
        let url = format!("file://{}", work.path().join("repo").display());
        let published = rt.block_on(async {
            let repo = Repo::init(&url, &key, 65536, 4 << 20, 8).await.unwrap();
            let mut o = ShipOptions::new(&spool);
            o.once = true;
            ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
            let disk = hrl_shipper::repo::manifest::list_disks(&repo).await.unwrap()[0];
            let points = hrl_shipper::repo::manifest::list_points(&repo, &disk).await.unwrap();
            for &p in &points {
                let img = work.path().join(format!("p{p}.img"));
                restore(&repo, &disk, PointSel::Seq(p), &img, false).await.unwrap();
                let got = run("sha256sum", &[img.to_str().unwrap()]);
                let want = std::fs::read_to_string(shas.join(p.to_string())).unwrap();
                assert_eq!(
                    got.split_whitespace().next().unwrap(),
                    want.trim(),
                    "{fp}: point {p} differs from its frozen device"
                );
                std::fs::remove_file(&img).unwrap();
            }
            points
        });
        assert!(
            published.contains(&last),
            "{fp}: the point after the restart is published"
        );
        verified += published.len() as u64;
        lines.push(format!(
            "{fp}: write stall after crash {:.0} ms, published {published:?}, all exact",
            stall.as_secs_f64() * 1e3
        ));
    }
    eprintln!("crash matrix (agent): {}", lines.join("; "));
    hrl_format::testutil::reliability_report(
        "crash matrix: agent point protocol (4 failpoints)",
        lines.len() as u64,
        lines.len() as u64,
        verified,
        0,
        "filesystem writable at once after each crash; every published point equals its frozen hash",
    );
}

#[cfg(not(feature = "failpoints"))]
hrl_testkit::tests!(Nothing: [crash_matrix_needs_the_failpoints_feature]);
#[cfg(feature = "failpoints")]
hrl_testkit::tests!(Root: [a_crash_at_every_step_of_a_point_leaves_every_published_point_exact]);
