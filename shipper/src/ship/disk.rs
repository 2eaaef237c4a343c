//! One disk's ship loop state: its follower, the open point window (the
//! last `Data` of each chunk wins), the pack being built and the uploads in
//! flight. Publishing a point is in `publish.rs`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use hrl_format::{Cursor, FileHeader, Follower, Record, Tag};
use uuid::Uuid;

use super::cursor::{resume_point, save_cursor, CursorFile};
use super::known::Known;
use super::options::ShipOptions;
use super::par_map;
use super::status::ShipReport;
use crate::error::{Result, ShipError};
use crate::repo::crypto::ChunkId;
use crate::repo::manifest::ChunkRef;
use crate::repo::pack::{Location, PackBuilder, PackEntries};
use crate::repo::Repo;

/// What a publish needs besides the disk's own state.
pub(super) struct Publish<'a> {
    pub repo: &'a Repo,
    pub opts: &'a ShipOptions,
    pub header: &'a FileHeader,
    pub tag: &'a Tag,
    pub next: Cursor,
}

/// Chunks hashed and sealed together.
const BATCH: usize = 64;

/// Ships one disk's log.
pub(super) struct DiskShipper {
    pub(super) disk: Uuid,
    pub(super) follower: Follower,
    pub(super) window: BTreeMap<u64, ChunkRef>,
    pub(super) window_data: u64,
    pub(super) window_new: u64,
    pub(super) pack: PackBuilder,
    /// Packs uploaded since the last index.
    pub(super) unindexed: Vec<PackEntries>,
    /// Chunks in uploaded packs not yet in an index.
    pub(super) pending: HashMap<ChunkId, Location>,
    /// Tag time of the newest point published (for the lag shown in logs).
    pub(super) last_published_ns: Option<u64>,
    pub(super) last_published_seq: Option<u64>,
    /// Pack uploads in flight, oldest first (at most [`UPLOADS`]).
    pub(super) uploads: VecDeque<tokio::task::JoinHandle<Result<()>>>,
    /// The Group record just read (it precedes its tag).
    pub(super) group: Option<hrl_format::Group>,
    /// Host and disk name from the Identity record that starts each
    /// segment (`None` for a spool written before format 1.2).
    pub(super) identity: Option<hrl_format::Identity>,
    /// The Label record just read (it precedes its tag).
    pub(super) label: Option<hrl_format::Label>,
    /// Window entries read since the last journal append.
    pub(super) window_log: Vec<(u64, ChunkRef)>,
    /// (newest point published, points since the last checkpoint
    /// including it), so a publish need not read manifests to know.
    pub(super) since_cp: Option<(u64, u64)>,
    /// The checkpoint this process published last and every chunk the
    /// deltas published after it set: the next checkpoint is that one
    /// manifest plus these. Walking the chain read every manifest since,
    /// one after another, and with every machine of a fleet at its
    /// checkpoint in the same second the store fell seconds behind.
    pub(super) since_cp_map: Option<(u64, BTreeMap<u64, ChunkRef>)>,
    /// The disk's lease while this shipper holds it (`ship/lease.rs`).
    pub(super) lease: Option<crate::repo::lease::Lease>,
    /// What was seen of another holder's lease while waiting for it.
    pub(super) watch: crate::repo::lease::Watch,
    /// Not before this (lease clock) does a waiting shipper look again.
    pub(super) next_claim: Option<std::time::Duration>,
    /// The holder last reported as holding the lease (logged once).
    pub(super) waiting_for: Option<String>,
    /// When (lease clock) a record was last read or the lease taken.
    pub(super) active_at: Option<std::time::Duration>,
    /// Where the follower was when the lease was given up for lack of
    /// records: it is claimed again only once the spool grows past it.
    pub(super) released_at: Option<Cursor>,
}

/// Pack uploads in flight per disk: enough to keep a remote endpoint busy
/// while the next pack is built; memory is bounded by this many packs.
const UPLOADS: usize = 4;

fn follower(spool: &Path, disk: Uuid, start: Cursor, direct: bool) -> Follower {
    let mut f = Follower::new(spool, disk, start);
    f.direct = direct;
    f
}

impl DiskShipper {
    /// `direct`: read the spool with `O_DIRECT` ([`ShipOptions::direct_reads`]).
    pub(super) fn new(spool: &Path, disk: Uuid, direct: bool) -> Result<Self> {
        let (start, j) = resume_point(spool, &disk)?;
        // Resuming inside a segment skips its Identity record: read it.
        let seg = spool.join(hrl_format::segment_file_name(disk, start.seq));
        let identity = match hrl_format::segment_identity(&seg) {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(disk = %disk, error = %e, "no identity from the segment at the cursor yet");
                None
            }
        };
        Ok(DiskShipper {
            disk,
            follower: follower(spool, disk, start, direct),
            window: j.map,
            window_data: j.data_bytes,
            window_new: j.new_bytes,
            pack: PackBuilder::new(),
            unindexed: Vec::new(),
            pending: HashMap::new(),
            last_published_ns: None,
            last_published_seq: None,
            uploads: VecDeque::new(),
            group: None,
            identity,
            label: None,
            window_log: Vec::new(),
            since_cp: None,
            since_cp_map: None,
            lease: None,
            watch: Default::default(),
            next_claim: None,
            waiting_for: None,
            active_at: None,
            released_at: None,
        })
    }

    pub(super) async fn flush_pack(&mut self, repo: &Repo, opts: &ShipOptions, report: &mut ShipReport) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let pack = std::mem::take(&mut self.pack);
        let id = pack.id;
        let (key, bytes, entries) = pack.finish(&repo.keys);
        crate::repo::lease::renewing(&mut self.lease, repo, opts.upload.take(bytes.len() as u64)).await?;
        report.upload_bytes += bytes.len() as u64;
        if self.uploads.len() >= UPLOADS {
            self.wait_upload(repo).await?;
        }
        let r = repo.clone();
        self.uploads
            .push_back(tokio::spawn(async move { r.put(&key, bytes, true).await }));
        report.packs += 1;
        self.unindexed.push((id, entries));
        Ok(())
    }

    /// Waits for the oldest pack upload (renewing the lease meanwhile).
    async fn wait_upload(&mut self, repo: &Repo) -> Result<()> {
        if let Some(h) = self.uploads.pop_front() {
            crate::repo::lease::renewing(&mut self.lease, repo, h)
                .await?
                .map_err(|e| ShipError::Internal(format!("pack upload task failed: {e}")))??;
        }
        Ok(())
    }

    /// Waits for every pack upload: nothing may refer to a pack before it
    /// is durable.
    pub(super) async fn wait_uploads(&mut self, repo: &Repo) -> Result<()> {
        while !self.uploads.is_empty() {
            self.wait_upload(repo).await?;
        }
        Ok(())
    }

    /// Processes records until none is complete right now. Returns whether
    /// any was processed.
    pub(super) async fn step(
        &mut self,
        repo: &Repo,
        known: &mut Known,
        opts: &ShipOptions,
        report: &mut ShipReport,
        stop: &AtomicBool,
    ) -> Result<bool> {
        let had_lease = self.lease.is_some();
        if !self.hold_lease(repo, opts).await? {
            return Ok(false);
        }
        if !had_lease {
            if let Err(e) = known.refresh_now(repo).await {
                tracing::warn!(disk = %self.disk, error = %e, "could not read the index objects written elsewhere; chunks stored there may be stored again");
            }
        }
        let mut any = false;
        // Non-zero chunks are batched (up to BATCH) and hashed and sealed
        // on all cores; every other record first flushes the batch so log
        // order is kept.
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(BATCH);
        while !stop.load(Ordering::Relaxed) {
            if let Some(l) = &mut self.lease {
                l.renew_if_due(repo).await?;
            }
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
                Record::Identity(i) => self.identity = Some(i),
                Record::Label(l) => self.label = Some(l),
                Record::Tag(t) if !t.aborted => {
                    let p = Publish {
                        repo,
                        opts,
                        header: &f.header,
                        tag: &t,
                        next: f.next,
                    };
                    self.publish(p, known, report).await?;
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
        let now = opts.lease.clock.now();
        if any {
            self.active_at = Some(now);
        } else if self
            .active_at
            .is_some_and(|t| now.saturating_sub(t) >= opts.lease.period)
        {
            self.idle_release(repo, known, opts, report).await?;
        }
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
        let indexed = known.contains_each(&ids).await?;
        let mut fresh: Vec<usize> = Vec::new();
        let mut seen: HashSet<ChunkId> = HashSet::new();
        for (i, id) in ids.iter().enumerate() {
            if indexed[i] || self.pending.contains_key(id) || !seen.insert(*id) {
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

    /// Makes the chunks of the unpublished window durable in the
    /// repository (packs, then an index), so reading the window again
    /// stores nothing twice.
    pub(super) async fn store_window(
        &mut self,
        repo: &Repo,
        known: &mut Known,
        opts: &ShipOptions,
        report: &mut ShipReport,
    ) -> Result<()> {
        self.flush_pack(repo, opts, report).await?;
        self.wait_uploads(repo).await?;
        if !self.unindexed.is_empty() {
            let key = repo.write_index(&self.unindexed).await?;
            self.unindexed.clear();
            known.add(&key, self.pending.drain()).await?;
        }
        Ok(())
    }

    /// Makes the unpublished window durable (packs, index, journal) so
    /// the segments before `next` can be deleted before the point's tag.
    pub(super) async fn spill(
        &mut self,
        repo: &Repo,
        known: &mut Known,
        opts: &ShipOptions,
        report: &mut ShipReport,
        next: Cursor,
    ) -> Result<()> {
        self.store_window(repo, known, opts, report).await?;
        crate::ship::journal::append(
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
    pub(super) fn reset(&mut self, spool: &Path) -> Result<()> {
        let (start, j) = resume_point(spool, &self.disk)?;
        self.follower = follower(spool, self.disk, start, self.follower.direct);
        self.window = j.map;
        self.window_log.clear();
        self.since_cp = None;
        self.since_cp_map = None;
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
    pub(super) fn advance(&mut self, opts: &ShipOptions, next: Cursor, report: &mut ShipReport) -> Result<()> {
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
