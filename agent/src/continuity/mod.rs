//! Continuity across a clean stop: what a clean stop records about the
//! device, and the check the next start makes before it trusts the saved
//! dirty map instead of reading the whole disk again.
//!
//! Owns: the fingerprint (docs/guarantees.md, "Restart after a clean
//! stop"). It only reads the device; the disk worker decides what to do
//! with the verdict. Anything that does not match is a resync, exactly as
//! without this module.
//!
//! What is recorded, inside a freeze of the filesystem (or with it
//! unmounted), after every completed write has been drained into the
//! dirty map:
//! * the device's size; the ext4 filesystem's UUID; the jbd2 journal's
//!   sequence and start (0: empty); the mount count; the lifetime-write
//!   counter the filesystem should show next if nothing else writes (the
//!   counter now, plus the one superblock write of the thaw);
//! * the BLAKE3 of [`SAMPLES`] chunks picked at random (not chunk 0, which
//!   holds the superblock a thaw, unmount or mount rewrites, nor the
//!   journal's superblock chunk);
//! * the dirty map (`<disk>.dirty`), the mode and the scan position.
//!
//! The next start resumes only when all of it matches, allowing the
//! superblock writes of a reboot in between (thaw, mount, a clean fsck:
//! [`writes_match`]); chunk 0 and the journal's superblock chunk are marked
//! dirty, since those writes were not traced.

mod direct;
pub mod dirtyfile;
pub mod ext4;

use std::path::Path;

use hrl_format::DiskMode;
use serde::{Deserialize, Serialize};

use crate::capture::hashes::hash_chunk;
use crate::tracking::device::BlockDevice;
use crate::tracking::dirty::DirtyMap;
use direct::Direct;

/// Chunks whose hashes the fingerprint keeps.
pub const SAMPLES: u64 = 64;

/// What a clean stop recorded (kept in the disk's state file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fingerprint {
    pub time_ns: u64,
    pub device_bytes: u64,
    pub fs_uuid: String,
    pub block_size: u64,
    pub mount_count: u16,
    /// Lifetime writes (KiB) the filesystem shows next, at this mount
    /// count, if nothing but the thaw wrote.
    pub kbytes_expected: u64,
    pub journal_sequence: u32,
    pub journal_sb_offset: u64,
    /// Sampled chunks and the hex of their 16-byte BLAKE3.
    pub samples: Vec<(u64, String)>,
    /// Mode to resume in (a bitmap-mode stop resumes in what it left).
    pub mode: DiskMode,
    /// Position of the initial-sync or resync scan, if one was running.
    pub scan: Option<u64>,
    /// Dirty chunks carried over.
    pub dirty_chunks: u64,
}

/// What a start that trusts the fingerprint continues with.
#[derive(Debug, Clone)]
pub struct Resumed {
    pub mode: DiskMode,
    pub scan: Option<u64>,
    pub dirty_chunks: u64,
}

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Up to [`SAMPLES`] distinct whole chunks other than `skip`, picked with
/// `seed`, in order.
fn pick_samples(chunks: u64, whole: u64, skip: &[u64], seed: u64) -> Vec<u64> {
    let mut out = std::collections::BTreeSet::new();
    let mut x = seed | 1;
    let candidates = whole.saturating_sub(skip.len() as u64);
    let want = SAMPLES.min(candidates);
    let mut tries = 0;
    while (out.len() as u64) < want && tries < 100 * SAMPLES && whole > 0 {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let c = x.wrapping_mul(0x2545_F491_4F6C_DD1D) % whole.min(chunks);
        tries += 1;
        if !skip.contains(&c) {
            out.insert(c);
        }
    }
    out.into_iter().collect()
}

/// Hashes of `samples` as they are on the device now.
fn hash_samples(d: &mut Direct, chunk: u64, samples: &[u64]) -> std::io::Result<Vec<(u64, String)>> {
    samples
        .iter()
        .map(|&c| Ok((c, hex(&hash_chunk(d.read(c * chunk, chunk as usize)?)))))
        .collect()
}

/// Records the fingerprint of `dev` at a clean stop and saves `dirty`.
/// `frozen`: the filesystem is frozen now (a thaw follows); otherwise it
/// is not mounted. Err says why this stop cannot be trusted later.
pub fn record(
    dev: &BlockDevice,
    dirty: &DirtyMap,
    spool: &Path,
    name: &str,
    frozen: bool,
    mode: DiskMode,
    scan: Option<u64>,
) -> std::result::Result<Fingerprint, String> {
    let fs = ext4::read(&dev.path)
        .map_err(|e| e.to_string())?
        .ok_or("the device holds no ext4 filesystem with an internal journal")?;
    if fs.lazy_init_pending {
        return Err("ext4 has not finished zeroing its inode tables (lazy init writes outside the journal)".into());
    }
    if fs.journal_start != 0 {
        return Err(format!("the ext4 journal is not empty (start {})", fs.journal_start));
    }
    let kbytes_expected = if frozen {
        let (live, _) = ext4::live_kbytes(&dev.name).ok_or("no lifetime-write counter in /sys/fs/ext4")?;
        live + fs.block_size / 1024
    } else {
        fs.kbytes_written
    };
    let chunk = dirty.chunk_size();
    let whole = dev.size / chunk;
    let skip = [0, fs.journal_sb_offset / chunk];
    let seed = hrl_format::now_ns() ^ u64::from(std::process::id()).rotate_left(32);
    let picked = pick_samples(dirty.chunks(), whole, &skip, seed);
    let mut d = Direct::open(&dev.path, chunk as usize).map_err(|e| e.to_string())?;
    let samples = hash_samples(&mut d, chunk, &picked).map_err(|e| format!("reading sampled chunks: {e}"))?;
    dirtyfile::save(spool, name, dirty).map_err(|e| e.to_string())?;
    Ok(Fingerprint {
        time_ns: hrl_format::now_ns(),
        device_bytes: dev.size,
        fs_uuid: ext4::uuid_hex(&fs.uuid),
        block_size: fs.block_size,
        mount_count: fs.mount_count,
        kbytes_expected,
        journal_sequence: fs.journal_sequence,
        journal_sb_offset: fs.journal_sb_offset,
        samples,
        mode,
        scan,
        dirty_chunks: dirty.count(),
    })
}

/// Checks the fingerprint against `dev` now; on a match marks the saved
/// dirty chunks, chunk 0 and the journal's superblock chunk in `dirty`.
/// Err says what did not match (the caller resyncs).
pub fn resume(
    fp: &Fingerprint,
    dev: &BlockDevice,
    dirty: &DirtyMap,
    spool: &Path,
    name: &str,
) -> std::result::Result<Resumed, String> {
    let r = check(fp, dev, dirty.chunk_size());
    // The saved map is valid for this one start, whatever the verdict.
    if let Err(e) = r {
        let _ = std::fs::remove_file(dirtyfile::path(spool, name));
        return Err(e);
    }
    dirtyfile::load_into(spool, name, dirty)?;
    dirty.set(0);
    dirty.set(fp.journal_sb_offset / dirty.chunk_size());
    Ok(Resumed {
        mode: fp.mode,
        scan: fp.scan,
        dirty_chunks: dirty.count(),
    })
}

fn check(fp: &Fingerprint, dev: &BlockDevice, chunk: u64) -> std::result::Result<(), String> {
    if dev.size != fp.device_bytes {
        return Err(format!(
            "the device's size changed ({} -> {} bytes)",
            fp.device_bytes, dev.size
        ));
    }
    let fs = ext4::read(&dev.path)
        .map_err(|e| e.to_string())?
        .ok_or("the device no longer holds the ext4 filesystem it held at the stop")?;
    if ext4::uuid_hex(&fs.uuid) != fp.fs_uuid {
        return Err("the device holds another ext4 filesystem (its UUID changed)".into());
    }
    if fs.lazy_init_pending {
        return Err("ext4 is zeroing inode tables (lazy init)".into());
    }
    if fs.journal_sequence != fp.journal_sequence || fs.journal_start != 0 {
        return Err(format!(
            "the ext4 journal moved (sequence {} -> {}, start {}): the filesystem was written while the agent was stopped",
            fp.journal_sequence, fs.journal_sequence, fs.journal_start
        ));
    }
    writes_match(fp, &fs, ext4::live_kbytes(&dev.name))?;
    let mut d = Direct::open(&dev.path, chunk as usize).map_err(|e| e.to_string())?;
    let picked: Vec<u64> = fp.samples.iter().map(|s| s.0).collect();
    let now = hash_samples(&mut d, chunk, &picked).map_err(|e| format!("reading sampled chunks: {e}"))?;
    if let Some(((c, _), _)) = now.iter().zip(&fp.samples).find(|(a, b)| a.1 != b.1) {
        return Err(format!(
            "sampled chunk {c} changed: the device was written while the agent was stopped"
        ));
    }
    Ok(())
}

/// Whether ext4's write counters allow only the writes a reboot makes
/// while no agent runs: one superblock write for the thaw, one per mount,
/// and at most one per fsck (`e2fsck -p` of a clean filesystem rewrites the
/// superblock), an fsck before each mount and one after the last unmount.
/// `live`: the lifetime and since-mount counters when mounted. Since a
/// mount, exactly its own superblock write is allowed.
fn writes_match(fp: &Fingerprint, fs: &ext4::Ext4State, live: Option<(u64, u64)>) -> std::result::Result<(), String> {
    let bs = fs.block_size / 1024;
    let mounts = fs.mount_count.wrapping_sub(fp.mount_count) as u64;
    let (total, fscks) = match live {
        Some((total, session)) => {
            if mounts > 0 && session != bs {
                return Err(format!(
                    "{session} KiB were written to the device since its mount, {bs} KiB (the mount's superblock) expected: something wrote to it before the agent started"
                ));
            }
            (total, mounts)
        }
        None => (fs.kbytes_written, mounts + 1),
    };
    // e2fsprogs counts its superblock write as 4 KiB whatever the block
    // size (measured: e2fsck -p of a clean filesystem, 1 and 4 KiB blocks).
    let per_fsck = bs.max(4);
    let least = fp.kbytes_expected + mounts * bs;
    let extra = total.checked_sub(least).filter(|x| *x <= fscks * per_fsck);
    if extra.is_none() {
        return Err(format!(
            "ext4's lifetime writes are {total} KiB, {least} KiB expected after {mounts} mount(s) (plus at most {} KiB for {fscks} fsck(s)): something wrote to the device while the agent was stopped",
            fscks * per_fsck
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_distinct_whole_and_skip_the_superblock_chunks() {
        let s = pick_samples(1000, 999, &[0, 512], 42);
        assert_eq!(s.len() as u64, SAMPLES);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(s.iter().all(|&c| c != 0 && c != 512 && c < 999));
        let small = pick_samples(10, 10, &[0, 3], 7);
        assert_eq!(small, vec![1, 2, 4, 5, 6, 7, 8, 9]);
        assert!(pick_samples(1, 0, &[0], 1).is_empty());
    }

    #[test]
    fn the_write_counters_allow_a_reboot_and_nothing_more() {
        let fp = Fingerprint {
            time_ns: 0,
            device_bytes: 1 << 30,
            fs_uuid: String::new(),
            block_size: 4096,
            mount_count: 5,
            kbytes_expected: 1000,
            journal_sequence: 3,
            journal_sb_offset: 1 << 27,
            samples: Vec::new(),
            mode: DiskMode::Data,
            scan: None,
            dirty_chunks: 0,
        };
        let fs = |mounts: u16, on_disk: u64| ext4::Ext4State {
            uuid: [0; 16],
            block_size: 4096,
            mount_count: 5 + mounts,
            kbytes_written: on_disk,
            journal_sequence: 3,
            journal_start: 0,
            journal_sb_offset: 1 << 27,
            lazy_init_pending: false,
        };
        // Restarted without an unmount: the thaw only.
        assert!(writes_match(&fp, &fs(0, 0), Some((1000, 50_000))).is_ok());
        assert!(writes_match(&fp, &fs(0, 0), Some((1004, 50_004))).is_err());
        // Unmounted now, perhaps after an fsck.
        assert!(writes_match(&fp, &fs(0, 1000), None).is_ok());
        assert!(writes_match(&fp, &fs(0, 1004), None).is_ok());
        assert!(writes_match(&fp, &fs(0, 1008), None).is_err());
        // A reboot: unmount, fsck or not, mount; nothing since but the mount.
        assert!(writes_match(&fp, &fs(1, 0), Some((1004, 4))).is_ok());
        assert!(writes_match(&fp, &fs(1, 0), Some((1008, 4))).is_ok());
        assert!(writes_match(&fp, &fs(1, 0), Some((1012, 4))).is_err());
        assert!(writes_match(&fp, &fs(1, 0), Some((1008, 8))).is_err());
        // Fewer writes than a thaw: not the same filesystem history.
        assert!(writes_match(&fp, &fs(0, 996), None).is_err());
    }
}
