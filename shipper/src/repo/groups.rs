//! Consistency-group points in the repository.
//!
//! Each member disk's point of a group point is an ordinary point manifest
//! (its header names the group point). When a shipper publishes one, it
//! also writes `points/groups/<group>/<group seq:016>/<disk>`. A group point
//! is published (listed, restorable) only when every one of its `members`
//! has its object and its manifest: shippers on different machines publish
//! their members at their own pace, and a group point missing a member
//! (one member's freeze was aborted, or its shipper is behind) is never
//! offered for restore.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::manifest::{self, GroupRef};
use super::repository::Repo;
use crate::error::{to_json, Result, ShipError};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Member {
    disk: Uuid,
    point: u64,
    group: GroupRef,
}

fn group_prefix(name: &str) -> String {
    format!("points/groups/{name}")
}

fn member_key(g: &GroupRef, disk: &Uuid) -> String {
    format!("{}/{:016}/{disk}", group_prefix(&g.name), g.seq)
}

fn aad(key: &str) -> Vec<u8> {
    let mut a = b"group".to_vec();
    a.extend_from_slice(key.as_bytes());
    a
}

/// Records that `disk`'s point `point` is published as a member of `g`
/// (idempotent: a re-shipped point writes the same object again).
pub async fn publish_member(repo: &Repo, g: &GroupRef, disk: &Uuid, point: u64) -> Result<()> {
    let key = member_key(g, disk);
    let member = Member {
        disk: *disk,
        point,
        group: g.clone(),
    };
    let body = to_json(&member, "group member")?;
    repo.put(&key, repo.keys.seal_meta(&aad(&key), &body), false).await
}

/// One group point as the repository has it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPoint {
    pub group: String,
    pub seq: u64,
    pub id: Uuid,
    pub members: u32,
    /// (disk, point) of every member published so far.
    pub published: Vec<(Uuid, u64)>,
    pub complete: bool,
}

/// Every group point of `name`, ascending; `complete` says which are.
pub async fn list(repo: &Repo, name: &str) -> Result<Vec<GroupPoint>> {
    let mut by_seq: BTreeMap<u64, GroupPoint> = BTreeMap::new();
    for (key, _) in repo.list(&group_prefix(name)).await? {
        let blob = repo.get(&key).await?;
        let plain = repo.keys.open_meta(&format!("group member {key}"), &aad(&key), &blob)?;
        let m: Member = serde_json::from_slice(&plain).map_err(|e| ShipError::corrupt(&key, e.to_string()))?;
        // A member whose point was pruned no longer counts.
        if !repo.exists(&manifest::point_key(&m.disk, m.point)).await? {
            continue;
        }
        let e = by_seq.entry(m.group.seq).or_insert_with(|| GroupPoint {
            group: name.into(),
            seq: m.group.seq,
            id: m.group.id,
            members: m.group.members,
            published: Vec::new(),
            complete: false,
        });
        e.published.push((m.disk, m.point));
    }
    let mut v: Vec<GroupPoint> = by_seq.into_values().collect();
    for g in &mut v {
        g.published.sort();
        g.complete = g.published.len() as u32 == g.members;
    }
    Ok(v)
}
