//! The fixed-VHD footer check: any 512 bytes are accepted with their size
//! or refused naming the field; a footer hrl writes always parses back.
#![no_main]

use hrl_shipper::azure::vhd;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut f = [0u8; vhd::FOOTER];
    let n = data.len().min(vhd::FOOTER);
    f[..n].copy_from_slice(&data[..n]);
    let _ = vhd::parse(&f);
    if data.len() >= 8 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[..8]);
        let size = vhd::virtual_size(u64::from_le_bytes(b) >> 8);
        let own = vhd::footer(size, 1_800_000_000, [3; 16]);
        assert_eq!(vhd::parse(&own), Ok(size));
    }
});
