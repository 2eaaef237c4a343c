//! Helpers shared by tests, fuzz targets and the fixture generator. Not part
//! of the stable API.

use crate::header::FileHeader;
use crate::reader::{RecoveryMode, SegmentReader};
use crate::record::*;
use crate::Result;
use std::path::Path;
use uuid::Uuid;

/// Every record of an in-memory segment, with offsets; the torn tail if any.
pub fn read_all_bytes(bytes: &[u8], mode: RecoveryMode) -> (Vec<(u64, Record)>, Result<Option<crate::TornTail>>) {
    let mut out = Vec::new();
    let mut r = match SegmentReader::from_bytes(bytes, Path::new("<memory>"), mode) {
        Ok(r) => r,
        Err(e) => return (out, Err(e)),
    };
    loop {
        match r.next_record() {
            Ok(Some(x)) => out.push(x),
            Ok(None) => return (out, Ok(r.torn_tail().cloned())),
            Err(e) => return (out, Err(e)),
        }
    }
}

/// Encodes a whole segment in memory: header, records, and a seal if asked.
/// Returns the bytes and the end offset of each record.
pub fn encode_segment(header: &FileHeader, records: &[Record], seal: bool) -> (Vec<u8>, Vec<u64>) {
    let mut b = header.encode().to_vec();
    let mut ends = Vec::new();
    for r in records {
        encode_framed(header.signature, r, &mut b);
        ends.push(b.len() as u64);
    }
    if seal {
        let s = Record::Seal(Seal {
            records: records.len() as u64,
            bytes: b.len() as u64,
            time_ns: 1_700_000_000_000_000_000,
            recovered: false,
        });
        encode_framed(header.signature, &s, &mut b);
        ends.push(b.len() as u64);
    }
    (b, ends)
}

/// A fixed, deterministic set with one record of every type and variant.
pub fn sample_records() -> Vec<Record> {
    let t = 1_700_000_000_000_000_000u64;
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    vec![
        Record::Mode(ModeChange {
            mode: DiskMode::InitialSync,
            time_ns: t,
        }),
        Record::Extent(Extent {
            op: ExtentOp::Write,
            failed: false,
            offset: 4096,
            len: 8192,
            time_ns: t + 1,
        }),
        Record::Extent(Extent {
            op: ExtentOp::Discard,
            failed: false,
            offset: 1 << 20,
            len: 1 << 20,
            time_ns: t + 2,
        }),
        Record::Extent(Extent {
            op: ExtentOp::WriteZeroes,
            failed: true,
            offset: 65536,
            len: 512,
            time_ns: t + 3,
        }),
        Record::Flush(Flush {
            fua: true,
            time_ns: t + 4,
        }),
        Record::Data(Data {
            offset: 0,
            flags: 0,
            data: pattern.clone(),
        }),
        Record::Data(Data {
            offset: 65536,
            flags: 0,
            data: pattern[..1000].to_vec(),
        }),
        Record::Lost(Lost {
            reason: LossReason::Overrun,
            range: None,
            time_ns: t + 5,
            detail: "cpu0 overrun 3".into(),
        }),
        Record::Lost(Lost {
            reason: LossReason::Error,
            range: Some((512, 1024)),
            time_ns: t + 6,
            detail: String::new(),
        }),
        Record::Mode(ModeChange {
            mode: DiskMode::Data,
            time_ns: t + 7,
        }),
        Record::Tag(Tag {
            seq: 1,
            kind: PointKind::Crash,
            aborted: false,
            time_ns: t + 8,
            freeze_ns: 1_500_000,
            group: None,
        }),
        Record::Tag(Tag {
            seq: 2,
            kind: PointKind::App,
            aborted: false,
            time_ns: t + 9,
            freeze_ns: 2_000_000,
            group: Some(Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)),
        }),
        Record::Tag(Tag {
            seq: 3,
            kind: PointKind::Fuzzy,
            aborted: true,
            time_ns: t + 10,
            freeze_ns: 0,
            group: None,
        }),
    ]
}

/// The disk id the fixtures use.
pub const FIXTURE_DISK: Uuid = Uuid::from_u128(0x9d1c_58a2_6f3e_4b7a_8c21_0e5f_d4a3_b6c7);

/// Appends one result line (JSON) to the file named by
/// `HRL_RELIABILITY_REPORT`, for `scripts/reliability.sh`'s table. Tests
/// call it after their last assertion, so a line means the test passed.
pub fn reliability_report(test: &str, runs: u64, faults: u64, verified: u64, lost: u64, note: &str) {
    let Ok(path) = std::env::var("HRL_RELIABILITY_REPORT") else {
        return;
    };
    let line = serde_json::json!({
        "test": test, "runs": runs, "faults": faults, "verified": verified, "lost": lost, "note": note,
    });
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}
