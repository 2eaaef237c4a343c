//! Decoding payloads: every length, flag and enum value is checked, and a
//! malformed payload is an error naming the record type, never a panic
//! (the fuzz target `hrl_reader` feeds this arbitrary bytes).

use uuid::Uuid;

use super::*;
use crate::header::arr;

impl Record {
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
            rtype::IDENTITY => p.identity()?,
            rtype::LABEL => {
                p.need(8)?;
                Record::Label(Label {
                    seq: p.u64_at(0),
                    text: p.text_from(8, "label")?,
                })
            }
            x if x >= rtype::MANDATORY => {
                return Err(format!(
                    "record type {x} must be understood but is unknown to this build"
                ))
            }
            _ => return Ok(None),
        };
        Ok(Some(rec))
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

    fn identity(&self) -> Result<Record, String> {
        self.need(8)?;
        let (h, n) = (self.p[0] as usize, self.p[1] as usize);
        self.exact(8 + h + n)?;
        let text = |from: usize, len: usize, what: &str| {
            std::str::from_utf8(&self.p[from..from + len])
                .map(str::to_string)
                .map_err(|_| format!("{what} is not UTF-8"))
        };
        Ok(Record::Identity(Identity {
            host: text(8, h, "identity host")?,
            name: text(8 + h, n, "identity name")?,
        }))
    }
}
