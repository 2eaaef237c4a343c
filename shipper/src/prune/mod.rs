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
//! index               one consolidated index of the packs still needed,
//!                     written before the old index objects are deleted
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
use crate::repo::crypto::ChunkId;
use crate::repo::lock::{self, LOCK};
use crate::repo::manifest::{self, ChunkRef, PointHeader};
use crate::repo::pack::PackEntries;
use crate::repo::{pack_key, Repo};

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
    if !opts.dry_run && !opts.grace.is_zero() {
        tokio::time::sleep(opts.grace).await;
    }
    let now = hrl_format::now_ns();
    rep.reference_ns = now;
    let mut referenced: HashSet<ChunkId> = HashSet::new();
    for disk in manifest::list_disks(repo).await? {
        rep.disks += 1;
        prune_disk(repo, opts, disk, now, &mut rep, &mut referenced).await?;
    }
    let plan = plan_packs(repo, opts, &referenced).await?;
    rep.packs_kept = plan.live.len() as u64;
    rep.packs_deleted = plan.doomed.len() as u64;
    rep.bytes_deleted = plan.doomed.iter().map(|d| d.1).sum();
    if opts.dry_run || (plan.doomed.is_empty() && plan.index_keys.len() <= 1) {
        return Ok(rep);
    }
    // One index for what stays, durable before the old ones go.
    let mut sorted = plan.live;
    sorted.iter_mut().for_each(|(_, es)| es.sort_by_key(|e| e.1));
    sorted.sort_by_key(|(p, _)| *p);
    let new_key = repo.write_index(&sorted).await?;
    for k in &plan.index_keys {
        if *k != new_key {
            repo.delete(k).await?;
            rep.index_objects_replaced += 1;
        }
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
/// use to `referenced`.
async fn prune_disk(
    repo: &Repo,
    opts: &PruneOptions,
    disk: Uuid,
    now: u64,
    rep: &mut PruneReport,
    referenced: &mut HashSet<ChunkId>,
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
        referenced.extend(full.values().filter_map(|r| match r {
            ChunkRef::Stored(id) => Some(*id),
            ChunkRef::Zero => None,
        }));
    }
    for s in removed {
        rep.removed.push((disk, s));
        if !opts.dry_run {
            repo.delete(&manifest::point_key(&disk, s)).await?;
        }
    }
    Ok(())
}

/// Which packs stay and which go.
struct PackPlan {
    /// The index objects there are now (replaced by one).
    index_keys: Vec<String>,
    /// Indexed packs that stay, with their entries: those holding a
    /// referenced chunk and those too young to delete (a running shipper's
    /// journaled window may use them).
    live: Vec<PackEntries>,
    /// Packs to delete: key and size.
    doomed: Vec<(String, u64)>,
}

/// Plans the packs: those holding a referenced chunk stay; others go
/// unless younger than `pack_grace` (or, unindexed, younger than a day).
async fn plan_packs(repo: &Repo, opts: &PruneOptions, referenced: &HashSet<ChunkId>) -> Result<PackPlan> {
    let index_keys: Vec<String> = repo.list("index").await?.into_iter().map(|(k, _)| k).collect();
    let index = repo.load_index().await?;
    let mut by_pack: HashMap<[u8; 32], PackEntries> = HashMap::new();
    for (id, loc) in &index {
        by_pack
            .entry(loc.pack)
            .or_insert_with(|| (loc.pack, Vec::new()))
            .1
            .push((*id, loc.offset, loc.len));
    }
    let needed: HashSet<String> = by_pack
        .values()
        .filter(|(_, es)| es.iter().any(|(id, _, _)| referenced.contains(id)))
        .map(|(p, _)| pack_key(p))
        .collect();
    let indexed_keys: HashSet<String> = by_pack.keys().map(pack_key).collect();
    let mut doomed: Vec<(String, u64)> = Vec::new();
    for (key, size, age) in repo.list_with_age("packs").await? {
        let indexed = indexed_keys.contains(&key);
        if needed.contains(&key) || age < opts.pack_grace || (!indexed && age < Duration::from_secs(86_400)) {
            continue;
        }
        doomed.push((key, size));
    }
    // The new index covers every indexed pack that stays, not only those
    // kept points use: a pack kept for its grace period keeps its entries,
    // or the shipper whose window uses it would find its chunks gone.
    let doomed_keys: HashSet<&str> = doomed.iter().map(|(k, _)| k.as_str()).collect();
    let live: Vec<PackEntries> = by_pack
        .into_values()
        .filter(|(p, _)| !doomed_keys.contains(pack_key(p).as_str()))
        .collect();
    Ok(PackPlan {
        index_keys,
        live,
        doomed,
    })
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
