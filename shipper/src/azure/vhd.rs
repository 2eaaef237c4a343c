//! The fixed VHD footer: the 512 bytes after a disk's data that make a
//! page blob a disk Azure can create a managed disk from.
//!
//! Layout (Microsoft's "Virtual Hard Disk Image Format Specification",
//! big-endian):
//!
//! ```text
//! off len field                value here
//!   0   8 cookie               "conectix"
//!   8   4 features             0x00000002 (reserved bit, always set)
//!  12   4 format version       0x00010000
//!  16   8 data offset          0xFFFFFFFFFFFFFFFF (fixed disk: none)
//!  24   4 time stamp           seconds since 2000-01-01T00:00:00Z
//!  28   4 creator application  "hrl "
//!  32   4 creator version      0x00010000
//!  36   4 creator host OS      "Wi2k"
//!  40   8 original size        virtual size (bytes)
//!  48   8 current size         virtual size (bytes)
//!  56   4 geometry             cylinders u16, heads u8, sectors/track u8
//!  60   4 disk type            2 (fixed)
//!  64   4 checksum             one's complement of the byte sum of the
//!                              footer with this field zero
//!  68  16 unique id            random
//!  84   1 saved state          0
//!  85 427 reserved             zero
//! ```
//!
//! Azure accepts a fixed VHD whose virtual size is a whole number of MiB;
//! [`virtual_size`] rounds a disk up to that (the tail reads as zeros).

/// The footer's length.
pub const FOOTER: usize = 512;
const MIB: u64 = 1 << 20;
/// 2000-01-01T00:00:00Z in Unix seconds.
const VHD_EPOCH: u64 = 946_684_800;

/// The VHD's virtual size for a disk of `device_size` bytes: rounded up
/// to a whole MiB (at least one).
pub fn virtual_size(device_size: u64) -> u64 {
    device_size.div_ceil(MIB).max(1) * MIB
}

/// Cylinders, heads and sectors per track for `size` bytes, by the
/// algorithm of the VHD specification (appendix "CHS Calculation").
pub fn geometry(size: u64) -> (u16, u8, u8) {
    let mut total = size / 512;
    if total > 65535 * 16 * 255 {
        total = 65535 * 16 * 255;
    }
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

/// The footer of a fixed VHD of `size` bytes (a whole number of MiB),
/// stamped `unix_secs`, with unique id `id`.
pub fn footer(size: u64, unix_secs: u64, id: [u8; 16]) -> [u8; FOOTER] {
    let mut f = [0u8; FOOTER];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    let stamp = unix_secs.saturating_sub(VHD_EPOCH).min(u32::MAX as u64) as u32;
    f[24..28].copy_from_slice(&stamp.to_be_bytes());
    f[28..32].copy_from_slice(b"hrl ");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = geometry(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes());
    f[68..84].copy_from_slice(&id);
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The footer checksum of `f` (its checksum field counted as zero).
pub fn checksum(f: &[u8; FOOTER]) -> u32 {
    let sum: u32 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .map(|(_, &b)| b as u32)
        .fold(0u32, u32::wrapping_add);
    !sum
}

/// Checks a fixed-VHD footer: cookie, disk type, checksum; returns its
/// current size. The error says which field is wrong.
pub fn parse(f: &[u8; FOOTER]) -> Result<u64, String> {
    if &f[0..8] != b"conectix" {
        return Err("no VHD footer (cookie is not \"conectix\")".into());
    }
    let be32 = |o: usize| u32::from_be_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]]);
    if be32(60) != 2 {
        return Err(format!("disk type {} is not fixed (2)", be32(60)));
    }
    if be32(64) != checksum(f) {
        return Err(format!("checksum {:#x} is wrong (want {:#x})", be32(64), checksum(f)));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&f[48..56]);
    Ok(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_to_whole_mib() {
        assert_eq!(virtual_size(0), MIB);
        assert_eq!(virtual_size(MIB), MIB);
        assert_eq!(virtual_size(MIB + 512), 2 * MIB);
        assert_eq!(virtual_size(64 * MIB - 4096), 64 * MIB);
    }

    #[test]
    fn geometry_follows_the_specification() {
        // 127 GiB and 2 TiB: the specification's maximum geometry.
        assert_eq!(geometry(127 << 30).1, 16);
        assert_eq!(geometry(2 << 40), (65535, 16, 255));
        // 64 MiB: 131072 sectors / 17 = 7710 cylinders x heads, 8 heads.
        assert_eq!(geometry(64 << 20), (963, 8, 17));
    }

    #[test]
    fn footer_matches_one_computed_independently() {
        // fixtures/fuzz/vhd_footer/hrl-64mib.bin was computed by a Python
        // transcription of the specification (checksum, CHS geometry).
        let want = include_bytes!("../../../fixtures/fuzz/vhd_footer/hrl-64mib.bin");
        assert_eq!(&footer(64 << 20, VHD_EPOCH + 10, [7; 16])[..], &want[..]);
    }

    #[test]
    fn footer_round_trips_and_damage_is_named() {
        let f = footer(64 << 20, VHD_EPOCH + 10, [7; 16]);
        assert_eq!(parse(&f), Ok(64 << 20));
        assert_eq!(&f[24..28], &10u32.to_be_bytes());
        let mut bad = f;
        bad[100] ^= 1;
        assert!(parse(&bad).unwrap_err().contains("checksum"));
        let mut bad = f;
        bad[0] = b'x';
        assert!(parse(&bad).unwrap_err().contains("cookie"));
    }
}
