//! Decoding block completion events with offsets taken from the kernel's
//! own `format` file, so a kernel that moves a field is still read right.

use std::collections::HashMap;

use crate::error::{AgentError, Result};

/// A completed block I/O as the tracepoint reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEvent {
    /// Kernel dev_t encoding `(major << 20) | minor`.
    pub dev: u32,
    pub sector: u64,
    pub nr_sector: u32,
    pub error: i32,
    pub rwbs: [u8; 10],
}

/// What a completion did, from its `rwbs` string (see `blk_fill_rwbs`):
/// an optional leading `F` (preflush), the op (`W` write, `D` discard,
/// `DE` secure erase, `F` flush, `R` read, `N` other, which includes
/// write-zeroes), then `F` for FUA and modifiers `A S M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rwbs {
    pub preflush: bool,
    pub op: u8,
    pub fua: bool,
}

impl BlockEvent {
    pub fn rwbs(&self) -> Rwbs {
        let s: Vec<u8> = self.rwbs.iter().copied().take_while(|&c| c != 0).collect();
        let mut i = 0;
        let mut preflush = false;
        // "F" alone is a flush op; "F" followed by an op letter is a preflush.
        if s.first() == Some(&b'F') && s.len() > 1 && matches!(s[1], b'W' | b'D' | b'R' | b'N' | b'F') {
            preflush = true;
            i = 1;
        }
        let op = s.get(i).copied().unwrap_or(b'N');
        let fua = s.get(i + 1..).is_some_and(|r| r.contains(&b'F'));
        Rwbs { preflush, op, fua }
    }
}

#[derive(Debug, Clone, Copy)]
struct Field {
    offset: usize,
    size: usize,
}

/// Decoder for one event type.
#[derive(Debug, Clone)]
pub struct EventDecoder {
    pub id: u16,
    dev: Field,
    sector: Field,
    nr_sector: Field,
    error: Field,
    rwbs: Field,
}

fn parse_format(text: &str) -> (Option<u16>, HashMap<String, Field>) {
    let mut id = None;
    let mut fields = HashMap::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("ID:") {
            id = v.trim().parse().ok();
            continue;
        }
        let Some(rest) = l.strip_prefix("field:") else { continue };
        let mut decl = "";
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';') {
            let p = part.trim();
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            } else if decl.is_empty() {
                decl = p;
            }
        }
        // The name is the last word of the declaration, without [N].
        let name = decl
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .split('[')
            .next()
            .unwrap_or_default()
            .to_string();
        if let (Some(offset), Some(size)) = (offset, size) {
            fields.insert(name, Field { offset, size });
        }
    }
    (id, fields)
}

impl EventDecoder {
    /// Builds a decoder from a `format` file's text.
    pub fn from_format(name: &str, text: &str) -> Result<Self> {
        let (id, fields) = parse_format(text);
        let get = |f: &str| {
            fields
                .get(f)
                .copied()
                .ok_or_else(|| AgentError::Tracefs(format!("event {name} has no field {f} in its format")))
        };
        Ok(EventDecoder {
            id: id.ok_or_else(|| AgentError::Tracefs(format!("event {name}: no ID in its format")))?,
            dev: get("dev")?,
            sector: get("sector")?,
            nr_sector: get("nr_sector")?,
            error: get("error")?,
            rwbs: get("rwbs")?,
        })
    }

    /// Decodes an event payload of this type; `None` for another type or a
    /// payload too short for the fields.
    pub fn decode(&self, p: &[u8]) -> Option<BlockEvent> {
        if p.len() < 2 || u16::from_le_bytes([p[0], p[1]]) != self.id {
            return None;
        }
        let uint = |f: Field| -> Option<u64> {
            let b = p.get(f.offset..f.offset + f.size)?;
            Some(match f.size {
                2 => u16::from_le_bytes([b[0], b[1]]) as u64,
                4 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64,
                8 => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                _ => return None,
            })
        };
        let mut rwbs = [0u8; 10];
        let r = p.get(self.rwbs.offset..self.rwbs.offset + self.rwbs.size.min(10))?;
        rwbs[..r.len()].copy_from_slice(r);
        Some(BlockEvent {
            dev: uint(self.dev)? as u32,
            sector: uint(self.sector)?,
            nr_sector: uint(self.nr_sector)? as u32,
            error: uint(self.error)? as u32 as i32,
            rwbs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RQ: &str = "name: block_rq_complete\nID: 2107\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;\n\tfield:int error;\toffset:28;\tsize:4;\tsigned:1;\n\tfield:unsigned short ioprio;\toffset:32;\tsize:2;\tsigned:0;\n\tfield:char rwbs[10];\toffset:34;\tsize:10;\tsigned:0;\n\tfield:__data_loc char[] cmd;\toffset:44;\tsize:4;\tsigned:0;\n";

    #[test]
    fn decodes_rq_complete() {
        let d = EventDecoder::from_format("rq", RQ).unwrap();
        let mut p = vec![0u8; 48];
        p[0..2].copy_from_slice(&2107u16.to_le_bytes());
        p[8..12].copy_from_slice(&((7u32 << 20) | 3).to_le_bytes());
        p[16..24].copy_from_slice(&1234u64.to_le_bytes());
        p[24..28].copy_from_slice(&8u32.to_le_bytes());
        p[28..32].copy_from_slice(&(-5i32).to_le_bytes());
        p[34..37].copy_from_slice(b"WFS");
        let e = d.decode(&p).unwrap();
        assert_eq!((e.dev, e.sector, e.nr_sector, e.error), ((7 << 20) | 3, 1234, 8, -5));
        assert_eq!(
            e.rwbs(),
            Rwbs {
                preflush: false,
                op: b'W',
                fua: true
            }
        );
        p[0] = 0;
        assert!(d.decode(&p).is_none());
    }

    #[test]
    fn rwbs_forms() {
        let ev = |s: &[u8]| {
            let mut r = [0u8; 10];
            r[..s.len()].copy_from_slice(s);
            BlockEvent {
                dev: 0,
                sector: 0,
                nr_sector: 0,
                error: 0,
                rwbs: r,
            }
            .rwbs()
        };
        assert_eq!(
            ev(b"F"),
            Rwbs {
                preflush: false,
                op: b'F',
                fua: false
            }
        );
        assert_eq!(
            ev(b"FWS"),
            Rwbs {
                preflush: true,
                op: b'W',
                fua: false
            }
        );
        assert_eq!(
            ev(b"FWFS"),
            Rwbs {
                preflush: true,
                op: b'W',
                fua: true
            }
        );
        assert_eq!(
            ev(b"DE"),
            Rwbs {
                preflush: false,
                op: b'D',
                fua: false
            }
        );
        assert_eq!(
            ev(b"RA"),
            Rwbs {
                preflush: false,
                op: b'R',
                fua: false
            }
        );
        assert_eq!(
            ev(b"N"),
            Rwbs {
                preflush: false,
                op: b'N',
                fua: false
            }
        );
    }
}
