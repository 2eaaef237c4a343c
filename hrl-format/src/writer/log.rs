//! The rotating log of one disk: segments in sequence, a lock file that
//! keeps two writers out and remembers the next sequence.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::config::LogConfig;
use super::recover::{recover_segment, RecoveredSegment};
use super::segment::SegmentWriter;
use crate::error::{FormatError, Result};
use crate::header::FileHeader;
use crate::record::Record;
use crate::spool::list_segments;

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
    last_flush: Instant,
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
            last_flush: Instant::now(),
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
        self.current.as_ref().map_or(self.next_seq, |c| c.header().seq)
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
            seq: seg.header().seq,
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

    /// Appends a `Data` record of chunk bytes `data` without copying them
    /// into a [`Record`] (see [`SegmentWriter::append_data`]); rotates and
    /// syncs as [`append`](Self::append) does for any record but a tag.
    pub fn append_data(&mut self, offset: u64, flags: u32, data: &[u8]) -> Result<Position> {
        let seg = self.segment()?;
        let at = seg.append_data(offset, flags, data)?;
        let pos = Position {
            seq: seg.header().seq,
            offset: at,
        };
        if seg.len() >= self.cfg.rotate_bytes || self.too_old() {
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
            seq: seg.header().seq,
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
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<()> {
        if let Some(c) = self.current.as_mut() {
            c.sync()?;
        }
        self.last_sync = Instant::now();
        self.last_flush = self.last_sync;
        Ok(())
    }

    /// Periodic housekeeping: fsync at the sync interval, else flush at the
    /// flush interval so followers see recent records; rotate by age.
    pub fn tick(&mut self) -> Result<()> {
        if self.too_old() {
            return self.rotate();
        }
        if self.last_sync.elapsed() >= self.cfg.sync_interval {
            self.sync()?;
        } else if self.last_flush.elapsed() >= self.cfg.flush_interval {
            self.flush()?;
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
