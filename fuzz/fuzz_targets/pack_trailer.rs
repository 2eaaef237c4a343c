//! Pack trailers: arbitrary trailer plaintext framed at the end of a pack,
//! and arbitrary raw pack bytes, must read or fail clearly, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = hrl_shipper::repo::crypto::Keys::derive(&[7u8; 32]);
    let id = [3u8; 32];
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let pack = hrl_shipper::repo::pack::frame_trailer(&keys, &id, &data[..split], &data[split..]);
    let _ = hrl_shipper::repo::pack::read_trailer(&keys, "packs/03", &id, &pack);
    let _ = hrl_shipper::repo::pack::read_trailer(&keys, "packs/03", &id, data);
});
