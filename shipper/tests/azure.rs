//! Failover into Azure, against Azurite: a point of an ext4 disk restored
//! as a fixed VHD page blob, checked with independent tools (the Azure SDK
//! for Python downloads it and lists its pages, `qemu-img` reads it as a
//! VHD and compares it with a raw restore of the same point).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;

use hrl_shipper::azure::vhd;
use hrl_shipper::repo::{create_key_file, Repo};
use hrl_shipper::restore::{restore, PointSel};
use hrl_shipper::ship::{ship, ShipOptions};
use hrl_testkit::spool::{SpoolWriter, CHUNK};
use hrl_testkit::Rng;
use serde_json::Value;
use uuid::Uuid;

/// An ext4 image of `size` bytes holding random files, one file whose
/// 4 KiB blocks alternate between zeros and data, and empty space.
fn ext4_image(dir: &Path, size: u64) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    let mut rng = Rng::new(7);
    std::fs::write(src.join("etc/hostname"), b"web01\n").unwrap();
    std::fs::write(src.join("random.bin"), rng.bytes(3 << 20)).unwrap();
    let mut sparse = vec![0u8; 2 << 20];
    for (i, b) in sparse.chunks_mut(4096).enumerate() {
        if i % 2 == 1 {
            rng.fill(&mut b[..512]);
        }
    }
    std::fs::write(src.join("half-zero.bin"), sparse).unwrap();
    let img = dir.join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "nodiscard,lazy_itable_init=0", "-d"])
        .arg(&src)
        .arg(&img)
        .output()
        .expect("mkfs.ext4 (e2fsprogs; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// Appends every chunk of `img` to the spool, then a tag for point `seq`.
fn copy_point(w: &mut SpoolWriter, img: &[u8], seq: u64) {
    w.image(img);
    w.tag(seq, false);
}

/// The independent client (testkit/py/azure_blob.py, Azure SDK for Python).
fn py(args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/py/azure_blob.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "azure_blob.py {args:?} (needs azure-storage-blob: scripts/test.sh installs it into target/pydeps): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn blob_info(container: &str, blob: &str) -> Value {
    serde_json::from_slice(&py(&["info", container, blob]).stdout).unwrap()
}

fn qemu_img(args: &[&str]) -> Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (qemu-utils)")
}

fn shipper(repo: &str, key: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hrl-shipper"))
        .args(args)
        .args(["--repo", repo])
        .arg("--key-file")
        .arg(key)
        .output()
        .unwrap()
}

/// Checks a downloaded VHD against the raw restore of the same point, and
/// the blob's pages against the disk's data.
fn check_vhd(container: &str, blob: &str, raw: &Path, device_size: u64, dir: &Path) {
    let info = blob_info(container, blob);
    let virt = device_size.div_ceil(1 << 20) * (1 << 20);
    assert_eq!(info["blob_type"], "PageBlob", "{info}");
    assert_eq!(info["size"].as_u64(), Some(virt + 512), "N MiB + 512: {info}");
    let local = dir.join(format!("{}.vhd", blob.replace('/', "_")));
    py(&["download", container, blob, local.to_str().unwrap()]);
    let bytes = std::fs::read(&local).unwrap();
    assert_eq!(bytes.len() as u64, virt + 512);
    // Own check of the footer: cookie, type, checksum, size.
    let footer: [u8; 512] = bytes[virt as usize..].try_into().unwrap();
    assert_eq!(vhd::parse(&footer), Ok(virt));
    // qemu reads it as a fixed VHD of the right size, identical to raw.
    let out = qemu_img(&["info", "-f", "vpc", "--output", "json", local.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let qi: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(qi["virtual-size"].as_u64(), Some(virt), "{qi}");
    assert_eq!(qi["format"], "vpc");
    let out = qemu_img(&[
        "compare",
        "-f",
        "vpc",
        "-F",
        "raw",
        local.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Only non-zero data was written: every written sector holds a
    // non-zero byte, and the footer is the last range.
    let ranges = info["ranges"].as_array().unwrap();
    assert!(!ranges.is_empty());
    let mut written = 0u64;
    for r in ranges {
        let (s, e) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
        written += e - s;
        for sector in bytes[s as usize..e as usize].chunks(512) {
            assert!(
                sector.iter().any(|&b| b != 0),
                "a zero sector at or after {s} was written"
            );
        }
    }
    let raw_bytes = std::fs::read(raw).unwrap();
    let nonzero = raw_bytes.chunks(512).filter(|s| s.iter().any(|&b| b != 0)).count() as u64;
    assert_eq!(
        written,
        nonzero * 512 + 512,
        "written pages = non-zero sectors + footer"
    );
    assert!(written < device_size / 2, "most of the disk is empty and was not sent");
}

fn a_point_of_an_ext4_disk_becomes_a_fixed_vhd_page_blob() {
    hrl_testkit::block_on(vhd_restore());
}

async fn vhd_restore() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 48 MiB + 12 KiB: not a whole MiB, so the VHD rounds up.
    let size = (48 << 20) + 12288u64;
    let img_path = ext4_image(d, size);
    let mut img = std::fs::read(&img_path).unwrap();
    let spool = d.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let disk = Uuid::new_v4();
    let chunks = size.div_ceil(CHUNK as u64);
    let last = (size - (chunks - 1) * CHUNK as u64) as usize;
    let mut w = SpoolWriter::with_last_len(&spool, disk, chunks, last, 8 << 20, 3);
    copy_point(&mut w, &img, 1);
    // Point 2: some blocks changed (data where there were zeros too).
    let mut rng = Rng::new(11);
    for _ in 0..40 {
        let at = rng.below(size / 4096) as usize * 4096;
        rng.fill(&mut img[at..at + 4096]);
    }
    copy_point(&mut w, &img, 2);
    w.close();
    let container = format!("vhd-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let url = format!("az://{container}/repo");
    let key = d.join("key");
    create_key_file(&key).unwrap();
    let repo = Repo::init(&url, &key, CHUNK, 4 << 20, 4).await.unwrap();
    let mut o = ShipOptions::new(&spool);
    o.once = true;
    ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();

    for seq in [1u64, 2] {
        let raw = d.join(format!("raw-{seq}.img"));
        restore(&repo, &disk, PointSel::Seq(seq), &raw, false).await.unwrap();
        let blob = format!("web01/data-{seq}.vhd");
        let to = format!("az://{container}/{blob}");
        let out = shipper(&url, &key, &["restore", "--point", &seq.to_string(), "--to", &to]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&format!("restored point {seq}")) && said.contains(&to),
            "{said}"
        );
        check_vhd(&container, &blob, &raw, size, d);
    }
    assert_eq!(
        std::fs::read(d.join("raw-2.img")).unwrap(),
        img,
        "raw restore of point 2 is the image"
    );

    // An existing blob is refused (nothing written), --force overwrites it.
    let to = format!("az://{container}/web01/data-1.vhd");
    let before = blob_info(&container, "web01/data-1.vhd");
    let out = shipper(&url, &key, &["restore", "--point", "2", "--to", &to]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the blob exists"));
    assert_eq!(
        blob_info(&container, "web01/data-1.vhd"),
        before,
        "refused restore changed the blob"
    );
    let out = shipper(&url, &key, &["restore", "--point", "2", "--force", "--to", &to]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_vhd(&container, "web01/data-1.vhd", &d.join("raw-2.img"), size, d);
    // Test failover into a blob: the check sees the blob's URL, and the
    // blob is gone afterwards.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/py/azure_blob.py");
    let check = format!(
        "python3 {} info {container} ${{0#az://{container}/}} | grep -q PageBlob",
        script.display()
    );
    let check = format!("sh -c '{check}' {{}}");
    let to = format!("az://{container}/scratch/t.vhd");
    let out = shipper(
        &url,
        &key,
        &["test-failover", "--point", "1", "--to", &to, "--check", &check],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("PASSED"));
    let left: Value = serde_json::from_slice(&py(&["list", &container, "scratch/"]).stdout).unwrap();
    assert_eq!(left, serde_json::json!([]), "test-failover left its blob");
    // A target that is not NAME.vhd is refused before anything is written.
    let out = shipper(&url, &key, &["restore", "--to", &format!("az://{container}/x.img")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME.vhd"));
}

/// Writes `points` points into a live spool, one every `every`: random,
/// repeated and zero chunks over a 16 MiB disk.
fn live_spool(spool: PathBuf, disk: Uuid, points: u64, every: std::time::Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut w = SpoolWriter::new(&spool, disk, 256, 1 << 20, 5);
        for c in 0..256 {
            if c % 5 == 0 {
                w.zero(c);
            } else {
                w.random(c);
            }
        }
        for p in 1..=points {
            for _ in 0..48 {
                let c = w.any_chunk();
                match w.rng.below(4) {
                    0 => w.zero(c),
                    _ => w.random(c),
                }
            }
            w.tag(p, false);
            std::thread::sleep(every);
        }
        w.close();
    })
}

/// The standby's snapshots of `blob`: point -> snapshot id.
fn standby_snapshots(container: &str, blob: &str) -> std::collections::BTreeMap<u64, String> {
    let v: Value = serde_json::from_slice(&py(&["snapshots", container, blob]).stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let p = s["metadata"]["hrl_point"].as_str().unwrap().parse().unwrap();
            (p, s["snapshot"].as_str().unwrap().to_string())
        })
        .collect()
}

fn the_standby_keeps_a_snapshot_per_point_through_kill_9() {
    hrl_testkit::block_on(standby());
}

async fn standby() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spool = d.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let container = format!("sb-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let url = format!("az://{container}/repo");
    let key = d.join("key");
    create_key_file(&key).unwrap();
    let repo = Repo::init(&url, &key, CHUNK, 1 << 20, 4).await.unwrap();
    let disk = Uuid::new_v4();
    let points = 20u64;
    let writer = live_spool(spool.clone(), disk, points, std::time::Duration::from_millis(400));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let shipping = {
        let (repo, stop, spool) = (repo.clone(), stop.clone(), spool.clone());
        tokio::spawn(async move {
            let mut o = ShipOptions::new(&spool);
            o.poll = std::time::Duration::from_millis(50);
            ship(&repo, &o, &stop).await
        })
    };
    let to = format!("az://{container}/standby");
    let standby = |failpoint: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hrl-shipper"));
        c.args(["standby", "--repo", &url, "--to", &to, "--poll", "100ms"])
            .arg("--key-file")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if failpoint {
            // Crashes after a point's pages are written, before its
            // snapshot (a no-op without the failpoints feature).
            c.env("FAILPOINTS", "standby-before-snapshot=return");
        }
        c.spawn().unwrap()
    };
    // Wait for the first point, crash once at the failpoint, then kill -9
    // the standby at random moments while points keep coming.
    while hrl_shipper::repo::manifest::list_points(&repo, &disk)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(!shipping.is_finished(), "the shipper stopped before its first point");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut c = standby(true);
    let st = c.wait().unwrap();
    let blob = format!("standby/{disk}.vhd");
    if cfg!(feature = "failpoints") {
        // Point 1's pages are all written, its snapshot is not taken.
        assert!(!st.success(), "the failpoint did not stop the standby");
        assert!(standby_snapshots(&container, &blob).is_empty());
        assert_eq!(blob_info(&container, &blob)["metadata"]["hrl_applying"], "1");
    }
    let mut rng = Rng::new(17);
    let mut at_kill = Vec::new();
    for _ in 0..10 {
        let mut c = standby(false);
        tokio::time::sleep(std::time::Duration::from_millis(150 + rng.below(700))).await;
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        let _ = c.wait();
        let published = hrl_shipper::repo::manifest::list_points(&repo, &disk)
            .await
            .unwrap()
            .len();
        at_kill.push((standby_snapshots(&container, &blob).len(), published));
    }
    eprintln!("(snapshots, published points) at each kill: {at_kill:?}");
    writer.join().unwrap();
    while hrl_shipper::repo::manifest::list_points(&repo, &disk)
        .await
        .unwrap()
        .len()
        < points as usize
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    shipping.await.unwrap().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hrl-shipper"))
        .args(["standby", "--once", "--repo", &url, "--to", &to])
        .arg("--key-file")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Every point has its snapshot, equal to a raw restore of the point.
    let snaps = standby_snapshots(&container, &blob);
    assert_eq!(
        snaps.keys().copied().collect::<Vec<_>>(),
        (1..=points).collect::<Vec<_>>()
    );
    let size = 256 * CHUNK as u64;
    for (p, snap) in &snaps {
        let raw = d.join(format!("raw-{p}"));
        restore(&repo, &disk, PointSel::Seq(*p), &raw, false).await.unwrap();
        let got = d.join(format!("snap-{p}.vhd"));
        py(&["download", &container, &blob, got.to_str().unwrap(), snap]);
        let got = std::fs::read(&got).unwrap();
        let want = std::fs::read(&raw).unwrap();
        assert_eq!(got.len() as u64, size + 512);
        assert!(
            got[..size as usize] == want[..],
            "snapshot of point {p} differs from its restore"
        );
        assert_eq!(vhd::parse(&got[size as usize..].try_into().unwrap()), Ok(size));
    }

    // Failover from the standby: a copy of the snapshot, byte-identical.
    let target = format!("az://{container}/failover/p10.vhd");
    let out = shipper(
        &url,
        &key,
        &["restore", "--point", "10", "--standby", &to, "--to", &target],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let local = d.join("p10.vhd");
    py(&["download", &container, "failover/p10.vhd", local.to_str().unwrap()]);
    let raw10 = std::fs::read(d.join("raw-10")).unwrap();
    assert!(std::fs::read(&local).unwrap()[..size as usize] == raw10[..]);
    // The same copy again: the target exists, refused.
    let out = shipper(
        &url,
        &key,
        &["restore", "--point", "10", "--standby", &to, "--to", &target],
    );
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    // A point the standby has not (none: 99) is refused, nothing written.
    let out = shipper(
        &url,
        &key,
        &[
            "restore",
            "--point",
            "99",
            "--standby",
            &to,
            "--to",
            &format!("az://{container}/failover/x.vhd"),
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    // The standby's own blob is never a restore target, even with --force.
    let own = format!("az://{container}/{blob}");
    let out = shipper(&url, &key, &["restore", "--point", "1", "--force", "--to", &own]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("standby blob"));
    let out = shipper(
        &url,
        &key,
        &[
            "failover",
            "--yes",
            "--standby",
            &to,
            "--to",
            &format!("az://{container}/failover/latest.vhd"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("point {points}")));
}

#[path = "azure/plan.rs"]
mod plan;
use plan::a_recovery_plan_runs_its_groups_in_order_tests_clean_and_fails_over;
#[path = "azure/faults.rs"]
mod faults;
use faults::a_vhd_restore_and_the_standby_get_through_endpoint_faults;

hrl_testkit::tests!(Azurite: [
    a_vhd_restore_and_the_standby_get_through_endpoint_faults,
    a_recovery_plan_runs_its_groups_in_order_tests_clean_and_fails_over,
    a_point_of_an_ext4_disk_becomes_a_fixed_vhd_page_blob,
    the_standby_keeps_a_snapshot_per_point_through_kill_9,
]);
