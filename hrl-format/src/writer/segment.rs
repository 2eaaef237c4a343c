//! One segment file: created `O_EXCL` 0600 with its header fsynced,
//! records buffered and written, sealed read-only.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::direct::{AppendFile, WRITE_BUFFER};
use crate::error::{FormatError, Result};
use crate::header::FileHeader;
use crate::record::{encode_data_head, encode_framed, Record, Seal, MAX_PAYLOAD};
use crate::spool::segment_file_name;

/// Writer of one segment file.
pub struct SegmentWriter {
    out: AppendFile,
    path: PathBuf,
    header: FileHeader,
    /// A record other than `Data` is framed here, then gathered.
    scratch: Vec<u8>,
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
        let mut w = Self::create_at(&path, header)?;
        w.out
            .file()
            .sync_all()
            .map_err(|e| FormatError::io(&path, "fsync", e))?;
        sync_dir(dir)?;
        w.unsynced = false;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn header(&self) -> &FileHeader {
        &self.header
    }
    /// Logical length: bytes written plus bytes buffered.
    pub fn len(&self) -> u64 {
        self.out.len()
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
        self.scratch.clear();
        encode_framed(self.header.signature, rec, &mut self.scratch);
        self.out
            .extend(&[&self.scratch])
            .map_err(|e| FormatError::io(&self.path, "write", e))?;
        self.appended()?;
        Ok(at)
    }

    /// Appends a `Data` record of chunk bytes `data` at device `offset`:
    /// the same bytes as [`append`](Self::append) of that record, with one
    /// copy of the chunk (into the write buffer) where a `Record` costs
    /// two. Writing the chunk straight from the caller's buffer was tried:
    /// one 64 KiB `writev` per chunk cost ext4 half as much CPU again as
    /// 1 MiB writes of the buffer.
    pub fn append_data(&mut self, offset: u64, flags: u32, data: &[u8]) -> Result<u64> {
        if 16 + data.len() > MAX_PAYLOAD as usize {
            return Err(FormatError::Invalid(format!(
                "data record of {} bytes exceeds the maximum payload {MAX_PAYLOAD}",
                16 + data.len()
            )));
        }
        let at = self.len();
        let head = encode_data_head(self.header.signature, offset, flags, data);
        self.out
            .extend(&[&head, data])
            .map_err(|e| FormatError::io(&self.path, "write", e))?;
        self.appended()?;
        Ok(at)
    }

    /// Counts a record gathered; writes when enough is gathered.
    fn appended(&mut self) -> Result<()> {
        self.records += 1;
        self.unsynced = true;
        if self.out.pending() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes buffered records to the file (visible to readers, not yet
    /// durable).
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| FormatError::io(&self.path, "write", e))
    }

    /// Flushes and fdatasyncs: every record appended so far is durable.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        if self.unsynced {
            self.out
                .file()
                .sync_data()
                .map_err(|e| FormatError::io(&self.path, "fdatasync", e))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Appends the seal, fsyncs, and makes the file read-only.
    pub fn seal(mut self) -> Result<PathBuf> {
        self.seal_as(false)?;
        Ok(self.path)
    }

    /// Appends a seal (`recovered`: written by recovery, not the writer),
    /// fsyncs and makes the file read-only.
    fn seal_as(&mut self, recovered: bool) -> Result<()> {
        let seal = Record::Seal(Seal {
            records: self.records,
            bytes: self.len(),
            time_ns: crate::now_ns(),
            recovered,
        });
        self.append(&seal)?;
        self.sync()?;
        set_read_only(self.out.file(), &self.path)
    }
}

/// Makes a sealed segment read-only through its open file, not its path:
/// once the seal is visible a shipper or forwarder may ship the segment
/// and delete it before this runs (a path would then be gone, and the
/// agent's rotation would fail).
pub(super) fn set_read_only(f: &File, path: &Path) -> Result<()> {
    f.set_permissions(std::fs::Permissions::from_mode(0o400))
        .map_err(|e| FormatError::io(path, "chmod 0400", e))
}

impl SegmentWriter {
    /// Creates a segment at an explicit path (recovery's temporary file).
    pub(super) fn create_at(path: &Path, header: FileHeader) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| FormatError::io(path, "create segment", e))?;
        let h = header.encode();
        file.write_all_at(&h, 0)
            .map_err(|e| FormatError::io(path, "write header", e))?;
        Ok(SegmentWriter {
            out: AppendFile::new(file, path, h.len() as u64),
            path: path.to_path_buf(),
            header,
            scratch: Vec::new(),
            records: 0,
            unsynced: true,
            created: Instant::now(),
        })
    }

    pub(super) fn seal_recovered(mut self) -> Result<()> {
        self.seal_as(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::{RecoveryMode, SegmentReader};
    use crate::record::Data;

    /// Chunks of every size class, a zero chunk among them, enough to
    /// cross the write buffer: `append_data` writes the very bytes
    /// `append` of the same records writes, and they read back.
    #[test]
    fn append_data_writes_what_append_of_the_record_writes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let header = FileHeader::new(uuid::Uuid::new_v4(), 1, 65536, 512, 1 << 30);
        let mut by_record = SegmentWriter::create(a.path(), header).unwrap();
        let mut by_slice = SegmentWriter::create(b.path(), header).unwrap();
        let mut want = Vec::new();
        for i in 0..40u64 {
            let len = [65536, 100, 0, 4095, 300_000][(i % 5) as usize];
            let data: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
            let flags = if len == 0 { Data::ZERO } else { 0 };
            let rec = Record::Data(Data {
                offset: i * 65536,
                flags,
                data: data.clone(),
            });
            let at = by_record.append(&rec).unwrap();
            assert_eq!(by_slice.append_data(i * 65536, flags, &data).unwrap(), at, "record {i}");
            assert_eq!(by_slice.len(), by_record.len());
            want.push(rec);
        }
        let (pa, pb) = (by_record.seal().unwrap(), by_slice.seal().unwrap());
        let (fa, fb) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
        // The seals' times differ: everything before them is the same.
        let seal = fa.len() - FRAME_LEN_SEAL;
        assert_eq!(fa.len(), fb.len());
        assert!(fa[..seal] == fb[..seal], "the records' bytes differ");
        let mut r = SegmentReader::open(&pb, RecoveryMode::AbsoluteConsistency).unwrap();
        for (i, w) in want.iter().enumerate() {
            assert_eq!(
                r.next_record().unwrap().map(|(_, rec)| rec).as_ref(),
                Some(w),
                "record {i}"
            );
        }
    }

    const FRAME_LEN_SEAL: usize = crate::record::FRAME_LEN + 32;

    #[test]
    fn a_chunk_over_the_maximum_payload_is_refused_and_nothing_is_written() {
        let d = tempfile::tempdir().unwrap();
        let header = FileHeader::new(uuid::Uuid::new_v4(), 1, 65536, 512, 1 << 30);
        let mut w = SegmentWriter::create(d.path(), header).unwrap();
        let before = w.len();
        let big = vec![1u8; MAX_PAYLOAD as usize];
        let err = w.append_data(0, 0, &big).unwrap_err().to_string();
        assert!(err.contains("exceeds the maximum payload"), "{err}");
        assert_eq!(w.len(), before);
        assert_eq!(w.records, 0);
    }
}
