//! The prune lock (`locks/prune`): prune takes it with a conditional
//! create; shippers wait while a live prune holds it, so a point is never
//! published against packs a prune is deleting.

use std::time::{Duration, Instant};

use super::prune_view::PruneState;
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

/// How long one read of the lock and the mark serves every ship loop of a
/// process: a process server's loops each read both before every point
/// (two of the seven requests a point cost the store).
pub const VIEW_FRESH: Duration = Duration::from_millis(500);

/// Prune waits at least this long after taking the lock, whatever its
/// `grace`: a shipper may have seen the lock absent up to [`VIEW_FRESH`]
/// before it publishes, and its manifest must be listed by the prune.
pub const MIN_GRACE: Duration = Duration::from_secs(2);

/// The prune lock and then the mark (in that order: a mark read after the
/// lock was seen absent is at least as new as that look), as read at most
/// [`VIEW_FRESH`] ago by this process. Safe because prune waits at least
/// [`MIN_GRACE`] after taking the lock before it reads any manifest.
pub async fn state(repo: &Repo) -> Result<PruneState> {
    let mut g = repo.prune_view.0.lock().await;
    if let Some((at, s)) = g.as_ref().filter(|(at, _)| at.elapsed() < VIEW_FRESH) {
        tracing::trace!(
            age_ms = at.elapsed().as_millis() as u64,
            "prune state read by another loop"
        );
        return Ok(s.clone());
    }
    let at = Instant::now();
    let lock_ns = match repo.exists(LOCK).await? {
        false => None,
        true => Some(lock_time(&repo.get(LOCK).await?)),
    };
    let s = PruneState {
        lock_ns,
        pruned: pruned_version(repo).await?,
    };
    *g = Some((at, s.clone()));
    Ok(s)
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
    let t = lock_time(&repo.get(LOCK).await?);
    Ok(Some(Duration::from_nanos(hrl_format::now_ns().saturating_sub(t))))
}

/// When the lock in `body` was taken (0, so stale, if unreadable).
fn lock_time(body: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("time_ns")?.as_u64())
        .unwrap_or(0)
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
