//! The prune lock (`locks/prune`): prune takes it with a conditional
//! create; shippers wait while a live prune holds it, so a point is never
//! published against packs a prune is deleting.

use std::time::Duration;

use super::repository::Repo;
use crate::error::{Result, ShipError};

/// The lock object prune holds.
pub const LOCK: &str = "locks/prune";

/// Overwritten by every prune that replaced index objects, before it
/// releases the lock: a shipper compares the mark's version with the one
/// it loaded its index after (one HEAD per point).
pub const PRUNED: &str = "locks/pruned";

/// A lock older than this was left by a prune that died: shippers stop
/// waiting for it and a new prune takes it over.
pub const STALE_LOCK: Duration = Duration::from_secs(6 * 3600);

/// Whether a prune lock of `age` is a live prune's, which a shipper waits
/// for; a stale one is ignored, with a warning.
pub fn live(age: Duration) -> bool {
    if age > STALE_LOCK {
        tracing::warn!(age_s = age.as_secs(), "ignoring a stale prune lock");
        return false;
    }
    true
}

/// Takes the prune lock (conditional create). A stale lock is replaced.
pub async fn take(repo: &Repo) -> Result<()> {
    let body = stamp()?;
    if repo.put_new(LOCK, body.clone()).await? {
        return Ok(());
    }
    match lock_age(repo).await? {
        Some(age) if age > STALE_LOCK => {
            tracing::warn!(age_s = age.as_secs(), "replacing a stale prune lock");
            repo.put(LOCK, body, false).await
        }
        Some(age) => Err(ShipError::Usage(format!(
            "another prune holds {LOCK} (taken {}s ago); wait for it, or delete the object if that prune is dead",
            age.as_secs()
        ))),
        // Released between the two looks: try once more.
        None if repo.put_new(LOCK, body).await? => Ok(()),
        None => Err(ShipError::Usage(format!("another prune took {LOCK} just now"))),
    }
}

/// Age of the prune lock, if it exists.
pub async fn lock_age(repo: &Repo) -> Result<Option<Duration>> {
    if !repo.exists(LOCK).await? {
        return Ok(None);
    }
    let b = repo.get(LOCK).await?;
    let t = serde_json::from_slice::<serde_json::Value>(&b)
        .ok()
        .and_then(|v| v.get("time_ns")?.as_u64())
        .unwrap_or(0);
    Ok(Some(Duration::from_nanos(hrl_format::now_ns().saturating_sub(t))))
}

/// Records that a prune replaced index objects (see [`PRUNED`]).
pub async fn mark_pruned(repo: &Repo) -> Result<()> {
    repo.put(PRUNED, stamp()?, false).await
}

/// Who and when, the body of the lock and of the mark.
fn stamp() -> Result<Vec<u8>> {
    serde_json::to_vec(&serde_json::json!({
        "host": hrl_common::host_name(),
        "pid": std::process::id(),
        "time_ns": hrl_format::now_ns(),
    }))
    .map_err(|e| ShipError::Internal(format!("encode the prune lock: {e}")))
}

/// The version (ETag) of prune's mark, `None` before any prune.
pub async fn pruned_version(repo: &Repo) -> Result<Option<String>> {
    repo.version(PRUNED).await
}
