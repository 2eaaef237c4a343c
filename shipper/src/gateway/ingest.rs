//! The cache: each machine's segments as its agent wrote them, received
//! range by range, checked record by record, and fsynced before the
//! forwarder hears they are safe.
//!
//! `CACHE/<machine>/` is an ordinary spool directory, so the ship loop
//! that ships a local spool ships it unchanged (and deletes segments once
//! published). Per disk, `<disk>.received` records the newest segment
//! received whole, so a forwarder learns its segment is safe even after
//! the ship loop deleted it.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hrl_format::SegmentStream;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Result, ShipError};

/// What the gateway holds of one disk: the forwarder resumes from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskProgress {
    /// Every segment up to this one arrived whole (sealed) and is durable.
    pub complete_through: Option<u64>,
    /// The segment being received and the bytes of it held.
    pub open: Option<(u64, u64)>,
    /// Every segment up to this one is published (this gateway's ship
    /// cursor is past it): a forwarder with several gateways keeps a
    /// segment until then.
    #[serde(default)]
    pub published_through: Option<u64>,
}

impl DiskProgress {
    /// The segment the gateway takes next: the open one, else the one
    /// after the last received whole (`None`: any, it holds nothing).
    pub fn expects(&self) -> Option<u64> {
        self.open.map(|(s, _)| s).or(self.complete_through.map(|c| c + 1))
    }
}

/// Why a range was not taken.
#[derive(Debug)]
pub enum Rejected {
    /// Not the expected place (a resend, or a gap): here is where to go on.
    Conflict(DiskProgress, String),
    /// The bytes are not whole valid records of this disk's segment.
    Damaged(String),
    /// The machine's cache quota is full: try again later.
    Full(String),
    Failed(ShipError),
}

impl From<ShipError> for Rejected {
    fn from(e: ShipError) -> Self {
        Rejected::Failed(e)
    }
}

impl From<hrl_format::FormatError> for Rejected {
    fn from(e: hrl_format::FormatError) -> Self {
        Rejected::Failed(e.into())
    }
}

struct OpenSegment {
    seq: u64,
    stream: SegmentStream,
    file: File,
    path: PathBuf,
}

/// The cache of every machine.
pub struct Ingest {
    root: PathBuf,
    quota: u64,
    open: Mutex<HashMap<(String, Uuid), OpenSegment>>,
    /// Bytes each machine holds in the cache, and when that was measured.
    usage: Mutex<HashMap<String, (u64, Option<Instant>)>>,
}

fn received_path(spool: &Path, disk: &Uuid) -> PathBuf {
    spool.join(format!("{disk}.received"))
}

fn read_complete(spool: &Path, disk: &Uuid) -> Result<Option<u64>> {
    let p = received_path(spool, disk);
    match std::fs::read_to_string(&p) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ShipError::corrupt(p.display().to_string(), "not a segment number")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ShipError::io(&p, "read", e)),
    }
}

/// Progress as the files show it (after a restart, or for a disk with no
/// segment open in memory): the newest cached segment not yet complete.
/// A cached segment that is sealed but not yet recorded as received (the
/// gateway stopped in between) is recorded now.
fn file_progress(spool: &Path, disk: &Uuid) -> Result<DiskProgress> {
    if !spool.exists() {
        return Ok(DiskProgress::default());
    }
    let mut complete_through = read_complete(spool, disk)?;
    let newest = hrl_format::list_segments(spool, Some(*disk))?
        .into_iter()
        .filter(|s| complete_through.is_none_or(|c| s.seq > c))
        .max_by_key(|s| s.seq);
    let mut open = None;
    if let Some(s) = newest {
        let stream = recover(&s.path)?;
        if stream.sealed() {
            crate::private_file::replace_private(&received_path(spool, disk), format!("{}\n", s.seq).as_bytes())?;
            complete_through = Some(s.seq);
        } else {
            open = Some((s.seq, stream.position()));
        }
    }
    Ok(DiskProgress {
        complete_through,
        open,
        published_through: crate::ship::published_through(spool, disk)?,
    })
}

/// The checked state of a cached segment after a restart. Bytes after the
/// last whole valid record were never acknowledged (a range is fsynced
/// before its answer), so a torn or zero-filled tail left by a crash is cut
/// off; the forwarder sends it again.
fn recover(path: &Path) -> Result<SegmentStream> {
    let bytes = std::fs::read(path).map_err(|e| ShipError::io(path, "read", e))?;
    let mut s = SegmentStream::new(path);
    let keep = match s.take_whole(&bytes) {
        Ok(n) => n as u64,
        Err(e) => {
            tracing::warn!(segment = %path.display(), error = %e, "damage after the last whole record");
            s.position()
        }
    };
    if keep < bytes.len() as u64 {
        tracing::warn!(segment = %path.display(), kept = keep, cut = bytes.len() as u64 - keep, "cut a tail that was never acknowledged");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| ShipError::io(path, "open", e))?;
        f.set_len(keep)
            .and_then(|_| f.sync_all())
            .map_err(|e| ShipError::io(path, "truncate", e))?;
    }
    Ok(s)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

impl Ingest {
    /// A cache under `root` allowing each machine `quota` bytes (0: none).
    pub fn new(root: impl Into<PathBuf>, quota: u64) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| ShipError::io(&root, "create cache directory", e))?;
        Ok(Ingest {
            root,
            quota,
            open: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
        })
    }

    /// The spool directory of `machine`'s cached segments.
    pub fn spool(&self, machine: &str) -> PathBuf {
        self.root.join(machine)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `machine`'s `disk` stands.
    pub fn progress(&self, machine: &str, disk: &Uuid) -> Result<DiskProgress> {
        let open = self
            .lock_open()
            .get(&(machine.to_string(), *disk))
            .map(|o| (o.seq, o.stream.position()));
        let mut p = file_progress(&self.spool(machine), disk)?;
        if open.is_some() {
            p.open = open;
        }
        Ok(p)
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Uuid), OpenSegment>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses when `machine` is over its quota (measured at most once a
    /// second: the ship loop frees space behind our back).
    fn check_quota(&self, machine: &str, adding: u64) -> std::result::Result<(), Rejected> {
        if self.quota == 0 {
            return Ok(());
        }
        let mut u = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        // Never measured yet: measure now (no instant in the past stands
        // for it: a monotonic clock may be younger than any such offset).
        let e = u.entry(machine.to_string()).or_insert((0, None));
        if e.1.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *e = (dir_bytes(&self.spool(machine)), Some(Instant::now()));
        }
        if e.0 + adding > self.quota {
            return Err(Rejected::Full(format!(
                "machine {machine}: the gateway's cache holds {} of its {} quota; it ships them before taking more",
                hrl_format::human_bytes(e.0),
                hrl_format::human_bytes(self.quota)
            )));
        }
        e.0 += adding;
        Ok(())
    }

    /// Appends `bytes` at `offset` of segment `seq` of `machine`'s `disk`:
    /// checked, written and fsynced. Returns the disk's progress after it
    /// and the records other than `Data` the bytes held (for the fleet
    /// view).
    pub fn append(
        &self,
        machine: &str,
        disk: &Uuid,
        seq: u64,
        offset: u64,
        bytes: &[u8],
    ) -> std::result::Result<(DiskProgress, Vec<hrl_format::Record>), Rejected> {
        self.check_quota(machine, bytes.len() as u64)?;
        let spool = self.spool(machine);
        let key = (machine.to_string(), *disk);
        let mut open = self.lock_open();
        let progress = |open: &HashMap<(String, Uuid), OpenSegment>| -> Result<DiskProgress> {
            Ok(DiskProgress {
                complete_through: read_complete(&spool, disk)?,
                open: open.get(&key).map(|o| (o.seq, o.stream.position())),
                published_through: crate::ship::published_through(&spool, disk)?,
            })
        };
        if !open.contains_key(&key) {
            let seg = self.open_segment(machine, disk, seq, offset)?;
            open.insert(key.clone(), seg);
        }
        let Some(seg) = open.get_mut(&key) else {
            return Err(Rejected::Failed(ShipError::Internal("open segment vanished".into())));
        };
        if seg.seq != seq || seg.stream.position() != offset {
            let why = format!(
                "segment {seq} at {offset}: the gateway holds segment {} up to byte {}",
                seg.seq,
                seg.stream.position()
            );
            return Err(Rejected::Conflict(progress(&open)?, why));
        }
        let before = seg.stream.clone();
        let seen = match seg.stream.accept_seen(bytes) {
            Ok(r) => r,
            Err(e) => return Err(Rejected::Damaged(e.to_string())),
        };
        if offset == 0 {
            let named = seg.stream.header().map(|h| (h.disk_id, h.seq));
            if let Some((hd, hs)) = named.filter(|&(hd, hs)| hd != *disk || hs != seq) {
                seg.stream = before;
                return Err(Rejected::Damaged(format!(
                    "{}: the header says disk {hd} segment {hs}, the request disk {disk} segment {seq}",
                    seg.path.display()
                )));
            }
        }
        let written = seg
            .file
            .write_all_at(bytes, offset)
            .and_then(|_| seg.file.sync_data())
            .map_err(|e| ShipError::io(&seg.path, "write and fsync", e));
        if let Err(e) = written {
            seg.stream = before;
            let _ = seg.file.set_len(offset);
            return Err(e.into());
        }
        if seg.stream.sealed() {
            let done = seg.seq;
            let path = seg.path.clone();
            open.remove(&key);
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400));
            crate::private_file::replace_private(&received_path(&spool, disk), format!("{done}\n").as_bytes())?;
        }
        Ok((progress(&open)?, seen))
    }

    /// Drops everything cached of `machine`'s `disk` (segments, what was
    /// received, the ship cursor and window journal) so it starts again at
    /// whatever segment the forwarder sends next. Only while the machine's
    /// ship loop is paused (`ShipTasks::pause`): the forwarder's spool no
    /// longer holds what this cache expects, because another process
    /// server published it.
    pub fn reset_disk(&self, machine: &str, disk: &Uuid) -> Result<()> {
        let spool = self.spool(machine);
        self.lock_open().remove(&(machine.to_string(), *disk));
        if !spool.exists() {
            return Ok(());
        }
        for s in hrl_format::list_segments(&spool, Some(*disk))? {
            std::fs::remove_file(&s.path).map_err(|e| ShipError::io(&s.path, "delete stale cached segment", e))?;
        }
        let r = received_path(&spool, disk);
        match std::fs::remove_file(&r) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ShipError::io(&r, "remove", e)),
        }
        crate::ship::forget_disk(&spool, disk)?;
        hrl_format::sync_dir(&spool)?;
        Ok(())
    }

    /// Opens (after a restart) or creates the cache file of a segment.
    fn open_segment(
        &self,
        machine: &str,
        disk: &Uuid,
        seq: u64,
        offset: u64,
    ) -> std::result::Result<OpenSegment, Rejected> {
        let spool = self.spool(machine);
        std::fs::create_dir_all(&spool).map_err(|e| ShipError::io(&spool, "create machine cache", e))?;
        let complete = file_progress(&spool, disk)?.complete_through;
        let path = spool.join(hrl_format::segment_file_name(*disk, seq));
        // Called with no segment of this disk open in memory: the files
        // say where it stands.
        let conflict = |why: String| -> std::result::Result<OpenSegment, Rejected> {
            Err(Rejected::Conflict(file_progress(&spool, disk)?, why))
        };
        if complete.is_some_and(|c| seq <= c) {
            return conflict(format!("segment {seq} was received whole already"));
        }
        if path.exists() {
            let stream = recover(&path)?;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| ShipError::io(&path, "open", e))?;
            return Ok(OpenSegment {
                seq,
                stream,
                file,
                path,
            });
        }
        if let Some(c) = complete {
            if seq != c + 1 {
                return conflict(format!(
                    "segment {seq} does not follow segment {c}, the last received whole"
                ));
            }
        }
        if let Some((open_seq, _)) = file_progress(&spool, disk)?.open {
            return conflict(format!("segment {open_seq} is not complete yet"));
        }
        if offset != 0 {
            return conflict(format!("segment {seq} is new here: send it from byte 0"));
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| ShipError::io(&path, "create", e))?;
        hrl_format::sync_dir(&spool)?;
        let label = PathBuf::from(machine).join(hrl_format::segment_file_name(*disk, seq));
        Ok(OpenSegment {
            seq,
            stream: SegmentStream::new(label),
            file,
            path,
        })
    }
}
