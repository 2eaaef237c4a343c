//! Packs (sealed chunks + a sealed trailer) and index objects.

use serde::{Deserialize, Serialize};

use super::crypto::{random, ChunkId, Keys};
use crate::error::{Result, ShipError};

/// Where a stored chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: [u8; 32],
    pub offset: u64,
    pub len: u32,
}

/// Object name of a pack.
pub fn pack_key(id: &[u8; 32]) -> String {
    let h = hex::encode(id);
    format!("packs/{}/{h}", &h[..2])
}

/// The pack id a pack's object name carries; None for another name.
pub fn pack_id(key: &str) -> Option<[u8; 32]> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(key.rsplit('/').next()?, &mut id).ok()?;
    Some(id)
}

pub const PACK_MAGIC: &[u8; 8] = b"HRLPACK1";

/// A blob's entry in a pack: chunk id, offset, length.
pub type PackEntry = (ChunkId, u64, u32);
/// A pack id and its entries.
pub type PackEntries = ([u8; 32], Vec<PackEntry>);

/// Builds one pack in memory (bounded by the repository's pack size).
pub struct PackBuilder {
    pub id: [u8; 32],
    pub buf: Vec<u8>,
    pub entries: Vec<(ChunkId, u64, u32)>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    pub fn new() -> Self {
        PackBuilder {
            id: random(),
            buf: Vec::new(),
            entries: Vec::new(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Appends a sealed chunk; returns its location.
    pub fn add(&mut self, id: ChunkId, blob: &[u8]) -> Location {
        let offset = self.buf.len() as u64;
        self.buf.extend_from_slice(blob);
        self.entries.push((id, offset, blob.len() as u32));
        Location {
            pack: self.id,
            offset,
            len: blob.len() as u32,
        }
    }

    /// The finished pack bytes: blobs, sealed trailer, its length, magic.
    pub fn finish(self, keys: &Keys) -> (String, Vec<u8>, Vec<(ChunkId, u64, u32)>) {
        let mut trailer = Vec::with_capacity(self.entries.len() * 44);
        for (id, off, len) in &self.entries {
            trailer.extend_from_slice(id);
            trailer.extend_from_slice(&off.to_le_bytes());
            trailer.extend_from_slice(&len.to_le_bytes());
        }
        let mut aad = b"pack".to_vec();
        aad.extend_from_slice(&self.id);
        let sealed = keys.seal_meta(&aad, &trailer);
        let mut out = self.buf;
        out.extend_from_slice(&sealed);
        out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        out.extend_from_slice(PACK_MAGIC);
        (pack_key(&self.id), out, self.entries)
    }
}

/// Seals a trailer for pack `pack_id` and frames it as the end of a pack
/// (for the fuzz target).
#[doc(hidden)]
pub fn frame_trailer(keys: &Keys, pack_id: &[u8; 32], body: &[u8], trailer: &[u8]) -> Vec<u8> {
    let mut aad = b"pack".to_vec();
    aad.extend_from_slice(pack_id);
    let sealed = keys.seal_meta(&aad, trailer);
    let mut out = body.to_vec();
    out.extend_from_slice(&sealed);
    out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    out.extend_from_slice(PACK_MAGIC);
    out
}

/// [`read_trailer`] with the keys only.
/// Reads the trailer of a whole pack (for `check` and re-indexing).
pub fn read_trailer(keys: &Keys, key: &str, pack_id: &[u8; 32], bytes: &[u8]) -> Result<Vec<(ChunkId, u64, u32)>> {
    let n = bytes.len();
    if n < 12 || &bytes[n - 8..] != PACK_MAGIC {
        return Err(ShipError::corrupt(format!("pack {key}"), "no pack trailer magic"));
    }
    let tl = u32::from_le_bytes([bytes[n - 12], bytes[n - 11], bytes[n - 10], bytes[n - 9]]) as usize;
    if tl + 12 > n {
        return Err(ShipError::corrupt(
            format!("pack {key}"),
            "trailer length exceeds the pack",
        ));
    }
    let mut aad = b"pack".to_vec();
    aad.extend_from_slice(pack_id);
    let t = keys.open_meta(&format!("pack {key} trailer"), &aad, &bytes[n - 12 - tl..n - 12])?;
    if t.len() % 44 != 0 {
        return Err(ShipError::corrupt(
            format!("pack {key}"),
            "trailer size is not a whole number of entries",
        ));
    }
    Ok(t.chunks_exact(44)
        .map(|e| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&e[..32]);
            let off = u64::from_le_bytes(e[32..40].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(e[40..44].try_into().unwrap_or_default());
            (id, off, len)
        })
        .collect())
}

#[derive(Serialize, Deserialize)]
struct IndexPack {
    pack: String,
    entries: Vec<(String, u64, u32)>,
}

/// Encodes an index object for `packs`: its new key and sealed body.
pub fn encode_index(keys: &Keys, packs: &[PackEntries]) -> Result<(String, Vec<u8>)> {
    let id: [u8; 32] = random();
    let key = format!("index/{}", hex::encode(id));
    let body: Vec<IndexPack> = packs
        .iter()
        .map(|(p, es)| IndexPack {
            pack: hex::encode(p),
            entries: es.iter().map(|(c, o, l)| (hex::encode(c), *o, *l)).collect(),
        })
        .collect();
    let plain = serde_json::to_vec(&body).map_err(|e| ShipError::Internal(format!("encode index: {e}")))?;
    let sealed = seal_index_plain(keys, &key, &plain);
    Ok((key, sealed))
}

/// Seals `plain` as index object `key` (for the fuzz target).
#[doc(hidden)]
pub fn seal_index_plain(keys: &Keys, key: &str, plain: &[u8]) -> Vec<u8> {
    let mut aad = b"index".to_vec();
    aad.extend_from_slice(key.as_bytes());
    keys.seal_meta(&aad, plain)
}

/// Decodes an index object.
pub fn decode_index(keys: &Keys, key: &str, blob: &[u8]) -> Result<Vec<(ChunkId, Location)>> {
    let mut aad = b"index".to_vec();
    aad.extend_from_slice(key.as_bytes());
    let plain = keys.open_meta(&format!("index {key}"), &aad, blob)?;
    let body: Vec<IndexPack> =
        serde_json::from_slice(&plain).map_err(|e| ShipError::corrupt(format!("index {key}"), e.to_string()))?;
    let bad = |w: &str| ShipError::corrupt(format!("index {key}"), format!("bad {w}"));
    let mut out = Vec::new();
    for p in body {
        let pack: [u8; 32] = hex::decode(&p.pack)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("pack id"))?;
        for (c, offset, len) in p.entries {
            let id: ChunkId = hex::decode(&c)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad("chunk id"))?;
            out.push((id, Location { pack, offset, len }));
        }
    }
    Ok(out)
}
