//! Follower: reads one disk's segments in a spool directory as they are
//! written, from a cursor, across rotations and writer crashes.
//!
//! A record is returned only once all its bytes are in the file and its
//! checksum holds. Short reads mean "not written yet" and the follower waits.
//! When a newer segment exists and the current one still ends in an
//! incomplete record, the writer crashed there; the follower drops that torn
//! tail (counted in [`Follower::abandoned_tails`]) and moves on, which is what
//! writer recovery does to the file too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::direct_read::{ReadBytes, SpoolFile};
use crate::error::{FormatError, Result};
use crate::header::FileHeader;
use crate::reader::{check_frame, frame_payload_len, header_error, FrameCheck};
use crate::record::{Record, FRAME_LEN, MAX_PAYLOAD};
use crate::spool::{list_segments, segment_file_name};

/// Where a follower is: segment sequence and byte offset of the next record
/// in it. Offset 0 means "the first record" (just after the header).
/// Sequence 0 means "the oldest segment present".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub seq: u64,
    pub offset: u64,
}

/// A record read by a follower.
#[derive(Debug, Clone)]
pub struct Followed {
    /// Segment the record is in.
    pub seq: u64,
    /// Offset at which the record starts.
    pub offset: u64,
    /// Cursor just after this record (after a seal: the next segment).
    pub next: Cursor,
    pub header: FileHeader,
    pub record: Record,
}

struct Open {
    seq: u64,
    path: PathBuf,
    file: SpoolFile,
    header: FileHeader,
    pos: u64,
    /// Length of the file when last looked at: records below it are read
    /// without another stat.
    len: u64,
    /// Read-ahead: `buf` holds the file's bytes from `buf_off`.
    buf: Option<ReadBytes>,
    buf_off: u64,
}

/// Bytes read ahead per read: a follower reads a segment in large reads,
/// not two small reads per record.
/// 4 MiB less a block, so that a direct read starting inside a block fits
/// in two huge pages ([`crate::direct_read::AlignedBuf`]).
const READ_AHEAD: usize = (4 << 20) - 4096;

impl Open {
    /// `n` bytes at `pos`, or `None` when the file is shorter. `fresh`:
    /// stat and read again whatever was buffered.
    fn bytes(&mut self, pos: u64, n: usize, fresh: bool) -> Result<Option<&[u8]>> {
        let end = pos + n as u64;
        if fresh || end > self.len {
            self.len = self
                .file
                .file_len()
                .map_err(|e| FormatError::io(&self.path, "stat", e))?;
            if end > self.len {
                return Ok(None);
            }
        }
        let held = self.buf.as_ref().map_or(0, |b| b.len() as u64);
        let covered = self.buf_off <= pos && end <= self.buf_off + held;
        if fresh || !covered {
            self.buf = None;
            let want = (n.max(READ_AHEAD) as u64).min(self.len - pos) as usize;
            let got = self
                .file
                .read_range(pos, want)
                .map_err(|e| FormatError::io(&self.path, "read", e))?;
            self.buf = Some(got);
            self.buf_off = pos;
        }
        let a = (pos - self.buf_off) as usize;
        Ok(self.buf.as_deref().map(|b| &b[a..a + n]))
    }
}

/// Tails one disk's log in a spool directory.
pub struct Follower {
    dir: PathBuf,
    disk: Uuid,
    cursor: Cursor,
    open: Option<Open>,
    abandoned: u64,
    /// How long [`Follower::next_timeout`] sleeps between looks.
    pub poll: Duration,
    /// Read segments with `O_DIRECT` ([`crate::direct_read`]): for an
    /// agent's spool, whose writer writes directly; not for files written
    /// through the page cache.
    pub direct: bool,
    frame: [u8; FRAME_LEN],
}

enum Step {
    Got(Followed),
    /// Nothing more yet.
    Wait,
    /// Moved to another segment; look again.
    Again,
}

impl Follower {
    /// A follower of `disk` in `dir` starting at `start`.
    pub fn new(dir: impl Into<PathBuf>, disk: Uuid, start: Cursor) -> Self {
        Follower {
            dir: dir.into(),
            disk,
            cursor: start,
            open: None,
            abandoned: 0,
            poll: Duration::from_millis(20),
            direct: false,
            frame: [0u8; FRAME_LEN],
        }
    }

    /// The position after the last record returned.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Torn tails dropped because a crashed writer abandoned a segment.
    pub fn abandoned_tails(&self) -> u64 {
        self.abandoned
    }

    /// The next record if one is complete now, without waiting.
    pub fn try_next(&mut self) -> Result<Option<Followed>> {
        loop {
            match self.step()? {
                Step::Got(f) => return Ok(Some(f)),
                Step::Wait => return Ok(None),
                Step::Again => continue,
            }
        }
    }

    /// The next record, waiting up to `timeout` for one to be written.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Followed>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.try_next()? {
                return Ok(Some(f));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(self.poll.min(deadline - now));
        }
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(segment_file_name(self.disk, seq))
    }

    fn newer_exists(&self, seq: u64) -> bool {
        self.segment_path(seq + 1).exists()
    }

    /// Opens the segment the cursor points at, if it exists.
    fn open_current(&mut self) -> Result<bool> {
        if self.cursor.seq == 0 {
            match list_segments(&self.dir, Some(self.disk))?.first() {
                Some(s) => self.cursor = Cursor { seq: s.seq, offset: 0 },
                None => return Ok(false),
            }
        }
        let path = self.segment_path(self.cursor.seq);
        let file = match SpoolFile::open(&path, self.direct) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let segs = list_segments(&self.dir, Some(self.disk))?;
                if let Some(first_newer) = segs.iter().find(|s| s.seq > self.cursor.seq) {
                    return Err(FormatError::MissingSegment {
                        dir: self.dir.clone(),
                        disk: self.disk,
                        seq: self.cursor.seq,
                        detail: format!(
                            "the follower's cursor is there but the next segment present is {}",
                            first_newer.seq
                        ),
                    });
                }
                return Ok(false);
            }
            Err(e) => return Err(FormatError::io(&path, "open", e)),
        };
        let hbuf = file
            .read_upto(0, 4096)
            .map_err(|e| FormatError::io(&path, "read header", e))?;
        let header = match FileHeader::decode(&hbuf) {
            Ok(h) => h,
            Err(crate::header::HeaderError::TooShort(_)) if !self.newer_exists(self.cursor.seq) => {
                // The writer is creating it right now.
                return Ok(false);
            }
            Err(e) => return Err(header_error(&path, e)),
        };
        if header.disk_id != self.disk || header.seq != self.cursor.seq {
            return Err(FormatError::corrupt(
                &path,
                0,
                format!(
                    "header names disk {} seq {}, the file name says disk {} seq {}",
                    header.disk_id, header.seq, self.disk, self.cursor.seq
                ),
            ));
        }
        let pos = if self.cursor.offset == 0 {
            header.header_len as u64
        } else {
            self.cursor.offset
        };
        self.open = Some(Open {
            seq: self.cursor.seq,
            path,
            file,
            header,
            pos,
            len: 0,
            buf: None,
            buf_off: 0,
        });
        Ok(true)
    }

    fn advance_to_next_segment(&mut self) {
        if let Some(o) = self.open.take() {
            self.cursor = Cursor {
                seq: o.seq + 1,
                offset: 0,
            };
        }
    }

    fn step(&mut self) -> Result<Step> {
        if self.open.is_none() && !self.open_current()? {
            return Ok(Step::Wait);
        }
        let Some(o) = self.open.as_ref() else {
            return Ok(Step::Wait);
        };
        let (seq, pos) = (o.seq, o.pos);
        match self.read_at(pos)? {
            Some(s) => Ok(s),
            None => {
                // Incomplete or nothing at `pos`. If a newer segment exists
                // the writer has left this one: look once more (the seal may
                // have landed meanwhile), then drop the torn tail.
                if !self.newer_exists(seq) {
                    return Ok(Step::Wait);
                }
                if let Some(s) = self.read_at(pos)? {
                    return Ok(s);
                }
                self.abandoned += 1;
                self.advance_to_next_segment();
                Ok(Step::Again)
            }
        }
    }

    /// Reads the record at `pos` of the open segment. `None`: not complete.
    ///
    /// Reads come from the read-ahead buffer first; anything but a valid
    /// record is looked at again with fresh reads before it counts, so
    /// buffered bytes of a tail the writer has since rewritten never make
    /// a record look incomplete or damaged.
    fn read_at(&mut self, pos: u64) -> Result<Option<Step>> {
        match self.read_at_with(pos, false) {
            Ok(Some(s)) => Ok(Some(s)),
            _ => self.read_at_with(pos, true),
        }
    }

    fn read_at_with(&mut self, pos: u64, fresh: bool) -> Result<Option<Step>> {
        let Some(o) = self.open.as_mut() else {
            return Ok(None);
        };
        match o.bytes(pos, FRAME_LEN, fresh)? {
            Some(f) => self.frame.copy_from_slice(f),
            None => return Ok(None),
        }
        let plen = frame_payload_len(&self.frame);
        if plen > MAX_PAYLOAD {
            return Err(FormatError::corrupt(
                &o.path,
                pos,
                format!("record length {plen} exceeds the maximum {MAX_PAYLOAD}"),
            ));
        }
        let end = pos + FRAME_LEN as u64 + plen as u64;
        let signature = o.header.signature;
        let Some(payload) = o.bytes(pos + FRAME_LEN as u64, plen as usize, false)? else {
            return Ok(None);
        };
        let checked = check_frame(signature, &self.frame, payload);
        match checked {
            FrameCheck::BadCrc { stored, computed } => {
                if end == o.len {
                    // Possibly a torn write whose writer has not recovered the
                    // file yet: treat as incomplete.
                    return Ok(None);
                }
                Err(FormatError::corrupt(
                    &o.path,
                    pos,
                    format!("record checksum mismatch (stored {stored:08x}, computed {computed:08x})"),
                ))
            }
            FrameCheck::Malformed(reason) => Err(FormatError::corrupt(&o.path, pos, reason)),
            FrameCheck::Valid(None) => {
                o.pos = end;
                self.cursor = Cursor {
                    seq: o.seq,
                    offset: end,
                };
                Ok(Some(Step::Again))
            }
            FrameCheck::Valid(Some(record)) => {
                let header = o.header;
                let seq = o.seq;
                let next = if matches!(record, Record::Seal(_)) {
                    self.open = None;
                    Cursor {
                        seq: seq + 1,
                        offset: 0,
                    }
                } else {
                    o.pos = end;
                    Cursor { seq, offset: end }
                };
                self.cursor = next;
                Ok(Some(Step::Got(Followed {
                    seq,
                    offset: pos,
                    next,
                    header,
                    record,
                })))
            }
        }
    }

    /// The spool directory followed.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Follower {
    /// The disk followed.
    pub fn disk(&self) -> Uuid {
        self.disk
    }
}
