//! The fixed 128-byte file header of a `.hrl` segment.
//!
//! ```text
//! off  len  field
//!   0    8  magic 89 48 52 4C 0D 0A 1A 0A   ("\x89HRL\r\n\x1a\n")
//!   8    2  major version (1)               u16 LE
//!  10    2  minor version (2)               u16 LE
//!  12    4  header length (128)             u32 LE
//!  16   16  disk id (UUID, big-endian bytes)
//!  32    8  segment sequence number         u64 LE
//!  40    4  chunk size in bytes             u32 LE
//!  44    4  logical block size in bytes     u32 LE
//!  48    8  device size in bytes            u64 LE
//!  56    8  creation time, ns since epoch   u64 LE
//!  64    8  file signature (random)         u64 LE
//!  72   52  reserved, zero
//! 124    4  crc32 of bytes 0..124           u32 LE
//! ```
//!
//! The magic's high byte and CR/LF/^Z catch 7-bit and text-mode transfers,
//! as PNG's does. The signature is random per file and is mixed into every
//! record checksum: bytes left over from an older file at the same place
//! (a reused inode, a preallocated region) can never validate as records of
//! this one.

use uuid::Uuid;

/// Magic bytes at offset 0 of every `.hrl` file.
pub const MAGIC: [u8; 8] = *b"\x89HRL\r\n\x1a\n";
/// The major version this build writes and reads.
pub const MAJOR_VERSION: u16 = 1;
/// The minor version this build writes. Readers accept any minor of their
/// major; newer minors may only add record types (skipped) or header fields
/// inside the reserved bytes.
pub const MINOR_VERSION: u16 = 2;
/// Length of the version-1.0 header.
pub const HEADER_LEN: usize = 128;

/// Parsed file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub major: u16,
    pub minor: u16,
    /// Length of the header as written; records start here.
    pub header_len: u32,
    pub disk_id: Uuid,
    pub seq: u64,
    pub chunk_size: u32,
    pub logical_block_size: u32,
    pub device_size: u64,
    pub created_ns: u64,
    pub signature: u64,
}

/// Why a header could not be decoded; the caller adds the path.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    TooShort(usize),
    BadMagic,
    UnsupportedVersion { major: u16, minor: u16 },
    BadLength(u32),
    BadCrc { stored: u32, computed: u32 },
    BadField(&'static str),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::TooShort(n) => write!(f, "file is {n} bytes, shorter than the {HEADER_LEN}-byte header"),
            HeaderError::BadMagic => write!(f, "bad magic"),
            HeaderError::UnsupportedVersion { major, minor } => write!(f, "unsupported version {major}.{minor}"),
            HeaderError::BadLength(l) => write!(f, "impossible header length {l}"),
            HeaderError::BadCrc { stored, computed } => {
                write!(f, "header crc mismatch (stored {stored:08x}, computed {computed:08x})")
            }
            HeaderError::BadField(what) => write!(f, "invalid header field: {what}"),
        }
    }
}

impl FileHeader {
    /// A new version-1.0 header with a fresh random signature.
    pub fn new(disk_id: Uuid, seq: u64, chunk_size: u32, logical_block_size: u32, device_size: u64) -> Self {
        FileHeader {
            major: MAJOR_VERSION,
            minor: MINOR_VERSION,
            header_len: HEADER_LEN as u32,
            disk_id,
            seq,
            chunk_size,
            logical_block_size,
            device_size,
            created_ns: crate::now_ns(),
            signature: random_signature(),
        }
    }

    /// Encodes the header as written by this build (always 1.0, 128 bytes).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&MAJOR_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&MINOR_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..32].copy_from_slice(self.disk_id.as_bytes());
        b[32..40].copy_from_slice(&self.seq.to_le_bytes());
        b[40..44].copy_from_slice(&self.chunk_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.logical_block_size.to_le_bytes());
        b[48..56].copy_from_slice(&self.device_size.to_le_bytes());
        b[56..64].copy_from_slice(&self.created_ns.to_le_bytes());
        b[64..72].copy_from_slice(&self.signature.to_le_bytes());
        let crc = crc32fast::hash(&b[..HEADER_LEN - 4]);
        b[HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header from the first bytes of a file. `buf` must hold at
    /// least the header length the file declares (128 for version 1.0);
    /// [`FileHeader::declared_len`] tells how much that is.
    pub fn decode(buf: &[u8]) -> Result<Self, HeaderError> {
        let len = Self::declared_len(buf)? as usize;
        if buf.len() < len {
            return Err(HeaderError::TooShort(buf.len()));
        }
        let stored = u32::from_le_bytes(arr(&buf[len - 4..len]));
        let computed = crc32fast::hash(&buf[..len - 4]);
        if stored != computed {
            return Err(HeaderError::BadCrc { stored, computed });
        }
        let h = FileHeader {
            major: u16::from_le_bytes(arr(&buf[8..10])),
            minor: u16::from_le_bytes(arr(&buf[10..12])),
            header_len: len as u32,
            disk_id: Uuid::from_bytes(arr(&buf[16..32])),
            seq: u64::from_le_bytes(arr(&buf[32..40])),
            chunk_size: u32::from_le_bytes(arr(&buf[40..44])),
            logical_block_size: u32::from_le_bytes(arr(&buf[44..48])),
            device_size: u64::from_le_bytes(arr(&buf[48..56])),
            created_ns: u64::from_le_bytes(arr(&buf[56..64])),
            signature: u64::from_le_bytes(arr(&buf[64..72])),
        };
        if h.chunk_size == 0 || !h.chunk_size.is_power_of_two() {
            return Err(HeaderError::BadField("chunk size is not a power of two"));
        }
        if h.logical_block_size == 0 || !h.logical_block_size.is_power_of_two() {
            return Err(HeaderError::BadField("logical block size is not a power of two"));
        }
        Ok(h)
    }

    /// Checks magic and version and returns the header length the file
    /// declares, from the first 16 bytes.
    pub fn declared_len(buf: &[u8]) -> Result<u32, HeaderError> {
        if buf.len() < 16 {
            return Err(HeaderError::TooShort(buf.len()));
        }
        if buf[0..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let major = u16::from_le_bytes(arr(&buf[8..10]));
        let minor = u16::from_le_bytes(arr(&buf[10..12]));
        if major != MAJOR_VERSION {
            return Err(HeaderError::UnsupportedVersion { major, minor });
        }
        let len = u32::from_le_bytes(arr(&buf[12..16]));
        if (len as usize) < HEADER_LEN || len > 4096 {
            return Err(HeaderError::BadLength(len));
        }
        Ok(len)
    }
}

/// A random 64-bit file signature. Zero is avoided so an all-zero region
/// never matches the checksum seed of a real file.
fn random_signature() -> u64 {
    loop {
        let b = *Uuid::new_v4().as_bytes();
        let v = u64::from_le_bytes(arr(&b[0..8])) ^ u64::from_le_bytes(arr(&b[8..16]));
        if v != 0 {
            return v;
        }
    }
}

/// Copies a slice of known length into an array. Callers slice with
/// constant bounds, so the length always matches.
pub(crate) fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&s[..N]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = FileHeader::new(Uuid::new_v4(), 42, 65536, 512, 1 << 30);
        let b = h.encode();
        assert_eq!(FileHeader::decode(&b).unwrap(), h);
    }

    #[test]
    fn header_damage_detected() {
        let h = FileHeader::new(Uuid::new_v4(), 1, 65536, 4096, 1 << 20);
        let b = h.encode();
        for i in 0..HEADER_LEN * 8 {
            let mut c = b;
            c[i / 8] ^= 1 << (i % 8);
            assert!(FileHeader::decode(&c).is_err(), "bit {i} flip not detected");
        }
    }

    #[test]
    fn newer_major_is_refused() {
        let mut b = FileHeader::new(Uuid::new_v4(), 1, 65536, 512, 0).encode();
        b[8..10].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(
            FileHeader::decode(&b),
            Err(HeaderError::UnsupportedVersion {
                major: 2,
                minor: MINOR_VERSION
            })
        );
    }
}
