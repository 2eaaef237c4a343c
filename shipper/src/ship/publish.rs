//! Publishing a point, in the order of promise 2 (docs/guarantees.md):
//! packs → index → manifest → group member object → cursor → delete what
//! is wholly shipped → window journal. A manifest is written only after
//! every pack and index it needs is durable; the cursor moves only after
//! the manifest.

use std::collections::BTreeMap;

use hrl_format::Tag;

use super::disk::{DiskShipper, Publish};
use super::known::Known;
use super::options::ShipOptions;
use super::status::ShipReport;
use crate::error::{Result, ShipError};
use crate::repo::crypto::ChunkId;
use crate::repo::manifest::{self, ChunkRef, GroupRef, PointHeader};
use crate::repo::{lock, Repo};

/// What [`DiskShipper::publish_checks`] read.
struct Checks {
    /// The prune lock's age, when one is held.
    lock: Option<std::time::Duration>,
    /// The version of prune's mark.
    pruned: Option<String>,
    /// The lease generation the manifest is published under.
    lease: u64,
}

/// Whether a point goes on to its manifest after a prune.
enum AfterPrune {
    /// No prune ran: the checks read stand.
    Clear,
    /// A prune held the lock and this point still has all its chunks.
    Waited,
    /// Prune took chunks of the point: it is shipped again from the cursor.
    Reshipped,
}

impl DiskShipper {
    /// Publishes the point `p.tag` closes.
    pub(super) async fn publish(&mut self, p: Publish<'_>, known: &mut Known, report: &mut ShipReport) -> Result<()> {
        let (repo, opts, tag) = (p.repo, p.opts, p.tag);
        // 1. packs, 2. index: durable before the manifest that needs them.
        self.flush_pack(repo, opts, report).await?;
        self.wait_uploads(repo).await?;
        crash_point!("ship-packs-written");
        // The checks the manifest waits for are read while the index is
        // written: under a busy store each is a queued round trip, and one
        // after another they made a point's publish longer than the second
        // between a fast machine's points (its RPO then grew without end).
        let index = async {
            match self.unindexed.is_empty() {
                true => Ok(None),
                false => repo.write_index(&self.unindexed).await.map(Some),
            }
        };
        let (index, checks) = tokio::join!(index, self.publish_checks(repo));
        if let Some(key) = index? {
            crash_point!("ship-index-written");
            self.unindexed.clear();
            known.add(&key, self.pending.drain()).await?;
        }
        let mut checks = checks?;
        match self
            .complete_after_prune(repo, known, &checks, (opts, report), tag.seq)
            .await?
        {
            AfterPrune::Reshipped => return Ok(()),
            // Time passed: the fence and lease are read again.
            AfterPrune::Waited => checks = self.publish_checks(repo).await?,
            AfterPrune::Clear => {}
        }
        let lease = checks.lease;
        if let Some(l) = &self.lease {
            l.check_clock()?;
        }
        // 3. manifest (once: a re-shipped point after a crash is not written again).
        let group = self.group_ref(tag);
        let key = manifest::point_key(&self.disk, tag.seq);
        // Only the first point after a start can have been published
        // already (by the run that crashed before saving its cursor).
        if self.since_cp.is_none() && repo.exists(&key).await? {
            report.points_already_published += 1;
        } else {
            self.write_manifest(&p, &key, group.clone(), lease, report).await?;
        }
        // 3b. the group member object, after the manifest it names (again
        // after a crash: it is idempotent).
        if let Some(g) = &group {
            crate::repo::groups::publish_member(repo, g, &self.disk, tag.seq).await?;
        }
        self.last_published_ns = Some(tag.time_ns);
        self.last_published_seq = Some(tag.seq);
        self.window.clear();
        self.window_log.clear();
        self.window_data = 0;
        self.window_new = 0;
        // 4. cursor, 5. delete what is wholly shipped, then the journal of
        // the window just published.
        self.advance(opts, p.next, report)?;
        crate::ship::journal::remove(&opts.spool, &self.disk)
    }

    /// What the manifest waits for, read at once: the prune lock and then
    /// prune's mark (in that order: a mark read after the lock was seen
    /// absent is at least as new as that look), the disk's failover fence
    /// and this shipper's lease.
    async fn publish_checks(&self, repo: &Repo) -> Result<Checks> {
        let prune = async {
            let lock = lock::lock_age(repo).await?;
            Ok::<_, ShipError>((lock, lock::pruned_version(repo).await?))
        };
        let fence = crate::repo::fence::check_fence(repo, &self.disk);
        let (prune, fence, lease) = tokio::join!(prune, fence, self.check_lease(repo));
        fence?;
        let (lock, pruned) = prune?;
        Ok(Checks {
            lock,
            pruned,
            lease: lease?,
        })
    }

    /// Prune: waits while it runs; if it replaced index objects, checks
    /// that every chunk this point uses still exists, else ships the point
    /// again from the cursor (the spool still holds it).
    async fn complete_after_prune(
        &mut self,
        repo: &Repo,
        known: &mut Known,
        checks: &Checks,
        (opts, report): (&ShipOptions, &mut ShipReport),
        seq: u64,
    ) -> Result<AfterPrune> {
        // A lock seen held: the mark read with it may be older than the
        // prune's end, so the index is checked again once the lock is gone
        // (whether or not it is still there now).
        let waited = match checks.lock {
            Some(age) if lock::live(age) => {
                self.wait_for_prune(repo).await?;
                true
            }
            _ => false,
        };
        if !waited && !known.changed_from(&checks.pruned) {
            return Ok(AfterPrune::Clear);
        }
        known.reload(repo).await?;
        let n = missing(&self.window, known).await?;
        if n == 0 {
            return Ok(if waited { AfterPrune::Waited } else { AfterPrune::Clear });
        }
        tracing::warn!(disk = %self.disk, point = seq, missing = n, "prune removed chunks this point uses: shipping it again from the cursor");
        self.reset(&opts.spool)?;
        report.points_reshipped += 1;
        // What the window journal holds cannot be read again from the
        // spool: if prune took any of it, say so plainly.
        let lost = missing(&self.window, known).await?;
        if lost > 0 {
            return Err(ShipError::Point {
                disk: self.disk.to_string(),
                why: format!(
                    "{lost} chunks of the journaled (not yet published) window were pruned; prune keeps packs younger than --pack-grace for this reason. Restart the agent for this disk: its resync sends the data again"
                ),
            });
        }
        Ok(AfterPrune::Reshipped)
    }

    /// The group point the tag belongs to, from the Group record before it.
    fn group_ref(&mut self, tag: &Tag) -> Option<GroupRef> {
        match (tag.group, self.group.take()) {
            (Some(id), Some(g)) if g.id == id => Some(GroupRef {
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
        }
    }

    /// The point `seq` is a delta on (the disk's newest published point)
    /// and how many points since the last checkpoint that one closes,
    /// counting it. After this process published a point both are
    /// remembered: listing the disk's manifests at every point cost the
    /// store a listing that grows with the disk's history.
    async fn base(&self, repo: &Repo, seq: u64) -> Result<(Option<u64>, u64)> {
        if let Some((last, n)) = self.since_cp.filter(|&(last, _)| last < seq) {
            return Ok((Some(last), n));
        }
        let earlier: Vec<u64> = manifest::list_points(repo, &self.disk)
            .await?
            .into_iter()
            .filter(|&s| s < seq)
            .collect();
        Ok((earlier.last().copied(), self.since_checkpoint(repo, &earlier).await?))
    }

    /// Points since the last checkpoint up to `earlier`'s newest, counting
    /// it, by walking back through the manifests.
    async fn since_checkpoint(&self, repo: &Repo, earlier: &[u64]) -> Result<u64> {
        match earlier.last().copied() {
            None => Ok(u64::MAX),
            Some(_) => {
                let mut n = 0;
                for &s in earlier.iter().rev() {
                    n += 1;
                    if manifest::load(repo, &self.disk, s).await?.0.checkpoint {
                        break;
                    }
                }
                Ok(n)
            }
        }
    }

    /// The full map of point `base`, the one this shipper published last:
    /// its last checkpoint and the deltas since when it published them
    /// all, else walking the chain in the store.
    async fn full_map_at(&self, repo: &Repo, base: u64, chunks: u64) -> Result<BTreeMap<u64, ChunkRef>> {
        if let (Some((cp, deltas)), Some((last, _))) = (&self.since_cp_map, self.since_cp) {
            // A prune may have removed that checkpoint since (it rewrote a
            // later point as one): then the chain in the store is walked.
            if let Ok((h, mut full)) = manifest::load(repo, &self.disk, *cp).await {
                if last == base && h.checkpoint {
                    full.extend(deltas.iter().map(|(k, v)| (*k, *v)));
                    full.retain(|idx, _| *idx < chunks);
                    return Ok(full);
                }
            }
        }
        Ok(manifest::full_map(repo, &self.disk, base).await?.1)
    }

    /// Writes the point's manifest: a delta on the previous point, or a
    /// full checkpoint every `checkpoint_every` points.
    async fn write_manifest(
        &mut self,
        p: &Publish<'_>,
        key: &str,
        group: Option<GroupRef>,
        lease: u64,
        report: &mut ShipReport,
    ) -> Result<()> {
        let (repo, header, tag) = (p.repo, p.header, p.tag);
        let (base, since_cp) = self.base(repo, tag.seq).await?;
        let checkpoint = base.is_none() || since_cp >= repo.config.checkpoint_every;
        let chunks = header.device_size.div_ceil(header.chunk_size as u64);
        let map = match (checkpoint, base) {
            (true, Some(b)) => {
                let mut full = self.full_map_at(repo, b, chunks).await?;
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
            group,
            host: self.identity.as_ref().map(|i| i.host.clone()),
            name: self.identity.as_ref().map(|i| i.name.clone()),
            label: self.label.take().filter(|l| l.seq == tag.seq).map(|l| l.text),
            lease: Some(lease),
        };
        let body = manifest::encode(repo, &h, &map)?;
        report.upload_bytes += body.len() as u64;
        let written = self.put_manifest(repo, key, body, tag.seq, lease).await?;
        crash_point!("ship-manifest-written");
        self.since_cp = Some((tag.seq, if checkpoint { 1 } else { since_cp.saturating_add(1) }));
        if !written {
            // Another holder's manifest: its chain is read when needed.
            self.since_cp_map = None;
            report.points_already_published += 1;
            return Ok(());
        }
        let entries = map.len();
        match (checkpoint, &mut self.since_cp_map) {
            (true, m) => *m = Some((tag.seq, BTreeMap::new())),
            (false, Some((_, deltas))) => deltas.extend(map),
            (false, None) => {}
        }
        report.points_published += 1;
        report.published.push((self.disk, tag.seq));
        tracing::info!(disk = %self.disk, point = tag.seq, checkpoint, chunks = entries, new_bytes = self.window_new, "published");
        Ok(())
    }
}

impl DiskShipper {
    /// Creates the manifest only if absent; `false` when the point was
    /// there already. One already there under this shipper's lease
    /// generation is its own earlier attempt (the answer lost); under an
    /// older one, the previous holder published it before this shipper
    /// took the disk (its spool held the point too). Under a newer one, a
    /// newer holder published it: this shipper has lost the disk.
    async fn put_manifest(&self, repo: &Repo, key: &str, body: Vec<u8>, seq: u64, lease: u64) -> Result<bool> {
        if repo.put_new(key, body).await? {
            return Ok(true);
        }
        let (there, _) = manifest::load(repo, &self.disk, seq).await?;
        match there.lease {
            Some(g) if g > lease => Err(ShipError::LeaseLost {
                disk: self.disk.to_string(),
                generation: lease,
                why: format!("point {seq} was published under generation {g}"),
            }),
            Some(g) if g == lease => {
                tracing::debug!(disk = %self.disk, point = seq, "manifest already written by an earlier attempt");
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Chunks of `window` the index does not hold.
async fn missing(window: &std::collections::BTreeMap<u64, ChunkRef>, known: &Known) -> Result<usize> {
    let ids: Vec<ChunkId> = window
        .values()
        .filter_map(|r| match r {
            ChunkRef::Stored(id) => Some(*id),
            ChunkRef::Zero => None,
        })
        .collect();
    Ok(known.contains_each(&ids).await?.iter().filter(|&&b| !b).count())
}
