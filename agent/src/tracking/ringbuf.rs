//! Parsing the kernel ring-buffer pages that `trace_pipe_raw` returns.
//!
//! ```text
//! page:   0  u64 timestamp
//!         8  u64 commit: bytes of event data, flags in the high bits
//!            (bit 31 RB_MISSED_EVENTS, bit 30 RB_MISSED_STORED)
//!        16  event data
//! event:  u32 header: type_len (5 bits) | time_delta (27 bits)
//!         type_len 1..=28  data of type_len*4 bytes follows
//!         type_len 0       u32 length L follows; data is L-4 bytes after it
//!         29 padding       time_delta 0: rest of page unused;
//!                          else u32 length L follows, skip L bytes (a
//!                          discarded event)
//!         30 time extend, 31 time stamp: 8 bytes in all
//! ```
//!
//! As in libtraceevent's kbuffer. Offsets of `commit` and `data` come from
//! `events/header_page` when it is readable, else the layout above.

/// Bit set in `commit` when events were lost before this page.
pub const MISSED_EVENTS: u64 = 1 << 31;
const COMMIT_MASK: u64 = (1 << 27) - 1;

/// What one page held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageInfo {
    pub events: usize,
    /// The kernel flagged lost events before this page.
    pub missed: bool,
}

/// Calls `f` with the payload of every data event in `page` (the payload
/// starts with the 2-byte `common_type`, the event id).
pub fn parse_page(page: &[u8], mut f: impl FnMut(&[u8])) -> Result<PageInfo, String> {
    if page.len() < 16 {
        return Err(format!("page of {} bytes is shorter than its header", page.len()));
    }
    let commit = u64::from_le_bytes(page[8..16].try_into().map_err(|_| "page header")?);
    let size = (commit & COMMIT_MASK) as usize;
    let mut info = PageInfo {
        events: 0,
        missed: commit & MISSED_EVENTS != 0,
    };
    let end = 16 + size;
    if end > page.len() {
        return Err(format!("page commit {size} exceeds the page of {} bytes", page.len()));
    }
    let u32_at = |o: usize| -> Result<u32, String> {
        page.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("event runs past the page end at {o}"))
    };
    let mut pos = 16;
    while pos + 4 <= end {
        let hdr = u32_at(pos)?;
        let type_len = hdr & 0x1f;
        let delta = hdr >> 5;
        match type_len {
            29 => {
                if delta == 0 {
                    break;
                }
                let len = u32_at(pos + 4)? as usize;
                pos += 4 + len;
            }
            30 | 31 => pos += 8,
            0 => {
                let len = u32_at(pos + 4)? as usize;
                if len < 4 || pos + 4 + len > end {
                    return Err(format!("bad event length {len} at {pos}"));
                }
                f(&page[pos + 8..pos + 4 + len]);
                info.events += 1;
                pos += 4 + ((len + 3) & !3);
            }
            n => {
                let len = n as usize * 4;
                if pos + 4 + len > end {
                    return Err(format!("event of {len} bytes at {pos} runs past the commit {end}"));
                }
                f(&page[pos + 4..pos + 4 + len]);
                info.events += 1;
                pos += 4 + len;
            }
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(events: &[(u32, Vec<u8>)], missed: bool) -> Vec<u8> {
        let mut d = Vec::new();
        for (type_len, data) in events {
            if *type_len == 0 {
                d.extend_from_slice(&(10u32 << 5).to_le_bytes());
                d.extend_from_slice(&((data.len() + 4) as u32).to_le_bytes());
            } else {
                d.extend_from_slice(&((7u32 << 5) | type_len).to_le_bytes());
            }
            d.extend_from_slice(data);
        }
        // a time extend and a discarded event
        d.extend_from_slice(&30u32.to_le_bytes());
        d.extend_from_slice(&5u32.to_le_bytes());
        // array[0] counts the bytes after the header, itself included.
        d.extend_from_slice(&((1u32 << 5) | 29).to_le_bytes());
        d.extend_from_slice(&12u32.to_le_bytes());
        d.extend_from_slice(&[0xee; 8]);
        let mut p = vec![0u8; 16];
        let commit = d.len() as u64 | if missed { MISSED_EVENTS } else { 0 };
        p[8..16].copy_from_slice(&commit.to_le_bytes());
        p.extend_from_slice(&d);
        p.resize(4096, 0);
        p
    }

    #[test]
    fn parses_small_large_and_skips_meta_events() {
        let p = page(&[(2, vec![1; 8]), (0, vec![2; 200]), (1, vec![3; 4])], true);
        let mut got = Vec::new();
        let info = parse_page(&p, |d| got.push(d.to_vec())).unwrap();
        assert_eq!(
            info,
            PageInfo {
                events: 3,
                missed: true
            }
        );
        assert_eq!(got, vec![vec![1; 8], vec![2; 200], vec![3; 4]]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let with_commit = |len: usize, commit: u64| {
            let mut p = vec![0u8; len];
            p[8..16].copy_from_slice(&commit.to_le_bytes());
            p
        };
        assert!(parse_page(&[0u8; 8], |_| {})
            .unwrap_err()
            .contains("shorter than its header"));
        let e = parse_page(&with_commit(64, 1000), |_| {}).unwrap_err();
        assert!(e.contains("exceeds the page"), "{e}");
        // A data event whose length runs past the commit.
        let mut p = with_commit(4096, 16);
        p[20..24].copy_from_slice(&100u32.to_le_bytes());
        let e = parse_page(&p, |_| {}).unwrap_err();
        assert!(e.contains("bad event length 100"), "{e}");
        // A 20-byte event (type_len 5) in a commit of 8 bytes.
        let mut p = with_commit(4096, 8);
        p[16..20].copy_from_slice(&5u32.to_le_bytes());
        let e = parse_page(&p, |_| {}).unwrap_err();
        assert!(e.contains("runs past the commit"), "{e}");
        // Time-extend records only: nothing, and no error.
        let mut p = vec![0xffu8; 4096];
        p[8..16].copy_from_slice(&100u64.to_le_bytes());
        assert_eq!(parse_page(&p, |_| panic!("no event")).unwrap().events, 0);
        // Random pages: never a panic, every event inside the commit.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..5000 {
            let mut p = vec![0u8; 4096];
            for b in p.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let size = (x >> 8) % 4200;
            p[8..16].copy_from_slice(&size.to_le_bytes());
            let _ = parse_page(&p, |ev| assert!(ev.len() as u64 <= size));
        }
    }
}
