//! The disks of a repository as operators name them: `HOST/NAME` from the
//! newest manifest of each disk (format 1.2 spools carry it), and the rule
//! that turns what someone typed after `--disk` into one disk id.
//!
//! A `--disk` value is, in this order: a full UUID; `HOST/NAME`; a `NAME`
//! unique in the repository; a unique prefix of a UUID. Nothing given
//! means the only disk. Anything that matches several disks, or none, is
//! refused with the candidates listed: a restore never guesses.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::manifest;
use super::repository::Repo;
use crate::error::{Result, ShipError};

/// One disk with points in the repository.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskInfo {
    pub id: Uuid,
    /// From the newest point's manifest; `None` for manifests written from
    /// spools older than format 1.2.
    pub host: Option<String>,
    pub name: Option<String>,
    pub points: usize,
    /// Sequence of the newest point.
    pub newest: u64,
}

impl DiskInfo {
    /// `host/name`, or the UUID when the manifests do not name the disk.
    pub fn label(&self) -> String {
        match (&self.host, &self.name) {
            (Some(h), Some(n)) => format!("{h}/{n}"),
            _ => self.id.to_string(),
        }
    }

    /// `host/name (uuid)`, or the UUID alone.
    pub fn describe(&self) -> String {
        match (&self.host, &self.name) {
            (Some(_), Some(_)) => format!("{} ({})", self.label(), self.id),
            _ => self.id.to_string(),
        }
    }
}

/// Every disk with points, each named from its newest manifest (one read
/// per disk).
pub async fn list(repo: &Repo) -> Result<Vec<DiskInfo>> {
    let mut out = Vec::new();
    for id in manifest::list_disks(repo).await? {
        let points = manifest::list_points(repo, &id).await?;
        let Some(&newest) = points.last() else { continue };
        let (h, _) = manifest::load(repo, &id, newest).await?;
        out.push(DiskInfo {
            id,
            host: h.host,
            name: h.name,
            points: points.len(),
            newest,
        });
    }
    Ok(out)
}

/// The disk `sel` names in the repository (see the module doc).
pub async fn resolve(repo: &Repo, sel: Option<&str>) -> Result<Uuid> {
    if let Some(id) = sel.and_then(|s| s.parse::<Uuid>().ok()) {
        // A full UUID needs no listing; a missing disk is reported by
        // whatever looks for its points.
        return Ok(id);
    }
    select(&list(repo).await?, sel, &repo.url).map(|d| d.id)
}

/// [`resolve`] on a listing already made.
pub fn select<'a>(disks: &'a [DiskInfo], sel: Option<&str>, repo: &str) -> Result<&'a DiskInfo> {
    let candidates = |v: &[&DiskInfo]| {
        v.iter()
            .map(|d| format!("  {}", d.describe()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let all: Vec<&DiskInfo> = disks.iter().collect();
    let Some(sel) = sel else {
        return match all.as_slice() {
            [one] => Ok(one),
            [] => Err(ShipError::Usage(format!("{repo} has no disk with a published point"))),
            _ => Err(ShipError::Usage(format!(
                "{repo} has {} disks: give --disk HOST/NAME, NAME or an id:\n{}",
                all.len(),
                candidates(&all)
            ))),
        };
    };
    let by_host_name: Vec<&DiskInfo> = match sel.split_once('/') {
        Some((h, n)) => all
            .iter()
            .copied()
            .filter(|d| d.host.as_deref() == Some(h) && d.name.as_deref() == Some(n))
            .collect(),
        None => all.iter().copied().filter(|d| d.name.as_deref() == Some(sel)).collect(),
    };
    let matches = if by_host_name.is_empty() && is_id_prefix(sel) {
        let p = sel.to_ascii_lowercase();
        all.iter()
            .copied()
            .filter(|d| d.id.hyphenated().to_string().starts_with(&p) || d.id.simple().to_string().starts_with(&p))
            .collect()
    } else {
        by_host_name
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(ShipError::Usage(format!(
            "no disk {sel:?} in {repo}; its disks:\n{}",
            if all.is_empty() {
                "  (none)".to_string()
            } else {
                candidates(&all)
            }
        ))),
        _ => Err(ShipError::Usage(format!(
            "--disk {sel:?} matches {} disks in {repo}; give HOST/NAME or the id:\n{}",
            matches.len(),
            candidates(&matches)
        ))),
    }
}

/// Looks like the start of a UUID: hex digits and hyphens, at least 4.
fn is_id_prefix(s: &str) -> bool {
    s.len() >= 4 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(id: u128, host: Option<&str>, name: Option<&str>) -> DiskInfo {
        DiskInfo {
            id: Uuid::from_u128(id),
            host: host.map(str::to_string),
            name: name.map(str::to_string),
            points: 1,
            newest: 1,
        }
    }

    fn pick(disks: &[DiskInfo], sel: Option<&str>) -> std::result::Result<Uuid, String> {
        select(disks, sel, "file:///r").map(|d| d.id).map_err(|e| e.to_string())
    }

    #[test]
    fn names_ids_prefixes_and_ambiguity() {
        let a = 0xaaaa_0000_0000_0000_0000_0000_0000_0001;
        let b = 0xaaab_0000_0000_0000_0000_0000_0000_0002;
        let c = 0xc000_0000_0000_0000_0000_0000_0000_0003;
        let disks = vec![
            disk(a, Some("db-01"), Some("data")),
            disk(b, Some("db-02"), Some("data")),
            disk(c, None, None),
        ];
        assert_eq!(pick(&disks, Some("db-01/data")), Ok(Uuid::from_u128(a)));
        assert_eq!(pick(&disks, Some("db-02/data")), Ok(Uuid::from_u128(b)));
        let e = pick(&disks, Some("data")).unwrap_err();
        assert!(
            e.contains("matches 2 disks") && e.contains("db-01/data (aaaa") && e.contains("db-02/data"),
            "{e}"
        );
        assert_eq!(pick(&disks, Some("c000")), Ok(Uuid::from_u128(c)));
        assert_eq!(pick(&disks, Some("AAAB")), Ok(Uuid::from_u128(b)));
        let e = pick(&disks, Some("aaa")).unwrap_err();
        assert!(e.contains("no disk \"aaa\""), "three characters are not a prefix: {e}");
        let e = pick(&disks, Some("aaaa-")).unwrap_err();
        assert!(e.contains("no disk"), "{e}");
        let e = pick(&disks, Some("aaa")).unwrap_err();
        assert!(e.contains("c0000000-0000"), "every disk is listed: {e}");
        let e = pick(&disks, Some("db-03/data")).unwrap_err();
        assert!(e.contains("no disk \"db-03/data\""), "{e}");
        let e = pick(&disks, None).unwrap_err();
        assert!(e.contains("has 3 disks"), "{e}");
        assert_eq!(pick(&disks[2..], None), Ok(Uuid::from_u128(c)));
        assert!(pick(&[], None).unwrap_err().contains("no disk with a published point"));
    }

    #[test]
    fn a_prefix_of_two_ids_is_ambiguous() {
        let disks = vec![
            disk(0xabcd1_u128 << 108, None, None),
            disk(0xabcd2_u128 << 108, None, None),
        ];
        let e = pick(&disks, Some("abcd")).unwrap_err();
        assert!(e.contains("matches 2 disks"), "{e}");
    }
}
