//! Writer, recovery, follower and replay tests on real files.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use hrl_format::testutil::sample_records;
use hrl_format::*;
use uuid::Uuid;

fn cfg(dir: &std::path::Path, disk: Uuid) -> LogConfig {
    let mut c = LogConfig::new(dir, disk, 65536, 512, 1 << 30);
    c.rotate_bytes = 16 * 1024;
    c
}

fn data(offset: u64, fill: u8, len: usize) -> Record {
    Record::Data(Data {
        offset,
        flags: 0,
        data: vec![fill; len],
    })
}

fn tag(seq: u64) -> Record {
    Record::Tag(Tag {
        seq,
        kind: PointKind::Crash,
        aborted: false,
        time_ns: now_ns(),
        freeze_ns: 1000,
        group: None,
    })
}

fn read_log(dir: &std::path::Path, disk: Uuid) -> Vec<Record> {
    let mut out = Vec::new();
    for s in list_segments(dir, Some(disk)).unwrap() {
        read_segment(&s.path, RecoveryMode::AbsoluteConsistency, |_, _, r| {
            out.push(r.clone());
            Ok(())
        })
        .unwrap();
    }
    out
}

#[test]
fn writer_rotates_seals_and_sets_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::new_v4();
    let mut w = LogWriter::open(cfg(dir.path(), disk)).unwrap();
    for i in 0..20u64 {
        w.append(&data(i * 65536, i as u8, 4000)).unwrap();
    }
    w.append(&data(0, 0, 10)).unwrap();
    let open_seq = w.current_seq();
    let open_path = dir.path().join(segment_file_name(disk, open_seq));
    assert_eq!(
        std::fs::metadata(&open_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    w.close().unwrap();
    let segs = list_segments(dir.path(), Some(disk)).unwrap();
    assert!(
        segs.len() >= 4,
        "16 KiB rotation should give several segments, got {}",
        segs.len()
    );
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(s.seq, i as u64 + 1);
        assert_eq!(std::fs::metadata(&s.path).unwrap().permissions().mode() & 0o777, 0o400);
    }
    let recs: Vec<_> = read_log(dir.path(), disk)
        .into_iter()
        .filter(|r| !matches!(r, Record::Seal(_)))
        .collect();
    assert_eq!(recs.len(), 21);
    assert_eq!(recs[19], data(19 * 65536, 19, 4000));
}

/// A forwarder deletes a segment as soon as the gateway holds it whole,
/// which can be before the writer has made it read-only: rotation must not
/// fail on a segment already gone (it did, "chmod 0400: No such file", in
/// the gateway bench).
#[test]
fn rotation_survives_the_sealed_segment_being_shipped_and_deleted_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::new_v4();
    let mut w = LogWriter::open(cfg(dir.path(), disk)).unwrap();
    w.append(&data(0, 1, 4000)).unwrap();
    w.flush().unwrap();
    let first = dir.path().join(segment_file_name(disk, w.current_seq()));
    // The seal is not written yet; deleting the file now is what a shipper
    // does in the instant between the seal becoming visible and the chmod.
    std::fs::remove_file(&first).unwrap();
    w.rotate().unwrap();
    w.append(&tag(1)).unwrap();
    let next = w.current_seq();
    w.close().unwrap();
    let segs = list_segments(dir.path(), Some(disk)).unwrap();
    assert_eq!(segs.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![next]);
    assert_eq!(
        std::fs::metadata(&segs[0].path).unwrap().permissions().mode() & 0o777,
        0o400
    );
}

#[test]
fn a_sealed_segment_is_known_from_its_tail_and_an_unsealed_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::new_v4();
    let mut c = cfg(dir.path(), disk);
    c.rotate_bytes = 1 << 30;
    let mut w = LogWriter::open(c.clone()).unwrap();
    for r in sample_records() {
        w.append(&r).unwrap();
    }
    w.flush().unwrap();
    let path = dir.path().join(segment_file_name(disk, w.current_seq()));
    assert!(
        !hrl_format::reader::ends_sealed(&path).unwrap(),
        "a segment being written"
    );
    w.close().unwrap();
    assert!(hrl_format::reader::ends_sealed(&path).unwrap());
    // A flipped bit in the seal, or bytes after it: not sealed (recovery
    // then reads the file and reports what it finds).
    let good = std::fs::read(&path).unwrap();
    let copy = dir.path().join("copy.hrl");
    for (i, what) in [(good.len() - 30, "a flipped bit"), (good.len(), "a byte after")] {
        let mut b = good.clone();
        if i < b.len() {
            b[i] ^= 1;
        } else {
            b.push(0);
        }
        std::fs::write(&copy, &b).unwrap();
        assert!(!hrl_format::reader::ends_sealed(&copy).unwrap(), "{what}");
    }
}

#[test]
fn second_writer_for_the_same_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::new_v4();
    let _w = LogWriter::open(cfg(dir.path(), disk)).unwrap();
    let e = LogWriter::open(cfg(dir.path(), disk))
        .err()
        .expect("second writer must fail");
    assert!(e.to_string().contains("another writer"), "{e}");
    // Another disk in the same spool is fine.
    LogWriter::open(cfg(dir.path(), Uuid::new_v4())).unwrap();
}

#[test]
fn crashed_writer_is_recovered_torn_tail_cut_and_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::new_v4();
    let mut c = cfg(dir.path(), disk);
    c.rotate_bytes = 1 << 30;
    let mut w = LogWriter::open(c.clone()).unwrap();
    for r in sample_records() {
        w.append(&r).unwrap();
    }
    w.flush().unwrap();
    let seq = w.current_seq();
    drop(w); // crash: no seal
    let path = dir.path().join(segment_file_name(disk, seq));
    let good_len = std::fs::metadata(&path).unwrap().len();
    // Half a record at the tail, as a crash mid-write leaves it.
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0x55; 20]).unwrap();
    drop(f);

    let mut w = LogWriter::open(c).unwrap();
    let rec = w.recovered().to_vec();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].records, sample_records().len() as u64);
    let t = rec[0].torn_tail.clone().expect("torn tail reported");
    assert_eq!((t.offset, t.dropped_bytes), (good_len, 20));
    assert_eq!(w.current_seq(), seq + 1);
    w.append(&tag(9)).unwrap();
    w.close().unwrap();
    let all = read_log(dir.path(), disk);
    let seals = all
        .iter()
        .filter(|r| matches!(r, Record::Seal(s) if s.recovered))
        .count();
    assert_eq!(seals, 1);
    assert_eq!(
        all.iter().filter(|r| !matches!(r, Record::Seal(_))).count(),
        sample_records().len() + 1
    );
}

#[test]
fn crashed_writer_with_a_torn_header_leaves_an_empty_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::new_v4();
    let path = dir.path().join(segment_file_name(disk, 1));
    std::fs::write(&path, &MAGIC[..]).unwrap();
    let w = LogWriter::open(cfg(dir.path(), disk)).unwrap();
    assert!(w.recovered()[0].header_rewritten);
    assert_eq!(w.current_seq(), 2);
    w.close().unwrap();
    let s = read_segment(&path, RecoveryMode::AbsoluteConsistency, |_, _, _| Ok(())).unwrap();
    assert!(s.sealed);
}

#[test]
fn tag_is_durable_when_append_returns() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::new_v4();
    let mut w = LogWriter::open(cfg(dir.path(), disk)).unwrap();
    let t = tag(1);
    w.append(&data(0, 1, 100)).unwrap();
    w.append(&t).unwrap();
    // Visible to another reader without any flush call.
    let recs = {
        let mut out = Vec::new();
        for s in list_segments(dir.path(), Some(disk)).unwrap() {
            read_segment(&s.path, RecoveryMode::TolerateTornTail, |_, _, r| {
                out.push(r.clone());
                Ok(())
            })
            .unwrap();
        }
        out
    };
    assert_eq!(recs, vec![data(0, 1, 100), t]);
}

#[test]
fn follower_sees_every_record_once_across_rotations_and_a_writer_crash() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::new_v4();
    let c = cfg(dir.path(), disk);
    let d2 = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        let mut expected = Vec::new();
        let mut w = LogWriter::open(c.clone()).unwrap();
        for i in 0..300u64 {
            let r = if i % 25 == 24 {
                tag(i)
            } else {
                data(i * 65536, i as u8, 1 + (i as usize * 37) % 3000)
            };
            w.append(&r).unwrap();
            expected.push(r);
            if i % 10 == 0 {
                w.flush().unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            if i == 150 {
                // Crash half-way through a record, then a new writer.
                w.flush().unwrap();
                drop(w);
                let p = list_segments(&d2, Some(disk)).unwrap().pop().unwrap().path;
                // A sealed (rotated) file is read-only; a crash leaves the
                // newest one writable, so only tear that one.
                if std::fs::metadata(&p).unwrap().permissions().mode() & 0o200 != 0 {
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(p)
                        .unwrap()
                        .write_all(&[1, 2, 3])
                        .unwrap();
                }
                std::thread::sleep(Duration::from_millis(30));
                w = LogWriter::open(c.clone()).unwrap();
            }
        }
        w.close().unwrap();
        expected
    });
    let mut f = Follower::new(dir.path(), disk, Cursor::default());
    let mut got = Vec::new();
    let mut seals = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 300 && std::time::Instant::now() < deadline {
        if let Some(x) = f.next_timeout(Duration::from_millis(100)).unwrap() {
            match x.record {
                Record::Seal(_) => seals += 1,
                r => got.push(r),
            }
        }
    }
    let expected = writer.join().unwrap();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
    assert!(seals >= 2);
    // A follower restarted at the saved cursor continues with nothing new.
    let mut g = Follower::new(dir.path(), disk, f.cursor());
    while let Some(x) = g.try_next().unwrap() {
        assert!(matches!(x.record, Record::Seal(_)), "re-read {:?}", x.record);
    }
}

#[test]
fn follower_reports_a_missing_segment() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::new_v4();
    let mut w = LogWriter::open(cfg(dir.path(), disk)).unwrap();
    for i in 0..20u64 {
        w.append(&data(i * 65536, 1, 4000)).unwrap();
    }
    w.close().unwrap();
    std::fs::remove_file(dir.path().join(segment_file_name(disk, 2))).unwrap();
    let mut f = Follower::new(dir.path(), disk, Cursor::default());
    let err = loop {
        match f.try_next() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("gap not reported"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, FormatError::MissingSegment { seq: 2, .. }), "{err}");
}

#[test]
fn replay_rebuilds_each_point_and_ignores_data_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::new_v4();
    let mut c = cfg(dir.path(), disk);
    c.device_size = 8 * 65536;
    let mut w = LogWriter::open(c).unwrap();
    w.append(&data(0, 1, 65536)).unwrap();
    w.append(&data(65536, 2, 65536)).unwrap();
    w.append(&tag(1)).unwrap();
    w.append(&data(0, 3, 65536)).unwrap();
    w.append(&Record::Tag(Tag {
        seq: 2,
        kind: PointKind::Crash,
        aborted: true,
        time_ns: 0,
        freeze_ns: 0,
        group: None,
    }))
    .unwrap();
    w.append(&tag(3)).unwrap();
    w.append(&data(65536, 4, 65536)).unwrap(); // after the last tag
    w.close().unwrap();
    let img = dir.path().join("img");
    let r = replay(dir.path(), None, Some(1), &img).unwrap();
    assert_eq!(r.data_records, 2);
    let b = std::fs::read(&img).unwrap();
    assert_eq!(b.len(), 8 * 65536);
    assert!(b[..65536].iter().all(|&x| x == 1) && b[65536..131072].iter().all(|&x| x == 2));
    let img2 = dir.path().join("img2");
    let r = replay(dir.path(), None, None, &img2).unwrap();
    assert_eq!(r.point_seq, 3);
    let b = std::fs::read(&img2).unwrap();
    assert!(b[..65536].iter().all(|&x| x == 3) && b[65536..131072].iter().all(|&x| x == 2));
    assert!(b[131072..].iter().all(|&x| x == 0));
    let e = replay(dir.path(), None, Some(2), &dir.path().join("x")).unwrap_err();
    assert!(e.to_string().contains("aborted"), "{e}");
    let e = replay(dir.path(), None, Some(99), &dir.path().join("x")).unwrap_err();
    assert!(e.to_string().contains("no point 99"), "{e}");
}

#[test]
fn stats_count_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::new_v4();
    let mut w = LogWriter::open(cfg(dir.path(), disk)).unwrap();
    for r in sample_records() {
        w.append(&r).unwrap();
    }
    w.close().unwrap();
    let s = stat_path(dir.path()).unwrap();
    assert_eq!(s.records_by_type["extent"], 3);
    assert_eq!(s.records_by_type["tag"], 3);
    assert_eq!(s.records_by_type["data"], 2);
    assert_eq!(s.data_bytes, 4096 + 1000);
    assert_eq!(s.dirtied_bytes, 8192 + (1 << 20) + 512);
    assert_eq!(s.failed_writes, 1);
    assert_eq!(s.losses.len(), 2);
    assert_eq!(s.sealed_files, 1);
}

#[test]
fn every_segment_starts_with_the_disk_identity() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::new_v4();
    let mut c = cfg(dir.path(), disk);
    c.identity = Some(Identity {
        host: "host-a".into(),
        name: "data".into(),
    });
    let mut w = LogWriter::open(c).unwrap();
    for i in 0..20u64 {
        w.append(&data(i * 65536, 1, 4000)).unwrap();
    }
    w.close().unwrap();
    let segs = list_segments(dir.path(), Some(disk)).unwrap();
    assert!(segs.len() >= 3, "{} segments", segs.len());
    for s in &segs {
        let id = segment_identity(&s.path).unwrap().unwrap();
        assert_eq!(
            (id.host.as_str(), id.name.as_str()),
            ("host-a", "data"),
            "{}",
            s.path.display()
        );
    }
    let recs = read_log(dir.path(), disk);
    let datas = recs.iter().filter(|r| matches!(r, Record::Data(_))).count();
    assert_eq!(datas, 20);
}

#[test]
fn sequence_continues_after_every_segment_was_shipped_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::new_v4();
    let mut w = LogWriter::open(cfg(dir.path(), disk)).unwrap();
    for i in 0..10u64 {
        w.append(&data(i * 65536, 1, 4000)).unwrap();
    }
    w.close().unwrap();
    let last = list_segments(dir.path(), Some(disk)).unwrap().last().unwrap().seq;
    for s in list_segments(dir.path(), Some(disk)).unwrap() {
        std::fs::remove_file(s.path).unwrap();
    }
    let mut w = LogWriter::open(cfg(dir.path(), disk)).unwrap();
    assert_eq!(w.current_seq(), last + 1);
    w.append(&tag(1)).unwrap();
    w.close().unwrap();
    assert_eq!(list_segments(dir.path(), Some(disk)).unwrap()[0].seq, last + 1);
}
