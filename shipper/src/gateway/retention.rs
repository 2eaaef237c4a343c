//! Retention by policy, run by the process server on a schedule: every
//! `retention_interval` of the policy file, one prune over the repository
//! with each disk's own policy (its machine's), with the same lock, grace
//! and safety beside running shippers as `hrl-shipper prune`. A disk whose
//! policy sets no retention keeps every point. The last run's report is
//! kept in `STATE/retention.json`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::Gateway;
use crate::prune::{prune, PruneOptions, PruneReport};

/// Default time between retention runs.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// One run: every disk with a retention policy. None when no disk has one.
pub async fn run_once(gw: &Gateway) -> crate::error::Result<Option<PruneReport>> {
    let file = gw.policies.current();
    let reg = gw.registry()?;
    let mut per_disk = HashMap::new();
    for (name, m) in &reg.machines {
        let Some(keep) = file.for_machine(name).and_then(|(_, p)| p.retention()) else {
            continue;
        };
        for d in &m.disks {
            per_disk.insert(*d, keep.clone());
        }
    }
    if per_disk.is_empty() {
        return Ok(None);
    }
    let opts = PruneOptions {
        policy: Default::default(),
        per_disk,
        dry_run: false,
        grace: file.retention_grace.map_or(Duration::from_secs(30), Into::into),
        pack_grace: Duration::from_secs(86_400),
    };
    let rep = prune(&gw.repo, &opts).await?;
    let body = serde_json::to_vec_pretty(&rep).unwrap_or_default();
    crate::private_file::replace_private(&gw.state_dir.join("retention.json"), &body)?;
    Ok(Some(rep))
}

/// Runs retention every interval until `stop`.
pub async fn schedule(gw: Arc<Gateway>, stop: Arc<AtomicBool>) {
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let every = gw.policies.current().retention_interval.map_or(INTERVAL, Into::into);
        if last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        match run_once(&gw).await {
            Ok(Some(r)) => tracing::info!(
                disks = r.disks,
                kept = r.points_kept,
                removed = r.points_removed,
                packs_deleted = r.packs_deleted,
                "retention by policy"
            ),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "retention by policy failed; it runs again at the next interval"),
        }
    }
}
