//! The ship loop: follow each disk's spool, and for every point publish in
//! order packs → index → manifest → cursor → delete shipped segments.
//!
//! Within a point window the last `Data` of a chunk wins. A chunk whose id
//! the repository already holds is referenced, not uploaded. Memory holds one
//! pack being built (about `pack_size`) plus the window's chunk map.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrl_format::{Cursor, Follower, Record};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypto::ChunkId;
use crate::error::{Result, ShipError};
use crate::manifest::{self, ChunkRef, PointHeader};
use crate::pack::{write_index, PackBuilder};
use crate::repo::{Location, Repo};
use crate::status::SharedStatus;

/// Options of `hrl-shipper run`.
#[derive(Debug, Clone)]
pub struct ShipOptions {
    pub spool: PathBuf,
    /// Ship what is there and return.
    pub once: bool,
    /// Delete spool segments once every record in them is published.
    pub delete_shipped: bool,
    pub poll: Duration,
    /// Pack upload limit, shared by every disk; changeable while running.
    pub upload: Arc<Throttle>,
    /// RPO warning threshold in seconds (0: never); changeable while running.
    pub rpo_warn: Arc<AtomicU64>,
    /// Where the daemon publishes its status (metrics, status file).
    pub status: Option<SharedStatus>,
}

impl ShipOptions {
    pub fn new(spool: impl Into<PathBuf>) -> Self {
        ShipOptions {
            spool: spool.into(),
            once: false,
            delete_shipped: true,
            poll: Duration::from_millis(200),
            upload: Arc::new(Throttle::new(0)),
            rpo_warn: Arc::new(AtomicU64::new(0)),
            status: None,
        }
    }
}

/// An upload rate limit in bytes per second (0: none), shared by uploads.
#[derive(Debug)]
pub struct Throttle {
    pub rate: AtomicU64,
    state: std::sync::Mutex<(Instant, u64)>,
}

impl Throttle {
    pub fn new(rate: u64) -> Self {
        Throttle {
            rate: AtomicU64::new(rate),
            state: std::sync::Mutex::new((Instant::now(), 0)),
        }
    }

    /// Waits until `n` more bytes fit under the limit.
    pub async fn take(&self, n: u64) {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            // A fresh window every 10 s: a changed limit applies soon, and
            // an idle period does not bank a burst.
            if st.0.elapsed() > Duration::from_secs(10) {
                *st = (Instant::now(), 0);
            }
            st.1 += n;
            Duration::from_secs_f64(st.1 as f64 / rate as f64).saturating_sub(st.0.elapsed())
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// What shipping did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ShipReport {
    pub points_published: u64,
    pub points_already_published: u64,
    pub data_records: u64,
    pub data_bytes: u64,
    pub zero_chunks: u64,
    pub chunks_new: u64,
    pub chunks_deduplicated: u64,
    pub stored_bytes: u64,
    pub packs: u64,
    pub segments_deleted: u64,
    /// Plaintext bytes of newly stored chunks (for the compression ratio).
    pub new_plain_bytes: u64,
    /// Bytes uploaded: packs, indexes, manifests.
    pub upload_bytes: u64,
    /// Points shipped again because a prune removed chunks they used.
    pub points_reshipped: u64,
    pub published: Vec<(Uuid, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CursorFile {
    cursor: Cursor,
}

fn cursor_path(spool: &Path, disk: &Uuid) -> PathBuf {
    spool.join(format!("{disk}.ship-cursor.json"))
}

fn load_cursor(spool: &Path, disk: &Uuid) -> Result<Cursor> {
    let p = cursor_path(spool, disk);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice::<CursorFile>(&b)
            .map(|c| c.cursor)
            .map_err(|e| ShipError::corrupt(p.display().to_string(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
        Err(e) => Err(ShipError::io(p, "read cursor", e)),
    }
}

/// Where to follow from: after the window journal when there is one newer
/// than the published cursor (with its window), else the published cursor.
fn resume_point(spool: &Path, disk: &Uuid) -> Result<(Cursor, crate::journal::Spilled)> {
    let c = load_cursor(spool, disk)?;
    Ok(match crate::journal::load(spool, disk, c)? {
        Some(j) => (j.cursor, j),
        None => (c, crate::journal::Spilled::default()),
    })
}

/// Writes the cursor atomically and durably.
fn save_cursor(spool: &Path, disk: &Uuid, c: &CursorFile) -> Result<()> {
    use std::io::Write;
    let p = cursor_path(spool, disk);
    let tmp = spool.join(format!(".{disk}.ship-cursor.tmp"));
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        // Spool files are 0600 like the segments they describe.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ShipError::io(&tmp, "create", e))?
    };
    f.write_all(&serde_json::to_vec(c).unwrap_or_default())
        .and_then(|_| f.sync_all())
        .map_err(|e| ShipError::io(&tmp, "write cursor", e))?;
    std::fs::rename(&tmp, &p).map_err(|e| ShipError::io(&p, "rename cursor", e))?;
    hrl_format::sync_dir(spool)?;
    Ok(())
}

/// Ships one disk's log.
struct DiskShipper {
    disk: Uuid,
    follower: Follower,
    window: BTreeMap<u64, ChunkRef>,
    window_data: u64,
    window_new: u64,
    pack: PackBuilder,
    /// Packs uploaded since the last index.
    unindexed: Vec<crate::pack::PackEntries>,
    /// Chunks in uploaded packs not yet in an index.
    pending: HashMap<ChunkId, Location>,
    /// Tag time of the newest point published (for the lag shown in logs).
    last_published_ns: Option<u64>,
    last_published_seq: Option<u64>,
    /// Pack uploads in flight, oldest first (at most [`UPLOADS`]).
    uploads: std::collections::VecDeque<tokio::task::JoinHandle<Result<()>>>,
    /// The Group record just read (it precedes its tag).
    group: Option<hrl_format::Group>,
    /// Window entries read since the last journal append.
    window_log: Vec<(u64, ChunkRef)>,
    /// (newest point published, points since the last checkpoint
    /// including it), so a publish need not read manifests to know.
    since_cp: Option<(u64, u64)>,
}

/// Pack uploads in flight per disk: enough to keep a remote endpoint busy
/// while the next pack is built; memory is bounded by this many packs.
const UPLOADS: usize = 4;

impl DiskShipper {
    fn new(spool: &Path, disk: Uuid) -> Result<Self> {
        let (start, j) = resume_point(spool, &disk)?;
        Ok(DiskShipper {
            disk,
            follower: Follower::new(spool, disk, start),
            window: j.map,
            window_data: j.data_bytes,
            window_new: j.new_bytes,
            pack: PackBuilder::new(),
            unindexed: Vec::new(),
            pending: HashMap::new(),
            last_published_ns: None,
            last_published_seq: None,
            uploads: std::collections::VecDeque::new(),
            group: None,
            window_log: Vec::new(),
            since_cp: None,
        })
    }

    async fn flush_pack(&mut self, repo: &Repo, opts: &ShipOptions, report: &mut ShipReport) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let pack = std::mem::take(&mut self.pack);
        let id = pack.id;
        let (key, bytes, entries) = pack.finish(repo);
        opts.upload.take(bytes.len() as u64).await;
        report.upload_bytes += bytes.len() as u64;
        if self.uploads.len() >= UPLOADS {
            self.wait_upload().await?;
        }
        let r = repo.clone();
        self.uploads
            .push_back(tokio::spawn(async move { r.put(&key, bytes, true).await }));
        report.packs += 1;
        self.unindexed.push((id, entries));
        Ok(())
    }

    /// Waits for the oldest pack upload.
    async fn wait_upload(&mut self) -> Result<()> {
        if let Some(h) = self.uploads.pop_front() {
            h.await
                .map_err(|e| ShipError::Usage(format!("pack upload task failed: {e}")))??;
        }
        Ok(())
    }

    /// Waits for every pack upload: nothing may refer to a pack before it
    /// is durable.
    async fn wait_uploads(&mut self) -> Result<()> {
        while !self.uploads.is_empty() {
            self.wait_upload().await?;
        }
        Ok(())
    }

    /// Processes records until none is complete right now. Returns whether
    /// any was processed.
    async fn step(
        &mut self,
        repo: &Repo,
        known: &mut Known,
        opts: &ShipOptions,
        report: &mut ShipReport,
        stop: &AtomicBool,
    ) -> Result<bool> {
        let mut any = false;
        // Non-zero chunks are batched (up to BATCH) and hashed and sealed
        // on all cores; every other record first flushes the batch so log
        // order is kept.
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(BATCH);
        while !stop.load(Ordering::Relaxed) {
            let Some(f) = self.follower.try_next()? else { break };
            any = true;
            if f.header.chunk_size != repo.config.chunk_size {
                return Err(ShipError::Usage(format!(
                    "disk {}: the spool uses {} byte chunks, repository {} uses {}: track the disk with --chunk-size {}",
                    self.disk, f.header.chunk_size, repo.url, repo.config.chunk_size, repo.config.chunk_size
                )));
            }
            if let Record::Data(d) = &f.record {
                if !d.is_zero() {
                    report.data_records += 1;
                    batch.push((
                        d.offset / f.header.chunk_size as u64,
                        match f.record {
                            Record::Data(d) => d.data,
                            _ => Vec::new(),
                        },
                    ));
                    if batch.len() >= BATCH {
                        self.add_batch(repo, known, opts, report, &mut batch).await?;
                    }
                    continue;
                }
            }
            self.add_batch(repo, known, opts, report, &mut batch).await?;
            match f.record {
                Record::Data(d) => {
                    report.data_records += 1;
                    report.zero_chunks += 1;
                    let idx = d.offset / f.header.chunk_size as u64;
                    self.window.insert(idx, ChunkRef::Zero);
                    self.window_log.push((idx, ChunkRef::Zero));
                }
                Record::Group(g) => self.group = Some(g),
                Record::Tag(t) if !t.aborted => {
                    self.publish(repo, known, opts, report, &f.header, &t, f.next).await?;
                }
                // A finished segment with nothing unpublished before its
                // end: move the cursor past it and delete it now rather
                // than at the next point.
                Record::Seal(_) if self.window.is_empty() && self.pack.is_empty() => {
                    self.advance(opts, f.next, report)?;
                }
                // A finished segment inside an unpublished window: journal
                // the window so the segment can go (see journal.rs).
                Record::Seal(_) if opts.delete_shipped => {
                    self.spill(repo, known, opts, report, f.next).await?;
                }
                _ => {}
            }
        }
        self.add_batch(repo, known, opts, report, &mut batch).await?;
        Ok(any)
    }

    /// Adds a batch of non-zero chunks in log order: ids are computed in
    /// parallel, dedup is decided in order, new chunks are sealed in
    /// parallel, then appended to the pack in order.
    async fn add_batch(
        &mut self,
        repo: &Repo,
        known: &Known,
        opts: &ShipOptions,
        report: &mut ShipReport,
        batch: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<ChunkId> = par_map(batch, |(_, data)| repo.keys.chunk_id(data));
        let mut fresh: Vec<usize> = Vec::new();
        let mut seen: std::collections::HashSet<ChunkId> = std::collections::HashSet::new();
        for (i, id) in ids.iter().enumerate() {
            if known.index.contains_key(id) || self.pending.contains_key(id) || !seen.insert(*id) {
                report.chunks_deduplicated += 1;
            } else {
                fresh.push(i);
            }
        }
        let to_seal: Vec<(ChunkId, &[u8])> = fresh.iter().map(|&i| (ids[i], batch[i].1.as_slice())).collect();
        let blobs: Vec<Vec<u8>> = par_map(&to_seal, |(id, data)| repo.keys.seal_chunk(id, data));
        for ((id, data), blob) in to_seal.iter().zip(blobs) {
            report.chunks_new += 1;
            report.new_plain_bytes += data.len() as u64;
            report.stored_bytes += blob.len() as u64;
            self.window_new += blob.len() as u64;
            let loc = self.pack.add(*id, &blob);
            self.pending.insert(*id, loc);
            if self.pack.len() as u64 >= repo.config.pack_size {
                self.flush_pack(repo, opts, report).await?;
            }
        }
        for ((idx, data), id) in batch.drain(..).zip(ids) {
            report.data_bytes += data.len() as u64;
            self.window_data += data.len() as u64;
            self.window.insert(idx, ChunkRef::Stored(id));
            self.window_log.push((idx, ChunkRef::Stored(id)));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn publish(
        &mut self,
        repo: &Repo,
        known: &mut Known,
        opts: &ShipOptions,
        report: &mut ShipReport,
        header: &hrl_format::FileHeader,
        tag: &hrl_format::Tag,
        next: Cursor,
    ) -> Result<()> {
        // 1. packs, 2. index: durable before the manifest that needs them.
        self.flush_pack(repo, opts, report).await?;
        self.wait_uploads().await?;
        crash_point!("ship-packs-written");
        if !self.unindexed.is_empty() {
            let key = write_index(repo, &self.unindexed).await?;
            crash_point!("ship-index-written");
            known.keys.insert(key);
            self.unindexed.clear();
            known.index.extend(self.pending.drain());
        }
        // Prune: wait while it runs; if it replaced index objects, make
        // sure every chunk this point uses still exists, else ship the
        // point again from the cursor (the spool still holds it).
        let waited = crate::prune::wait_unlocked(repo).await?;
        if waited || known.changed(repo).await? {
            *known = Known::load(repo).await?;
            let missing = self
                .window
                .values()
                .filter(|r| matches!(r, ChunkRef::Stored(id) if !known.index.contains_key(id)))
                .count();
            if missing > 0 {
                tracing::warn!(disk = %self.disk, point = tag.seq, missing, "prune removed chunks this point uses: shipping it again from the cursor");
                self.reset(&opts.spool)?;
                report.points_reshipped += 1;
                // What the window journal holds cannot be read again from
                // the spool: if prune took any of it, say so plainly.
                let lost = self
                    .window
                    .values()
                    .filter(|r| matches!(r, ChunkRef::Stored(id) if !known.index.contains_key(id)))
                    .count();
                if lost > 0 {
                    return Err(ShipError::Point {
                        disk: self.disk.to_string(),
                        why: format!(
                            "{lost} chunks of the journaled (not yet published) window were pruned; prune keeps packs younger than --pack-grace for this reason. Restart the agent for this disk: its resync sends the data again"
                        ),
                    });
                }
                return Ok(());
            }
        }
        crate::failover::check_fence(repo, &self.disk).await?;
        // 3. manifest (once: a re-shipped point after a crash is not written again).
        let key = manifest::point_key(&self.disk, tag.seq);
        let group = match (tag.group, self.group.take()) {
            (Some(id), Some(g)) if g.id == id => Some(crate::group::GroupRef {
                id,
                name: g.name,
                seq: g.seq,
                members: g.members,
            }),
            (Some(id), _) => {
                tracing::warn!(disk = %self.disk, point = tag.seq, group = %id, "tag names a group point but no Group record precedes it: published as a plain point");
                None
            }
            _ => None,
        };
        if repo.exists(&key).await? {
            report.points_already_published += 1;
        } else {
            let earlier: Vec<u64> = manifest::list_points(repo, &self.disk)
                .await?
                .into_iter()
                .filter(|&s| s < tag.seq)
                .collect();
            let base = earlier.last().copied();
            // Points since the last checkpoint: remembered from the last
            // publish (base unchanged), else counted by walking back.
            let since_cp = match (base, self.since_cp) {
                (None, _) => u64::MAX,
                (Some(b), Some((last, n))) if b == last => n,
                (Some(_), _) => {
                    let mut n = 0;
                    for &s in earlier.iter().rev() {
                        n += 1;
                        if manifest::load(repo, &self.disk, s).await?.0.checkpoint {
                            break;
                        }
                    }
                    n
                }
            };
            let checkpoint = base.is_none() || since_cp >= repo.config.checkpoint_every;
            let chunks = header.device_size.div_ceil(header.chunk_size as u64);
            let map = match (checkpoint, base) {
                (true, Some(b)) => {
                    let (_, mut full) = manifest::full_map(repo, &self.disk, b).await?;
                    full.extend(std::mem::take(&mut self.window));
                    full
                }
                _ => std::mem::take(&mut self.window),
            };
            if checkpoint && (map.len() as u64) < chunks {
                return Err(ShipError::Point {
                    disk: self.disk.to_string(),
                    why: format!(
                        "point {} would be a checkpoint but covers {} of {} chunks: the spool does not start with the disk's initial sync (was it shipped elsewhere?)",
                        tag.seq,
                        map.len(),
                        chunks
                    ),
                });
            }
            let h = PointHeader {
                disk: self.disk,
                seq: tag.seq,
                kind: tag.kind,
                time_ns: tag.time_ns,
                freeze_ns: tag.freeze_ns,
                device_size: header.device_size,
                chunk_size: header.chunk_size,
                checkpoint,
                base,
                entries: map.len() as u64,
                new_bytes: self.window_new,
                data_bytes: self.window_data,
                published_ns: hrl_format::now_ns(),
                group: group.clone(),
            };
            let body = manifest::encode(repo, &h, &map);
            report.upload_bytes += body.len() as u64;
            repo.put(&key, body, true).await?;
            crash_point!("ship-manifest-written");
            self.since_cp = Some((tag.seq, if checkpoint { 1 } else { since_cp.saturating_add(1) }));
            report.points_published += 1;
            report.published.push((self.disk, tag.seq));
            tracing::info!(disk = %self.disk, point = tag.seq, checkpoint, chunks = map.len(), new_bytes = self.window_new, "published");
        }
        // 3b. the group member object, after the manifest it names (again
        // after a crash: it is idempotent).
        if let Some(g) = &group {
            crate::group::publish_member(repo, g, &self.disk, tag.seq).await?;
        }
        self.last_published_ns = Some(tag.time_ns);
        self.last_published_seq = Some(tag.seq);
        self.window.clear();
        self.window_log.clear();
        self.window_data = 0;
        self.window_new = 0;
        // 4. cursor, 5. delete what is wholly shipped, then the journal of
        // the window just published.
        self.advance(opts, next, report)?;
        crate::journal::remove(&opts.spool, &self.disk)
    }

    /// Makes the unpublished window durable (packs, index, journal) so
    /// the segments before `next` can be deleted before the point's tag.
    async fn spill(
        &mut self,
        repo: &Repo,
        known: &mut Known,
        opts: &ShipOptions,
        report: &mut ShipReport,
        next: Cursor,
    ) -> Result<()> {
        self.flush_pack(repo, opts, report).await?;
        self.wait_uploads().await?;
        if !self.unindexed.is_empty() {
            let key = write_index(repo, &self.unindexed).await?;
            known.keys.insert(key);
            self.unindexed.clear();
            known.index.extend(self.pending.drain());
        }
        crate::journal::append(
            &opts.spool,
            &self.disk,
            &self.window_log,
            next,
            self.window_data,
            self.window_new,
        )?;
        crash_point!("ship-window-journaled");
        self.window_log.clear();
        for s in hrl_format::list_segments(&opts.spool, Some(self.disk))? {
            if s.seq < next.seq {
                std::fs::remove_file(&s.path).map_err(|e| ShipError::io(&s.path, "delete journaled segment", e))?;
                report.segments_deleted += 1;
            }
        }
        Ok(())
    }

    /// Forgets everything since the last published point and follows the
    /// spool again from the saved cursor.
    fn reset(&mut self, spool: &Path) -> Result<()> {
        let (start, j) = resume_point(spool, &self.disk)?;
        self.follower = Follower::new(spool, self.disk, start);
        self.window = j.map;
        self.window_log.clear();
        self.since_cp = None;
        self.window_data = j.data_bytes;
        self.window_new = j.new_bytes;
        self.pending.clear();
        self.unindexed.clear();
        self.pack = PackBuilder::new();
        // Uploads still in flight belong to the abandoned window.
        for h in self.uploads.drain(..) {
            h.abort();
        }
        Ok(())
    }

    /// Saves the cursor durably, then deletes segments wholly before it.
    fn advance(&mut self, opts: &ShipOptions, next: Cursor, report: &mut ShipReport) -> Result<()> {
        save_cursor(&opts.spool, &self.disk, &CursorFile { cursor: next })?;
        crash_point!("ship-cursor-saved");
        if opts.delete_shipped {
            for s in hrl_format::list_segments(&opts.spool, Some(self.disk))? {
                if s.seq < next.seq {
                    std::fs::remove_file(&s.path).map_err(|e| ShipError::io(&s.path, "delete shipped segment", e))?;
                    report.segments_deleted += 1;
                    crash_point!("ship-segment-deleted");
                }
            }
        }
        Ok(())
    }
}

/// The repository's index as this shipper knows it, and the index objects
/// it came from (a prune replaces them).
pub(crate) struct Known {
    index: HashMap<ChunkId, Location>,
    keys: std::collections::HashSet<String>,
}

impl Known {
    async fn load(repo: &Repo) -> Result<Self> {
        let keys = repo.list("index").await?.into_iter().map(|(k, _)| k).collect();
        Ok(Known {
            index: repo.load_index().await?,
            keys,
        })
    }

    /// Whether an index object this shipper knew is gone.
    async fn changed(&self, repo: &Repo) -> Result<bool> {
        let now: std::collections::HashSet<String> = repo.list("index").await?.into_iter().map(|(k, _)| k).collect();
        Ok(self.keys.iter().any(|k| !now.contains(k)))
    }
}

/// Chunks hashed and sealed together.
const BATCH: usize = 64;

/// `f` over `items` on every core (scoped threads; order kept).
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if n <= 1 || items.len() < 4 {
        return items.iter().map(&f).collect();
    }
    let per = items.len().div_ceil(n);
    std::thread::scope(|s| {
        let hs: Vec<_> = items
            .chunks(per)
            .map(|part| s.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Ships every disk of the spool into `repo` until `stop` (or, with
/// `once`, until nothing complete is left).
///
/// As a daemon, a store failure that outlasts the client's own retries does
/// not stop the shipper: the disk is started again from its cursor after a
/// backoff (1 s doubling to 60 s), and the error is counted and shown.
pub async fn ship(repo: &Repo, opts: &ShipOptions, stop: &AtomicBool) -> Result<ShipReport> {
    let mut wait = Duration::from_secs(1);
    let mut known = loop {
        match Known::load(repo).await {
            Ok(k) => break k,
            Err(e @ ShipError::Store { .. }) if !opts.once && !stop.load(Ordering::Relaxed) => {
                tracing::error!(error = %e, backoff_s = wait.as_secs(), "cannot read the repository's indexes; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
            }
            Err(e) => return Err(e),
        }
    };
    let mut report = ShipReport::default();
    let mut disks: Vec<DiskShipper> = Vec::new();
    let mut last_log = Instant::now();
    let mut last_status = Instant::now() - Duration::from_secs(10);
    let mut backoff = Duration::from_secs(1);
    let mut rpo_warned: HashMap<Uuid, Instant> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        for d in hrl_format::list_disks(&opts.spool)? {
            if !disks.iter().any(|s| s.disk == d) {
                let mut ds = DiskShipper::new(&opts.spool, d)?;
                // The RPO the repository already offers, before this
                // process publishes anything (unknown while the endpoint
                // fails: it is only shown, never relied on).
                if let Ok(Some(&seq)) = manifest::list_points(repo, &d).await.as_ref().map(|v| v.last()) {
                    if let Ok((h, _)) = manifest::load(repo, &d, seq).await {
                        ds.last_published_ns = Some(h.time_ns);
                        ds.last_published_seq = Some(seq);
                    }
                }
                disks.push(ds);
            }
        }
        let mut any = false;
        let mut failed = false;
        for d in disks.iter_mut() {
            match d.step(repo, &mut known, opts, &mut report, stop).await {
                Ok(a) => any |= a,
                Err(e @ ShipError::Store { .. }) if !opts.once => {
                    tracing::error!(disk = %d.disk, error = %e, backoff_s = backoff.as_secs(), "endpoint failed; this disk starts again from its cursor");
                    if let Some(st) = &opts.status {
                        let mut st = st.lock().unwrap_or_else(|p| p.into_inner());
                        st.endpoint_errors += 1;
                        st.retries += 1;
                        st.last_error = Some(e.to_string());
                    }
                    d.reset(&opts.spool)?;
                    failed = true;
                }
                Err(e) => return Err(e),
            }
        }
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
            // What the failed uploads left half done is found again.
            known = Known::load(repo).await.unwrap_or(known);
            continue;
        }
        backoff = Duration::from_secs(1);
        if let Some(st) = &opts.status {
            if last_status.elapsed() >= Duration::from_secs(1) {
                last_status = Instant::now();
                let warn = opts.rpo_warn.load(Ordering::Relaxed);
                let snapshot = {
                    let mut st = st.lock().unwrap_or_else(|p| p.into_inner());
                    st.absorb(&report);
                    st.updated_ns = hrl_format::now_ns();
                    st.rpo_warn_seconds = warn;
                    st.upload_rate_limit = opts.upload.rate.load(Ordering::Relaxed);
                    for d in &disks {
                        let e = st.disks.entry(d.disk).or_default();
                        e.unpublished_bytes = d.window_data;
                        e.last_point_time_ns = d.last_published_ns;
                        e.last_point = d.last_published_seq;
                        e.rpo_seconds = d
                            .last_published_ns
                            .map(|t| hrl_format::now_ns().saturating_sub(t) as f64 / 1e9);
                        let over = warn > 0 && e.rpo_seconds.is_some_and(|r| r > warn as f64);
                        if over
                            && rpo_warned
                                .get(&d.disk)
                                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                        {
                            tracing::warn!(disk = %d.disk, rpo_s = e.rpo_seconds.unwrap_or(0.0) as u64, threshold_s = warn, "RPO threshold exceeded: the newest published point is older than rpo_warn");
                            rpo_warned.insert(d.disk, Instant::now());
                        }
                        if !over && e.rpo_exceeded {
                            tracing::info!(disk = %d.disk, "RPO back within rpo_warn");
                            rpo_warned.remove(&d.disk);
                        }
                        e.rpo_exceeded = over;
                    }
                    st.clone()
                };
                if let Err(e) = crate::status::save(&opts.spool, &snapshot) {
                    tracing::warn!(error = %e, "could not write the status file");
                }
            }
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            last_log = Instant::now();
            tracing::info!(
                points = report.points_published,
                data_mib = report.data_bytes >> 20,
                stored_mib = report.stored_bytes >> 20,
                "shipping"
            );
            for d in &disks {
                // The age of the newest published point: the RPO this
                // repository can offer for the disk right now.
                if let Some(t) = d.last_published_ns {
                    let lag = hrl_format::now_ns().saturating_sub(t) as f64 / 1e9;
                    tracing::info!(disk = %d.disk, lag_s = format!("{lag:.1}"), "newest published point");
                }
            }
        }
        if !any {
            if opts.once {
                break;
            }
            tokio::time::sleep(opts.poll).await;
        }
    }
    Ok(report)
}
