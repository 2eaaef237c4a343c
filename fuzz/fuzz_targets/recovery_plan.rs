//! The recovery plan parser: any text parses or fails clearly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hrl_shipper::plan::parse(text, std::path::Path::new("fuzz.toml"));
    }
});
