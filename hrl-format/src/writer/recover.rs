//! Recovery of a segment a crashed writer left unsealed: cut a torn tail,
//! append a seal marked recovered, make it read-only.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::config::LogConfig;
use super::segment::{set_read_only, sync_dir, SegmentWriter};
use crate::error::{FormatError, Result};
use crate::header::FileHeader;
use crate::reader::{RecoveryMode, SegmentReader, TornTail};
use crate::record::{encode_framed, Record, Seal, FRAME_LEN};
use crate::spool::segment_file_name;

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

/// Seals a segment left unsealed by a crashed writer. Returns `None` when it
/// was already sealed. Sealed but damaged segments are left alone: they are
/// reported by readers, never rewritten.
pub(super) fn recover_segment(path: &Path, cfg: &LogConfig) -> Result<Option<RecoveredSegment>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

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
