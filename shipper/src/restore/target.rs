//! Opening what a restore, failover or failback writes, so that a mistake
//! never makes an operator's bad day worse:
//!
//! * a block device is opened with `O_EXCL`: the kernel refuses it while a
//!   filesystem on it is mounted (or another exclusive holder has it);
//! * a block device an hrl-agent tracks is refused: the shipper takes the
//!   device lock (`hrl_common::devlock`) itself and holds it while it
//!   writes, so an agent cannot start on it meanwhile either;
//! * an existing non-empty file is refused unless `--force` (a failback
//!   target is expected to exist);
//! * an image file is created (or, with `--force`, left) mode 0600: it
//!   holds a disk.
//!
//! Each refusal names the target, the holder and what to do, and leaves
//! the target untouched.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hrl_common::pidlock::{LockError, PidLock};

use crate::error::{Result, ShipError};

/// What the command may do to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// restore, failover, test-failover: a new file, an empty file, or a
    /// device; an existing non-empty file only when `force`.
    Write { force: bool },
    /// failback: the existing device or image to bring back.
    Failback,
}

/// An open target; a device's lock is held as long as this lives.
pub struct Target {
    pub file: File,
    pub is_device: bool,
    /// The file did not exist, or was empty: it reads as zeros.
    pub fresh: bool,
    /// This open created the file (a failed restore removes it again).
    pub created: bool,
    _lock: Option<PidLock>,
}

fn usage(to: &Path, why: impl std::fmt::Display) -> ShipError {
    ShipError::Usage(format!("{}: {why}; nothing was written", to.display()))
}

/// Opens `to` for writing as `mode` allows, or refuses.
pub fn open(to: &Path, mode: Mode) -> Result<Target> {
    match std::fs::metadata(to) {
        Ok(md) if md.file_type().is_block_device() => open_device(to, md.rdev()),
        Ok(md) if md.is_file() => open_file(to, mode, md.len()),
        Ok(_) => Err(usage(to, "neither a block device nor a regular file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if mode == Mode::Failback {
                return Err(usage(
                    to,
                    "failback needs the existing device or image to bring back; use restore for a new target",
                ));
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(to)
                .map_err(|e| ShipError::io(to, "create restore target", e))?;
            Ok(Target {
                file,
                is_device: false,
                fresh: true,
                created: true,
                _lock: None,
            })
        }
        Err(e) => Err(ShipError::io(to, "stat restore target", e)),
    }
}

fn open_file(to: &Path, mode: Mode, len: u64) -> Result<Target> {
    if let Mode::Write { force: false } = mode {
        if len > 0 {
            return Err(usage(
                to,
                format!(
                    "the file exists and holds {len} bytes; restore writes a new image: give a new path, or --force to overwrite it"
                ),
            ));
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(to)
        .map_err(|e| ShipError::io(to, "open restore target", e))?;
    // A disk image is readable by its owner only, whoever made the file.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ShipError::io(to, "chmod 0600", e))?;
    Ok(Target {
        file,
        is_device: false,
        fresh: mode != Mode::Failback && len == 0,
        created: false,
        _lock: None,
    })
}

fn open_device(to: &Path, rdev: u64) -> Result<Target> {
    let (major, minor) = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
    let lock = take_device_lock(to, major, minor)?;
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(to)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let why = match mount_point(major, minor) {
                Some(m) => format!("the device is mounted on {} (unmount it first)", m.display()),
                None => "the device is in use (held open exclusively: a mount, a device-mapper or md holder); release it first".into(),
            };
            return Err(usage(to, why));
        }
        Err(e) => return Err(ShipError::io(to, "open restore target", e)),
    };
    Ok(Target {
        file,
        is_device: true,
        fresh: false,
        created: false,
        _lock: Some(lock),
    })
}

/// Takes the device lock, or refuses naming the agent that holds it.
fn take_device_lock(to: &Path, major: u64, minor: u64) -> Result<PidLock> {
    let dir = Path::new(hrl_common::devlock::LOCK_DIR);
    std::fs::create_dir_all(dir).map_err(|e| ShipError::io(dir, "create lock directory", e))?;
    let path: PathBuf = hrl_common::devlock::lock_path(dir, major, minor);
    match PidLock::acquire(&path) {
        Ok(l) => Ok(l),
        Err(LockError::Held(holder)) => {
            let by = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder}, lock {})", path.display())
            };
            Err(usage(
                to,
                format!("the device is tracked by an hrl-agent{by}: stop that agent (or remove the disk from its config) before writing the device"),
            ))
        }
        Err(LockError::Io(e)) => Err(ShipError::io(&path, "open device lock", e)),
    }
}

/// Where the device `major:minor` is mounted, from /proc/self/mountinfo.
fn mount_point(major: u64, minor: u64) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{major}:{minor}");
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && f[2] == want).then(|| PathBuf::from(f[4]))
    })
}
