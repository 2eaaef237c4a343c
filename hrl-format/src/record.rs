//! Records: what a `.hrl` segment holds after its header.
//!
//! Every record is framed the same way (little-endian):
//!
//! ```text
//! off len field
//!   0   4  crc32 of (file signature as 8 LE bytes ‖ bytes 4..12 ‖ payload)
//!   4   4  payload length
//!   8   1  record type
//!   9   1  frame flags (0 in version 1.0; readers ignore them)
//!  10   2  reserved (0)
//!  12   .. payload
//! ```
//!
//! The payload layouts are in `docs/hrl-format.md` and in the `encode_*`
//! functions below, which are the only code that writes them.

use uuid::Uuid;

use crate::header::arr;

/// Length of the frame header in front of every payload.
pub const FRAME_LEN: usize = 12;
/// Largest payload a reader accepts. Data payloads are at most one chunk
/// (chunk size is at most 16 MiB); anything larger is damage, not data.
pub const MAX_PAYLOAD: u32 = 16 * 1024 * 1024 + 64;

/// Record type numbers. Types 1..=127 may be skipped by readers that do not
/// know them (a newer minor version added them); types 128..=255 are
/// reserved for records a reader must understand, and an unknown one is an
/// error.
pub mod rtype {
    pub const EXTENT: u8 = 1;
    pub const FLUSH: u8 = 2;
    pub const DATA: u8 = 3;
    pub const TAG: u8 = 4;
    pub const LOST: u8 = 5;
    pub const MODE: u8 = 6;
    pub const SEAL: u8 = 7;
    /// Since 1.1: the consistency-group point the next tag belongs to.
    pub const GROUP: u8 = 8;
    /// First type number a reader may not skip.
    pub const MANDATORY: u8 = 128;
}

/// What an `Extent` record says happened to a byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtentOp {
    Write = 1,
    Discard = 2,
    WriteZeroes = 3,
}

/// Kind of a recovery point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PointKind {
    /// Frozen, no hooks.
    Crash = 1,
    /// Frozen between pre-freeze and post-thaw hooks.
    App = 2,
    /// No filesystem to freeze: the point is not exact.
    Fuzzy = 3,
}

/// Why tracking was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossReason {
    /// The kernel ring buffer overran or dropped events.
    Overrun = 1,
    /// The agent (re)started: writes while it was not running are unknown.
    Restart = 2,
    /// The device changed size.
    Resize = 3,
    /// The previous run ended uncleanly.
    Unclean = 4,
    /// Any other failure of the change source.
    Error = 5,
}

/// Replication mode of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskMode {
    InitialSync = 1,
    Data = 2,
    Bitmap = 3,
    Resync = 4,
    Paused = 5,
}

/// A byte range of the device was written, discarded or zeroed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub op: ExtentOp,
    /// The I/O completed with an error; the range is still treated as dirty
    /// because part of it may have reached the media.
    pub failed: bool,
    pub offset: u64,
    pub len: u64,
    pub time_ns: u64,
}

/// A cache flush (or FUA write) completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flush {
    pub fua: bool,
    pub time_ns: u64,
}

/// The content of one chunk (or the device's last, shorter chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// Chunk-aligned byte offset on the device.
    pub offset: u64,
    /// [`Data::ZERO`], or 0.
    pub flags: u32,
    /// The chunk's bytes; empty when [`Data::ZERO`] is set.
    pub data: Vec<u8>,
}

impl Data {
    /// The chunk is all zeros: the payload is empty and the chunk's length
    /// is the chunk size, or what is left of the device before its end.
    pub const ZERO: u32 = 1;

    pub fn is_zero(&self) -> bool {
        self.flags & Data::ZERO != 0
    }
}

/// A recovery point: every Data record before it, applied in order, gives
/// the device as it was when the point was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub seq: u64,
    pub kind: PointKind,
    /// The point was started but not completed (freeze watchdog, hook
    /// failure): it must not be published or restored.
    pub aborted: bool,
    pub time_ns: u64,
    /// How long the filesystem was frozen, in nanoseconds (0 for fuzzy).
    pub freeze_ns: u64,
    /// Consistency group this point belongs to.
    pub group: Option<Uuid>,
}

/// Written just before a [`Tag`] whose `group` is `id`: which consistency
/// group point that tag belongs to. Every member disk's tag of one group
/// point carries the same `id`, `name` and `seq`; `members` is how many
/// disks (across every agent) the group point has, so a repository can
/// tell when all of them are published. Added in version 1.1; a 1.0 reader
/// skips it (types below 128 are skippable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: Uuid,
    /// Group sequence, increasing per group (chosen by the coordinator).
    pub seq: u64,
    pub members: u32,
    /// Group name (UTF-8, at most 255 bytes).
    pub name: String,
}

/// Tracking was lost for a range (or the whole device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub reason: LossReason,
    /// `None`: the whole device.
    pub range: Option<(u64, u64)>,
    pub time_ns: u64,
    /// Human-readable detail (counters, error text). Never a secret.
    pub detail: String,
}

/// The disk's replication mode changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeChange {
    pub mode: DiskMode,
    pub time_ns: u64,
}

/// Last record of a finished segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// Records in the file before the seal.
    pub records: u64,
    /// File offset at which the seal starts (= bytes before it).
    pub bytes: u64,
    pub time_ns: u64,
    /// The seal was written by recovery after a crash, not by the writer
    /// that wrote the records.
    pub recovered: bool,
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Extent(Extent),
    Flush(Flush),
    Data(Data),
    Tag(Tag),
    Lost(Lost),
    Mode(ModeChange),
    Seal(Seal),
    Group(Group),
}

impl Record {
    /// The record type number.
    pub fn rtype(&self) -> u8 {
        match self {
            Record::Extent(_) => rtype::EXTENT,
            Record::Flush(_) => rtype::FLUSH,
            Record::Data(_) => rtype::DATA,
            Record::Tag(_) => rtype::TAG,
            Record::Lost(_) => rtype::LOST,
            Record::Mode(_) => rtype::MODE,
            Record::Seal(_) => rtype::SEAL,
            Record::Group(_) => rtype::GROUP,
        }
    }

    /// Lower-case name used by `hrl dump` and stats.
    pub fn type_name(&self) -> &'static str {
        type_name(self.rtype())
    }

    /// Wall-clock time the record carries, if it carries one.
    pub fn time_ns(&self) -> Option<u64> {
        match self {
            Record::Extent(e) => Some(e.time_ns),
            Record::Flush(f) => Some(f.time_ns),
            Record::Data(_) => None,
            Record::Tag(t) => Some(t.time_ns),
            Record::Lost(l) => Some(l.time_ns),
            Record::Mode(m) => Some(m.time_ns),
            Record::Seal(s) => Some(s.time_ns),
            Record::Group(_) => None,
        }
    }

    /// Length of the payload this record encodes to.
    pub fn payload_len(&self) -> usize {
        match self {
            Record::Extent(_) => 32,
            Record::Flush(_) => 16,
            Record::Data(d) => 16 + d.data.len(),
            Record::Tag(_) => 48,
            Record::Lost(l) => 32 + l.detail.len(),
            Record::Mode(_) => 16,
            Record::Seal(_) => 32,
            Record::Group(g) => 32 + g.name.len(),
        }
    }

    /// Appends the payload (without frame) to `out`.
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Record::Extent(e) => {
                out.push(e.op as u8);
                out.push(u8::from(e.failed));
                out.extend_from_slice(&[0u8; 6]);
                out.extend_from_slice(&e.offset.to_le_bytes());
                out.extend_from_slice(&e.len.to_le_bytes());
                out.extend_from_slice(&e.time_ns.to_le_bytes());
            }
            Record::Flush(f) => {
                out.push(u8::from(f.fua));
                out.extend_from_slice(&[0u8; 7]);
                out.extend_from_slice(&f.time_ns.to_le_bytes());
            }
            Record::Data(d) => {
                out.extend_from_slice(&d.offset.to_le_bytes());
                out.extend_from_slice(&d.flags.to_le_bytes());
                out.extend_from_slice(&[0u8; 4]);
                out.extend_from_slice(&d.data);
            }
            Record::Tag(t) => {
                out.extend_from_slice(&t.seq.to_le_bytes());
                out.push(t.kind as u8);
                out.push(u8::from(t.aborted));
                out.extend_from_slice(&[0u8; 6]);
                out.extend_from_slice(&t.time_ns.to_le_bytes());
                out.extend_from_slice(&t.freeze_ns.to_le_bytes());
                out.extend_from_slice(t.group.unwrap_or(Uuid::nil()).as_bytes());
            }
            Record::Lost(l) => {
                out.push(l.reason as u8);
                out.push(u8::from(l.range.is_none()));
                out.extend_from_slice(&[0u8; 6]);
                let (o, n) = l.range.unwrap_or((0, 0));
                out.extend_from_slice(&o.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
                out.extend_from_slice(&l.time_ns.to_le_bytes());
                out.extend_from_slice(l.detail.as_bytes());
            }
            Record::Mode(m) => {
                out.push(m.mode as u8);
                out.extend_from_slice(&[0u8; 7]);
                out.extend_from_slice(&m.time_ns.to_le_bytes());
            }
            Record::Seal(s) => {
                out.extend_from_slice(&s.records.to_le_bytes());
                out.extend_from_slice(&s.bytes.to_le_bytes());
                out.extend_from_slice(&s.time_ns.to_le_bytes());
                out.push(u8::from(s.recovered));
                out.extend_from_slice(&[0u8; 7]);
            }
            Record::Group(g) => {
                out.extend_from_slice(g.id.as_bytes());
                out.extend_from_slice(&g.seq.to_le_bytes());
                out.extend_from_slice(&g.members.to_le_bytes());
                out.extend_from_slice(&[0u8; 4]);
                out.extend_from_slice(g.name.as_bytes());
            }
        }
    }

    /// Decodes a payload of a known type. `Ok(None)` for an unknown
    /// skippable type; `Err(reason)` for a malformed payload (the caller
    /// names file and offset).
    pub fn decode_payload(rt: u8, p: &[u8]) -> Result<Option<Record>, String> {
        let p = Payload { rt, p };
        let rec = match rt {
            rtype::EXTENT => p.extent()?,
            rtype::FLUSH => {
                p.exact(16)?;
                Record::Flush(Flush {
                    fua: p.flag(0, "flush fua")?,
                    time_ns: p.u64_at(8),
                })
            }
            rtype::DATA => {
                p.need(16)?;
                Record::Data(Data {
                    offset: p.u64_at(0),
                    flags: u32::from_le_bytes(arr(&p.p[8..12])),
                    data: p.p[16..].to_vec(),
                })
            }
            rtype::TAG => p.tag()?,
            rtype::LOST => p.lost()?,
            rtype::MODE => p.mode()?,
            rtype::SEAL => {
                p.exact(32)?;
                Record::Seal(Seal {
                    records: p.u64_at(0),
                    bytes: p.u64_at(8),
                    time_ns: p.u64_at(16),
                    recovered: p.flag(24, "seal recovered")?,
                })
            }
            rtype::GROUP => p.group()?,
            x if x >= rtype::MANDATORY => {
                return Err(format!(
                    "record type {x} must be understood but is unknown to this build"
                ))
            }
            _ => return Ok(None),
        };
        Ok(Some(rec))
    }

    /// A JSON object describing the record (for `hrl dump --json` and
    /// `hrl tail --json`). Data payloads are summarised, never printed.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Record::Extent(e) => json!({"type": "extent", "op": e.op, "failed": e.failed,
                "offset": e.offset, "len": e.len, "time_ns": e.time_ns}),
            Record::Flush(f) => json!({"type": "flush", "fua": f.fua, "time_ns": f.time_ns}),
            Record::Data(d) => json!({"type": "data", "offset": d.offset, "len": d.data.len(), "flags": d.flags,
                "zero": d.is_zero()}),
            Record::Tag(t) => json!({"type": "tag", "seq": t.seq, "kind": t.kind, "aborted": t.aborted,
                "time_ns": t.time_ns, "freeze_ns": t.freeze_ns,
                "group": t.group.map(|g| g.to_string())}),
            Record::Lost(l) => json!({"type": "lost", "reason": l.reason,
                "offset": l.range.map(|r| r.0), "len": l.range.map(|r| r.1),
                "whole_device": l.range.is_none(), "time_ns": l.time_ns, "detail": l.detail}),
            Record::Mode(m) => json!({"type": "mode", "mode": m.mode, "time_ns": m.time_ns}),
            Record::Seal(s) => json!({"type": "seal", "records": s.records, "bytes": s.bytes,
                "time_ns": s.time_ns, "recovered": s.recovered}),
            Record::Group(g) => json!({"type": "group", "id": g.id.to_string(), "seq": g.seq,
                "members": g.members, "name": g.name}),
        }
    }
}

/// Name of a record type number.
pub fn type_name(rt: u8) -> &'static str {
    match rt {
        rtype::EXTENT => "extent",
        rtype::FLUSH => "flush",
        rtype::DATA => "data",
        rtype::TAG => "tag",
        rtype::LOST => "lost",
        rtype::MODE => "mode",
        rtype::SEAL => "seal",
        rtype::GROUP => "group",
        _ => "unknown",
    }
}

/// The checksum of a framed record: signature, frame bytes 4..12, payload.
pub fn record_crc(signature: u64, frame_tail: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&signature.to_le_bytes());
    h.update(frame_tail);
    h.update(payload);
    h.finalize()
}

/// Appends a complete framed record to `out`.
pub fn encode_framed(signature: u64, rec: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN]);
    rec.encode_payload(out);
    let plen = (out.len() - start - FRAME_LEN) as u32;
    out[start + 4..start + 8].copy_from_slice(&plen.to_le_bytes());
    out[start + 8] = rec.rtype();
    let crc = record_crc(signature, &out[start + 4..start + FRAME_LEN], &out[start + FRAME_LEN..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Record::Extent(e) => write!(
                f,
                "extent {:?} offset={} len={}{}",
                e.op,
                e.offset,
                e.len,
                if e.failed { " FAILED" } else { "" }
            ),
            Record::Flush(x) => write!(f, "flush{}", if x.fua { " fua" } else { "" }),
            Record::Data(d) if d.is_zero() => write!(f, "data offset={} zero chunk", d.offset),
            Record::Data(d) => write!(f, "data offset={} len={}", d.offset, d.data.len()),
            Record::Tag(t) => write!(
                f,
                "tag seq={} kind={:?} freeze={:.1}ms{}{}",
                t.seq,
                t.kind,
                t.freeze_ns as f64 / 1e6,
                if t.aborted { " ABORTED" } else { "" },
                t.group.map(|g| format!(" group={g}")).unwrap_or_default()
            ),
            Record::Lost(l) => match l.range {
                Some((o, n)) => write!(f, "LOST {:?} offset={o} len={n} {}", l.reason, l.detail),
                None => write!(f, "LOST {:?} whole device {}", l.reason, l.detail),
            },
            Record::Mode(m) => write!(f, "mode {:?}", m.mode),
            Record::Seal(s) => write!(
                f,
                "seal records={} bytes={}{}",
                s.records,
                s.bytes,
                if s.recovered { " (recovered)" } else { "" }
            ),
            Record::Group(g) => write!(f, "group {} seq={} members={} id={}", g.name, g.seq, g.members, g.id),
        }
    }
}

/// A payload being decoded: its type (for messages) and bytes. Every
/// accessor is called only after `need`/`exact` checked the length.
struct Payload<'a> {
    rt: u8,
    p: &'a [u8],
}

impl Payload<'_> {
    fn need(&self, n: usize) -> Result<(), String> {
        if self.p.len() < n {
            return Err(format!(
                "{} payload is {} bytes, needs at least {n}",
                type_name(self.rt),
                self.p.len()
            ));
        }
        Ok(())
    }

    fn exact(&self, n: usize) -> Result<(), String> {
        if self.p.len() != n {
            return Err(format!(
                "{} payload is {} bytes, must be {n}",
                type_name(self.rt),
                self.p.len()
            ));
        }
        Ok(())
    }

    fn u64_at(&self, o: usize) -> u64 {
        u64::from_le_bytes(arr(&self.p[o..o + 8]))
    }

    fn flag(&self, at: usize, what: &str) -> Result<bool, String> {
        match self.p[at] {
            0 => Ok(false),
            1 => Ok(true),
            x => Err(format!("{what} flag has value {x}, must be 0 or 1")),
        }
    }

    fn text_from(&self, at: usize, what: &str) -> Result<String, String> {
        std::str::from_utf8(&self.p[at..])
            .map(str::to_string)
            .map_err(|_| format!("{what} is not UTF-8"))
    }

    fn extent(&self) -> Result<Record, String> {
        self.exact(32)?;
        let op = match self.p[0] {
            1 => ExtentOp::Write,
            2 => ExtentOp::Discard,
            3 => ExtentOp::WriteZeroes,
            x => return Err(format!("unknown extent op {x}")),
        };
        Ok(Record::Extent(Extent {
            op,
            failed: self.flag(1, "extent failed")?,
            offset: self.u64_at(8),
            len: self.u64_at(16),
            time_ns: self.u64_at(24),
        }))
    }

    fn tag(&self) -> Result<Record, String> {
        self.exact(48)?;
        let kind = match self.p[8] {
            1 => PointKind::Crash,
            2 => PointKind::App,
            3 => PointKind::Fuzzy,
            x => return Err(format!("unknown point kind {x}")),
        };
        let g = Uuid::from_bytes(arr(&self.p[32..48]));
        Ok(Record::Tag(Tag {
            seq: self.u64_at(0),
            kind,
            aborted: self.flag(9, "tag aborted")?,
            time_ns: self.u64_at(16),
            freeze_ns: self.u64_at(24),
            group: if g.is_nil() { None } else { Some(g) },
        }))
    }

    fn lost(&self) -> Result<Record, String> {
        self.need(32)?;
        let reason = match self.p[0] {
            1 => LossReason::Overrun,
            2 => LossReason::Restart,
            3 => LossReason::Resize,
            4 => LossReason::Unclean,
            5 => LossReason::Error,
            x => return Err(format!("unknown loss reason {x}")),
        };
        let whole = self.flag(1, "lost whole-device")?;
        Ok(Record::Lost(Lost {
            reason,
            range: if whole {
                None
            } else {
                Some((self.u64_at(8), self.u64_at(16)))
            },
            time_ns: self.u64_at(24),
            detail: self.text_from(32, "lost detail")?,
        }))
    }

    fn mode(&self) -> Result<Record, String> {
        self.exact(16)?;
        let mode = match self.p[0] {
            1 => DiskMode::InitialSync,
            2 => DiskMode::Data,
            3 => DiskMode::Bitmap,
            4 => DiskMode::Resync,
            5 => DiskMode::Paused,
            x => return Err(format!("unknown disk mode {x}")),
        };
        Ok(Record::Mode(ModeChange {
            mode,
            time_ns: self.u64_at(8),
        }))
    }

    fn group(&self) -> Result<Record, String> {
        self.need(32)?;
        Ok(Record::Group(Group {
            id: Uuid::from_bytes(arr(&self.p[0..16])),
            seq: self.u64_at(16),
            members: u32::from_le_bytes(arr(&self.p[24..28])),
            name: self.text_from(32, "group name")?,
        }))
    }
}
