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

mod decode;
mod display;

use uuid::Uuid;

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
    /// Since 1.2: the machine's host name and the disk's name, first in
    /// every segment.
    pub const IDENTITY: u8 = 9;
    /// Since 1.2: a label a hook attached to the next tag.
    pub const LABEL: u8 = 10;
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

/// Longest host name, disk name or label a record carries, in bytes.
pub const MAX_TEXT: usize = 255;

/// Who this log belongs to, as operators name it: written first in every
/// segment (so a reader that starts at any segment knows it), since
/// version 1.2. A 1.0 or 1.1 reader skips it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The machine's host name (UTF-8, at most [`MAX_TEXT`] bytes).
    pub host: String,
    /// The disk's name in the agent's configuration (at most [`MAX_TEXT`] bytes).
    pub name: String,
}

/// A short text a point hook attached to point `seq` (for example a
/// database's WAL position), written just before that point's tag, since
/// version 1.2. A 1.0 or 1.1 reader skips it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub seq: u64,
    /// UTF-8, at most [`MAX_TEXT`] bytes.
    pub text: String,
}

/// `s` cut to at most [`MAX_TEXT`] bytes at a character boundary.
pub fn clip(s: &str) -> &str {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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
    Identity(Identity),
    Label(Label),
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
            Record::Identity(_) => rtype::IDENTITY,
            Record::Label(_) => rtype::LABEL,
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
            Record::Group(_) | Record::Identity(_) | Record::Label(_) => None,
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
            Record::Identity(i) => 8 + clip(&i.host).len() + clip(&i.name).len(),
            Record::Label(l) => 8 + clip(&l.text).len(),
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
            Record::Identity(i) => {
                let (host, name) = (clip(&i.host), clip(&i.name));
                out.push(host.len() as u8);
                out.push(name.len() as u8);
                out.extend_from_slice(&[0u8; 6]);
                out.extend_from_slice(host.as_bytes());
                out.extend_from_slice(name.as_bytes());
            }
            Record::Label(l) => {
                out.extend_from_slice(&l.seq.to_le_bytes());
                out.extend_from_slice(clip(&l.text).as_bytes());
            }
        }
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
            Record::Identity(i) => json!({"type": "identity", "host": i.host, "name": i.name}),
            Record::Label(l) => json!({"type": "label", "seq": l.seq, "text": l.text}),
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
        rtype::IDENTITY => "identity",
        rtype::LABEL => "label",
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

/// Bytes of a `Data` record before its chunk bytes: the frame and the
/// payload's offset, flags and padding.
pub const DATA_HEAD: usize = FRAME_LEN + 16;

/// The frame and payload head of a `Data` record whose chunk bytes are
/// `data`, crc included: the head followed by `data` is exactly what
/// [`encode_framed`] writes for that record. Lets a writer send the chunk
/// from where it was read instead of copying it into a record first.
pub fn encode_data_head(signature: u64, offset: u64, flags: u32, data: &[u8]) -> [u8; DATA_HEAD] {
    let mut head = [0u8; DATA_HEAD];
    let plen = (16 + data.len()) as u32;
    head[4..8].copy_from_slice(&plen.to_le_bytes());
    head[8] = rtype::DATA;
    head[FRAME_LEN..FRAME_LEN + 8].copy_from_slice(&offset.to_le_bytes());
    head[FRAME_LEN + 8..FRAME_LEN + 12].copy_from_slice(&flags.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&signature.to_le_bytes());
    h.update(&head[4..]);
    h.update(data);
    head[..4].copy_from_slice(&h.finalize().to_le_bytes());
    head
}
