//! Root integration tests of change tracking on loop devices: the traced
//! set must cover every sector that changed and nothing that was not
//! written. Run in CI (root); elsewhere they print why they skip.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;

use hrl_format::{ExtentOp, LossReason, RangeSet, Record};
use hrl_testkit::agent::*;
use hrl_testkit::sys::*;
use hrl_testkit::{Need, Rng};

const MIB: u64 = 1 << 20;

/// Random writes (512 B..1 MiB, O_DIRECT and buffered+fsync), discards and
/// write-zeroes on `dev`; returns the ranges issued (buffered ones rounded
/// out to 4 KiB: page-cache writeback writes whole pages).
fn random_workload(dev: &Path, size: u64, writes: usize, seed: u64) -> RangeSet {
    let mut rng = Rng(seed);
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap();
    let buffered = OpenOptions::new().write(true).open(dev).unwrap();
    let mut issued = RangeSet::default();
    let mut buf = Aligned::new(MIB as usize);
    for i in 0..writes {
        // Log-uniform size in sectors: 90% 512 B .. 64 KiB, 10% up to 1 MiB,
        // so that most of the device stays unwritten and a tracked range
        // that was never written would show.
        let sectors = 1u64
            << if rng.below(10) == 0 {
                7 + rng.below(5)
            } else {
                rng.below(8)
            };
        let sectors = (sectors + rng.below(sectors)).clamp(1, 2048);
        let len = sectors * 512;
        let off = rng.below((size - len) / 512) * 512;
        rng.fill(&mut buf.as_mut()[..len as usize]);
        if i % 2 == 0 {
            direct.write_all_at(&buf.as_ref()[..len as usize], off).unwrap();
            issued.insert(off, len);
        } else {
            buffered.write_all_at(&buf.as_ref()[..len as usize], off).unwrap();
            let s = off / 4096 * 4096;
            let e = (off + len).div_ceil(4096) * 4096;
            issued.insert(s, e - s);
            if i % 20 == 1 {
                buffered.sync_data().unwrap();
            }
        }
        if i % 50 == 0 {
            let l = (1 + rng.below(64)) * 4096;
            let o = rng.below((size - l) / 4096) * 4096;
            let req = if i % 100 == 0 { BLKDISCARD } else { BLKZEROOUT };
            buffered.sync_data().unwrap();
            range_ioctl(&buffered, req, o, l);
            issued.insert(o, l);
        }
    }
    buffered.sync_data().unwrap();
    issued
}

fn raw_device_random_writes_discards_and_zeroes_are_tracked_exactly() {
    hrl_testkit::require(
        "raw_device_random_writes_discards_and_zeroes_are_tracked_exactly",
        Need::Root,
    );
    let size = 2048 * MIB;
    let dev = LoopDev::new(size, false);
    // Start from non-zero content so discards and zeroes change bytes.
    {
        let f = OpenOptions::new().write(true).open(&dev.path).unwrap();
        let mut b = vec![0u8; MIB as usize];
        for i in 0..size / MIB {
            b.fill((i % 251 + 1) as u8);
            f.write_all_at(&b, i * MIB).unwrap();
        }
        f.sync_all().unwrap();
    }
    let spool = tempfile::tempdir().unwrap();
    let mut agent = Agent::track(&dev.path, spool.path(), &["--trace-buffer", "16MiB"]);
    let before = image(&dev.path);
    let issued = random_workload(&dev.path, size, 10_000, 0x9e37_79b9_7f4a_7c15);
    let after = image(&dev.path);
    let pid = agent.pid();
    assert_eq!(agent.stop(), 0);
    assert!(instances_of(pid).is_empty(), "tracefs instance left behind");
    let (tracked, extents, lost) = tracked(spool.path());
    assert!(lost.is_empty(), "unexpected loss: {lost:?}");
    let diff = changed(&before, &after);
    eprintln!(
        "changed {} bytes, tracked {} bytes in {} extents, issued {} bytes",
        diff.covered(),
        tracked.covered(),
        extents.len(),
        issued.covered()
    );
    assert!(
        diff.covered() > 100 * MIB,
        "workload changed too little to mean anything"
    );
    assert_subset(&diff, &tracked, "changed sector not tracked");
    assert_subset(&tracked, &issued, "tracked range never written");
    assert!(
        extents.iter().any(|e| e.op == ExtentOp::Discard),
        "no discard extent recorded"
    );
    assert!(
        extents.iter().any(|e| e.op == ExtentOp::WriteZeroes),
        "no write-zeroes extent recorded"
    );
    let flushes = records(spool.path())
        .iter()
        .filter(|r| matches!(r, Record::Flush(_)))
        .count();
    assert!(flushes > 0, "fsync flushes not recorded");
}

fn ext4_file_workload_is_tracked() {
    hrl_testkit::require("ext4_file_workload_is_tracked", Need::Root);
    let size = 256 * MIB;
    let dev = LoopDev::new(size, false);
    mkfs("ext4", &dev.path);
    let spool = tempfile::tempdir().unwrap();
    let mut agent = Agent::track(&dev.path, spool.path(), &["--trace-buffer", "16MiB"]);
    let before = image(&dev.path);
    {
        let mut m = Mount::new(&dev.path);
        let mut rng = Rng(42);
        let mut buf = vec![0u8; 256 * 1024];
        for i in 0..400u64 {
            let d = m.path().join(format!("d{}", i % 7));
            std::fs::create_dir_all(&d).unwrap();
            let p = d.join(format!("f{i}"));
            let len = 1 + rng.below(buf.len() as u64) as usize;
            rng.fill(&mut buf[..len]);
            let f = std::fs::File::create(&p).unwrap();
            f.write_all_at(&buf[..len], 0).unwrap();
            if i % 3 == 0 {
                f.sync_all().unwrap();
            }
            if i % 5 == 0 && i > 0 {
                let _ = std::fs::remove_file(d.join(format!("f{}", i - 5)));
            }
            if i % 11 == 0 {
                f.write_all_at(b"overwrite", (len / 2) as u64).unwrap();
                let _ = std::fs::rename(&p, d.join(format!("r{i}")));
            }
        }
        m.umount();
    }
    let after = image(&dev.path);
    assert_eq!(agent.stop(), 0);
    let (tracked, _, lost) = tracked(spool.path());
    assert!(lost.is_empty(), "unexpected loss: {lost:?}");
    let diff = changed(&before, &after);
    eprintln!(
        "ext4: changed {} bytes, tracked {} bytes",
        diff.covered(),
        tracked.covered()
    );
    assert!(diff.covered() > 10 * MIB);
    assert_subset(&diff, &tracked, "changed ext4 sector not tracked");
    assert!(tracked.covered() < size / 2, "tracked far more than the workload wrote");
}

/// A DOS partition table with two primary partitions (start, sectors).
fn mbr(f: &std::fs::File, parts: &[(u32, u32)]) {
    let mut s = [0u8; 512];
    for (i, (start, n)) in parts.iter().enumerate() {
        let e = 446 + i * 16;
        s[e + 4] = 0x83;
        s[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        s[e + 12..e + 16].copy_from_slice(&n.to_le_bytes());
    }
    s[510] = 0x55;
    s[511] = 0xaa;
    f.write_all_at(&s, 0).unwrap();
}

fn one_partition_of_a_partitioned_loop_device_is_tracked_in_its_own_offsets() {
    hrl_testkit::require(
        "one_partition_of_a_partitioned_loop_device_is_tracked_in_its_own_offsets",
        Need::Root,
    );
    let p1 = (2048u32, 100 * 2048u32);
    let p2 = (2048 + 100 * 2048 + 2048, 100 * 2048u32);
    let dev = LoopDev::with_backing(256 * MIB, true, |f| mbr(f, &[p1, p2]));
    let (d1, d2) = (
        dev.part(1, p1.0 as u64, p1.1 as u64),
        dev.part(2, p2.0 as u64, p2.1 as u64),
    );
    let spool = tempfile::tempdir().unwrap();
    let mut agent = Agent::track(&d2, spool.path(), &[]);
    let before = image(&d2);
    // Writes to the other partition and to the whole disk outside p2 must
    // not show; writes to p2 (directly, and through the whole disk) must.
    let mut rng = Rng(3);
    let mut buf = Aligned::new(MIB as usize);
    let f1 = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&d1)
        .unwrap();
    let f2 = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&d2)
        .unwrap();
    let fw = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&dev.path)
        .unwrap();
    let mut issued = RangeSet::default();
    let psize = p2.1 as u64 * 512;
    for i in 0..600 {
        let len = (1 + rng.below(64)) * 4096;
        let off = rng.below((psize - len) / 4096) * 4096;
        rng.fill(&mut buf.as_mut()[..len as usize]);
        match i % 3 {
            0 => f1.write_all_at(&buf.as_ref()[..len as usize], off).unwrap(),
            1 => {
                f2.write_all_at(&buf.as_ref()[..len as usize], off).unwrap();
                issued.insert(off, len);
            }
            _ => {
                fw.write_all_at(&buf.as_ref()[..len as usize], p2.0 as u64 * 512 + off)
                    .unwrap();
                issued.insert(off, len);
            }
        }
    }
    let after = image(&d2);
    assert_eq!(agent.stop(), 0);
    let (tracked, _, lost) = tracked(spool.path());
    assert!(lost.is_empty());
    let diff = changed(&before, &after);
    eprintln!(
        "partition: changed {} tracked {} issued {}",
        diff.covered(),
        tracked.covered(),
        issued.covered()
    );
    assert!(diff.covered() > 5 * MIB);
    assert_subset(&diff, &tracked, "changed partition sector not tracked");
    assert_subset(&tracked, &issued, "tracked a range never written to p2");
}

fn overrunning_the_ring_buffer_writes_a_lost_record() {
    hrl_testkit::require("overrunning_the_ring_buffer_writes_a_lost_record", Need::Root);
    let dev = LoopDev::new(128 * MIB, false);
    let spool = tempfile::tempdir().unwrap();
    // A tiny buffer and a consumer that reads every 3 s.
    let mut agent = Agent::track(
        &dev.path,
        spool.path(),
        &["--trace-buffer", "8KiB", "--poll-ms", "3000"],
    );
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&dev.path)
        .unwrap();
    let buf = Aligned::new(4096);
    let mut rng = Rng(11);
    for _ in 0..20_000 {
        f.write_all_at(buf.as_ref(), rng.below(128 * 256) * 4096).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(3500));
    assert_eq!(agent.stop(), 0);
    let (_, _, lost) = tracked(spool.path());
    assert!(!lost.is_empty(), "20,000 writes through an 8 KiB buffer lost nothing?");
    assert!(lost
        .iter()
        .all(|l| l.reason == LossReason::Overrun && l.range.is_none()));
    let recs = records(spool.path());
    let i = recs.iter().position(|r| matches!(r, Record::Lost(_))).unwrap();
    assert!(
        matches!(recs.get(i + 1), Some(Record::Mode(m)) if m.mode == hrl_format::DiskMode::Resync),
        "a Lost record must put the disk in resync"
    );
}

fn drain_returns_every_completion_before_the_call() {
    hrl_testkit::require("drain_returns_every_completion_before_the_call", Need::Root);
    use hrl_agent::tracking::tracker::{Change, ChangeSource, SourceEvent, TraceSource};
    let dev = LoopDev::new(64 * MIB, false);
    let bd = hrl_agent::tracking::device::BlockDevice::open(&dev.path).unwrap();
    let tfs = hrl_agent::tracking::tracefs::Tracefs::locate_or_mount().unwrap();
    let mut src = TraceSource::start(&tfs, &bd, 4096).unwrap();
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&dev.path)
        .unwrap();
    let buf = Aligned::new(65536);
    let mut rng = Rng(5);
    let mut issued = RangeSet::default();
    for _ in 0..2000 {
        let len = (1 + rng.below(16)) * 4096;
        let off = rng.below((64 * MIB - len) / 4096) * 4096;
        f.write_all_at(&buf.as_ref()[..len as usize], off).unwrap();
        issued.insert(off, len);
    }
    let mut out = Vec::new();
    src.drain(&mut out).unwrap();
    let mut got = RangeSet::default();
    for e in &out {
        match e {
            SourceEvent::Change(Change::Extent { offset, len, .. }) => got.insert(*offset, *len),
            SourceEvent::Lost(d) => panic!("loss: {d}"),
            _ => {}
        }
    }
    assert_subset(&issued, &got, "write not returned by one drain");
    assert_subset(&got, &issued, "drain returned a range never written");
    let name = src.instance_name().to_string();
    drop(src);
    assert!(!Path::new("/sys/kernel/tracing/instances").join(name).exists());
}

fn agent_cmd(args: &[&str]) -> (i32, String) {
    let o = Command::new(agent_bin()).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn refuses_a_file_that_is_not_a_block_device() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("plain");
    std::fs::write(&f, b"x").unwrap();
    let (c, err) = agent_cmd(&[
        "track",
        "--device",
        f.to_str().unwrap(),
        "--spool",
        d.path().to_str().unwrap(),
    ]);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("not a block device"), "{err}");
    let (c, err) = agent_cmd(&["track", "--device", "/dev/does-not-exist", "--spool", "/tmp"]);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("/dev/does-not-exist"), "{err}");
}

fn refuses_a_spool_on_the_tracked_device_and_a_second_agent() {
    hrl_testkit::require("refuses_a_spool_on_the_tracked_device_and_a_second_agent", Need::Root);
    let dev = LoopDev::new(64 * MIB, false);
    run("mkfs.ext4", &["-q", "-F", dev.path.to_str().unwrap()]);
    let m = Mount::new(&dev.path);
    let inside = m.path().join("spool");
    let (c, err) = agent_cmd(&[
        "track",
        "--device",
        dev.path.to_str().unwrap(),
        "--spool",
        inside.to_str().unwrap(),
    ]);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("is on the tracked device"), "{err}");
    assert!(!inside.exists(), "a refused agent leaves no spool directory");
    let spool = tempfile::tempdir().unwrap();
    let _a = Agent::track(&dev.path, spool.path(), &[]);
    let spool2 = tempfile::tempdir().unwrap();
    let spool2 = spool2.path().join("new");
    let (c, err) = agent_cmd(&[
        "track",
        "--device",
        dev.path.to_str().unwrap(),
        "--spool",
        spool2.to_str().unwrap(),
    ]);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("already tracked"), "{err}");
    assert!(!spool2.exists(), "a refused agent leaves no spool directory");
}

fn restart_is_a_loss_and_stale_instances_are_removed() {
    hrl_testkit::require("restart_is_a_loss_and_stale_instances_are_removed", Need::Root);
    let dev = LoopDev::new(64 * MIB, false);
    let spool = tempfile::tempdir().unwrap();
    let mut a = Agent::track(&dev.path, spool.path(), &[]);
    let pid = a.pid();
    a.kill9();
    assert_eq!(instances_of(pid).len(), 1, "a killed agent leaves its instance");
    let mut b = Agent::track(&dev.path, spool.path(), &[]);
    assert!(
        instances_of(pid).is_empty(),
        "stale instance of dead pid {pid} not removed"
    );
    assert_eq!(b.stop(), 0);
    let recs = records(spool.path());
    let lost: Vec<_> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Lost(l) => Some(l.reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        lost,
        vec![LossReason::Unclean],
        "kill -9 then restart must record an unclean loss"
    );
    // A clean stop then restart records a Restart loss.
    let mut c = Agent::track(&dev.path, spool.path(), &[]);
    assert_eq!(c.stop(), 0);
    let n = records(spool.path())
        .iter()
        .filter(|r| matches!(r, Record::Lost(l) if l.reason == LossReason::Restart))
        .count();
    assert_eq!(n, 1);
    hrl_format::list_segments(spool.path(), None)
        .unwrap()
        .iter()
        .for_each(|s| {
            hrl_format::read_segment(&s.path, hrl_format::RecoveryMode::AbsoluteConsistency, |_, _, _| Ok(()))
                .expect("every segment whole after recovery");
        });
}

fn bio_based_device_is_tracked_through_block_bio_complete() {
    hrl_testkit::require("bio_based_device_is_tracked_through_block_bio_complete", Need::Root);
    let z = match ZramDev::new(256 * MIB) {
        Ok(z) => z,
        Err(why) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("no bio-based device to test with: {why}");
            }
            eprintln!("SKIP bio_based_device_is_tracked_through_block_bio_complete: {why}");
            return;
        }
    };
    let bd = hrl_agent::tracking::device::BlockDevice::open(&z.path).unwrap();
    assert!(!bd.request_based, "zram is expected to be bio-based");
    assert_eq!(bd.trace_target().event, "block_bio_complete");
    let spool = tempfile::tempdir().unwrap();
    let mut agent = Agent::track(&z.path, spool.path(), &[]);
    let before = image(&z.path);
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&z.path)
        .unwrap();
    let mut buf = Aligned::new(MIB as usize);
    let mut rng = Rng(17);
    let mut issued = RangeSet::default();
    for _ in 0..500 {
        let len = (1 + rng.below(32)) * 4096;
        let off = rng.below((256 * MIB - len) / 4096) * 4096;
        rng.fill(&mut buf.as_mut()[..len as usize]);
        f.write_all_at(&buf.as_ref()[..len as usize], off).unwrap();
        issued.insert(off, len);
    }
    let after = image(&z.path);
    assert_eq!(agent.stop(), 0);
    let (tracked, _, lost) = tracked(spool.path());
    assert!(lost.is_empty());
    let diff = changed(&before, &after);
    eprintln!(
        "zram: changed {} tracked {} issued {}",
        diff.covered(),
        tracked.covered(),
        issued.covered()
    );
    assert!(diff.covered() > MIB);
    assert_subset(&diff, &tracked, "changed zram sector not tracked");
    assert_subset(&tracked, &issued, "tracked a zram range never written");
}

hrl_testkit::tests!(
    Root: [
        raw_device_random_writes_discards_and_zeroes_are_tracked_exactly,
        ext4_file_workload_is_tracked,
        one_partition_of_a_partitioned_loop_device_is_tracked_in_its_own_offsets,
        overrunning_the_ring_buffer_writes_a_lost_record,
        drain_returns_every_completion_before_the_call,
        refuses_a_spool_on_the_tracked_device_and_a_second_agent,
        restart_is_a_loss_and_stale_instances_are_removed,
        bio_based_device_is_tracked_through_block_bio_complete,
    ],
    Nothing: [refuses_a_file_that_is_not_a_block_device],
);
