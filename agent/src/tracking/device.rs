//! The tracked block device: identity, geometry, and where its completions
//! show up in the kernel's block tracepoints.
//!
//! Request-based (blk-mq) devices report `block_rq_complete` with the
//! *whole disk's* dev and an absolute sector, also for I/O to a partition.
//! Bio-based devices report `block_bio_complete` with the dev of the block
//! device the bio was submitted to (a partition's own dev) and the absolute
//! sector after partition remapping. [`BlockDevice::trace_target`] builds a
//! filter and a translation that give offsets within the tracked device in
//! both cases.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_read_bad!(blksszget, 0x1268, libc::c_int);

/// A kernel device number as (major, minor).
pub type DevNum = (u32, u32);

/// The kernel's in-trace encoding of a dev_t: `(major << 20) | minor`.
pub fn trace_dev(d: DevNum) -> u32 {
    (d.0 << 20) | d.1
}

fn devnum(rdev: u64) -> DevNum {
    (libc::major(rdev), libc::minor(rdev))
}

/// A block device to track.
#[derive(Debug, Clone)]
pub struct BlockDevice {
    /// The path as given.
    pub path: PathBuf,
    /// Kernel name (`loop3`, `loop3p2`, `vdb`).
    pub name: String,
    pub dev: DevNum,
    /// The whole disk this device is or belongs to.
    pub whole: DevNum,
    pub whole_name: String,
    /// Partition start in 512-byte sectors (0 for a whole disk).
    pub start_sector: u64,
    pub size: u64,
    pub logical_block_size: u32,
    /// blk-mq device (completions in `block_rq_complete`).
    pub request_based: bool,
    /// Partitions of the whole disk, when tracking a whole disk.
    pub partitions: Vec<DevNum>,
}

fn read_sys(p: &Path) -> Result<String> {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(|e| AgentError::io(p, "read", e))
}

fn parse_devnum(s: &str) -> Option<DevNum> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl BlockDevice {
    /// Opens and describes the block device at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| AgentError::io(path, "stat", e))?;
        if !meta.file_type().is_block_device() {
            return Err(AgentError::NotBlockDevice { path: path.into() });
        }
        let dev = devnum(meta.rdev());
        let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", dev.0, dev.1));
        let real = std::fs::canonicalize(&sys).map_err(|e| AgentError::io(&sys, "resolve", e))?;
        let name = real
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let is_part = real.join("partition").exists();
        let (whole_dir, start_sector) = if is_part {
            let parent = real.parent().map(Path::to_path_buf).unwrap_or_default();
            let start: u64 = read_sys(&real.join("start"))?
                .parse()
                .map_err(|_| AgentError::Config(format!("{}: bad partition start", real.display())))?;
            (parent, start)
        } else {
            (real.clone(), 0)
        };
        let whole = parse_devnum(&read_sys(&whole_dir.join("dev"))?)
            .ok_or_else(|| AgentError::Config(format!("{}: bad dev", whole_dir.display())))?;
        let whole_name = whole_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let request_based = whole_dir.join("mq").exists();
        let mut partitions = Vec::new();
        if !is_part {
            if let Ok(rd) = std::fs::read_dir(&whole_dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.join("partition").exists() {
                        if let Some(d) = read_sys(&p.join("dev")).ok().as_deref().and_then(parse_devnum) {
                            partitions.push(d);
                        }
                    }
                }
            }
        }
        let (size, logical_block_size) = geometry(path)?;
        Ok(BlockDevice {
            path: path.into(),
            name,
            dev,
            whole,
            whole_name,
            start_sector,
            size,
            logical_block_size,
            request_based,
            partitions,
        })
    }

    /// Size in bytes now (to notice a resize).
    pub fn current_size(&self) -> Result<u64> {
        Ok(geometry(&self.path)?.0)
    }

    /// Whether a file or directory at `p` lives on this device (or, for a
    /// whole disk, on one of its partitions).
    pub fn contains_path(&self, p: &Path) -> Result<bool> {
        let st = std::fs::metadata(p).map_err(|e| AgentError::io(p, "stat", e))?;
        let on = devnum(st.dev());
        if on == self.dev {
            return Ok(true);
        }
        if self.partitions.contains(&on) {
            return Ok(true);
        }
        // `on` is a partition of the disk we track as a whole.
        if self.dev == self.whole {
            let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", on.0, on.1));
            if let Ok(real) = std::fs::canonicalize(&sys) {
                if real.join("partition").exists() {
                    if let Some(parent) = real.parent() {
                        if read_sys(&parent.join("dev")).ok().as_deref().and_then(parse_devnum) == Some(self.whole) {
                            return Ok(true);
                        }
                    }
                }
            }
        }
        Ok(false)
    }

    /// The tracepoint, filter and translation for this device.
    pub fn trace_target(&self) -> TraceTarget {
        let start = self.start_sector;
        let end = start + self.size / 512;
        if self.request_based {
            let filter = if self.dev == self.whole {
                format!("dev == {}", trace_dev(self.whole))
            } else {
                format!(
                    "dev == {} && sector >= {start} && sector < {end}",
                    trace_dev(self.whole)
                )
            };
            TraceTarget {
                event: "block_rq_complete",
                filter,
                devs: vec![self.whole],
                start_sector: start,
                end_sector: end,
            }
        } else {
            let mut devs = vec![self.dev];
            devs.extend(self.partitions.iter().copied());
            let filter = devs
                .iter()
                .map(|d| format!("dev == {}", trace_dev(*d)))
                .collect::<Vec<_>>()
                .join(" || ");
            TraceTarget {
                event: "block_bio_complete",
                filter,
                devs,
                start_sector: start,
                end_sector: end,
            }
        }
    }
}

/// Where completions of a device are traced and how to map them back.
#[derive(Debug, Clone)]
pub struct TraceTarget {
    /// Event name under `events/block/`.
    pub event: &'static str,
    /// Kernel filter expression.
    pub filter: String,
    /// Devs the events may carry.
    pub devs: Vec<DevNum>,
    /// Absolute sector range of the tracked device on its disk.
    pub start_sector: u64,
    pub end_sector: u64,
}

impl TraceTarget {
    /// Maps an event (dev, absolute sector, sectors) to a byte range within
    /// the tracked device, clipped to it; `None` if it lies outside.
    pub fn translate(&self, dev: u32, sector: u64, nr_sector: u32) -> Option<(u64, u64)> {
        if !self.devs.iter().any(|d| trace_dev(*d) == dev) {
            return None;
        }
        let s = sector.max(self.start_sector);
        let e = (sector + nr_sector as u64).min(self.end_sector);
        if e <= s {
            return None;
        }
        Some(((s - self.start_sector) * 512, (e - s) * 512))
    }
}

fn geometry(path: &Path) -> Result<(u64, u32)> {
    let f = File::open(path).map_err(|e| AgentError::io(path, "open", e))?;
    let mut size: u64 = 0;
    let mut lbs: libc::c_int = 0;
    // SAFETY: both ioctls write one integer into the pointer we pass.
    unsafe {
        blkgetsize64(f.as_raw_fd(), &mut size)
            .map_err(|e| AgentError::io(path, "BLKGETSIZE64", std::io::Error::from(e)))?;
        blksszget(f.as_raw_fd(), &mut lbs).map_err(|e| AgentError::io(path, "BLKSSZGET", std::io::Error::from(e)))?;
    }
    Ok((size, lbs.max(512) as u32))
}
