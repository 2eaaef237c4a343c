//! Index objects: arbitrary plaintext, sealed with a known key, must
//! decode to entries or a clear error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = hrl_shipper::repo::crypto::Keys::derive(&[7u8; 32]);
    let key = "index/00";
    let blob = hrl_shipper::repo::pack::seal_index_plain(&keys, key, data);
    let _ = hrl_shipper::repo::pack::decode_index(&keys, key, &blob);
    // Unsealed bytes are refused by authentication.
    assert!(hrl_shipper::repo::pack::decode_index(&keys, key, data).is_err());
});
