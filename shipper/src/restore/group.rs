//! Restoring a consistency-group point: every member disk's point, each to
//! its own image in one directory.

use std::path::{Path, PathBuf};

use super::{restore, PointSel, RestoreReport};
use crate::error::{Result, ShipError};
use crate::repo::groups;
use crate::repo::Repo;

/// Restores every member of a complete group point into `dir` as
/// `<disk id>.img`.
pub async fn restore_group(repo: &Repo, name: &str, sel: PointSel, dir: &Path) -> Result<Vec<RestoreReport>> {
    let points = groups::list(repo, name).await?;
    let complete: Vec<&groups::GroupPoint> = points.iter().filter(|g| g.complete).collect();
    let g = match sel {
        PointSel::Latest => complete.last().copied(),
        PointSel::Seq(s) => complete.iter().copied().find(|g| g.seq == s),
    }
    .ok_or_else(|| ShipError::Point {
        disk: format!("group {name}"),
        why: match sel {
            PointSel::Latest => "has no complete group point".into(),
            PointSel::Seq(s) if points.iter().any(|g| g.seq == s) => {
                format!("point {s} is incomplete (not every member is published): not restorable")
            }
            PointSel::Seq(s) => format!("has no group point {s}"),
        },
    })?;
    std::fs::create_dir_all(dir).map_err(|e| ShipError::io(dir, "create restore directory", e))?;
    let mut out = Vec::new();
    for (disk, point) in &g.published {
        let to: PathBuf = dir.join(format!("{disk}.img"));
        out.push(restore(repo, disk, PointSel::Seq(*point), &to, false).await?);
    }
    Ok(out)
}
