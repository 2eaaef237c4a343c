//! Format-level tests: round trips, torn tails, bit flips, unknown types.

use std::path::Path;

use hrl_format::record::{encode_framed, record_crc, FRAME_LEN};
use hrl_format::testutil::{encode_segment, read_all_bytes, sample_records};
use hrl_format::*;
use proptest::prelude::*;
use uuid::Uuid;

fn header() -> FileHeader {
    FileHeader::new(Uuid::new_v4(), 7, 65536, 512, 1 << 30)
}

fn arb_record() -> impl Strategy<Value = Record> {
    let op = prop_oneof![
        Just(ExtentOp::Write),
        Just(ExtentOp::Discard),
        Just(ExtentOp::WriteZeroes)
    ];
    let kind = prop_oneof![Just(PointKind::Crash), Just(PointKind::App), Just(PointKind::Fuzzy)];
    let reason = prop_oneof![
        Just(LossReason::Overrun),
        Just(LossReason::Restart),
        Just(LossReason::Resize),
        Just(LossReason::Unclean),
        Just(LossReason::Error)
    ];
    let mode = prop_oneof![
        Just(DiskMode::InitialSync),
        Just(DiskMode::Data),
        Just(DiskMode::Bitmap),
        Just(DiskMode::Resync),
        Just(DiskMode::Paused)
    ];
    prop_oneof![
        (op, any::<bool>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(op, failed, offset, len, time_ns)| {
            Record::Extent(Extent {
                op,
                failed,
                offset,
                len,
                time_ns,
            })
        }),
        (any::<bool>(), any::<u64>()).prop_map(|(fua, time_ns)| Record::Flush(Flush { fua, time_ns })),
        (
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..3000)
        )
            .prop_map(|(offset, flags, data)| Record::Data(Data { offset, flags, data })),
        (
            any::<u64>(),
            kind,
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(1u128..)
        )
            .prop_map(|(seq, kind, aborted, time_ns, freeze_ns, g)| Record::Tag(Tag {
                seq,
                kind,
                aborted,
                time_ns,
                freeze_ns,
                group: g.map(Uuid::from_u128)
            })),
        (
            reason,
            proptest::option::of((any::<u64>(), any::<u64>())),
            any::<u64>(),
            ".{0,40}"
        )
            .prop_map(|(reason, range, time_ns, detail)| Record::Lost(Lost {
                reason,
                range,
                time_ns,
                detail
            })),
        (mode, any::<u64>()).prop_map(|(mode, time_ns)| Record::Mode(ModeChange { mode, time_ns })),
        (any::<u128>(), any::<u64>(), any::<u32>(), ".{0,40}").prop_map(|(id, seq, members, name)| Record::Group(
            Group {
                id: Uuid::from_u128(id),
                seq,
                members,
                name
            }
        )),
        (".{0,40}", ".{0,40}").prop_map(|(host, name)| Record::Identity(Identity { host, name })),
        (any::<u64>(), ".{0,60}").prop_map(|(seq, text)| Record::Label(Label { seq, text })),
    ]
}

proptest! {
    #[test]
    fn every_record_type_round_trips(recs in proptest::collection::vec(arb_record(), 0..40)) {
        let h = header();
        let (bytes, ends) = encode_segment(&h, &recs, true);
        let (got, end) = read_all_bytes(&bytes, RecoveryMode::AbsoluteConsistency);
        prop_assert!(end.unwrap().is_none());
        prop_assert_eq!(got.len(), recs.len() + 1);
        for (i, r) in recs.iter().enumerate() {
            prop_assert_eq!(&got[i].1, r);
            let start = if i == 0 { HEADER_LEN as u64 } else { ends[i - 1] };
            prop_assert_eq!(got[i].0, start);
        }
        prop_assert!(matches!(got.last().unwrap().1, Record::Seal(_)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = read_all_bytes(&bytes, RecoveryMode::TolerateTornTail);
        let _ = read_all_bytes(&bytes, RecoveryMode::AbsoluteConsistency);
    }

    #[test]
    fn garbage_after_a_valid_header_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let mut bytes = header().encode().to_vec();
        bytes.extend_from_slice(&tail);
        let (a, _) = read_all_bytes(&bytes, RecoveryMode::TolerateTornTail);
        let (b, _) = read_all_bytes(&bytes, RecoveryMode::AbsoluteConsistency);
        // Both modes agree on every record they return.
        let n = a.len().min(b.len());
        prop_assert_eq!(&a[..n], &b[..n]);
    }
}

#[test]
fn torn_tail_at_every_offset_keeps_exactly_the_whole_records() {
    let h = header();
    let recs = sample_records();
    let (bytes, ends) = encode_segment(&h, &recs, false);
    for cut in HEADER_LEN..=bytes.len() {
        let cut64 = cut as u64;
        let whole = ends.iter().filter(|&&e| e <= cut64).count();
        let (got, tail) = read_all_bytes(&bytes[..cut], RecoveryMode::TolerateTornTail);
        let tail = tail.unwrap_or_else(|e| panic!("cut {cut}: tolerant reader failed: {e}"));
        assert_eq!(got.len(), whole, "cut at {cut}");
        for (i, (_, r)) in got.iter().enumerate() {
            assert_eq!(r, &recs[i], "cut at {cut}, record {i}");
        }
        let last_end = if whole == 0 { HEADER_LEN as u64 } else { ends[whole - 1] };
        match tail {
            None => assert_eq!(last_end, cut64, "cut at {cut}: no torn tail reported"),
            Some(t) => {
                assert_eq!(t.offset, last_end, "cut at {cut}");
                assert_eq!(t.dropped_bytes, cut64 - last_end, "cut at {cut}");
            }
        }
        // Absolute consistency: a cut at a record boundary is a clean (if
        // unsealed) file; anywhere else it is damage at the boundary.
        let (_, strict) = read_all_bytes(&bytes[..cut], RecoveryMode::AbsoluteConsistency);
        if last_end == cut64 {
            assert!(strict.is_ok(), "cut at {cut}");
        } else {
            assert_eq!(strict.unwrap_err().offset(), Some(last_end), "cut at {cut}");
        }
    }
}

#[test]
fn every_single_bit_flip_is_detected_and_never_yields_a_wrong_record() {
    let h = header();
    let mut recs = sample_records();
    // Keep the data small so the test flips every bit quickly.
    for r in recs.iter_mut() {
        if let Record::Data(d) = r {
            d.data.truncate(64);
        }
    }
    let (bytes, _) = encode_segment(&h, &recs, true);
    let (orig, _) = read_all_bytes(&bytes, RecoveryMode::AbsoluteConsistency);
    assert_eq!(orig.len(), recs.len() + 1);
    for bit in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        let (got, end) = read_all_bytes(&b, RecoveryMode::AbsoluteConsistency);
        assert!(end.is_err(), "flip of bit {bit} (byte {}) went undetected", bit / 8);
        assert_eq!(&got[..], &orig[..got.len()], "flip of bit {bit}: a record differs");
        let (got, end) = read_all_bytes(&b, RecoveryMode::TolerateTornTail);
        assert_eq!(
            &got[..],
            &orig[..got.len()],
            "tolerant, flip of bit {bit}: a record differs"
        );
        match end {
            Err(_) => {}
            Ok(Some(_)) => {}
            Ok(None) => panic!("tolerant reader did not report the flip of bit {bit}"),
        }
    }
}

fn raw_frame(sig: u64, rtype: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; FRAME_LEN];
    f[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    f[8] = rtype;
    let crc = record_crc(sig, &f[4..FRAME_LEN], payload);
    f[0..4].copy_from_slice(&crc.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn unknown_skippable_types_are_counted_and_mandatory_ones_refused() {
    let h = header();
    let recs = sample_records();
    let mut b = h.encode().to_vec();
    encode_framed(h.signature, &recs[0], &mut b);
    b.extend_from_slice(&raw_frame(h.signature, 60, b"a record from the future"));
    encode_framed(h.signature, &recs[1], &mut b);
    let mut r = SegmentReader::from_bytes(&b, Path::new("m"), RecoveryMode::AbsoluteConsistency).unwrap();
    assert_eq!(r.next_record().unwrap().unwrap().1, recs[0]);
    assert_eq!(r.next_record().unwrap().unwrap().1, recs[1]);
    assert!(r.next_record().unwrap().is_none());
    assert_eq!(r.unknown_skipped(), 1);

    let mut b = h.encode().to_vec();
    b.extend_from_slice(&raw_frame(h.signature, 200, b"must understand"));
    let (_, end) = read_all_bytes(&b, RecoveryMode::TolerateTornTail);
    let e = end.unwrap_err().to_string();
    assert!(e.contains("must be understood"), "{e}");
}

#[test]
fn identity_and_label_payloads_are_checked() {
    use hrl_format::record::{clip, rtype};
    // Lengths that do not add up, and text that is not UTF-8.
    for bad in [
        &[3u8, 0, 0, 0, 0, 0, 0, 0, b'a'][..],
        &[0u8, 0, 0, 0][..],
        &[1u8, 0, 0, 0, 0, 0, 0, 0, 0xff][..],
    ] {
        assert!(Record::decode_payload(rtype::IDENTITY, bad).is_err(), "{bad:?}");
    }
    assert!(Record::decode_payload(rtype::LABEL, &[1, 2, 3]).is_err());
    let mut l = 5u64.to_le_bytes().to_vec();
    l.push(0xc3);
    assert!(Record::decode_payload(rtype::LABEL, &l).is_err());
    // Over-long text is cut at a character boundary, never mid-character.
    let long = "é".repeat(200);
    let rec = Record::Label(Label {
        seq: 1,
        text: long.clone(),
    });
    let mut out = Vec::new();
    rec.encode_payload(&mut out);
    assert_eq!(out.len(), rec.payload_len());
    let Some(Record::Label(back)) = Record::decode_payload(rtype::LABEL, &out).unwrap() else {
        panic!()
    };
    assert_eq!(back.text, clip(&long));
    assert_eq!(back.text.len(), 254);
}

#[test]
fn stale_bytes_of_another_file_never_validate() {
    // The same records under another file's signature are rejected.
    let recs = sample_records();
    let (a, _) = encode_segment(&header(), &recs, false);
    let hb = header();
    let mut b = hb.encode().to_vec();
    b.extend_from_slice(&a[HEADER_LEN..]);
    let (got, end) = read_all_bytes(&b, RecoveryMode::AbsoluteConsistency);
    assert!(got.is_empty());
    assert!(end.is_err());
}

#[test]
fn bytes_after_the_seal_are_damage() {
    let h = header();
    let (mut b, _) = encode_segment(&h, &sample_records(), true);
    encode_framed(h.signature, &sample_records()[1], &mut b);
    let (_, end) = read_all_bytes(&b, RecoveryMode::TolerateTornTail);
    assert!(end.unwrap_err().to_string().contains("after the seal"));
}

#[test]
fn zero_filled_tail_is_a_torn_tail() {
    let h = header();
    let (mut b, ends) = encode_segment(&h, &sample_records(), false);
    b.extend_from_slice(&[0u8; 8192]);
    let (got, end) = read_all_bytes(&b, RecoveryMode::TolerateTornTail);
    assert_eq!(got.len(), sample_records().len());
    let t = end.unwrap().unwrap();
    assert_eq!(t.offset, *ends.last().unwrap());
    assert_eq!(t.dropped_bytes, 8192);
}
