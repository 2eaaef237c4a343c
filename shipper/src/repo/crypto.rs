//! Keys, chunk ids and sealing. Data is encrypted before it leaves the
//! machine; the store sees only ciphertext, ids and sizes.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::error::{Result, ShipError};

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;

/// A chunk id: keyed BLAKE3 of the plaintext.
pub type ChunkId = [u8; 32];

/// Random bytes from the OS.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // getrandom only fails when the OS has no entropy source at all.
    getrandom::getrandom(&mut b).expect("the OS random source failed");
    b
}

/// Bytes of a chunk compressed to decide whether the rest is worth it.
const PROBE: usize = 4096;

/// Whether lz4 makes `sample` smaller by at least 1/32.
fn shrinks(sample: &[u8]) -> bool {
    lz4_flex::compress(sample).len() < sample.len() - sample.len() / 32
}

/// The keys derived from a repository's master key.
#[derive(Clone)]
pub struct Keys {
    id_key: [u8; 32],
    data: XChaCha20Poly1305,
    meta: XChaCha20Poly1305,
    meta_key: [u8; 32],
}

impl Keys {
    pub fn derive(master: &[u8; 32]) -> Self {
        let d = |ctx: &str| blake3::derive_key(ctx, master);
        let data_key = d("hrl 1 data");
        let meta_key = d("hrl 1 meta");
        Keys {
            id_key: d("hrl 1 chunk id"),
            data: XChaCha20Poly1305::new((&data_key).into()),
            meta: XChaCha20Poly1305::new((&meta_key).into()),
            meta_key,
        }
    }

    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        *blake3::keyed_hash(&self.id_key, plaintext).as_bytes()
    }

    /// Keyed MAC with the meta key (config authentication).
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.meta_key, data).as_bytes()
    }

    /// Seals a chunk: `nonce ‖ AEAD(flag ‖ bytes)`, aad = chunk id. lz4 is
    /// used only when it makes the chunk smaller.
    pub fn seal_chunk(&self, id: &ChunkId, plaintext: &[u8]) -> Vec<u8> {
        // Incompressible data (already compressed or encrypted files) is
        // common on disks; compressing a 4 KiB sample first skips lz4 over
        // the whole chunk when the sample does not shrink at all.
        let comp = if plaintext.len() >= 16 << 10 && !shrinks(&plaintext[..PROBE]) {
            Vec::new()
        } else {
            lz4_flex::compress_prepend_size(plaintext)
        };
        let mut body = Vec::with_capacity(plaintext.len() + 1);
        if !comp.is_empty() && comp.len() < plaintext.len() {
            body.push(1);
            body.extend_from_slice(&comp);
        } else {
            body.push(0);
            body.extend_from_slice(plaintext);
        }
        seal(&self.data, id, &body)
    }

    /// Opens a sealed chunk and checks its id; errors name the chunk.
    pub fn open_chunk(&self, id: &ChunkId, blob: &[u8]) -> Result<Vec<u8>> {
        let what = format!("chunk {}", hex::encode(id));
        let body = open(&self.data, id, blob).map_err(|why| ShipError::corrupt(&what, why))?;
        let (flag, rest) = body
            .split_first()
            .ok_or_else(|| ShipError::corrupt(&what, "empty body"))?;
        let plain = match flag {
            0 => rest.to_vec(),
            1 => {
                lz4_flex::decompress_size_prepended(rest).map_err(|e| ShipError::corrupt(&what, format!("lz4: {e}")))?
            }
            f => return Err(ShipError::corrupt(&what, format!("unknown body flag {f}"))),
        };
        if self.chunk_id(&plain) != *id {
            return Err(ShipError::corrupt(&what, "content does not hash to its id"));
        }
        Ok(plain)
    }

    pub fn seal_meta(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal(&self.meta, aad, plaintext)
    }

    pub fn open_meta(&self, what: &str, aad: &[u8], blob: &[u8]) -> Result<Vec<u8>> {
        open(&self.meta, aad, blob).map_err(|why| ShipError::corrupt(what, why))
    }
}

pub fn seal(c: &XChaCha20Poly1305, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = random();
    let mut out = nonce.to_vec();
    // Encryption with a valid key and nonce cannot fail.
    let ct = c
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .expect("XChaCha20-Poly1305 encryption");
    out.extend_from_slice(&ct);
    out
}

pub fn open(c: &XChaCha20Poly1305, aad: &[u8], blob: &[u8]) -> std::result::Result<Vec<u8>, String> {
    if blob.len() < NONCE_LEN + TAG_LEN {
        return Err(format!("{} bytes is too short to be sealed", blob.len()));
    }
    c.decrypt(
        XNonce::from_slice(&blob[..NONCE_LEN]),
        Payload {
            msg: &blob[NONCE_LEN..],
            aad,
        },
    )
    .map_err(|_| "authentication failed (tampered, truncated, moved, or another key)".to_string())
}

/// The cipher that wraps a master key under a key file.
pub fn wrap_cipher(key_file_bytes: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new((&blake3::derive_key("hrl 1 key wrap", key_file_bytes)).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_seal_open_and_refuse_tampering_or_moving() {
        let k = Keys::derive(&[7u8; 32]);
        let data = vec![42u8; 65536];
        let id = k.chunk_id(&data);
        let blob = k.seal_chunk(&id, &data);
        assert!(blob.len() < 1000, "repetitive data is compressed");
        assert_eq!(k.open_chunk(&id, &blob).unwrap(), data);
        let mut bad = blob.clone();
        bad[40] ^= 1;
        assert!(k.open_chunk(&id, &bad).is_err());
        let other = k.chunk_id(b"other");
        assert!(
            k.open_chunk(&other, &blob).is_err(),
            "a blob under another id must fail"
        );
        let k2 = Keys::derive(&[8u8; 32]);
        assert!(k2.open_chunk(&id, &blob).is_err());
        let rnd: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let rid = k.chunk_id(&rnd);
        assert_eq!(k.open_chunk(&rid, &k.seal_chunk(&rid, &rnd)).unwrap(), rnd);
    }
}
