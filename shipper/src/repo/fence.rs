//! Failover fencing: once a disk has failed over, shippers of its old
//! source refuse to publish points for it, so two sides never both write
//! the same disk's history.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::repository::Repo;
use crate::error::{to_json, Result, ShipError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverRecord {
    pub disk: Uuid,
    pub point: u64,
    pub time_ns: u64,
    pub target: String,
    pub forced: bool,
}

pub fn fence_key(disk: &Uuid) -> String {
    format!("failover/{disk}")
}

/// Errors with `Fenced` when `disk` has failed over.
pub async fn check_fence(repo: &Repo, disk: &Uuid) -> Result<()> {
    let key = fence_key(disk);
    if !repo.exists(&key).await? {
        return Ok(());
    }
    let blob = repo.get(&key).await?;
    let plain = repo.keys.open_meta(&key, key.as_bytes(), &blob)?;
    let r: FailoverRecord = serde_json::from_slice(&plain).map_err(|e| ShipError::corrupt(&key, e.to_string()))?;
    Err(ShipError::Fenced {
        disk: disk.to_string(),
        point: r.point,
        when: format!(
            "{}s ago",
            hrl_format::now_ns().saturating_sub(r.time_ns) / 1_000_000_000
        ),
        hint: "Protect the failed-over disk as a new disk (reprotect), or fail back; see docs/operations.md".into(),
    })
}

/// Records that `disk` failed over at `point`.
pub async fn record(repo: &Repo, r: &FailoverRecord) -> Result<()> {
    let key = fence_key(&r.disk);
    let plain = to_json(r, "failover record")?;
    repo.put(&key, repo.keys.seal_meta(key.as_bytes(), &plain), false).await
}
