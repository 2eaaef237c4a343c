//! One-line text of a record (`hrl dump`, `hrl tail`).

use super::*;

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
            Record::Identity(i) => write!(f, "identity {}/{}", i.host, i.name),
            Record::Label(l) => write!(f, "label seq={} {:?}", l.seq, l.text),
        }
    }
}
