//! Devices and filesystems for root tests: loop devices over sparse files,
//! partitions, zram, mounts, O_DIRECT images and hashes. Every resource is
//! released on drop (loop devices detached, filesystems unmounted), and
//! only what the test made is touched.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hrl_format::RangeSet;

/// Runs a command that must succeed; its trimmed stdout.
pub fn run(cmd: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let cmd = cmd.as_ref();
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", cmd.to_string_lossy()));
    assert!(
        o.status.success(),
        "{} {args:?} failed: {}",
        cmd.to_string_lossy(),
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
    /// Mounts `dev` again at the same place after [`Mount::umount`].
    pub fn remount(&mut self, dev: &Path) {
        if !self.mounted {
            run("mount", &[dev.to_str().unwrap(), self.dir.path().to_str().unwrap()]);
            self.mounted = true;
        }
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

// The names read like the slices they give in the tests that use them.
#[allow(clippy::should_implement_trait)]
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

pub const BLKDISCARD: libc::c_ulong = 0x1277;
pub const BLKZEROOUT: libc::c_ulong = 0x127f;

pub fn range_ioctl(f: &File, req: libc::c_ulong, off: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let r = [off, len];
    // SAFETY: both ioctls read two u64 from the pointer.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), req as _, r.as_ptr()) };
    assert_eq!(rc, 0, "ioctl {req:#x} {off}+{len}: {}", std::io::Error::last_os_error());
}
