//! Failback through the process server, for a machine that holds no key:
//! it hashes each chunk of its existing device with plain BLAKE3 and sends
//! the hashes; the gateway reads and hashes the point's chunks and answers
//! with only those that differ, which are written here. Unchanged data
//! never crosses the wire, and no key ever reaches the machine (it cannot
//! name its chunks as the repository does, so the comparison is the
//! gateway's).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use reqwest::Method;

use super::client::GatewayClient;
use super::identity::Identity;
use super::restore::{pick, size_target};
use crate::error::{Result, ShipError};
use crate::repo::disks::DiskInfo;
use crate::repo::manifest::PointHeader;
use crate::restore::reader::MAX_CHUNKS;
use crate::restore::target::{self, Mode};
use crate::restore::{PointSel, RestoreReport};

/// What a failback did.
struct Tally {
    written: u64,
    zeros: u64,
}

/// Brings `to` (an existing device or image, neither mounted nor tracked)
/// to a point of one of this machine's disks, writing only the chunks that
/// differ.
pub async fn failback(id: &Identity, disk: &DiskInfo, p: PointSel, to: &Path) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let c = id.client(&id.gateway)?;
    let h = pick(id, disk, p, None).await?;
    let target = target::open(to, Mode::Failback)?;
    size_target(&target, &h, to)?;
    let t = compare_and_write(&c, &h, &target.file, to).await?;
    target.file.sync_all().map_err(|e| ShipError::io(to, "fsync", e))?;
    let mut rep = RestoreReport::new(disk.id, h.seq, &h, to);
    rep.stored_chunks = t.written - t.zeros;
    rep.zero_chunks = t.zeros;
    rep.bytes_written = t.written * h.chunk_size as u64;
    rep.bytes_fetched = rep.bytes_written;
    rep.compared = rep.chunks;
    rep.skipped = rep.chunks - t.written;
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}

/// Reads and hashes the target in batches, asks the gateway which chunks
/// differ and writes what it sends back.
async fn compare_and_write(c: &GatewayClient, h: &PointHeader, f: &std::fs::File, to: &Path) -> Result<Tally> {
    let csize = h.chunk_size as u64;
    let chunks = h.device_size.div_ceil(csize);
    let mut buf = vec![0u8; csize as usize];
    let mut t = Tally { written: 0, zeros: 0 };
    let mut last_report = Instant::now();
    for from in (0..chunks).step_by(MAX_CHUNKS as usize) {
        let end = (from + MAX_CHUNKS).min(chunks);
        let mut hashes = Vec::with_capacity(((end - from) * 32) as usize);
        for idx in from..end {
            let n = (h.device_size - idx * csize).min(csize) as usize;
            f.read_exact_at(&mut buf[..n], idx * csize)
                .map_err(|e| ShipError::io(to, "read failback target", e))?;
            hashes.extend_from_slice(blake3::hash(&buf[..n]).as_bytes());
        }
        let path = format!("/v1/disks/{}/points/{}/differ?from={from}", h.disk, h.seq);
        let answer = c.bytes(Method::POST, &path, Some(hashes)).await?;
        for (idx, chunk) in parse(&answer, (h.device_size, csize), from, end).map_err(|why| ShipError::Gateway {
            url: c.url.clone(),
            why: format!("{path}: {why}; the failback target {} is incomplete", to.display()),
        })? {
            f.write_all_at(chunk, idx * csize)
                .map_err(|e| ShipError::io(to, "write", e))?;
            t.written += 1;
            t.zeros += chunk.iter().all(|&b| b == 0) as u64;
        }
        if last_report.elapsed().as_secs() >= 2 {
            last_report = Instant::now();
            eprintln!("failback: {end} of {chunks} chunks compared, {} written", t.written);
        }
    }
    Ok(t)
}

/// The gateway's answer: (index, bytes) of each differing chunk, indexes
/// rising inside `from..end`.
fn parse(
    mut b: &[u8],
    (size, csize): (u64, u64),
    from: u64,
    end: u64,
) -> std::result::Result<Vec<(u64, &[u8])>, String> {
    let mut out = Vec::new();
    let mut next = from;
    while !b.is_empty() {
        let (head, rest) = b.split_at_checked(8).ok_or("a truncated chunk index")?;
        let idx = u64::from_le_bytes(head.try_into().map_err(|_| "a truncated chunk index")?);
        if idx < next || idx >= end {
            return Err(format!("chunk {idx} is outside {next}..{end}"));
        }
        let len = (size - idx * csize).min(csize) as usize;
        let (chunk, rest) = rest
            .split_at_checked(len)
            .ok_or_else(|| format!("chunk {idx}: fewer than {len} bytes"))?;
        out.push((idx, chunk));
        next = idx + 1;
        b = rest;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn answer(parts: &[(u64, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (i, d) in parts {
            b.extend_from_slice(&i.to_le_bytes());
            b.extend_from_slice(d);
        }
        b
    }

    #[test]
    fn an_answer_is_parsed_and_every_malformed_one_refused() {
        // 10 bytes in chunks of 4: the last chunk is 2 bytes.
        let geo = (10, 4);
        let b = answer(&[(0, b"aaaa"), (2, b"cc")]);
        assert_eq!(parse(&b, geo, 0, 3).unwrap(), vec![(0, &b"aaaa"[..]), (2, &b"cc"[..])]);
        assert_eq!(parse(&[], geo, 0, 3).unwrap(), vec![]);
        let outside = answer(&[(3, b"dddd")]);
        assert!(parse(&outside, (16, 4), 0, 3).unwrap_err().contains("outside"));
        let back = answer(&[(1, b"bbbb"), (1, b"bbbb")]);
        assert!(parse(&back, geo, 0, 3).unwrap_err().contains("outside"));
        let short = answer(&[(1, b"bb")]);
        assert!(parse(&short, geo, 0, 3).unwrap_err().contains("fewer than 4"));
        assert!(parse(&[1, 0, 0], geo, 0, 3).unwrap_err().contains("truncated"));
    }
}
