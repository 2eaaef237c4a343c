//! kill -9 of the shipper at random moments during a long ship, 20 times:
//! the repository stays consistent, every point is published exactly once,
//! none is skipped, and every point restores byte-identical.

use std::process::{Command, Stdio};
use std::time::Duration;

use hrl_shipper::repo::{create_key_file, Repo};
use hrl_shipper::restore::{check, restore, PointSel};
use hrl_testkit::spool::{SpoolWriter, CHUNK};
use hrl_testkit::Rng;
use uuid::Uuid;

fn kill9_twenty_times_during_a_long_ship_loses_nothing_and_publishes_each_point_once() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let root = dir.path();
    let spool = root.join("spool");
    let archive = root.join("archive");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::create_dir_all(&archive).unwrap();
    let disk = Uuid::new_v4();
    let seqs = SpoolWriter::new(&spool, disk, 64, 2 << 20, 0x1234_5678).simple(400, 10);
    for s in hrl_format::list_segments(&spool, None).unwrap() {
        std::fs::copy(&s.path, archive.join(s.path.file_name().unwrap())).unwrap();
    }
    let url = format!("file://{}", root.join("repo").display());
    let key = root.join("key");
    create_key_file(&key).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Repo::init(&url, &key, CHUNK, 4 << 20, 8)).unwrap();
    let ship_cmd = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hrl-shipper"));
        c.args([
            "run",
            "--once",
            "--repo",
            &url,
            "--key-file",
            key.to_str().unwrap(),
            "--spool",
            spool.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        c
    };
    let mut rng = Rng::new(99);
    let mut killed_mid_ship = 0;
    for _ in 0..20 {
        let mut child = ship_cmd().spawn().unwrap();
        std::thread::sleep(Duration::from_millis(10 + rng.below(120)));
        if child.try_wait().unwrap().is_none() {
            killed_mid_ship += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let st = ship_cmd().status().unwrap();
    assert!(st.success(), "the final ship failed: {st}");
    eprintln!("{killed_mid_ship} of 20 kills landed while the shipper was running");
    assert!(
        killed_mid_ship >= 10,
        "the spool shipped too fast for the kills to test anything"
    );
    let repo = rt.block_on(Repo::open(&url, &key)).unwrap();
    let published = rt
        .block_on(hrl_shipper::repo::manifest::list_points(&repo, &disk))
        .unwrap();
    assert_eq!(published, seqs, "every point published, none skipped");
    let c = rt.block_on(check(&repo, true)).unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    // check --read-data above verified every chunk of every point; restore a
    // sample of points end to end (each restore loads every index object,
    // one per point, so all 400 would dominate the test's time).
    for &p in seqs.iter().filter(|&&p| p % 10 == 1 || p == *seqs.last().unwrap()) {
        let want = root.join("want");
        let got = root.join("got");
        let _ = std::fs::remove_file(&want);
        let _ = std::fs::remove_file(&got);
        hrl_format::replay(&archive, Some(disk), Some(p), &want).unwrap();
        rt.block_on(restore(&repo, &disk, PointSel::Seq(p), &got, false))
            .unwrap();
        assert!(
            std::fs::read(&want).unwrap() == std::fs::read(&got).unwrap(),
            "point {p} differs after the kills"
        );
    }
    assert!(
        hrl_format::list_segments(&spool, None).unwrap().is_empty(),
        "shipped segments are deleted"
    );
}

hrl_testkit::tests!(Nothing: [kill9_twenty_times_during_a_long_ship_loses_nothing_and_publishes_each_point_once]);
