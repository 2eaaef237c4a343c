//! Spools written by test code, as an agent would write them: full copies,
//! random, repeated and zero chunks, tags (aborted ones too).

use std::path::Path;

use hrl_format::{Data, Identity, LogConfig, LogWriter, PointKind, Record, Tag};
use uuid::Uuid;

use crate::Rng;

/// The chunk size of test spools.
pub const CHUNK: u32 = 65536;

/// Writes one disk's spool.
pub struct SpoolWriter {
    pub disk: Uuid,
    pub chunks: u64,
    /// Length of the last chunk (a device that is not a whole number of chunks).
    pub last_len: usize,
    pub rng: Rng,
    w: LogWriter,
}

impl SpoolWriter {
    /// A disk of `chunks` 64 KiB chunks, segments rotated at `rotate` bytes.
    pub fn new(dir: &Path, disk: Uuid, chunks: u64, rotate: u64, seed: u64) -> Self {
        Self::with_last_len(dir, disk, chunks, CHUNK as usize, rotate, seed)
    }

    /// [`SpoolWriter::new`] with a short last chunk of `last_len` bytes.
    pub fn with_last_len(dir: &Path, disk: Uuid, chunks: u64, last_len: usize, rotate: u64, seed: u64) -> Self {
        Self::open(dir, disk, chunks, last_len, rotate, seed, None)
    }

    /// [`SpoolWriter::new`] for disk `host/name`: every segment starts with
    /// an Identity record, as the agent writes it.
    pub fn named(dir: &Path, disk: Uuid, chunks: u64, seed: u64, host: &str, name: &str) -> Self {
        Self::named_rotating(dir, disk, chunks, seed, (host, name), 8 << 20)
    }

    /// [`SpoolWriter::named`] with segments rotated at `rotate` bytes.
    pub fn named_rotating(
        dir: &Path,
        disk: Uuid,
        chunks: u64,
        seed: u64,
        (host, name): (&str, &str),
        rotate: u64,
    ) -> Self {
        let id = Identity {
            host: host.into(),
            name: name.into(),
        };
        Self::open(dir, disk, chunks, CHUNK as usize, rotate, seed, Some(id))
    }

    fn open(
        dir: &Path,
        disk: Uuid,
        chunks: u64,
        last_len: usize,
        rotate: u64,
        seed: u64,
        identity: Option<Identity>,
    ) -> Self {
        let size = (chunks - 1) * CHUNK as u64 + last_len as u64;
        let mut cfg = LogConfig::new(dir, disk, CHUNK, 512, size);
        cfg.rotate_bytes = rotate;
        cfg.identity = identity;
        SpoolWriter {
            disk,
            chunks,
            last_len,
            rng: Rng::new(seed),
            w: LogWriter::open(cfg).expect("open spool writer"),
        }
    }

    /// Bytes in chunk `c`.
    pub fn len_of(&self, c: u64) -> usize {
        if c == self.chunks - 1 {
            self.last_len
        } else {
            CHUNK as usize
        }
    }

    pub fn data(&mut self, c: u64, data: Vec<u8>) {
        self.w
            .append(&Record::Data(Data {
                offset: c * CHUNK as u64,
                flags: 0,
                data,
            }))
            .expect("append data");
    }

    pub fn zero(&mut self, c: u64) {
        self.w
            .append(&Record::Data(Data {
                offset: c * CHUNK as u64,
                flags: Data::ZERO,
                data: Vec::new(),
            }))
            .expect("append zero");
    }

    /// Chunk `c` with random content.
    pub fn random(&mut self, c: u64) {
        let d = self.rng.bytes(self.len_of(c));
        self.data(c, d);
    }

    /// Writes `data` over the disk from chunk 0 (zero chunks as zero
    /// records): a point of a disk image built by the test.
    pub fn image(&mut self, data: &[u8]) {
        for c in 0..self.chunks {
            let at = (c * CHUNK as u64) as usize;
            let d = &data[at..(at + self.len_of(c))];
            if d.iter().all(|&b| b == 0) {
                self.zero(c);
            } else {
                self.data(c, d.to_vec());
            }
        }
    }

    /// Every chunk with random content (an initial copy).
    pub fn full_copy(&mut self) {
        for c in 0..self.chunks {
            self.random(c);
        }
    }

    /// A random chunk index.
    pub fn any_chunk(&mut self) -> u64 {
        self.rng.below(self.chunks)
    }

    /// A crash point's tag (taken now), or an aborted one.
    pub fn tag(&mut self, seq: u64, aborted: bool) {
        self.tag_at(seq, aborted, hrl_format::now_ns());
    }

    /// [`SpoolWriter::tag`] with the time the point was taken.
    pub fn tag_at(&mut self, seq: u64, aborted: bool, time_ns: u64) {
        self.w
            .append(&Record::Tag(Tag {
                seq,
                kind: PointKind::Crash,
                aborted,
                time_ns,
                freeze_ns: 1000,
                group: None,
            }))
            .expect("append tag");
    }

    /// A point of `kind` that is member `g` of a consistency-group point
    /// (the Group record, then the tag naming it).
    pub fn tag_group(&mut self, seq: u64, kind: PointKind, g: &hrl_format::Group) {
        self.w.append(&Record::Group(g.clone())).expect("append group");
        self.w
            .append(&Record::Tag(Tag {
                seq,
                kind,
                aborted: false,
                time_ns: hrl_format::now_ns(),
                freeze_ns: 1000,
                group: Some(g.id),
            }))
            .expect("append tag");
    }

    /// A mode change, as the agent logs it.
    pub fn mode(&mut self, mode: hrl_format::DiskMode) {
        self.w
            .append(&Record::Mode(hrl_format::ModeChange {
                mode,
                time_ns: hrl_format::now_ns(),
            }))
            .expect("append mode");
    }

    /// A hook's label for point `seq` (the next tag).
    pub fn label(&mut self, seq: u64, text: &str) {
        self.w
            .append(&Record::Label(hrl_format::Label { seq, text: text.into() }))
            .expect("append label");
    }

    /// `points` points of `per_point` random chunks each after a full
    /// copy; returns the point sequences.
    pub fn simple(mut self, points: u64, per_point: u64) -> Vec<u64> {
        self.full_copy();
        for p in 1..=points {
            for _ in 0..per_point {
                let c = self.any_chunk();
                self.random(c);
            }
            self.tag(p, false);
        }
        self.close();
        (1..=points).collect()
    }

    pub fn close(self) {
        self.w.close().expect("close spool writer");
    }
}
