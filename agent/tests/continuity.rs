//! Root tests of continuity across a clean stop (docs/guarantees.md,
//! "Restart after a clean stop"): the reboot order (stop the agent, unmount,
//! mount, start) continues without a resync and the next point is exact;
//! a write made while the agent was stopped forces a resync when the
//! fingerprint can see it (through the filesystem, raw while mounted, raw
//! into a sampled chunk) and a clean fsck does not; a raw write into an
//! unsampled chunk of an
//! unmounted filesystem is the one it cannot see, and the test shows that
//! honestly; a kill -9 always resyncs.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hrl_format::{LossReason, Record};
use hrl_testkit::agent::*;
use hrl_testkit::sys::*;
use hrl_testkit::Need;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 256 * MIB;
const CHUNK: u64 = 64 << 10;

/// Files written and deleted under `dir` until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Load {
    fn start(dir: &Path, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s) = (dir.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            let mut i = seed;
            while !s.load(Ordering::Relaxed) {
                n += file_workload(&d, Instant::now() + Duration::from_millis(200), i, 30, 256 * 1024);
                i += 1;
            }
            n
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

struct Rig {
    dev: LoopDev,
    mnt: Mount,
    spool: tempfile::TempDir,
    shas: tempfile::TempDir,
    hook: String,
    disk: String,
}

impl Rig {
    fn new() -> Self {
        let dev = LoopDev::new(SIZE, false);
        mkfs("ext4", &dev.path);
        let mnt = Mount::new(&dev.path);
        let spool = tempfile::tempdir_in("/dev/shm").unwrap();
        let shas = tempfile::tempdir().unwrap();
        let hook = sha_hook(shas.path());
        let disk = dev.path.file_name().unwrap().to_string_lossy().into_owned();
        Rig {
            dev,
            mnt,
            spool,
            shas,
            hook,
            disk,
        }
    }

    fn start(&self) -> Agent {
        Agent::run(
            &self.dev.path,
            self.spool.path(),
            &[
                "--point-interval",
                "0",
                "--max-freeze",
                "10s",
                "--while-frozen",
                &self.hook,
            ],
        )
    }

    /// A point under load; its sequence.
    fn point_under_load(&mut self, a: &Agent, seed: u64) -> u64 {
        let load = Load::start(self.mnt.path(), seed);
        std::thread::sleep(Duration::from_secs(2));
        let p = a.point(&self.disk, false);
        let written = load.finish();
        assert_eq!(p["ok"], true, "{p}");
        eprintln!("point {} under a load that wrote {} KiB", p["seq"], written / 1024);
        p["seq"].as_u64().unwrap()
    }

    /// The reboot order after a clean stop: unmount, then mount again.
    fn stop_and_cycle_mount(&mut self, mut a: Agent) {
        assert_eq!(a.stop(), 0);
        self.mnt.umount();
        self.mnt.remount(&self.dev.path);
    }

    fn samples(&self) -> Vec<u64> {
        let st: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.spool.path().join(format!("{}.state.json", self.disk))).unwrap(),
        )
        .unwrap();
        let fp = &st["continuity"];
        assert!(fp.is_object(), "the clean stop recorded no fingerprint: {st}");
        fp["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[0].as_u64().unwrap())
            .collect()
    }

    /// Replays `seq` and compares it with the device's hash inside the freeze.
    fn replay_matches(&self, seq: u64) -> bool {
        let want = std::fs::read_to_string(self.shas.path().join(seq.to_string())).unwrap();
        let img = self.spool.path().join("replay.img");
        replay(self.spool.path(), seq, &img);
        let ok = sha256_file(&img) == want.trim();
        let _ = std::fs::remove_file(&img);
        ok
    }
}

/// Writes `blocks` x 4 KiB of random bytes into chunk `c`, bypassing any
/// filesystem.
fn raw_write(dev: &Path, c: u64, blocks: u64) {
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", dev.display()),
            "bs=4096",
            &format!("count={blocks}"),
            &format!("seek={}", c * CHUNK / 4096 + 3),
            "oflag=direct",
            "conv=notrunc",
            "status=none",
        ],
    );
}

fn start_reason(a: &Agent) -> (String, u64) {
    let st = a.status().expect("status");
    let start = st["start"].as_str().unwrap_or("").to_string();
    (start, st["capture_bytes"].as_u64().unwrap_or(u64::MAX))
}

/// The resync after a clean stop was forced, for `why`, and read everything.
fn assert_resynced(a: &Agent, why: &str) {
    let (start, read) = start_reason(a);
    eprintln!("start: {start}; read {} MiB", read / MIB);
    assert!(
        start.contains("resync reads every chunk") && start.contains(why),
        "start: {start:?}"
    );
    assert!(read >= SIZE, "a resync read only {read} bytes of {SIZE}");
}

fn a_clean_reboot_continues_without_a_resync_and_the_next_point_is_exact() {
    hrl_testkit::require(
        "a_clean_reboot_continues_without_a_resync_and_the_next_point_is_exact",
        Need::Root,
    );
    let mut r = Rig::new();
    let a = r.start();
    let p1 = r.point_under_load(&a, 1);
    // The reboot: services stop (the load has), the agent stops cleanly,
    // the filesystem is unmounted, then mounted again, the agent starts.
    r.stop_and_cycle_mount(a);
    let before = records(r.spool.path()).len();
    let a = r.start();
    let p2 = r.point_under_load(&a, 2);
    let (start, read) = start_reason(&a);
    eprintln!(
        "start: {start}; read {} KiB of a {} MiB device",
        read / 1024,
        SIZE / MIB
    );
    assert!(start.contains("no resync"), "start: {start:?}");
    assert!(
        read < SIZE / 4,
        "read {read} bytes after the restart: a full read is {SIZE}"
    );
    let lost = records(r.spool.path())[before..]
        .iter()
        .any(|x| matches!(x, Record::Lost(_)));
    assert!(!lost, "the restart recorded a loss");
    // Again, with the agent started before the mount (the mount is then
    // tracked, and the first point finds the filesystem to freeze).
    assert_eq!({ a }.stop(), 0);
    r.mnt.umount();
    let a = r.start();
    r.mnt.remount(&r.dev.path);
    let (start, _) = start_reason(&a);
    assert!(start.contains("no resync"), "start before the mount: {start:?}");
    let p3 = r.point_under_load(&a, 3);
    let st = a.status().unwrap();
    assert!(
        st["mount"].is_string(),
        "the mount made after the start was not found: {st}"
    );
    assert_eq!(st["last_point"]["kind"], "crash", "{st}");
    // A kill -9 always resyncs, whatever the stop before it.
    let mut a = a;
    a.kill9();
    let mut a = r.start();
    assert_resynced(&a, "unclean");
    let p4 = r.point_under_load(&a, 4);
    assert_eq!(a.stop(), 0);
    r.mnt.umount();
    for p in [p1, p2, p3, p4] {
        assert!(
            r.replay_matches(p),
            "point {p} does not replay to the device inside its freeze"
        );
    }
}

fn a_write_while_stopped_is_caught_except_a_raw_write_outside_the_sample() {
    hrl_testkit::require(
        "a_write_while_stopped_is_caught_except_a_raw_write_outside_the_sample",
        Need::Root,
    );
    let mut r = Rig::new();
    let a = r.start();
    r.point_under_load(&a, 10);
    // Through the mounted filesystem: the journal moves.
    assert_eq!({ a }.stop(), 0);
    std::fs::write(r.mnt.path().join("while-stopped"), b"written while no agent ran").unwrap();
    run("sync", &[]);
    r.mnt.umount();
    r.mnt.remount(&r.dev.path);
    let a = r.start();
    assert_resynced(&a, "journal moved");
    let reasons: Vec<LossReason> = records(r.spool.path())
        .iter()
        .filter_map(|x| if let Record::Lost(l) = x { Some(l.reason) } else { None })
        .collect();
    assert_eq!(reasons.last(), Some(&LossReason::Restart));
    let p = r.point_under_load(&a, 11);
    assert!(r.replay_matches(p));
    // Raw, while mounted, between the stop and the unmount: the lifetime
    // counter moves by more than a boot fsck's superblock write.
    assert_eq!({ a }.stop(), 0);
    let free = r.free_chunks();
    raw_write(&r.dev.path, free[0], 2);
    r.mnt.umount();
    r.mnt.remount(&r.dev.path);
    let a = r.start();
    assert_resynced(&a, "lifetime writes");
    // Raw, while mounted, between the mount and the start: more was
    // written since the mount than its superblock.
    assert_eq!({ a }.stop(), 0);
    r.mnt.umount();
    r.mnt.remount(&r.dev.path);
    raw_write(&r.dev.path, free[1], 1);
    let a = r.start();
    assert_resynced(&a, "since its mount");
    // A clean e2fsck -p between the unmount and the mount (a boot's fsck)
    // rewrites the superblock only: allowed.
    assert_eq!({ a }.stop(), 0);
    r.mnt.umount();
    run("e2fsck", &["-p", r.dev.path.to_str().unwrap()]);
    r.mnt.remount(&r.dev.path);
    let a = r.start();
    let (start, _) = start_reason(&a);
    assert!(start.contains("no resync"), "after a clean fsck: {start:?}");
    // Raw into a sampled chunk, unmounted: the sample catches it.
    assert_eq!({ a }.stop(), 0);
    r.mnt.umount();
    let samples = r.samples();
    let sampled = samples[samples.len() / 2];
    raw_write(&r.dev.path, sampled, 1);
    r.mnt.remount(&r.dev.path);
    let a = r.start();
    assert_resynced(&a, &format!("sampled chunk {sampled} changed"));
    // Raw into an unsampled free chunk, unmounted: invisible to every check
    // (docs/guarantees.md says so). The start continues; the point lacks
    // the write, in exactly that chunk.
    assert_eq!({ a }.stop(), 0);
    r.mnt.umount();
    let samples = r.samples();
    let blind = *r.free_chunks().iter().find(|c| !samples.contains(c)).unwrap();
    raw_write(&r.dev.path, blind, 1);
    r.mnt.remount(&r.dev.path);
    let a = r.start();
    let (start, _) = start_reason(&a);
    assert!(start.contains("no resync"), "start: {start:?}");
    let p = a.point(&r.disk, false);
    assert_eq!(p["ok"], true, "{p}");
    assert_eq!({ a }.stop(), 0);
    r.mnt.umount();
    let img = r.spool.path().join("replay.img");
    replay(r.spool.path(), p["seq"].as_u64().unwrap(), &img);
    let diff = changed(&image(&r.dev.path), &std::fs::read(&img).unwrap());
    let mut chunks: Vec<u64> = diff.ranges().map(|(o, _)| o / CHUNK).collect();
    chunks.dedup();
    eprintln!("raw write into unsampled chunk {blind} while unmounted: the point differs from the device in chunks {chunks:?}");
    // Chunk 0 holds the superblock, which the stop's thaw and the unmount
    // rewrote after the point.
    chunks.retain(|&c| c != 0);
    assert_eq!(
        chunks,
        vec![blind],
        "the point differs elsewhere than the unseen raw write"
    );
}

impl Rig {
    /// All-zero chunks in the last quarter of the device (free data blocks
    /// of the last block group), read with O_DIRECT.
    fn free_chunks(&self) -> Vec<u64> {
        let img = image(&self.dev.path);
        let chunks = SIZE / CHUNK;
        (chunks * 3 / 4..chunks - 1)
            .filter(|&c| {
                img[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize]
                    .iter()
                    .all(|&b| b == 0)
            })
            .collect()
    }
}

/// The fingerprint's ext4 reader against e2fsprogs on fresh images (no
/// root: a regular file): the journal's superblock where `debugfs` maps
/// the journal inode's block 0, an empty journal, and lazy init pending
/// exactly when mkfs left the inode tables unzeroed.
fn the_ext4_reader_agrees_with_debugfs() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let img = dir.path().join("fs.img");
    for (lazy, bs) in [(0, "4096"), (1, "4096"), (0, "1024")] {
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(96 * MIB).unwrap();
        drop(f);
        let opts = format!("lazy_itable_init={lazy},lazy_journal_init=0,nodiscard");
        run("mkfs.ext4", &["-q", "-F", "-b", bs, "-E", &opts, img.to_str().unwrap()]);
        let st = hrl_agent::continuity::ext4::read(&img)
            .unwrap()
            .expect("ext4 with an internal journal");
        let bmap = run("debugfs", &["-R", "bmap <8> 0", img.to_str().unwrap()]);
        let jblock: u64 = bmap.trim().parse().unwrap();
        assert_eq!(st.block_size, bs.parse::<u64>().unwrap());
        assert_eq!(st.journal_sb_offset, jblock * st.block_size, "lazy={lazy} bs={bs}");
        assert_eq!(st.journal_start, 0);
        assert_eq!(st.mount_count, 0);
        assert_eq!(st.lazy_init_pending, lazy == 1, "lazy={lazy} bs={bs}");
    }
    std::fs::write(&img, vec![0u8; 4 * MIB as usize]).unwrap();
    assert!(hrl_agent::continuity::ext4::read(&img).unwrap().is_none());
}

hrl_testkit::tests!(Nothing: [the_ext4_reader_agrees_with_debugfs], Root: [
    a_clean_reboot_continues_without_a_resync_and_the_next_point_is_exact,
    a_write_while_stopped_is_caught_except_a_raw_write_outside_the_sample,
]);
