//! Restore a point to an image file or block device, and check a
//! repository. Every chunk is authenticated and re-hashed before it is
//! written; any failure names the chunk and pack and says the target is
//! incomplete.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use crate::crypto::ChunkId;
use crate::error::{Result, ShipError};
use crate::manifest::{self, ChunkRef};
use crate::repo::{pack_key, Location, Repo};

/// Which point.
#[derive(Debug, Clone, Copy)]
pub enum PointSel {
    Latest,
    Seq(u64),
}

impl std::str::FromStr for PointSel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "latest" {
            Ok(PointSel::Latest)
        } else {
            s.parse()
                .map(PointSel::Seq)
                .map_err(|_| format!("{s:?}: expected `latest` or a point sequence"))
        }
    }
}

pub async fn resolve(repo: &Repo, disk: &Uuid, p: PointSel) -> Result<u64> {
    match p {
        PointSel::Seq(s) => Ok(s),
        PointSel::Latest => manifest::list_points(repo, disk)
            .await?
            .last()
            .copied()
            .ok_or_else(|| ShipError::Point {
                disk: disk.to_string(),
                why: "has no published point".into(),
            }),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub disk: Uuid,
    pub point: u64,
    pub kind: hrl_format::PointKind,
    pub device_size: u64,
    pub chunks: u64,
    pub stored_chunks: u64,
    pub zero_chunks: u64,
    pub bytes_written: u64,
    pub bytes_fetched: u64,
    pub seconds: f64,
    pub target: PathBuf,
    /// Failback: chunks of the target read and hashed.
    pub compared: u64,
    /// Failback: chunks already right, not written.
    pub skipped: u64,
}

/// A byte range where a device differs from a point.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub offset: u64,
    pub len: u64,
}

/// Compares `against` with point `p` by hash; returns the differing ranges
/// (adjacent chunks merged). Nothing is fetched from the store.
pub async fn verify(repo: &Repo, disk: &Uuid, p: PointSel, against: &Path) -> Result<(u64, Vec<Difference>)> {
    let seq = resolve(repo, disk, p).await?;
    let (h, map) = manifest::full_map(repo, disk, seq).await?;
    let f = std::fs::File::open(against).map_err(|e| ShipError::io(against, "open", e))?;
    let csize = h.chunk_size as u64;
    let chunks = h.device_size.div_ceil(csize);
    let mut buf = vec![0u8; csize as usize];
    let mut diffs: Vec<Difference> = Vec::new();
    for idx in 0..chunks {
        let n = (h.device_size - idx * csize).min(csize) as usize;
        let ok = match f.read_exact_at(&mut buf[..n], idx * csize) {
            Ok(()) => map.get(&idx).is_some_and(|r| same(repo, r, &buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
            Err(e) => return Err(ShipError::io(against, "read", e)),
        };
        if !ok {
            match diffs.last_mut() {
                Some(d) if d.offset + d.len == idx * csize => d.len += n as u64,
                _ => diffs.push(Difference {
                    offset: idx * csize,
                    len: n as u64,
                }),
            }
        }
    }
    Ok((seq, diffs))
}

/// A chunk to fetch: where it is, its chunk index on the device, its id.
type Fetch = (Location, u64, ChunkId);
/// Chunks to fetch from one pack, in offset order.
type PackPlan = Vec<Fetch>;
/// One ranged read: start, end, and the chunks it covers.
type RangeRead = (u64, u64, Vec<Fetch>);

/// Groups a pack's blobs into ranged reads (gaps under 1 MiB are read through).
fn ranges(plan: &PackPlan) -> Vec<RangeRead> {
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

/// Restores point `p` of `disk` onto `to` (a new or existing image file, or
/// a block device at least as large as the disk was).
pub async fn restore(repo: &Repo, disk: &Uuid, p: PointSel, to: &Path, progress: bool) -> Result<RestoreReport> {
    restore_with(repo, disk, p, to, progress, false).await
}

/// Brings an existing device or image to point `p` by reading and hashing
/// each of its chunks and writing only those that differ.
pub async fn failback(repo: &Repo, disk: &Uuid, p: PointSel, to: &Path, progress: bool) -> Result<RestoreReport> {
    if !to.exists() {
        return Err(ShipError::Usage(format!(
            "{}: failback needs the existing device or image to bring back; use restore for a new target",
            to.display()
        )));
    }
    restore_with(repo, disk, p, to, progress, true).await
}

/// Whether the target's chunk already holds what the point says.
fn same(repo: &Repo, r: &ChunkRef, have: &[u8]) -> bool {
    match r {
        ChunkRef::Zero => have.iter().all(|&b| b == 0),
        ChunkRef::Stored(id) => repo.keys.chunk_id(have) == *id,
    }
}

async fn restore_with(
    repo: &Repo,
    disk: &Uuid,
    p: PointSel,
    to: &Path,
    progress: bool,
    only_differing: bool,
) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let seq = resolve(repo, disk, p).await?;
    let (h, map) = manifest::full_map(repo, disk, seq).await?;
    let index = repo.load_index().await?;
    let incomplete = |why: String| ShipError::Point {
        disk: disk.to_string(),
        why: format!(
            "restore of point {seq} failed: {why}; the restore target {} is incomplete",
            to.display()
        ),
    };
    let chunks = h.device_size.div_ceil(h.chunk_size as u64);
    let csize = h.chunk_size as u64;
    // Failback: hash the target's chunks and keep only those that differ.
    let mut skip = vec![false; if only_differing { chunks as usize } else { 0 }];
    let mut compared = 0u64;
    if only_differing {
        let f = std::fs::File::open(to).map_err(|e| ShipError::io(to, "open failback target", e))?;
        let mut buf = vec![0u8; csize as usize];
        for idx in 0..chunks {
            let n = (h.device_size - idx * csize).min(csize) as usize;
            f.read_exact_at(&mut buf[..n], idx * csize)
                .map_err(|e| ShipError::io(to, "read failback target", e))?;
            compared += 1;
            if let Some(r) = map.get(&idx) {
                skip[idx as usize] = same(repo, r, &buf[..n]);
            }
        }
    }
    // Plan first: every stored chunk must be locatable before a byte is written.
    let mut by_pack: BTreeMap<[u8; 32], PackPlan> = BTreeMap::new();
    let mut zeros = Vec::new();
    let mut skipped = 0u64;
    for idx in 0..chunks {
        if only_differing && skip[idx as usize] {
            skipped += 1;
            continue;
        }
        match map.get(&idx) {
            None => {
                return Err(incomplete(format!("the point has no entry for chunk {idx}")));
            }
            Some(ChunkRef::Zero) => zeros.push(idx),
            Some(ChunkRef::Stored(id)) => {
                let loc = index.get(id).ok_or_else(|| {
                    incomplete(format!(
                        "chunk {} (device offset {}) is in no index: the repository is damaged",
                        hex::encode(id),
                        idx * h.chunk_size as u64
                    ))
                })?;
                by_pack.entry(loc.pack).or_default().push((*loc, idx, *id));
            }
        }
    }
    let existed = to.exists();
    let mut oo = OpenOptions::new();
    oo.write(true).read(true);
    if !existed {
        oo.create(true).mode(0o600);
    }
    let target = oo.open(to).map_err(|e| ShipError::io(to, "open restore target", e))?;
    let md = target.metadata().map_err(|e| ShipError::io(to, "stat", e))?;
    let is_dev = md.file_type().is_block_device();
    let fresh = !only_differing && (!existed || (!is_dev && md.len() == 0));
    if is_dev {
        let size = block_size(&target).map_err(|e| ShipError::io(to, "BLKGETSIZE64", e))?;
        if size < h.device_size {
            return Err(ShipError::Usage(format!(
                "{}: the device has {size} bytes, point {seq} of disk {disk} needs {}",
                to.display(),
                h.device_size
            )));
        }
    } else {
        target
            .set_len(h.device_size)
            .map_err(|e| ShipError::io(to, "size image", e))?;
    }
    let mut rep = RestoreReport {
        disk: *disk,
        point: seq,
        kind: h.kind,
        device_size: h.device_size,
        chunks,
        stored_chunks: 0,
        zero_chunks: zeros.len() as u64,
        bytes_written: 0,
        bytes_fetched: 0,
        seconds: 0.0,
        target: to.into(),
        compared,
        skipped,
    };
    let chunk_len = |idx: u64| (h.device_size - idx * csize).min(csize) as usize;
    if !fresh {
        let z = vec![0u8; csize as usize];
        for &idx in &zeros {
            let n = chunk_len(idx);
            target
                .write_all_at(&z[..n], idx * csize)
                .map_err(|e| incomplete(format!("write at {}: {e}", idx * csize)))?;
            rep.bytes_written += n as u64;
        }
    }
    let jobs: Vec<([u8; 32], RangeRead)> = by_pack
        .into_iter()
        .flat_map(|(pack, mut plan)| {
            plan.sort_by_key(|(l, _, _)| l.offset);
            ranges(&plan).into_iter().map(move |r| (pack, r))
        })
        .collect();
    let total = jobs.len();
    // Each ranged read is fetched, then authenticated, decompressed and
    // re-hashed on a blocking thread, so up to 8 ranges are opened on all
    // cores while this task writes the ones that are ready.
    let device_size = h.device_size;
    let mut fetches = futures::stream::iter(jobs.into_iter().map(|(pack, (s, e, items))| {
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
    let mut writer = crate::write::BatchWriter::new(&target);
    tracing::debug!(io_uring = writer.uses_io_uring(), "restore writer");
    let mut done = 0usize;
    let mut last = Instant::now();
    // On a terminal a progress bar; otherwise a plain line every 2 s.
    let bar = (progress && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {percent:>3}% {elapsed_precise} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_message(if only_differing { "failback" } else { "restore" });
        b
    });
    while let Some(r) = fetches.next().await {
        let (fetched, chunks) = r.map_err(&incomplete)?;
        rep.bytes_fetched += fetched;
        writer.write_all(&chunks).map_err(&incomplete)?;
        rep.stored_chunks += chunks.len() as u64;
        rep.bytes_written += chunks.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
        done += 1;
        if let Some(b) = &bar {
            b.set_position(done as u64);
        } else if progress && last.elapsed().as_secs() >= 2 {
            last = Instant::now();
            eprintln!(
                "restore: {:.0}% ({} MiB written, {:.0} MiB/s)",
                done as f64 * 100.0 / total.max(1) as f64,
                rep.bytes_written >> 20,
                rep.bytes_written as f64 / 1048576.0 / t0.elapsed().as_secs_f64()
            );
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    target.sync_all().map_err(|e| incomplete(format!("fsync: {e}")))?;
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
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

fn block_size(f: &std::fs::File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), 0x8008_1272u64 as _, &mut size) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

/// A problem `check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub object: String,
    pub what: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct CheckReport {
    pub points: u64,
    pub referenced_chunks: u64,
    pub packs: u64,
    pub chunks_read: u64,
    pub problems: Vec<Problem>,
}

/// Checks that every chunk a point references is indexed in an existing
/// pack; with `read_data`, also that every indexed chunk decrypts and
/// hashes to its id.
pub async fn check(repo: &Repo, read_data: bool) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    let index = repo.load_index().await?;
    let packs: HashMap<String, u64> = repo.list("packs").await?.into_iter().collect();
    r.packs = packs.len() as u64;
    for disk in manifest::list_disks(repo).await? {
        for seq in manifest::list_points(repo, &disk).await? {
            r.points += 1;
            match manifest::load(repo, &disk, seq).await {
                Err(e) => r.problems.push(Problem {
                    object: manifest::point_key(&disk, seq),
                    what: e.to_string(),
                }),
                Ok((_, map)) => {
                    for (idx, c) in map {
                        if let ChunkRef::Stored(id) = c {
                            r.referenced_chunks += 1;
                            match index.get(&id) {
                                None => r.problems.push(Problem {
                                    object: manifest::point_key(&disk, seq),
                                    what: format!("chunk {} (chunk {idx}) is in no index", hex::encode(id)),
                                }),
                                Some(l) if !packs.contains_key(&pack_key(&l.pack)) => r.problems.push(Problem {
                                    object: pack_key(&l.pack),
                                    what: format!("missing; chunk {} lives there", hex::encode(id)),
                                }),
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
    }
    if read_data {
        let mut by_pack: BTreeMap<[u8; 32], Vec<(ChunkId, Location)>> = BTreeMap::new();
        for (id, l) in &index {
            by_pack.entry(l.pack).or_default().push((*id, *l));
        }
        for (pack, items) in by_pack {
            let key = pack_key(&pack);
            if !packs.contains_key(&key) {
                continue;
            }
            let bytes = match repo.get(&key).await {
                Ok(b) => b,
                Err(e) => {
                    r.problems.push(Problem {
                        object: key.clone(),
                        what: e.to_string(),
                    });
                    continue;
                }
            };
            if let Err(e) = crate::pack::read_trailer(repo, &key, &pack, &bytes) {
                r.problems.push(Problem {
                    object: key.clone(),
                    what: e.to_string(),
                });
            }
            for (id, l) in items {
                r.chunks_read += 1;
                let blob = bytes.get(l.offset as usize..(l.offset + l.len as u64) as usize);
                let res = match blob {
                    None => Err(ShipError::corrupt(
                        format!("chunk {}", hex::encode(id)),
                        "outside its pack",
                    )),
                    Some(b) => repo.keys.open_chunk(&id, b).map(|_| ()),
                };
                if let Err(e) = res {
                    r.problems.push(Problem {
                        object: key.clone(),
                        what: format!("{e} (pack offset {})", l.offset),
                    });
                }
            }
        }
    }
    Ok(r)
}
