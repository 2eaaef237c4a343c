//! Backward compatibility: files written by version 1.0 (committed under
//! fixtures/hrl/) must read the same forever.

use std::path::PathBuf;

use hrl_format::testutil::{sample_records, FIXTURE_DISK};
use hrl_format::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/hrl")
        .join(name)
}

fn read(name: &str, mode: RecoveryMode) -> (Vec<Record>, Result<SegmentSummary>) {
    let mut out = Vec::new();
    let r = read_segment(&fixture(name), mode, |h, _, r| {
        assert_eq!(h.disk_id, FIXTURE_DISK);
        out.push(r.clone());
        Ok(())
    });
    (out, r)
}

#[test]
fn good_v1_reads_every_record() {
    let (recs, sum) = read("good-v1.hrl", RecoveryMode::AbsoluteConsistency);
    let sum = sum.unwrap();
    assert!(sum.sealed);
    assert_eq!(&recs[..recs.len() - 1], &sample_records()[..]);
    let h = read_header(&fixture("good-v1.hrl")).unwrap();
    assert_eq!(
        (h.major, h.minor, h.seq, h.chunk_size, h.logical_block_size),
        (1, 0, 1, 65536, 512)
    );
    assert_eq!(h.device_size, 1 << 30);
}

#[test]
fn torn_v1_keeps_all_whole_records() {
    let (recs, sum) = read("torn-v1.hrl", RecoveryMode::TolerateTornTail);
    let sum = sum.unwrap();
    let all = sample_records();
    assert_eq!(recs, all[..all.len() - 1].to_vec());
    let t = sum.torn_tail.unwrap();
    assert_eq!(t.dropped_bytes, 60 - 10);
    let (_, strict) = read("torn-v1.hrl", RecoveryMode::AbsoluteConsistency);
    assert_eq!(strict.unwrap_err().offset(), Some(t.offset));
}

#[test]
fn corrupt_v1_is_an_error_at_the_damaged_record() {
    for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::AbsoluteConsistency] {
        let (recs, sum) = read("corrupt-v1.hrl", mode);
        assert_eq!(recs, sample_records()[..5].to_vec());
        let e = sum.unwrap_err();
        assert_eq!(e.offset(), Some(316), "{e}");
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
    }
}

#[test]
fn v1_2_names_its_disk_and_labels_a_point() {
    let (recs, sum) = read("good-v1.2.hrl", RecoveryMode::AbsoluteConsistency);
    assert_eq!(sum.unwrap().unknown_skipped, 0);
    assert_eq!(read_header(&fixture("good-v1.2.hrl")).unwrap().minor, 2);
    assert_eq!(
        recs[0],
        Record::Identity(Identity {
            host: "db-01.example".into(),
            name: "pgdata".into()
        })
    );
    assert_eq!(
        segment_identity(&fixture("good-v1.2.hrl")).unwrap().map(|i| i.name),
        Some("pgdata".to_string())
    );
    assert_eq!(segment_identity(&fixture("good-v1.hrl")).unwrap(), None);
    let stats = stat_path(&fixture("good-v1.2.hrl")).unwrap();
    assert_eq!(stats.tags[0].label.as_deref(), Some("lsn=0/3000060"));
}

#[test]
fn newer_minor_version_skips_unknown_records() {
    let (recs, sum) = read("newer-minor-v1.1.hrl", RecoveryMode::AbsoluteConsistency);
    let sum = sum.unwrap();
    assert_eq!(sum.unknown_skipped, 1);
    assert_eq!(&recs[..2], &sample_records()[..2]);
    assert_eq!(read_header(&fixture("newer-minor-v1.1.hrl")).unwrap().minor, 1);
}
