//! Retention: `hrl-shipper prune` removes points outside a policy, keeps
//! every kept point restorable, and deletes packs no kept point needs.
//!
//! ```text
//! take locks/prune (conditional create; a second prune is refused)
//! wait `grace`        a shipper that checked for the lock just before it
//!                     was taken finishes its manifest; later ones wait
//! plan                per disk: which points the policy keeps
//! rewrite             a kept point whose delta chain runs through a removed
//!                     point is rewritten as a checkpoint (full map)
//! delete manifests    of removed points
//! join                the kept points' chunks with every index entry, by
//!                     an external sort in TMPDIR (`packs.rs`): which packs
//!                     a kept point needs; a referenced chunk in no index
//!                     stops prune before it deletes any pack
//! index               index objects listing a doomed pack, and small ones,
//!                     rewritten without the doomed packs (merged, at most
//!                     65 536 entries each), durable before the old ones go
//! delete packs        indexed packs no kept point references and older than
//!                     --pack-grace (default 24 h: a shipper's window journal
//!                     may hold them before any manifest does); packs in no
//!                     index only when older than a day (a crashed shipper's
//!                     leftovers, never a live shipper's pack in flight)
//! mark                locks/pruned overwritten (shippers compare its ETag)
//! release the lock
//! ```
//!
//! Every step leaves a restorable repository if prune dies there: rewrites
//! replace whole objects, manifests go before the chunks they used, a pack
//! goes only after no manifest and no index object refers to it.
//!
//! Shippers respect the lock: before a manifest they wait while it exists,
//! and when the mark changed since they loaded their index (a prune
//! consolidated the index objects) they reload the index and check that every chunk of the point is still there;
//! if not, they re-ship the point from their cursor (the spool still holds
//! it). A partly referenced pack is kept whole: packs are not repacked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::error::{Result, ShipError};
use crate::index::census::{Census, Reference};
use crate::repo::crypto::ChunkId;
use crate::repo::lock::{self, LOCK};
use crate::repo::manifest::{self, ChunkRef, PointHeader};
use crate::repo::Repo;

mod packs;

/// Which points to keep. The newest point of each disk is always kept.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Every point younger than this.
    pub keep_within: Option<Duration>,
    /// The newest point of each of the last N hours that have points.
    pub keep_hourly: Option<u64>,
    /// The newest point of each of the last N days (UTC) that have points.
    pub keep_daily: Option<u64>,
    /// The newest point of each of the last N weeks that have points
    /// (weeks counted from the Unix epoch: Thursday 00:00 UTC).
    pub keep_weekly: Option<u64>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.keep_within.is_none()
            && self.keep_hourly.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
    }

    /// The sequences to keep among `points` (seq, time_ns), at `now_ns`.
    pub fn keep(&self, points: &[(u64, u64)], now_ns: u64) -> HashSet<u64> {
        let mut keep = HashSet::new();
        if let Some(&(newest, _)) = points.iter().max_by_key(|p| p.0) {
            keep.insert(newest);
        }
        if let Some(d) = self.keep_within {
            let since = now_ns.saturating_sub(d.as_nanos() as u64);
            keep.extend(points.iter().filter(|p| p.1 >= since).map(|p| p.0));
        }
        for (n, bucket_ns) in [
            (self.keep_hourly, 3_600_000_000_000u64),
            (self.keep_daily, 86_400_000_000_000),
            (self.keep_weekly, 7 * 86_400_000_000_000),
        ] {
            let Some(n) = n else { continue };
            // Newest point per bucket, newest buckets first.
            let mut newest: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
            for &(seq, t) in points {
                let b = t / bucket_ns;
                let e = newest.entry(b).or_insert((seq, t));
                if t > e.1 || (t == e.1 && seq > e.0) {
                    *e = (seq, t);
                }
            }
            keep.extend(newest.values().rev().take(n as usize).map(|v| v.0));
        }
        keep
    }
}

#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub policy: Policy,
    /// A disk's own policy (the process server's, per machine); a disk
    /// whose policy is empty keeps every point.
    pub per_disk: HashMap<Uuid, Policy>,
    pub dry_run: bool,
    /// Wait after taking the lock, for shippers mid-publish.
    pub grace: Duration,
    /// Packs younger than this are never deleted: a shipper's window
    /// journal may reference them before any manifest does.
    pub pack_grace: Duration,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    pub disks: u64,
    pub points_kept: u64,
    pub points_removed: u64,
    pub removed: Vec<(Uuid, u64)>,
    pub checkpoints_rewritten: u64,
    pub packs_kept: u64,
    pub packs_deleted: u64,
    pub bytes_deleted: u64,
    pub index_objects_replaced: u64,
    pub dry_run: bool,
    /// The time the policy was applied at (ns since the epoch).
    pub reference_ns: u64,
}

pub async fn prune(repo: &Repo, opts: &PruneOptions) -> Result<PruneReport> {
    if opts.policy.is_empty() && opts.per_disk.values().all(Policy::is_empty) {
        return Err(ShipError::Usage(
            "prune needs a policy: --keep-within, --keep-hourly, --keep-daily and/or --keep-weekly".into(),
        ));
    }
    if !opts.dry_run {
        lock::take(repo).await?;
    }
    let r = prune_locked(repo, opts).await;
    if !opts.dry_run {
        if let Err(e) = repo.delete(LOCK).await {
            tracing::error!(error = %e, "could not release the prune lock; delete {LOCK} by hand");
        }
    }
    r
}

async fn prune_locked(repo: &Repo, opts: &PruneOptions) -> Result<PruneReport> {
    let mut rep = PruneReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    if !opts.dry_run {
        tokio::time::sleep(opts.grace).await;
    }
    let now = hrl_format::now_ns();
    rep.reference_ns = now;
    // The kept points' chunks, spilled and joined with the index entries
    // in the temporary directory: memory does not follow the repository.
    let mut census = Census::new(&std::env::temp_dir())?;
    for disk in manifest::list_disks(repo).await? {
        rep.disks += 1;
        prune_disk(repo, opts, disk, now, &mut rep, &mut census).await?;
    }
    let plan = packs::plan(repo, opts, census).await?;
    rep.packs_kept = plan.kept;
    rep.packs_deleted = plan.doomed.len() as u64;
    rep.bytes_deleted = plan.doomed.iter().map(|d| d.1).sum();
    if opts.dry_run || (plan.doomed.is_empty() && plan.replace.is_empty()) {
        return Ok(rep);
    }
    // The new index objects are durable before the old ones go, and the
    // old ones go before the packs they list.
    plan.rewrite_index(repo).await?;
    for k in &plan.replace {
        repo.delete(k).await?;
        rep.index_objects_replaced += 1;
    }
    for (k, _) in &plan.doomed {
        repo.delete(k).await?;
    }
    // Before the lock goes: a shipper that loaded its index before this
    // prune sees the mark change and checks its point's chunks.
    lock::mark_pruned(repo).await?;
    Ok(rep)
}

/// Applies the policy to one disk: counts and (unless a dry run) deletes
/// the points it does not keep, rewrites a kept point whose chain ran
/// through a removed one as a checkpoint, and adds the chunks kept points
/// use to `census` (once each per disk).
async fn prune_disk(
    repo: &Repo,
    opts: &PruneOptions,
    disk: Uuid,
    now: u64,
    rep: &mut PruneReport,
    census: &mut Census,
) -> Result<()> {
    let seqs = manifest::list_points(repo, &disk).await?;
    // One pass in order keeps the running full map; memory is one map per
    // disk (its chunk count) plus the headers.
    let mut points: Vec<(PointHeader, BTreeMap<u64, ChunkRef>)> = Vec::new();
    for &s in &seqs {
        points.push(manifest::load(repo, &disk, s).await?);
    }
    let times: Vec<(u64, u64)> = points.iter().map(|(h, _)| (h.seq, h.time_ns)).collect();
    let policy = opts.per_disk.get(&disk).unwrap_or(&opts.policy);
    let keep: HashSet<u64> = if policy.is_empty() {
        times.iter().map(|t| t.0).collect()
    } else {
        policy.keep(&times, now)
    };
    let mut full: BTreeMap<u64, ChunkRef> = BTreeMap::new();
    // The disk's referenced chunks, each with the first point using it.
    let mut referenced: HashMap<ChunkId, Reference> = HashMap::new();
    // Whether the chain from the last kept checkpoint is intact.
    let mut chain_ok = false;
    let mut removed = Vec::new();
    for (h, m) in points {
        if h.checkpoint {
            full = m;
        } else {
            full.extend(m);
        }
        if !keep.contains(&h.seq) {
            rep.points_removed += 1;
            removed.push(h.seq);
            chain_ok = false;
            continue;
        }
        rep.points_kept += 1;
        let chunks = h.device_size.div_ceil(h.chunk_size as u64);
        full.retain(|idx, _| *idx < chunks);
        if !h.checkpoint && !chain_ok {
            // Its chain runs through a removed point: make it a checkpoint
            // that stands alone.
            rep.checkpoints_rewritten += 1;
            if !opts.dry_run {
                let mut nh = h.clone();
                nh.checkpoint = true;
                nh.base = None;
                nh.entries = full.len() as u64;
                let body = manifest::encode(repo, &nh, &full)?;
                repo.put(&manifest::point_key(&disk, h.seq), body, false).await?;
            }
        }
        chain_ok = true;
        for (&chunk, r) in &full {
            if let ChunkRef::Stored(id) = r {
                referenced.entry(*id).or_insert(Reference {
                    disk,
                    seq: h.seq,
                    chunk,
                });
            }
        }
    }
    for (id, r) in referenced {
        census.reference(id, r)?;
    }
    for s in removed {
        rep.removed.push((disk, s));
        if !opts.dry_run {
            repo.delete(&manifest::point_key(&disk, s)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000_000_000;

    #[test]
    fn policy_keeps_newest_within_and_per_bucket() {
        // A point every 20 minutes for 10 hours, seq = index.
        let pts: Vec<(u64, u64)> = (0..30).map(|i| (i, i * H / 3)).collect();
        let now = 30 * H / 3;
        let p = Policy {
            keep_within: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        let k = p.keep(&pts, now);
        assert_eq!(k, HashSet::from([27, 28, 29]));
        let p = Policy {
            keep_hourly: Some(3),
            ..Default::default()
        };
        // Newest point of hours 9, 8, 7: seqs 29, 26, 23.
        assert_eq!(p.keep(&pts, now), HashSet::from([29, 26, 23]));
        let p = Policy {
            keep_daily: Some(5),
            ..Default::default()
        };
        assert_eq!(p.keep(&pts, now), HashSet::from([29]));
        // A point a day for 30 days: the newest of each of the last 2 weeks.
        let d = 24 * H;
        let days: Vec<(u64, u64)> = (0..30).map(|i| (i, i * d)).collect();
        let p = Policy {
            keep_weekly: Some(2),
            ..Default::default()
        };
        // Weeks are days 0-6, 7-13, ..., 28-29: newest of the last two are 29 and 27.
        assert_eq!(p.keep(&days, 30 * d), HashSet::from([29, 27]));
        assert!(Policy::default().is_empty());
    }
}
