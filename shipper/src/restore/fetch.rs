//! Fetching a point's chunks from the repository: plan every chunk first
//! (each must be locatable before a byte is written), group each pack's
//! chunks into ranged reads, fetch 8 at a time and open each chunk
//! (authenticated, decompressed, re-hashed) on a blocking thread. Every
//! target (image file, device, page blob) consumes the same stream.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use futures::{Stream, StreamExt};

use crate::error::{Result, ShipError};
use crate::repo::crypto::ChunkId;
use crate::repo::manifest::{ChunkRef, PointHeader};
use crate::repo::{pack_key, Location, Repo};

/// A chunk to fetch: where it is, its chunk index on the device, its id.
pub(crate) type Fetch = (Location, u64, ChunkId);
/// Chunks to fetch from one pack, in offset order.
pub(crate) type PackPlan = Vec<Fetch>;
/// One ranged read: start, end, and the chunks it covers.
pub(crate) type RangeRead = (u64, u64, Vec<Fetch>);

/// Groups a pack's blobs into ranged reads (gaps under 1 MiB are read through).
pub(crate) fn ranges(plan: &PackPlan) -> Vec<RangeRead> {
    let mut out: Vec<RangeRead> = Vec::new();
    for &(loc, idx, id) in plan {
        let end = loc.offset + loc.len as u64;
        match out.last_mut() {
            Some((_, e, items)) if loc.offset <= *e + (1 << 20) && end - items[0].0.offset <= 32 << 20 => {
                *e = (*e).max(end);
                items.push((loc, idx, id));
            }
            _ => out.push((loc.offset, end, vec![(loc, idx, id)])),
        }
    }
    out
}

/// What a restore writes: ranged reads per pack, zero chunks, and how
/// many chunks failback found already right.
pub(crate) struct Plan {
    pub by_pack: BTreeMap<[u8; 32], PackPlan>,
    pub zeros: Vec<u64>,
    pub skipped: u64,
}

/// Plans every chunk of the point; `skip[idx]` marks chunks failback found
/// right. An unlocatable chunk fails the restore before anything is written.
pub(crate) fn plan(
    h: &PointHeader,
    map: &BTreeMap<u64, ChunkRef>,
    index: &HashMap<ChunkId, Location>,
    skip: &[bool],
    incomplete: &dyn Fn(String) -> ShipError,
) -> Result<Plan> {
    let chunks = h.device_size.div_ceil(h.chunk_size as u64);
    let mut p = Plan {
        by_pack: BTreeMap::new(),
        zeros: Vec::new(),
        skipped: 0,
    };
    for idx in 0..chunks {
        if skip.get(idx as usize).copied().unwrap_or(false) {
            p.skipped += 1;
            continue;
        }
        match map.get(&idx) {
            None => return Err(incomplete(format!("the point has no entry for chunk {idx}"))),
            Some(ChunkRef::Zero) => p.zeros.push(idx),
            Some(ChunkRef::Stored(id)) => {
                let loc = index.get(id).ok_or_else(|| {
                    incomplete(format!(
                        "chunk {} (device offset {}) is in no index: the repository is damaged",
                        hex::encode(id),
                        idx * h.chunk_size as u64
                    ))
                })?;
                p.by_pack.entry(loc.pack).or_default().push((*loc, idx, *id));
            }
        }
    }
    Ok(p)
}

/// Chunks opened from one ranged read: bytes fetched, and `(device
/// offset, plaintext)` of each chunk.
pub(crate) type Opened = (u64, Vec<(u64, Vec<u8>)>);

/// Every ranged read of `by_pack` (8 in flight), opened; the number of
/// reads and the stream. An error names the chunk and pack.
pub(crate) fn chunk_stream(
    repo: &Repo,
    h: &PointHeader,
    by_pack: BTreeMap<[u8; 32], PackPlan>,
) -> (usize, impl Stream<Item = std::result::Result<Opened, String>> + use<>) {
    let csize = h.chunk_size as u64;
    let jobs: Vec<([u8; 32], RangeRead)> = by_pack
        .into_iter()
        .flat_map(|(pack, mut plan)| {
            plan.sort_by_key(|(l, _, _)| l.offset);
            ranges(&plan).into_iter().map(move |r| (pack, r))
        })
        .collect();
    let total = jobs.len();
    let device_size = h.device_size;
    let repo = repo.clone();
    let s = futures::stream::iter(jobs.into_iter().map(move |(pack, (s, e, items))| {
        let repo = repo.clone();
        async move {
            let key = pack_key(&pack);
            let bytes = match repo.get_range(&key, s, e).await {
                Ok(b) => b,
                Err(e) => return Err(e.to_string()),
            };
            let fetched = bytes.len() as u64;
            tokio::task::spawn_blocking(move || open_range(&repo, &key, s, &bytes, &items, csize, device_size))
                .await
                .map_err(|e| format!("chunk decoding task failed: {e}"))?
                .map(|chunks| (fetched, chunks))
        }
    }))
    .buffer_unordered(8);
    (total, s)
}

/// Progress of a restore: a bar on a terminal, otherwise a plain line every
/// 2 s; nothing when not asked for.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    label: String,
    done: usize,
    total: usize,
    last: Instant,
}

impl Progress {
    pub(crate) fn new(label: Option<&str>, total: usize) -> Self {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = label.filter(|_| tty).map(|l| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {percent:>3}% {elapsed_precise} eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_message(l.to_string());
            b
        });
        Progress {
            bar,
            plain: label.is_some() && !tty,
            label: label.unwrap_or_default().to_string(),
            done: 0,
            total,
            last: Instant::now(),
        }
    }

    pub(crate) fn step(&mut self, written: u64, t0: Instant) {
        self.done += 1;
        if let Some(b) = &self.bar {
            b.set_position(self.done as u64);
        } else if self.plain && self.last.elapsed().as_secs() >= 2 {
            self.last = Instant::now();
            let frac = self.done as f64 / self.total.max(1) as f64;
            let secs = t0.elapsed().as_secs_f64();
            let left = if frac > 0.0 { secs / frac - secs } else { 0.0 };
            eprintln!(
                "{}: {:.0}% ({} MiB written, {:.0} MiB/s, about {:.0} s left)",
                self.label,
                frac * 100.0,
                written >> 20,
                written as f64 / 1048576.0 / secs,
                left
            );
        }
    }

    pub(crate) fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// Opens every chunk of one ranged read: authenticates, decompresses and
/// re-hashes it, and checks its length against the device. Returns
/// `(device offset, plaintext)` pairs; an error names the chunk and pack.
fn open_range(
    repo: &Repo,
    key: &str,
    start: u64,
    bytes: &[u8],
    items: &[Fetch],
    csize: u64,
    device_size: u64,
) -> std::result::Result<Vec<(u64, Vec<u8>)>, String> {
    let mut out = Vec::with_capacity(items.len());
    for &(loc, idx, id) in items {
        let a = (loc.offset - start) as usize;
        let blob = bytes.get(a..a + loc.len as usize).ok_or_else(|| {
            format!(
                "chunk {} (device offset {}): pack {key} is shorter than its index says",
                hex::encode(id),
                idx * csize
            )
        })?;
        let plain = repo
            .keys
            .open_chunk(&id, blob)
            .map_err(|e| format!("{e} (in pack {key} at offset {})", loc.offset))?;
        let want = (device_size - idx * csize).min(csize) as usize;
        if plain.len() != want {
            return Err(format!(
                "chunk {} has {} bytes, chunk {idx} of the device needs {want}",
                hex::encode(id),
                plain.len()
            ));
        }
        out.push((idx * csize, plain));
    }
    Ok(out)
}
