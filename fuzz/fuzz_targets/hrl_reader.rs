//! Fuzzes the segment reader in both recovery modes: it must never panic,
//! and the two modes must agree on every record they both return.
#![no_main]

use hrl_format::testutil::read_all_bytes;
use hrl_format::RecoveryMode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (a, _) = read_all_bytes(data, RecoveryMode::TolerateTornTail);
    let (b, _) = read_all_bytes(data, RecoveryMode::AbsoluteConsistency);
    let n = a.len().min(b.len());
    assert_eq!(&a[..n], &b[..n]);
});
