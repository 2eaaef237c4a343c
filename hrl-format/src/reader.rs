//! Sequential reader of one `.hrl` segment, with explicit recovery modes.
//!
//! A crash can leave the newest segment with a torn tail: a record cut short,
//! or its last bytes never reaching the disk. [`RecoveryMode::TolerateTornTail`]
//! stops at the last whole record and reports what it dropped.
//! [`RecoveryMode::AbsoluteConsistency`] treats any damage as an error; use it
//! for sealed files, which were fsynced and must be whole.
//!
//! Damage that is not at the tail (a bad checksum with valid-looking bytes
//! after it) is an error in both modes: silently skipping a record could lose
//! a write.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result};
use crate::header::{arr, FileHeader, HeaderError, HEADER_LEN};
use crate::record::{record_crc, Identity, Record, Seal, FRAME_LEN, MAX_PAYLOAD};

/// How a reader treats damage at the end of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryMode {
    /// Stop at the last whole record; report the dropped tail.
    TolerateTornTail,
    /// Any damage is an error naming file, offset and reason.
    AbsoluteConsistency,
}

/// What a tolerant reader dropped at the end of a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TornTail {
    /// Offset of the first byte dropped (= end of the last whole record).
    pub offset: u64,
    /// Bytes dropped, up to the end of the file.
    pub dropped_bytes: u64,
    pub reason: String,
}

/// Outcome of checking one complete frame.
pub(crate) enum FrameCheck {
    /// A valid record; `None` for a skippable type this build does not know.
    Valid(Option<Record>),
    BadCrc {
        stored: u32,
        computed: u32,
    },
    /// The checksum is right but the content breaks the format.
    Malformed(String),
}

/// Checks a complete frame (12-byte frame header plus payload).
pub(crate) fn check_frame(signature: u64, frame: &[u8; FRAME_LEN], payload: &[u8]) -> FrameCheck {
    if let Some(bad) = bad_crc(signature, frame, payload) {
        return bad;
    }
    match Record::decode_payload(frame[8], payload) {
        Ok(r) => FrameCheck::Valid(r),
        Err(reason) => FrameCheck::Malformed(reason),
    }
}

/// Checks a complete `Data` frame without decoding it (a decode copies the
/// payload, which a stream checker would drop at once): the checksum when
/// `crc`, and that the payload holds Data's 16-byte head.
pub(crate) fn check_data_frame(signature: u64, frame: &[u8; FRAME_LEN], payload: &[u8], crc: bool) -> FrameCheck {
    if let Some(bad) = crc.then(|| bad_crc(signature, frame, payload)).flatten() {
        return bad;
    }
    if payload.len() < crate::record::DATA_HEAD - FRAME_LEN {
        return FrameCheck::Malformed(format!(
            "Data payload is {} bytes, needs at least {}",
            payload.len(),
            crate::record::DATA_HEAD - FRAME_LEN
        ));
    }
    FrameCheck::Valid(None)
}

/// `BadCrc` when the checksum the frame stores is not the one computed.
fn bad_crc(signature: u64, frame: &[u8; FRAME_LEN], payload: &[u8]) -> Option<FrameCheck> {
    let stored = u32::from_le_bytes(arr(&frame[0..4]));
    let computed = record_crc(signature, &frame[4..FRAME_LEN], payload);
    (stored != computed).then_some(FrameCheck::BadCrc { stored, computed })
}

/// Payload length a frame header declares.
pub(crate) fn frame_payload_len(frame: &[u8; FRAME_LEN]) -> u32 {
    u32::from_le_bytes(arr(&frame[4..8]))
}

/// Maps a header decoding failure to the crate error for `path`.
pub(crate) fn header_error(path: &Path, e: HeaderError) -> FormatError {
    match e {
        HeaderError::BadMagic => FormatError::BadMagic { path: path.into() },
        HeaderError::UnsupportedVersion { major, minor } => FormatError::UnsupportedVersion {
            path: path.into(),
            major,
            minor,
            supported: crate::header::MAJOR_VERSION,
        },
        other => FormatError::corrupt(path, 0, other.to_string()),
    }
}

/// Reads and checks the header of the file at `path`.
pub fn read_header(path: &Path) -> Result<FileHeader> {
    let mut f = File::open(path).map_err(|e| FormatError::io(path, "open", e))?;
    let mut buf = vec![0u8; 4096];
    let n = read_full(&mut f, &mut buf).map_err(|e| FormatError::io(path, "read header", e))?;
    FileHeader::decode(&buf[..n]).map_err(|e| header_error(path, e))
}

/// The Identity record a version 1.2 writer puts first in every segment:
/// a reader that starts inside a segment (a shipper resuming from its
/// cursor) learns whose disk it is. `None` for an older or empty segment.
pub fn segment_identity(path: &Path) -> Result<Option<Identity>> {
    let mut r = SegmentReader::open(path, RecoveryMode::TolerateTornTail)?;
    Ok(match r.next_record()? {
        Some((_, Record::Identity(i))) => Some(i),
        _ => None,
    })
}

/// Reads until `buf` is full or EOF; returns bytes read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Sequential reader of one segment.
pub struct SegmentReader<R> {
    src: R,
    path: PathBuf,
    header: FileHeader,
    file_len: u64,
    pos: u64,
    mode: RecoveryMode,
    records: u64,
    unknown_skipped: u64,
    seal: Option<Seal>,
    torn: Option<TornTail>,
    done: bool,
}

impl SegmentReader<BufReader<File>> {
    /// Opens a segment file. Its length is taken now: bytes appended later
    /// are not read (use [`crate::Follower`] for a live file).
    pub fn open(path: &Path, mode: RecoveryMode) -> Result<Self> {
        let f = File::open(path).map_err(|e| FormatError::io(path, "open", e))?;
        let len = f.metadata().map_err(|e| FormatError::io(path, "stat", e))?.len();
        Self::new(BufReader::with_capacity(1 << 20, f), len, path, mode)
    }
}

/// Whether the segment at `path` ends in a valid `Seal` record that
/// names its own offset: a test that reads the header and the last 44
/// bytes, so writer recovery (which only has unsealed segments to mend)
/// need not read a spool of sealed segments whole at every start. The
/// full read of a sealed segment happens when it is shipped.
pub fn ends_sealed(path: &Path) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path).map_err(|e| FormatError::io(path, "open", e))?;
    let len = f.metadata().map_err(|e| FormatError::io(path, "stat", e))?.len();
    let r = SegmentReader::new(
        BufReader::with_capacity(4096, &f),
        len,
        path,
        RecoveryMode::TolerateTornTail,
    )?;
    let tail = (FRAME_LEN + 32) as u64;
    if len < r.pos + tail {
        return Ok(false);
    }
    let mut b = [0u8; FRAME_LEN + 32];
    f.read_exact_at(&mut b, len - tail)
        .map_err(|e| FormatError::io(path, "read the tail", e))?;
    let crc = u32::from_le_bytes(arr(&b[0..4]));
    let plen = u32::from_le_bytes(arr(&b[4..8]));
    let offset = u64::from_le_bytes(arr(&b[FRAME_LEN + 8..FRAME_LEN + 16]));
    Ok(plen == 32
        && b[8] == crate::record::rtype::SEAL
        && offset == len - tail
        && crc == record_crc(r.header.signature, &b[4..FRAME_LEN], &b[FRAME_LEN..]))
}

impl<'a> SegmentReader<&'a [u8]> {
    /// Reads a segment held in memory; `label` names it in errors.
    pub fn from_bytes(bytes: &'a [u8], label: &Path, mode: RecoveryMode) -> Result<Self> {
        Self::new(bytes, bytes.len() as u64, label, mode)
    }
}

impl<R: Read> SegmentReader<R> {
    /// Reads the header from `src`, which holds `file_len` bytes in all.
    pub fn new(mut src: R, file_len: u64, path: &Path, mode: RecoveryMode) -> Result<Self> {
        let mut first = [0u8; 16];
        let n = read_full(&mut src, &mut first).map_err(|e| FormatError::io(path, "read header", e))?;
        let hlen = FileHeader::declared_len(&first[..n]).map_err(|e| header_error(path, e))? as usize;
        let mut hbuf = vec![0u8; hlen];
        hbuf[..16].copy_from_slice(&first);
        let m = read_full(&mut src, &mut hbuf[16..]).map_err(|e| FormatError::io(path, "read header", e))?;
        let header = FileHeader::decode(&hbuf[..16 + m]).map_err(|e| header_error(path, e))?;
        debug_assert!(hlen >= HEADER_LEN);
        Ok(SegmentReader {
            src,
            path: path.to_path_buf(),
            header,
            file_len,
            pos: hlen as u64,
            mode,
            records: 0,
            unknown_skipped: 0,
            seal: None,
            torn: None,
            done: false,
        })
    }

    pub fn header(&self) -> &FileHeader {
        &self.header
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Records read so far, including skipped unknown ones.
    pub fn records(&self) -> u64 {
        self.records
    }
    /// Records of unknown (newer) types that were skipped.
    pub fn unknown_skipped(&self) -> u64 {
        self.unknown_skipped
    }
    /// The seal, once read.
    pub fn seal(&self) -> Option<&Seal> {
        self.seal.as_ref()
    }
    /// What was dropped at the tail (tolerant mode only), once reached.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }
    /// Offset of the next record (after the last one returned).
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn torn(&mut self, reason: String) -> Result<Option<(u64, Record)>> {
        self.done = true;
        match self.mode {
            RecoveryMode::AbsoluteConsistency => Err(FormatError::corrupt(&self.path, self.pos, reason)),
            RecoveryMode::TolerateTornTail => {
                self.torn = Some(TornTail {
                    offset: self.pos,
                    dropped_bytes: self.file_len - self.pos,
                    reason,
                });
                Ok(None)
            }
        }
    }

    fn io(&self, e: std::io::Error) -> FormatError {
        FormatError::io(&self.path, "read", e)
    }

    /// Whether every byte from the current position to EOF, after `skip`
    /// bytes already consumed, is zero (a zero-extended tail after a crash).
    fn rest_is_zero(&mut self, consumed: &[u8]) -> Result<bool> {
        if consumed.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = read_full(&mut self.src, &mut buf).map_err(|e| self.io(e))?;
            if n == 0 {
                return Ok(true);
            }
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
        }
    }

    /// The next record and the offset it starts at; `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<(u64, Record)>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let remaining = self.file_len - self.pos;
            if remaining == 0 {
                self.done = true;
                return Ok(None);
            }
            if self.seal.is_some() {
                self.done = true;
                return Err(FormatError::corrupt(
                    &self.path,
                    self.pos,
                    format!("{remaining} bytes after the seal (stale or appended bytes)"),
                ));
            }
            let mut frame = [0u8; FRAME_LEN];
            if remaining < FRAME_LEN as u64 {
                return self.torn(format!("incomplete record frame ({remaining} bytes)"));
            }
            read_exact(&mut self.src, &mut frame, &self.path)?;
            let plen = frame_payload_len(&frame);
            let end = self.pos + FRAME_LEN as u64 + plen as u64;
            if plen > MAX_PAYLOAD {
                if self.mode == RecoveryMode::TolerateTornTail && self.rest_is_zero(&frame)? {
                    return self.torn("zero-filled tail".into());
                }
                if end > self.file_len {
                    return self.torn(format!("record length {plen} exceeds the end of the file"));
                }
                self.done = true;
                return Err(FormatError::corrupt(
                    &self.path,
                    self.pos,
                    format!("record length {plen} exceeds the maximum {MAX_PAYLOAD}"),
                ));
            }
            if end > self.file_len {
                return self.torn(format!(
                    "record of {plen} payload bytes extends {} bytes past the end of the file",
                    end - self.file_len
                ));
            }
            let mut payload = vec![0u8; plen as usize];
            read_exact(&mut self.src, &mut payload, &self.path)?;
            match check_frame(self.header.signature, &frame, &payload) {
                FrameCheck::BadCrc { stored, computed } => {
                    let reason = format!(
                        "record checksum mismatch (type {}, {plen} payload bytes; stored {stored:08x}, computed {computed:08x})",
                        frame[8]
                    );
                    if self.mode == RecoveryMode::TolerateTornTail {
                        let mut both = frame.to_vec();
                        both.extend_from_slice(&payload);
                        if end == self.file_len || self.rest_is_zero(&both)? {
                            return self.torn(format!("last record is torn: {reason}"));
                        }
                    }
                    self.done = true;
                    return Err(FormatError::corrupt(&self.path, self.pos, reason));
                }
                FrameCheck::Malformed(reason) => {
                    self.done = true;
                    return Err(FormatError::corrupt(&self.path, self.pos, reason));
                }
                FrameCheck::Valid(None) => {
                    self.unknown_skipped += 1;
                    self.records += 1;
                    self.pos = end;
                }
                FrameCheck::Valid(Some(rec)) => {
                    if let Record::Seal(s) = &rec {
                        if s.records != self.records || s.bytes != self.pos {
                            self.done = true;
                            return Err(FormatError::corrupt(
                                &self.path,
                                self.pos,
                                format!(
                                    "seal says {} records in {} bytes, file has {} records in {} bytes",
                                    s.records, s.bytes, self.records, self.pos
                                ),
                            ));
                        }
                        self.seal = Some(*s);
                    }
                    let at = self.pos;
                    self.records += 1;
                    self.pos = end;
                    return Ok(Some((at, rec)));
                }
            }
        }
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<()> {
    let n = read_full(r, buf).map_err(|e| FormatError::io(path, "read", e))?;
    if n != buf.len() {
        // The length was checked against the file length first, so a short
        // read means the file shrank under us.
        return Err(FormatError::io(
            path,
            "read",
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shrank while being read"),
        ));
    }
    Ok(())
}

/// Summary of reading a whole segment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub disk_id: uuid::Uuid,
    pub seq: u64,
    pub bytes: u64,
    pub records: u64,
    pub unknown_skipped: u64,
    pub sealed: bool,
    pub torn_tail: Option<TornTail>,
}

/// Reads every record of a segment, calling `f` for each; returns the
/// summary. The first error stops reading.
pub fn read_segment(
    path: &Path,
    mode: RecoveryMode,
    mut f: impl FnMut(&FileHeader, u64, &Record) -> Result<()>,
) -> Result<SegmentSummary> {
    let mut r = SegmentReader::open(path, mode)?;
    while let Some((off, rec)) = r.next_record()? {
        f(&r.header, off, &rec)?;
    }
    Ok(SegmentSummary {
        path: path.to_path_buf(),
        disk_id: r.header.disk_id,
        seq: r.header.seq,
        bytes: r.file_len,
        records: r.records,
        unknown_skipped: r.unknown_skipped,
        sealed: r.seal.is_some(),
        torn_tail: r.torn.clone(),
    })
}
