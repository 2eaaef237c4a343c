//! Point manifests: arbitrary plaintext (header line and entries), sealed
//! with a known key, must decode or fail clearly, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = hrl_shipper::repo::crypto::Keys::derive(&[7u8; 32]);
    let disk = uuid::Uuid::from_u128(7);
    let blob = hrl_shipper::repo::manifest::seal_plain(&keys, &disk, 3, data);
    if let Ok((h, map)) = hrl_shipper::repo::manifest::decode_with(&keys, &disk, 3, &blob) {
        // Entries may repeat a chunk index (the last wins), never add one.
        assert!(map.len() as u64 <= h.entries);
    }
    // Sealed for another point: refused.
    assert!(hrl_shipper::repo::manifest::decode_with(&keys, &disk, 4, &blob).is_err());
});
