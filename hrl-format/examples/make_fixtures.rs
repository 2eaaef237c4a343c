//! Writes the `.hrl` fixtures under `fixtures/hrl/` (run from the repo root:
//! `cargo run -p hrl-format --example make_fixtures -- fixtures/hrl`).
//!
//! Fixtures are committed and never regenerated for an existing version: the
//! compatibility test reads them so that later builds keep reading files
//! written by this one. Add new files for new versions instead.

use hrl_format::record::{encode_framed, record_crc, Record, FRAME_LEN};
use hrl_format::testutil::{encode_segment, sample_records, FIXTURE_DISK};
use hrl_format::FileHeader;
use std::path::{Path, PathBuf};

/// Writes a fixture unless it exists: committed fixtures never change.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if path.exists() {
        println!("{}: exists, kept", path.display());
        return Ok(());
    }
    std::fs::write(path, bytes)
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fixtures/hrl".into()));
    std::fs::create_dir_all(&dir)?;
    let h = FileHeader::new(FIXTURE_DISK, 1, 65536, 512, 1 << 30);
    let recs = sample_records();

    let (good, _) = encode_segment(&h, &recs, true);
    write_new(&dir.join("good-v1.hrl"), &good)?;

    let (unsealed, _) = encode_segment(&h, &recs, false);
    let torn = &unsealed[..unsealed.len() - 10];
    write_new(&dir.join("torn-v1.hrl"), torn)?;

    let (mut corrupt, ends) = encode_segment(&h, &recs, true);
    // Flip one bit in the middle of the first Data payload (record 5).
    let start = ends[4] as usize;
    corrupt[start + FRAME_LEN + 16 + 100] ^= 0x04;
    write_new(&dir.join("corrupt-v1.hrl"), &corrupt)?;
    println!("corrupt-v1.hrl: damaged record at offset {start}");

    // A file from a newer minor version (1.1) with a record type this build
    // does not know, between two known records.
    let mut newer = h.encode().to_vec();
    newer[10..12].copy_from_slice(&1u16.to_le_bytes());
    let crc = crc32fast::hash(&newer[..124]);
    newer[124..128].copy_from_slice(&crc.to_le_bytes());
    encode_framed(h.signature, &recs[0], &mut newer);
    let payload = b"a record type added by version 1.1";
    let mut f = vec![0u8; FRAME_LEN];
    f[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    f[8] = 60;
    let c = record_crc(h.signature, &f[4..FRAME_LEN], payload);
    f[0..4].copy_from_slice(&c.to_le_bytes());
    newer.extend_from_slice(&f);
    newer.extend_from_slice(payload);
    encode_framed(h.signature, &recs[1], &mut newer);
    let seal = Record::Seal(hrl_format::Seal {
        records: 3,
        bytes: newer.len() as u64,
        time_ns: 1_700_000_000_000_000_000,
        recovered: false,
    });
    encode_framed(h.signature, &seal, &mut newer);
    write_new(&dir.join("newer-minor-v1.1.hrl"), &newer)?;

    // Version 1.2: an Identity record first, a Label before a tag.
    let h12 = FileHeader::new(FIXTURE_DISK, 2, 65536, 512, 1 << 30);
    write_new(
        &dir.join("good-v1.2.hrl"),
        &encode_segment(&h12, &v12_records(), true).0,
    )?;
    Ok(())
}

/// The 1.2 fixture's records: identity, a data record, a label, its tag.
fn v12_records() -> Vec<Record> {
    let recs = sample_records();
    vec![
        Record::Identity(hrl_format::Identity {
            host: "db-01.example".into(),
            name: "pgdata".into(),
        }),
        recs[5].clone(),
        Record::Label(hrl_format::Label {
            seq: 9,
            text: "lsn=0/3000060".into(),
        }),
        Record::Tag(hrl_format::Tag {
            seq: 9,
            kind: hrl_format::PointKind::App,
            aborted: false,
            time_ns: 1_700_000_000_000_000_100,
            freeze_ns: 1_500_000,
            group: None,
        }),
    ]
}
