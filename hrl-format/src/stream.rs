//! A segment that arrives as a stream of byte ranges (a forwarder sends a
//! live segment to the process server as the agent writes it).
//!
//! [`SegmentStream`] checks each range as the continuation of what came
//! before: the header first, then whole framed records, each with a valid
//! checksum and payload, the seal matching the record count, nothing after
//! the seal. The sender uses [`SegmentStream::take_whole`] to cut a range at
//! the last whole record; the receiver uses [`SegmentStream::accept`], which
//! refuses anything but whole, valid records. Both sides then hold the same
//! position, so a resumed transfer continues at a record boundary.
//!
//! A sender's stream ([`SegmentStream::sender`]) does not compute the
//! checksum of `Data` payloads: the receiver checks every byte anyway, and
//! on the protected machine that pass over the data was 5-7% of the
//! forwarder's CPU. Neither side decodes a `Data` record (a copy of its
//! payload).

use std::path::PathBuf;

use crate::error::{FormatError, Result};
use crate::header::FileHeader;
use crate::reader::{check_data_frame, check_frame, frame_payload_len, header_error, FrameCheck};
use crate::record::{rtype, Record, FRAME_LEN, MAX_PAYLOAD};

/// The checked state of a segment received so far.
#[derive(Debug, Clone)]
pub struct SegmentStream {
    label: PathBuf,
    header: Option<FileHeader>,
    pos: u64,
    records: u64,
    sealed: bool,
    /// Compute the checksum of `Data` payloads (not on the sending side).
    data_crc: bool,
}

impl SegmentStream {
    /// A segment of which nothing has arrived; `label` names it in errors
    /// (for example `machine/disk-seq.hrl`).
    pub fn new(label: impl Into<PathBuf>) -> Self {
        SegmentStream {
            label: label.into(),
            header: None,
            pos: 0,
            records: 0,
            sealed: false,
            data_crc: true,
        }
    }

    /// The sending side's stream: frames, lengths, every record but the
    /// checksum of `Data` payloads (which the receiver checks).
    pub fn sender(label: impl Into<PathBuf>) -> Self {
        SegmentStream {
            data_crc: false,
            ..SegmentStream::new(label)
        }
    }

    /// Bytes checked so far: where the next range must start.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn header(&self) -> Option<&FileHeader> {
        self.header.as_ref()
    }

    /// The seal has arrived: the segment is complete.
    pub fn sealed(&self) -> bool {
        self.sealed
    }

    /// Checks `bytes` (the continuation at [`position`](Self::position))
    /// and advances over every whole record; returns how many bytes that
    /// was. An incomplete record at the end is left for later, not an error;
    /// a complete but damaged one is.
    pub fn take_whole(&mut self, bytes: &[u8]) -> Result<usize> {
        self.take_whole_seen(bytes, &mut |_| {})
    }

    /// [`take_whole`](Self::take_whole) that shows `seen` every whole valid
    /// record other than `Data` (which would cost a copy of its payload).
    fn take_whole_seen(&mut self, bytes: &[u8], seen: &mut dyn FnMut(Record)) -> Result<usize> {
        let mut at = 0usize;
        if self.header.is_none() {
            let Ok(hlen) = FileHeader::declared_len(bytes) else {
                return self.short_header(bytes);
            };
            if bytes.len() < hlen as usize {
                return self.short_header(bytes);
            }
            let h = FileHeader::decode(&bytes[..hlen as usize]).map_err(|e| header_error(&self.label, e))?;
            self.header = Some(h);
            self.pos = hlen as u64;
            at = hlen as usize;
        }
        let sig = self.header.as_ref().map_or(0, |h| h.signature);
        while at < bytes.len() {
            if self.sealed {
                return Err(self.corrupt(format!("{} bytes after the seal", bytes.len() - at)));
            }
            let rest = &bytes[at..];
            if rest.len() < FRAME_LEN {
                break;
            }
            let mut frame = [0u8; FRAME_LEN];
            frame.copy_from_slice(&rest[..FRAME_LEN]);
            let plen = frame_payload_len(&frame);
            if plen > MAX_PAYLOAD {
                return Err(self.corrupt(format!("record length {plen} exceeds the maximum {MAX_PAYLOAD}")));
            }
            let end = FRAME_LEN + plen as usize;
            if rest.len() < end {
                break;
            }
            let payload = &rest[FRAME_LEN..end];
            let checked = if frame[8] == rtype::DATA {
                check_data_frame(sig, &frame, payload, self.data_crc)
            } else {
                check_frame(sig, &frame, payload)
            };
            match checked {
                FrameCheck::BadCrc { stored, computed } => {
                    return Err(self.corrupt(format!(
                        "record checksum mismatch (type {}, stored {stored:08x}, computed {computed:08x})",
                        frame[8]
                    )))
                }
                FrameCheck::Malformed(why) => return Err(self.corrupt(why)),
                FrameCheck::Valid(Some(Record::Seal(s))) => {
                    if s.records != self.records || s.bytes != self.pos {
                        return Err(self.corrupt(format!(
                            "seal says {} records in {} bytes, the stream has {} records in {} bytes",
                            s.records, s.bytes, self.records, self.pos
                        )));
                    }
                    self.sealed = true;
                    seen(Record::Seal(s));
                }
                FrameCheck::Valid(None) => {}
                FrameCheck::Valid(Some(r)) => seen(r),
            }
            self.records += 1;
            self.pos += end as u64;
            at += end;
        }
        Ok(at)
    }

    /// [`take_whole`](Self::take_whole) that refuses an incomplete record
    /// at the end: what a receiver stores must be whole records.
    pub fn accept(&mut self, bytes: &[u8]) -> Result<()> {
        self.accept_seen(bytes).map(|_| ())
    }

    /// [`accept`](Self::accept) that also returns the records other than
    /// `Data` it took (a receiver's view of modes, points and losses).
    pub fn accept_seen(&mut self, bytes: &[u8]) -> Result<Vec<Record>> {
        let before = self.clone();
        let mut recs = Vec::new();
        let n = self.take_whole_seen(bytes, &mut |r| recs.push(r))?;
        if n != bytes.len() {
            let at = self.pos;
            *self = before;
            return Err(FormatError::corrupt(
                &self.label,
                at,
                format!("{} bytes of an incomplete record at the end", bytes.len() - n),
            ));
        }
        Ok(recs)
    }

    /// Length of the record (frame and payload) that starts `bytes`, from
    /// its frame alone; `None` when fewer than a frame's bytes are given.
    /// A sender uses it to read one record larger than its usual range.
    pub fn record_len(bytes: &[u8]) -> Option<usize> {
        let frame: &[u8; FRAME_LEN] = bytes.get(..FRAME_LEN)?.try_into().ok()?;
        Some(FRAME_LEN + frame_payload_len(frame) as usize)
    }

    fn short_header(&self, bytes: &[u8]) -> Result<usize> {
        // Not yet a whole header: wait for more, unless what is there is
        // already wrong.
        if bytes.len() >= 16 {
            if let Err(e) = FileHeader::declared_len(bytes) {
                return Err(header_error(&self.label, e));
            }
        } else if !crate::header::MAGIC.starts_with(&bytes[..bytes.len().min(8)]) {
            return Err(FormatError::BadMagic {
                path: self.label.clone(),
            });
        }
        Ok(0)
    }

    fn corrupt(&self, why: String) -> FormatError {
        FormatError::corrupt(&self.label, self.pos, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{encode_segment, sample_records, FIXTURE_DISK};

    fn segment() -> (Vec<u8>, Vec<u64>) {
        let h = FileHeader::new(FIXTURE_DISK, 1, 65536, 512, 1 << 30);
        encode_segment(&h, &sample_records(), true)
    }

    #[test]
    fn any_split_gives_the_same_records_and_position() {
        let (bytes, _) = segment();
        for cut in [1, 15, 16, 127, 128, 129, 200, 316, bytes.len() - 1] {
            let mut tx = SegmentStream::new("tx");
            let mut rx = SegmentStream::new("rx");
            let n = tx.take_whole(&bytes[..cut]).unwrap();
            rx.accept(&bytes[..n]).unwrap();
            let rest = &bytes[n..];
            let m = tx.take_whole(rest).unwrap();
            assert_eq!(m, rest.len(), "cut {cut}");
            rx.accept(rest).unwrap();
            assert_eq!((rx.position(), rx.sealed()), (bytes.len() as u64, true));
        }
    }

    #[test]
    fn damage_incomplete_records_and_bytes_after_the_seal_are_refused() {
        let (bytes, ends) = segment();
        let mut rx = SegmentStream::new("m/x.hrl");
        let e = rx.accept(&bytes[..ends[2] as usize + 5]).unwrap_err().to_string();
        assert!(e.contains("incomplete record") && e.contains("m/x.hrl"), "{e}");
        assert_eq!(rx.position(), 0, "a refused range changes nothing");
        let mut bad = bytes.clone();
        bad[ends[4] as usize + 20] ^= 1;
        let e = SegmentStream::new("m/x.hrl").accept(&bad).unwrap_err().to_string();
        assert!(
            e.contains("checksum mismatch") && e.contains(&ends[4].to_string()),
            "{e}"
        );
        let mut after = bytes.clone();
        after.extend_from_slice(&bytes[128..160]);
        assert!(SegmentStream::new("x")
            .accept(&after)
            .unwrap_err()
            .to_string()
            .contains("after the seal"));
        assert!(SegmentStream::new("x").accept(b"GARBAGE!").is_err());
        assert_eq!(SegmentStream::new("x").take_whole(&bytes[..6]).unwrap(), 0);
    }

    /// The sender leaves a `Data` payload's checksum to the receiver (which
    /// refuses the damage, naming where), but checks everything else.
    #[test]
    fn the_sender_leaves_data_checksums_to_the_receiver() {
        let (bytes, ends) = segment();
        let mut data = bytes.clone();
        data[ends[4] as usize + 40] ^= 1; // inside record 5's chunk bytes
        let mut tx = SegmentStream::sender("tx");
        assert_eq!(tx.take_whole(&data).unwrap(), data.len());
        assert!(tx.sealed());
        let e = SegmentStream::new("m/x.hrl").accept(&data).unwrap_err().to_string();
        assert!(
            e.contains("checksum mismatch") && e.contains(&ends[4].to_string()),
            "{e}"
        );
        let mut extent = bytes.clone();
        extent[ends[0] as usize + 14] ^= 1; // record 1, an Extent
        let e = SegmentStream::sender("tx").take_whole(&extent).unwrap_err().to_string();
        assert!(
            e.contains("checksum mismatch") && e.contains(&ends[0].to_string()),
            "{e}"
        );
    }
}
