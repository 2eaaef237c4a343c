//! Test support for root integration tests: loop devices, aligned I/O, a
//! running agent, and reading back what it tracked. Every resource is
//! released on drop (loop devices detached, agent stopped by its pid).
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hrl_format::{list_segments, read_segment, Extent, Lost, RangeSet, Record, RecoveryMode};

/// True when this test can run (root, loop devices, tracefs). Otherwise
/// prints why and returns false, or panics under CI=true.
pub fn require_root(test: &str) -> bool {
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("needs root")
    } else if !Path::new("/dev/loop-control").exists() {
        Some("needs loop devices (/dev/loop-control)")
    } else if !Path::new("/sys/kernel/tracing").exists() && !Path::new("/sys/kernel/debug/tracing").exists() {
        Some("needs tracefs")
    } else {
        None
    };
    match why {
        None => true,
        Some(w) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: {w}, and CI=true: root tests must run in CI");
            }
            eprintln!("SKIP {test}: {w}");
            false
        }
    }
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A loop device over a sparse file; detached on drop.
pub struct LoopDev {
    pub path: PathBuf,
    pub backing: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDev {
    pub fn new(size: u64, partscan: bool) -> Self {
        Self::with_backing(size, partscan, |_| {})
    }

    /// `prep` may write into the backing file before it is attached (a
    /// partition table).
    pub fn with_backing(size: u64, partscan: bool, prep: impl FnOnce(&File)) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hrl-test-")
            .tempdir_in("/dev/shm")
            .unwrap();
        let backing = dir.path().join("disk.img");
        let f = File::create(&backing).unwrap();
        f.set_len(size).unwrap();
        prep(&f);
        drop(f);
        let b = backing.to_str().unwrap();
        let mut args = vec!["--find", "--show"];
        if partscan {
            args.push("--partscan");
        }
        args.push(b);
        let path = PathBuf::from(run("losetup", &args));
        LoopDev {
            path,
            backing,
            _dir: dir,
        }
    }

    /// Partition `n` (start and length in 512-byte sectors). Kernels built
    /// without partition-table parsers (this project's CI kernel has no
    /// MSDOS or EFI parser) never scan the table, so the partition is then
    /// added with the BLKPG ioctl (`addpart`): a real kernel partition
    /// either way.
    pub fn part(&self, n: u32, start: u64, sectors: u64) -> PathBuf {
        let p = PathBuf::from(format!("{}p{n}", self.path.display()));
        let deadline = Instant::now() + Duration::from_millis(500);
        while !p.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !p.exists() {
            eprintln!(
                "partition table not scanned by this kernel; adding {} with BLKPG",
                p.display()
            );
            run(
                "addpart",
                &[
                    self.path.to_str().unwrap(),
                    &n.to_string(),
                    &start.to_string(),
                    &sectors.to_string(),
                ],
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(p.exists(), "{} did not appear", p.display());
        p
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A mounted filesystem; unmounted on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
    mounted: bool,
}

impl Mount {
    pub fn new(dev: &Path) -> Self {
        let dir = tempfile::Builder::new().prefix("hrl-mnt-").tempdir().unwrap();
        run("mount", &[dev.to_str().unwrap(), dir.path().to_str().unwrap()]);
        Mount { dir, mounted: true }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn umount(&mut self) {
        if self.mounted {
            run("umount", &[self.dir.path().to_str().unwrap()]);
            self.mounted = false;
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
    }
}

/// A page-aligned buffer for O_DIRECT.
pub struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    pub fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(4096), 4096).unwrap();
        // SAFETY: non-zero size layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, len }
    }
    pub fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    pub fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len.max(4096), 4096).unwrap();
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

/// Reads a whole device with O_DIRECT (no page-cache staleness).
pub fn image(dev: &Path) -> Vec<u8> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap();
    let size = device_size(dev);
    let mut out = vec![0u8; size as usize];
    let mut buf = Aligned::new(1 << 20);
    let mut off = 0u64;
    while off < size {
        let n = f.read_at(buf.as_mut(), off).unwrap();
        assert!(n > 0);
        out[off as usize..off as usize + n].copy_from_slice(&buf.as_ref()[..n]);
        off += n as u64;
    }
    out
}

pub fn device_size(dev: &Path) -> u64 {
    run("blockdev", &["--getsize64", dev.to_str().unwrap()])
        .parse()
        .unwrap()
}

/// Sectors (512 B) that differ between two images, as merged ranges.
pub fn changed(a: &[u8], b: &[u8]) -> RangeSet {
    assert_eq!(a.len(), b.len());
    let mut r = RangeSet::default();
    for (i, (x, y)) in a.chunks(512).zip(b.chunks(512)).enumerate() {
        if x != y {
            r.insert(i as u64 * 512, 512);
        }
    }
    r
}

/// A small deterministic PRNG (xorshift64*).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

pub const BLKDISCARD: libc::c_ulong = 0x1277;
pub const BLKZEROOUT: libc::c_ulong = 0x127f;

pub fn range_ioctl(f: &File, req: libc::c_ulong, off: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let r = [off, len];
    // SAFETY: both ioctls read two u64 from the pointer.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), req as _, r.as_ptr()) };
    assert_eq!(rc, 0, "ioctl {req:#x} {off}+{len}: {}", std::io::Error::last_os_error());
}

/// A running `hrl-agent track`; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Agent {
    pub child: Option<Child>,
    pub spool: PathBuf,
}

/// `hrl-agent SUB --device DEV --spool SPOOL EXTRA...`, stderr to the test's.
fn agent_cmd(sub: &str, dev: &Path, spool: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        sub,
        "--device",
        dev.to_str().unwrap(),
        "--spool",
        spool.to_str().unwrap(),
    ])
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    // Tests run side by side: each agent's metrics on a free port.
    if sub == "run" && !extra.contains(&"--metrics-listen") {
        cmd.args(["--metrics-listen", "127.0.0.1:0"]);
    }
    cmd
}

/// Makes a filesystem (`ext4` with eager init, so nothing writes behind
/// the test's back later, or `xfs`) on `dev`.
pub fn mkfs(fs: &str, dev: &Path) {
    match fs {
        "ext4" => run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                dev.to_str().unwrap(),
            ],
        ),
        _ => run("mkfs.xfs", &["-q", "-f", dev.to_str().unwrap()]),
    };
}

pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hrl-agent")
}

impl Agent {
    pub fn track(dev: &Path, spool: &Path, extra: &[&str]) -> Self {
        let mut cmd = agent_cmd("track", dev, spool, extra);
        let before = records(spool).len();
        let child = cmd.spawn().unwrap();
        let a = Agent {
            child: Some(child),
            spool: spool.into(),
        };
        a.wait_started(before);
        a
    }

    /// Tracking is on once this agent's instance exists and it has written
    /// its first record (Mode or Lost) after the `before` already there.
    fn wait_started(&self, before: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !instances_of(self.pid()).is_empty() && records(&self.spool).len() > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent did not start tracking within 20 s");
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        let mut c = self.child.take().expect("running");
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("agent did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_millis(300));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every record of every segment in the spool, in log order.
pub fn records(spool: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    let Ok(segs) = list_segments(spool, None) else {
        return out;
    };
    for s in segs {
        let _ = read_segment(&s.path, RecoveryMode::TolerateTornTail, |_, _, r| {
            out.push(r.clone());
            Ok(())
        });
    }
    out
}

/// The tracked set (all Extent ranges) and the Lost records of a spool.
pub fn tracked(spool: &Path) -> (RangeSet, Vec<Extent>, Vec<Lost>) {
    let mut set = RangeSet::default();
    let mut ext = Vec::new();
    let mut lost = Vec::new();
    for r in records(spool) {
        match r {
            Record::Extent(e) => {
                set.insert(e.offset, e.len);
                ext.push(e);
            }
            Record::Lost(l) => lost.push(l),
            _ => {}
        }
    }
    (set, ext, lost)
}

/// Asserts every byte of `inner` lies in `outer`; names the first that does not.
pub fn assert_subset(inner: &RangeSet, outer: &RangeSet, what: &str) {
    for (o, l) in inner.ranges() {
        // Check range ends and every 512-byte sector inside.
        let mut s = o;
        while s < o + l {
            assert!(outer.contains(s), "{what}: byte {s} (range {o}+{l}) is not covered");
            s += 512;
        }
    }
}

/// Tracefs instances whose name starts with hrl-agent-{pid}-.
pub fn instances_of(pid: i32) -> Vec<String> {
    let prefix = format!("hrl-agent-{pid}-");
    std::fs::read_dir("/sys/kernel/tracing/instances")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// A zram device of our own (hot_add), a bio-based block device; reset and
/// removed on drop. `None` (with the reason) when zram-control is missing.
pub struct ZramDev {
    pub path: PathBuf,
    pub num: u32,
}

impl ZramDev {
    pub fn new(size: u64) -> Result<Self, String> {
        let ctl = Path::new("/sys/class/zram-control/hot_add");
        let n = std::fs::read_to_string(ctl).map_err(|e| format!("{}: {e}", ctl.display()))?;
        let num: u32 = n.trim().parse().map_err(|_| format!("hot_add returned {n:?}"))?;
        let z = ZramDev {
            path: PathBuf::from(format!("/dev/zram{num}")),
            num,
        };
        std::fs::write(format!("/sys/block/zram{num}/disksize"), size.to_string())
            .map_err(|e| format!("zram{num} disksize: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !z.path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(z)
    }
}

impl Drop for ZramDev {
    fn drop(&mut self) {
        let _ = std::fs::write(format!("/sys/block/zram{}/reset", self.num), "1");
        let _ = std::fs::write("/sys/class/zram-control/hot_remove", self.num.to_string());
    }
}

impl Agent {
    /// Starts `hrl-agent run --device DEV --spool SPOOL ARGS...` and waits
    /// until the disk is in data mode (initial sync or resync done).
    pub fn run(dev: &Path, spool: &Path, extra: &[&str]) -> Self {
        let a = Self::spawn_run(dev, spool, extra);
        a.wait_mode("data", Duration::from_secs(120));
        a
    }

    /// Starts `hrl-agent run` without waiting for data mode (only until
    /// its control socket answers).
    pub fn spawn_run(dev: &Path, spool: &Path, extra: &[&str]) -> Self {
        let mut cmd = agent_cmd("run", dev, spool, extra);
        let child = cmd.spawn().unwrap();
        let mut a = Agent {
            child: Some(child),
            spool: spool.into(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if a.status().is_some() {
                return a;
            }
            if let Some(s) = a.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hrl-agent run exited early: {s}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("hrl-agent run: control socket did not answer within 30 s");
    }

    /// The status JSON of the first disk, if the agent answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let o = Command::new(agent_bin())
            .args(["status", "--json", "--spool", self.spool.to_str().unwrap()])
            .output()
            .ok()?;
        if !o.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        Some(v["disks"][0].clone())
    }

    pub fn wait_mode(&self, mode: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.status().is_some_and(|s| s["mode"] == mode) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("disk did not reach mode {mode} within {within:?}: {:?}", self.status());
    }

    /// `hrl-agent point --disk NAME`; returns the JSON answer.
    pub fn point(&self, disk: &str, app: bool) -> serde_json::Value {
        let mut args = vec![
            "point",
            "--json",
            "--disk",
            disk,
            "--spool",
            self.spool.to_str().unwrap(),
        ];
        if app {
            args.push("--app");
        }
        let o = Command::new(agent_bin()).args(&args).output().unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
            panic!("point: {}", String::from_utf8_lossy(&o.stderr));
        })
    }
}

/// sha256 of a file or device, read with O_DIRECT for devices.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dd if='{}' bs=4M iflag=direct status=none | sha256sum",
            path.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// sha256 of a regular file.
pub fn sha256_file(path: &Path) -> String {
    run("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A while-frozen hook that writes the device's sha256 (read with O_DIRECT:
/// the block device's page cache can be stale under a mounted filesystem)
/// to DIR/<point seq>.
pub fn sha_hook(dir: &Path) -> String {
    format!(
        "dd if=\"$HRL_DEVICE\" bs=4M iflag=direct status=none | sha256sum | cut -d' ' -f1 > '{}'/\"$HRL_POINT\"",
        dir.display()
    )
}

/// Replays `point` of the spool (or an archive of it) into a fresh image.
pub fn replay(dir: &Path, point: u64, image: &Path) {
    let _ = std::fs::remove_file(image);
    hrl_format::replay(dir, None, Some(point), image).unwrap_or_else(|e| panic!("replay of point {point}: {e}"));
}
