//! Writers: one segment ([`SegmentWriter`]) and a rotating log of segments
//! for one disk ([`LogWriter`]).
//!
//! Files are created `O_EXCL` with mode 0600 (they hold disk contents) and
//! the directory is fsynced after each create, so a segment that a reader
//! can see by name survives a crash. A sealed segment is chmod 0400 and never
//! written again. Durability is explicit: a `Tag` is always fsynced before
//! `append` returns; other records are fsynced by [`LogWriter::tick`] at the
//! configured interval, or by [`LogWriter::sync`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::error::{FormatError, Result};
use crate::header::FileHeader;
use crate::reader::{RecoveryMode, SegmentReader, TornTail};
use crate::record::{encode_framed, Identity, Record, Seal, FRAME_LEN, MAX_PAYLOAD};
use crate::spool::{list_segments, segment_file_name};

/// Buffered bytes that trigger a write to the file.
const WRITE_BUFFER: usize = 1 << 20;

/// Writer of one segment file.
pub struct SegmentWriter {
    file: File,
    path: PathBuf,
    header: FileHeader,
    buf: Vec<u8>,
    /// Bytes written to the file (not counting `buf`).
    written: u64,
    records: u64,
    unsynced: bool,
    created: Instant,
}

/// Fsyncs a directory so a create, rename or delete in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| FormatError::io(dir, "open directory", e))?;
    d.sync_all().map_err(|e| FormatError::io(dir, "fsync directory", e))
}

impl SegmentWriter {
    /// Creates `dir/{disk}-{seq}.hrl` (must not exist), writes and fsyncs
    /// the header, and fsyncs the directory.
    pub fn create(dir: &Path, header: FileHeader) -> Result<Self> {
        let path = dir.join(segment_file_name(header.disk_id, header.seq));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| FormatError::io(&path, "create segment", e))?;
        let h = header.encode();
        file.write_all(&h)
            .map_err(|e| FormatError::io(&path, "write header", e))?;
        file.sync_all().map_err(|e| FormatError::io(&path, "fsync", e))?;
        sync_dir(dir)?;
        Ok(SegmentWriter {
            file,
            path,
            header,
            buf: Vec::with_capacity(WRITE_BUFFER + 128 * 1024),
            written: h.len() as u64,
            records: 0,
            unsynced: false,
            created: Instant::now(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn header(&self) -> &FileHeader {
        &self.header
    }
    /// Logical length: bytes written plus bytes buffered.
    pub fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }
    /// Whether no record was appended yet.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
    pub fn records(&self) -> u64 {
        self.records
    }
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// Appends a record; returns the offset it starts at. The record is
    /// buffered: call [`flush`](Self::flush) to make it visible to readers
    /// and [`sync`](Self::sync) to make it durable.
    pub fn append(&mut self, rec: &Record) -> Result<u64> {
        if rec.payload_len() > MAX_PAYLOAD as usize {
            return Err(FormatError::Invalid(format!(
                "{} record of {} bytes exceeds the maximum payload {MAX_PAYLOAD}",
                rec.type_name(),
                rec.payload_len()
            )));
        }
        let at = self.len();
        encode_framed(self.header.signature, rec, &mut self.buf);
        self.records += 1;
        self.unsynced = true;
        if self.buf.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(at)
    }

    /// Writes buffered records to the file (visible to readers, not yet
    /// durable).
    pub fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.file
                .write_all(&self.buf)
                .map_err(|e| FormatError::io(&self.path, "write", e))?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Flushes and fdatasyncs: every record appended so far is durable.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        if self.unsynced {
            self.file
                .sync_data()
                .map_err(|e| FormatError::io(&self.path, "fdatasync", e))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Appends the seal, fsyncs, and makes the file read-only.
    pub fn seal(mut self) -> Result<PathBuf> {
        let seal = Record::Seal(Seal {
            records: self.records,
            bytes: self.len(),
            time_ns: crate::now_ns(),
            recovered: false,
        });
        self.append(&seal)?;
        self.sync()?;
        set_read_only(&self.file, &self.path)?;
        Ok(self.path)
    }
}

/// Makes a sealed segment read-only through its open file, not its path:
/// once the seal is visible a shipper or forwarder may ship the segment
/// and delete it before this runs (a path would then be gone, and the
/// agent's rotation would fail).
fn set_read_only(f: &File, path: &Path) -> Result<()> {
    f.set_permissions(std::fs::Permissions::from_mode(0o400))
        .map_err(|e| FormatError::io(path, "chmod 0400", e))
}

/// Configuration of a rotating log for one disk.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub disk_id: Uuid,
    pub chunk_size: u32,
    pub logical_block_size: u32,
    pub device_size: u64,
    /// Rotate once a segment reaches this many bytes.
    pub rotate_bytes: u64,
    /// Rotate a non-empty segment older than this.
    pub rotate_age: Duration,
    /// Longest time an appended record may stay unsynced (checked by
    /// [`LogWriter::tick`] and on every append).
    pub sync_interval: Duration,
    /// Host and disk name, written first in every segment (an Identity
    /// record) so whoever reads any segment can name the disk.
    pub identity: Option<Identity>,
}

impl LogConfig {
    /// Defaults: 64 MiB or 60 s segments, fsync at least every second.
    pub fn new(
        dir: impl Into<PathBuf>,
        disk_id: Uuid,
        chunk_size: u32,
        logical_block_size: u32,
        device_size: u64,
    ) -> Self {
        LogConfig {
            dir: dir.into(),
            disk_id,
            chunk_size,
            logical_block_size,
            device_size,
            rotate_bytes: 64 << 20,
            rotate_age: Duration::from_secs(60),
            sync_interval: Duration::from_secs(1),
            identity: None,
        }
    }
}

/// What recovery did to a segment a crashed writer left unsealed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecoveredSegment {
    pub path: PathBuf,
    pub seq: u64,
    /// Whole records kept.
    pub records: u64,
    /// The torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// The header itself was unreadable; the file was replaced by an empty
    /// sealed segment with the same sequence.
    pub header_rewritten: bool,
}

/// Position of an appended record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
}

/// A rotating log of segments for one disk in a spool directory.
///
/// Holds an exclusive `flock` on `{dir}/{disk-id}.lock` for its lifetime, so
/// two writers can never append to the same disk's log.
pub struct LogWriter {
    cfg: LogConfig,
    current: Option<SegmentWriter>,
    next_seq: u64,
    last_sync: Instant,
    recovered: Vec<RecoveredSegment>,
    _lock: File,
    lock_path: PathBuf,
}

/// Reads `next_seq=N` from the lock file (0 when absent or empty).
fn read_next_seq(path: &Path, f: &File) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 64];
    let n = f
        .read_at(&mut buf, 0)
        .map_err(|e| FormatError::io(path, "read lock", e))?;
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(text
        .trim()
        .strip_prefix("next_seq=")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Records the next segment sequence in the lock file, durably.
fn write_next_seq(path: &Path, f: &File, seq: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let line = format!("next_seq={seq:020}\n");
    f.write_all_at(line.as_bytes(), 0)
        .and_then(|_| f.set_len(line.len() as u64))
        .and_then(|_| f.sync_data())
        .map_err(|e| FormatError::io(path, "write lock", e))
}

impl LogWriter {
    /// Opens the log: takes the lock, seals any segment a crashed writer
    /// left unsealed (cutting a torn tail), and continues after the highest
    /// sequence present.
    pub fn open(cfg: LogConfig) -> Result<Self> {
        let lock_path = cfg.dir.join(format!("{}.lock", cfg.disk_id.hyphenated()));
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| FormatError::io(&lock_path, "open lock", e))?;
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Err(FormatError::Invalid(format!(
                "{}: another writer holds the log of disk {} ({err})",
                lock_path.display(),
                cfg.disk_id
            )));
        }
        let existing = list_segments(&cfg.dir, Some(cfg.disk_id))?;
        let mut recovered = Vec::new();
        for seg in &existing {
            if let Some(r) = recover_segment(&seg.path, &cfg)? {
                recovered.push(r);
            }
        }
        // Segments may have been shipped and deleted: the lock file
        // remembers the next sequence so it is never reused.
        let persisted = read_next_seq(&lock_path, &lock)?;
        let next_seq = existing.last().map_or(1, |s| s.seq + 1).max(persisted);
        Ok(LogWriter {
            cfg,
            current: None,
            next_seq,
            last_sync: Instant::now(),
            recovered,
            _lock: lock,
            lock_path,
        })
    }

    /// Segments that recovery sealed when this log was opened.
    pub fn recovered(&self) -> &[RecoveredSegment] {
        &self.recovered
    }

    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    /// Sequence number of the segment the next record goes to.
    pub fn current_seq(&self) -> u64 {
        self.current.as_ref().map_or(self.next_seq, |c| c.header.seq)
    }

    /// Changes the device size written into the headers of new segments,
    /// and rotates so the next record starts a segment with the new size.
    pub fn set_device_size(&mut self, size: u64) -> Result<()> {
        if size != self.cfg.device_size {
            self.cfg.device_size = size;
            self.rotate()?;
        }
        Ok(())
    }

    fn segment(&mut self) -> Result<&mut SegmentWriter> {
        if self.current.is_none() {
            let h = FileHeader::new(
                self.cfg.disk_id,
                self.next_seq,
                self.cfg.chunk_size,
                self.cfg.logical_block_size,
                self.cfg.device_size,
            );
            let mut seg = SegmentWriter::create(&self.cfg.dir, h)?;
            if let Some(id) = &self.cfg.identity {
                seg.append(&Record::Identity(id.clone()))?;
            }
            self.current = Some(seg);
            self.next_seq += 1;
            write_next_seq(&self.lock_path, &self._lock, self.next_seq)?;
        }
        // Just created above when it was missing.
        self.current
            .as_mut()
            .ok_or_else(|| FormatError::Invalid("no current segment".into()))
    }

    /// Appends a record. A `Tag` is fsynced before this returns, and the
    /// segment is rotated after a tag when it is over its size or age, so
    /// segments tend to end on point boundaries.
    pub fn append(&mut self, rec: &Record) -> Result<Position> {
        let seg = self.segment()?;
        let offset = seg.append(rec)?;
        let pos = Position {
            seq: seg.header.seq,
            offset,
        };
        let full = seg.len() >= self.cfg.rotate_bytes;
        if matches!(rec, Record::Tag(_)) {
            self.sync()?;
        }
        if full || self.too_old() {
            self.rotate()?;
        } else if self.last_sync.elapsed() >= self.cfg.sync_interval {
            self.sync()?;
        }
        Ok(pos)
    }

    fn too_old(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| !c.is_empty() && c.age() >= self.cfg.rotate_age)
    }

    /// Appends a record without syncing or rotating, whatever its type.
    /// The point protocol uses it to put a `Tag` in the log while the
    /// filesystem is frozen and to fsync it after the thaw (the tag's place
    /// in the log, not its durability, is what the freeze must cover);
    /// callers must call [`sync`](Self::sync) before reporting the point.
    pub fn append_unsynced(&mut self, rec: &Record) -> Result<Position> {
        let seg = self.segment()?;
        let offset = seg.append(rec)?;
        Ok(Position {
            seq: seg.header.seq,
            offset,
        })
    }

    /// Bytes in the current segment (0 when none is open).
    pub fn current_len(&self) -> u64 {
        self.current.as_ref().map_or(0, |c| c.len())
    }

    /// Makes every appended record visible to followers (no fsync).
    pub fn flush(&mut self) -> Result<()> {
        if let Some(c) = self.current.as_mut() {
            c.flush()?;
        }
        Ok(())
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<()> {
        if let Some(c) = self.current.as_mut() {
            c.sync()?;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Periodic housekeeping: flush so followers see recent records, fsync
    /// at the sync interval, rotate by age.
    pub fn tick(&mut self) -> Result<()> {
        if self.too_old() {
            return self.rotate();
        }
        self.flush()?;
        if self.last_sync.elapsed() >= self.cfg.sync_interval {
            self.sync()?;
        }
        Ok(())
    }

    /// Seals the current segment (if it has records); the next append
    /// starts a new one. An empty current segment is kept open.
    pub fn rotate(&mut self) -> Result<()> {
        if self.current.as_ref().is_some_and(|c| !c.is_empty()) {
            if let Some(c) = self.current.take() {
                c.seal()?;
            }
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Seals the current segment (even an empty one). A later append
    /// starts a new segment.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(c) = self.current.take() {
            c.seal()?;
        }
        Ok(())
    }

    /// Seals the current segment and releases the lock.
    pub fn close(mut self) -> Result<()> {
        self.finish()
    }
}

/// Seals a segment left unsealed by a crashed writer. Returns `None` when it
/// was already sealed. Sealed but damaged segments are left alone: they are
/// reported by readers, never rewritten.
fn recover_segment(path: &Path, cfg: &LogConfig) -> Result<Option<RecoveredSegment>> {
    match crate::reader::ends_sealed(path) {
        Ok(true) => return Ok(None),
        // Gone since the listing: only a sealed segment is ever deleted
        // (shipped, or held whole by the gateway), so nothing to recover.
        Err(FormatError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        _ => {}
    }
    let mut reader = match SegmentReader::open(path, RecoveryMode::TolerateTornTail) {
        Ok(r) => r,
        Err(FormatError::Corrupt { offset: 0, .. }) => {
            // The header never made it to disk whole: nothing in the file
            // can be read, so replace it with an empty sealed segment of the
            // same sequence (keeps the sequence gapless for followers).
            let Some((disk, seq)) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(crate::spool::parse_segment_name)
            else {
                return Ok(None);
            };
            let tmp = cfg.dir.join(format!(".{}.tmp", segment_file_name(disk, seq)));
            let _ = std::fs::remove_file(&tmp);
            let h = FileHeader::new(disk, seq, cfg.chunk_size, cfg.logical_block_size, cfg.device_size);
            let w = SegmentWriter::create_at(&tmp, h)?;
            w.seal_recovered()?;
            std::fs::rename(&tmp, path).map_err(|e| FormatError::io(path, "rename", e))?;
            sync_dir(&cfg.dir)?;
            return Ok(Some(RecoveredSegment {
                path: path.to_path_buf(),
                seq,
                records: 0,
                torn_tail: None,
                header_rewritten: true,
            }));
        }
        Err(e) => return Err(e),
    };
    loop {
        match reader.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => break,
            // Damage before the tail of an unsealed file: leave it for an
            // operator; never cut valid records after it.
            Err(e) => return Err(e),
        }
    }
    if reader.seal().is_some() {
        return Ok(None);
    }
    let keep = reader.position();
    let records = reader.records();
    let torn = reader.torn_tail().cloned();
    let seq = reader.header().seq;
    let signature = reader.header().signature;
    drop(reader);
    // The file may be read-only if a previous recovery crashed half way.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| FormatError::io(path, "chmod 0600", e))?;
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| FormatError::io(path, "open for recovery", e))?;
    f.set_len(keep)
        .map_err(|e| FormatError::io(path, "truncate torn tail", e))?;
    let mut buf = Vec::with_capacity(FRAME_LEN + 32);
    let seal = Record::Seal(Seal {
        records,
        bytes: keep,
        time_ns: crate::now_ns(),
        recovered: true,
    });
    encode_framed(signature, &seal, &mut buf);
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(keep))
        .map_err(|e| FormatError::io(path, "seek", e))?;
    f.write_all(&buf).map_err(|e| FormatError::io(path, "write seal", e))?;
    f.sync_all().map_err(|e| FormatError::io(path, "fsync", e))?;
    set_read_only(&f, path)?;
    Ok(Some(RecoveredSegment {
        path: path.to_path_buf(),
        seq,
        records,
        torn_tail: torn,
        header_rewritten: false,
    }))
}

impl SegmentWriter {
    /// Creates a segment at an explicit path (recovery's temporary file).
    fn create_at(path: &Path, header: FileHeader) -> Result<Self> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| FormatError::io(path, "create segment", e))?;
        let h = header.encode();
        file.write_all(&h)
            .map_err(|e| FormatError::io(path, "write header", e))?;
        Ok(SegmentWriter {
            file,
            path: path.to_path_buf(),
            header,
            buf: Vec::new(),
            written: h.len() as u64,
            records: 0,
            unsynced: true,
            created: Instant::now(),
        })
    }

    fn seal_recovered(mut self) -> Result<()> {
        let seal = Record::Seal(Seal {
            records: self.records,
            bytes: self.len(),
            time_ns: crate::now_ns(),
            recovered: true,
        });
        self.append(&seal)?;
        self.unsynced = true;
        self.sync()?;
        set_read_only(&self.file, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer starting while a forwarder deletes sealed segments: one
    /// listed and gone before its turn is not an error.
    #[test]
    fn a_segment_deleted_after_the_listing_needs_no_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig::new(dir.path(), Uuid::nil(), 65536, 512, 1 << 30);
        let gone = dir.path().join(segment_file_name(Uuid::nil(), 3));
        assert!(recover_segment(&gone, &cfg).unwrap().is_none());
    }
}
