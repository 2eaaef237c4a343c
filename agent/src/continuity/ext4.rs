//! What an ext4 filesystem says about its own writes, read straight from
//! the device with O_DIRECT (the block device's page cache can be stale
//! under a mounted filesystem): the superblock's identity, mount count and
//! lifetime-write counter, the group descriptors' inode-table flags, and
//! the jbd2 journal's superblock (sequence and start).
//!
//! Why these: every change made through the filesystem is a journal
//! transaction, which moves the journal's start off 0 or its sequence on;
//! the lifetime-write counter counts every sector written to the device
//! while it is mounted, by anyone; a mount writes the superblock once and
//! bumps the mount count. Only the internal-journal layout (ext3/ext4's
//! default) is understood; anything else is "not ext4" to the caller.
//!
//! Byte offsets are those of the kernel's `struct ext4_super_block`,
//! `struct ext4_group_desc`, `struct ext4_inode`, the extent tree and
//! `journal_superblock_t` (big-endian).

use std::path::Path;

use super::direct::Direct;
use crate::error::{AgentError, Result};

const EXT4_MAGIC: u16 = 0xEF53;
const JBD2_MAGIC: u32 = 0xC03B_3998;
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_64BIT: u32 = 0x80;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_INODE_ZEROED: u16 = 0x4;
const EXTENTS_FL: u32 = 0x80000;
const EXTENT_MAGIC: u16 = 0xF30A;

/// What the filesystem on a device says about its writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4State {
    pub uuid: [u8; 16],
    pub block_size: u64,
    pub mount_count: u16,
    /// `s_kbytes_written` as on the device (updated when the superblock
    /// is written: freeze, thaw, unmount, mount).
    pub kbytes_written: u64,
    pub journal_sequence: u32,
    pub journal_start: u32,
    /// Byte offset of the journal's superblock on the device.
    pub journal_sb_offset: u64,
    /// Some block group's inode table is not zeroed yet: the kernel's lazy
    /// init thread may still write it, outside the journal.
    pub lazy_init_pending: bool,
}

fn u16le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u32be(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Reads the ext4 state of `dev`; `Ok(None)` when it does not hold ext4
/// with an internal journal this reader understands.
pub fn read(dev: &Path) -> Result<Option<Ext4State>> {
    let mut d = Direct::open(dev, 64 << 10)?;
    let io = |e| AgentError::io(dev, "read filesystem metadata", e);
    let sb = d.read(1024, 1024).map_err(io)?.to_vec();
    if u16le(&sb, 0x38) != EXT4_MAGIC {
        return Ok(None);
    }
    let log_bs = u32le(&sb, 0x18);
    if log_bs > 6 {
        return Ok(None);
    }
    let block_size = 1024u64 << log_bs;
    let (compat, incompat, ro) = (u32le(&sb, 0x5C), u32le(&sb, 0x60), u32le(&sb, 0x64));
    if compat & COMPAT_HAS_JOURNAL == 0 || incompat & INCOMPAT_JOURNAL_DEV != 0 || u32le(&sb, 0xE4) != 0 {
        return Ok(None);
    }
    let desc_size = if incompat & INCOMPAT_64BIT != 0 {
        u16le(&sb, 0xFE).max(32) as u64
    } else {
        32
    };
    let blocks = u32le(&sb, 0x04) as u64 | ((u32le(&sb, 0x150) as u64) << 32);
    let first_data = u32le(&sb, 0x14) as u64;
    let per_group = u32le(&sb, 0x20) as u64;
    let inodes_per_group = u32le(&sb, 0x28) as u64;
    let inode_size = u16le(&sb, 0x58).max(128) as u64;
    if per_group == 0 || inodes_per_group == 0 {
        return Ok(None);
    }
    let groups = (blocks - first_data.min(blocks)).div_ceil(per_group);
    let gdt = (first_data + 1) * block_size;
    let csum = ro & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0;
    let mut lazy_init_pending = false;
    let mut itable0 = 0;
    // Group descriptors, a 32 KiB piece at a time.
    let per_read = (32 << 10) / desc_size;
    let mut g = 0;
    while g < groups {
        let n = per_read.min(groups - g);
        let b = d.read(gdt + g * desc_size, (n * desc_size) as usize).map_err(io)?;
        for i in 0..n as usize {
            let o = i * desc_size as usize;
            if g == 0 && i == 0 {
                itable0 = u32le(b, o + 0x08) as u64;
                if desc_size >= 64 {
                    itable0 |= (u32le(b, o + 0x28) as u64) << 32;
                }
            }
            if csum && u16le(b, o + 0x12) & BG_INODE_ZEROED == 0 {
                lazy_init_pending = true;
            }
        }
        g += n;
    }
    let journal_inum = u32le(&sb, 0xE0) as u64;
    if journal_inum == 0 || journal_inum > inodes_per_group {
        return Ok(None);
    }
    let inode = d
        .read(itable0 * block_size + (journal_inum - 1) * inode_size, 128)
        .map_err(io)?
        .to_vec();
    let Some(jblock) = first_block(&mut d, &inode, block_size).map_err(io)? else {
        return Ok(None);
    };
    let journal_sb_offset = jblock * block_size;
    let j = d.read(journal_sb_offset, 64).map_err(io)?;
    if u32be(j, 0) != JBD2_MAGIC {
        return Ok(None);
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&sb[0x68..0x78]);
    Ok(Some(Ext4State {
        uuid,
        block_size,
        mount_count: u16le(&sb, 0x34),
        kbytes_written: u64::from_le_bytes(sb[0x178..0x180].try_into().unwrap_or([0; 8])),
        journal_sequence: u32be(j, 0x18),
        journal_start: u32be(j, 0x1C),
        journal_sb_offset,
        lazy_init_pending,
    }))
}

/// The physical block of an inode's logical block 0: through its extent
/// tree (following index nodes), or its first direct block.
fn first_block(d: &mut Direct, inode: &[u8], block_size: u64) -> std::io::Result<Option<u64>> {
    let flags = u32le(inode, 0x20);
    let mut node = inode[0x28..0x28 + 60].to_vec();
    if flags & EXTENTS_FL == 0 {
        let b = u32le(&node, 0) as u64;
        return Ok((b != 0).then_some(b));
    }
    for _ in 0..6 {
        if u16le(&node, 0) != EXTENT_MAGIC || u16le(&node, 2) == 0 {
            return Ok(None);
        }
        let e = 12;
        if u32le(&node, e) != 0 {
            return Ok(None);
        }
        if u16le(&node, 6) == 0 {
            let start = u32le(&node, e + 8) as u64 | ((u16le(&node, e + 6) as u64) << 32);
            return Ok(Some(start));
        }
        let leaf = u32le(&node, e + 4) as u64 | ((u16le(&node, e + 8) as u64) << 32);
        node = d.read(leaf * block_size, 60)?.to_vec();
    }
    Ok(None)
}

/// The filesystem's live write counters while it is mounted, in KiB:
/// lifetime (`/sys/fs/ext4/<device>/lifetime_write_kbytes`: the
/// superblock's value at the mount plus every sector written to the device
/// since, by anyone) and since the mount (`session_write_kbytes`).
pub fn live_kbytes(kernel_name: &str) -> Option<(u64, u64)> {
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/ext4/{kernel_name}/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("lifetime_write_kbytes")?, read("session_write_kbytes")?))
}

/// Hex of a filesystem UUID, for the state file.
pub fn uuid_hex(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}
