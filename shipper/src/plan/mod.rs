//! Recovery plans: which disks fail over, in which order, at which point,
//! and what runs between the groups. A plan is a TOML file:
//!
//! ```toml
//! name = "shop"
//! point = "group:shop"                      # latest | latest-app | group:NAME
//! target = "az://vhds/{host}-{name}.vhd"    # {host} {name} {disk}; or a path
//! standby = "az://standby"                  # optional: copy from the standby
//!
//! [[group]]
//! name = "databases"
//! disks = ["db01/data", "db01/wal"]
//! after = "scripts/check-db.sh"             # HRL_TARGETS etc. in its environment
//!
//! [[group]]
//! name = "app servers"
//! machines = ["web01", "web02"]             # every disk of these hosts
//! pause = true                              # ask (or --yes) before going on
//! ```
//!
//! Everything is resolved before anything is written: every disk named
//! exists and is in one group only, every disk's point is chosen with the
//! one rule for the whole plan, every target is distinct and free. A plan
//! that does not resolve is refused naming the line of the problem.

pub mod run;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use uuid::Uuid;

use crate::error::{Result, ShipError};
use crate::repo::disks::{self, DiskInfo};
use crate::repo::{groups, manifest, Repo};

/// The plan file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    pub name: String,
    #[serde(default = "latest")]
    pub point: String,
    pub target: String,
    #[serde(default)]
    pub standby: Option<String>,
    #[serde(rename = "group")]
    pub groups: Vec<GroupFile>,
}

fn latest() -> String {
    "latest".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    pub name: String,
    #[serde(default)]
    pub disks: Vec<String>,
    #[serde(default)]
    pub machines: Vec<String>,
    /// A shell command run after the group is restored; non-zero stops
    /// the plan.
    #[serde(default)]
    pub after: Option<String>,
    /// Ask before the next group (`--yes` answers).
    #[serde(default)]
    pub pause: bool,
}

/// Which point each disk fails over to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointRule {
    Latest,
    LatestApp,
    Group(String),
}

impl std::str::FromStr for PointRule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "latest" => Ok(PointRule::Latest),
            "latest-app" => Ok(PointRule::LatestApp),
            _ => match s.strip_prefix("group:") {
                Some(g) if !g.is_empty() => Ok(PointRule::Group(g.to_string())),
                _ => Err(format!(
                    "point = {s:?}: expected \"latest\", \"latest-app\" or \"group:NAME\""
                )),
            },
        }
    }
}

/// One disk of a resolved plan.
#[derive(Debug, Clone)]
pub struct Member {
    pub disk: DiskInfo,
    pub point: u64,
    pub target: String,
}

/// A group of a resolved plan.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub members: Vec<Member>,
    pub after: Option<String>,
    pub pause: bool,
}

/// A plan with every disk, point and target decided.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub rule: String,
    pub standby: Option<String>,
    pub groups: Vec<Group>,
    /// The plan file's folder: `after` commands run there.
    pub dir: PathBuf,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> ShipError {
    ShipError::Usage(format!("plan {}: {why}; nothing was done", path.display()))
}

/// Reads and checks the plan file (its TOML, names and rule).
pub fn load(path: &Path) -> Result<PlanFile> {
    let text = std::fs::read_to_string(path).map_err(|e| ShipError::io(path, "read plan", e))?;
    parse(&text, path)
}

/// Checks the text of plan file `path`.
pub fn parse(text: &str, path: &Path) -> Result<PlanFile> {
    let f: PlanFile = toml::from_str(text).map_err(|e| bad(path, e.to_string().trim_end()))?;
    f.point.parse::<PointRule>().map_err(|e| bad(path, e))?;
    if f.groups.is_empty() {
        return Err(bad(path, "it has no [[group]]"));
    }
    for g in &f.groups {
        if g.disks.is_empty() && g.machines.is_empty() {
            return Err(bad(path, format!("group {:?} names no disks and no machines", g.name)));
        }
    }
    let unique = f.target.contains("{disk}") || (f.target.contains("{host}") && f.target.contains("{name}"));
    if !unique {
        return Err(bad(
            path,
            "target must contain {disk}, or {host} and {name}, so every disk gets its own",
        ));
    }
    Ok(f)
}

/// Resolves `f` against the repository: disks, points, targets. `test`
/// prefixes every target's file name with `test-<stamp>-`.
pub async fn resolve(repo: &Repo, f: &PlanFile, path: &Path, test: Option<&str>) -> Result<Plan> {
    let all = disks::list(repo).await?;
    let rule: PointRule = f.point.parse().map_err(|e: String| bad(path, e))?;
    let mut seen: BTreeMap<Uuid, String> = BTreeMap::new();
    let mut groups = Vec::new();
    for g in &f.groups {
        let mut picked: Vec<DiskInfo> = Vec::new();
        for sel in &g.disks {
            let d =
                disks::select(&all, Some(sel), &repo.url).map_err(|e| bad(path, format!("group {:?}: {e}", g.name)))?;
            picked.push(d.clone());
        }
        for m in &g.machines {
            let of: Vec<&DiskInfo> = all.iter().filter(|d| d.host.as_deref() == Some(m.as_str())).collect();
            if of.is_empty() {
                return Err(bad(
                    path,
                    format!("group {:?}: machine {m:?} has no disk in {}", g.name, repo.url),
                ));
            }
            picked.extend(of.into_iter().cloned());
        }
        let mut members = Vec::new();
        for d in picked {
            if let Some(other) = seen.insert(d.id, g.name.clone()) {
                return Err(bad(
                    path,
                    format!("disk {} is in group {other:?} and in {:?}", d.label(), g.name),
                ));
            }
            members.push(Member {
                target: target_for(&f.target, &d, test),
                disk: d,
                point: 0,
            });
        }
        groups.push(Group {
            name: g.name.clone(),
            members,
            after: g.after.clone(),
            pause: g.pause,
        });
    }
    choose_points(repo, &rule, &mut groups, path).await?;
    let targets: BTreeSet<&str> = groups
        .iter()
        .flat_map(|g| g.members.iter().map(|m| m.target.as_str()))
        .collect();
    if targets.len() != seen.len() {
        return Err(bad(
            path,
            "two disks get the same target (use {disk}, or {host} and {name})",
        ));
    }
    Ok(Plan {
        name: f.name.clone(),
        rule: f.point.clone(),
        standby: f.standby.clone(),
        groups,
        dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
    })
}

/// `{host}`, `{name}`, `{disk}` of the template; with `test`, the file
/// name gets the prefix `test-<stamp>-`.
fn target_for(template: &str, d: &DiskInfo, test: Option<&str>) -> String {
    let t = template
        .replace("{host}", d.host.as_deref().unwrap_or("unnamed"))
        .replace("{name}", d.name.as_deref().unwrap_or(&d.id.to_string()))
        .replace("{disk}", &d.id.to_string());
    match (test, t.rfind('/')) {
        (Some(stamp), Some(i)) => format!("{}test-{stamp}-{}", &t[..=i], &t[i + 1..]),
        (Some(stamp), None) => format!("test-{stamp}-{t}"),
        (None, _) => t,
    }
}

/// Sets every member's point by the plan's one rule.
async fn choose_points(repo: &Repo, rule: &PointRule, groups: &mut [Group], path: &Path) -> Result<()> {
    let group_point = match rule {
        PointRule::Group(name) => {
            let all = groups::list(repo, name).await?;
            let g = all
                .into_iter()
                .rfind(|g| g.complete)
                .ok_or_else(|| bad(path, format!("consistency group {name:?} has no complete point")))?;
            Some(g)
        }
        _ => None,
    };
    for m in groups.iter_mut().flat_map(|g| g.members.iter_mut()) {
        m.point = match (rule, &group_point) {
            (PointRule::Group(name), Some(gp)) => {
                let p = gp.published.iter().find(|(d, _)| *d == m.disk.id).map(|(_, p)| *p);
                p.ok_or_else(|| {
                    bad(
                        path,
                        format!(
                            "disk {} is not a member of group point {name} {}",
                            m.disk.label(),
                            gp.seq
                        ),
                    )
                })?
            }
            (PointRule::LatestApp, _) => newest_app(repo, &m.disk).await?,
            _ => m.disk.newest,
        };
    }
    Ok(())
}

/// The newest app-consistent point of `d`.
async fn newest_app(repo: &Repo, d: &DiskInfo) -> Result<u64> {
    for p in manifest::list_points(repo, &d.id).await?.into_iter().rev() {
        if manifest::load(repo, &d.id, p).await?.0.kind == hrl_format::PointKind::App {
            return Ok(p);
        }
    }
    Err(ShipError::Point {
        disk: d.label(),
        why: "has no app-consistent point (point = \"latest-app\"); nothing was done".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_targets() {
        assert_eq!("group:shop".parse(), Ok(PointRule::Group("shop".into())));
        assert!("group:".parse::<PointRule>().is_err());
        assert!("newest".parse::<PointRule>().is_err());
        let d = DiskInfo {
            id: Uuid::nil(),
            host: Some("db01".into()),
            name: Some("wal".into()),
            points: 1,
            newest: 1,
        };
        assert_eq!(
            target_for("az://vhds/{host}-{name}.vhd", &d, None),
            "az://vhds/db01-wal.vhd"
        );
        assert_eq!(
            target_for("az://vhds/{host}-{name}.vhd", &d, Some("20261128T2350")),
            "az://vhds/test-20261128T2350-db01-wal.vhd"
        );
    }

    #[test]
    fn bad_plans_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plan.toml");
        let cases = [
            ("name = \"x\"\ntarget = \"/t/{disk}.img\"\n", "group"),
            (
                "name = \"x\"\ntarget = \"/t/a.img\"\n[[group]]\nname = \"g\"\ndisks = [\"a\"]\n",
                "{disk}",
            ),
            (
                "name = \"x\"\npoint = \"oldest\"\ntarget = \"/t/{disk}\"\n[[group]]\nname = \"g\"\ndisks = [\"a\"]\n",
                "latest-app",
            ),
            (
                "name = \"x\"\ntarget = \"/t/{disk}\"\n[[group]]\nname = \"g\"\n",
                "no disks",
            ),
            (
                "name = \"x\"\ntarget = \"/t/{disk}\"\ntypo = 1\n[[group]]\nname = \"g\"\ndisks = [\"a\"]\n",
                "typo",
            ),
        ];
        for (text, says) in cases {
            std::fs::write(&p, text).unwrap();
            let e = load(&p).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("plan.toml"), "{text}: {e}");
        }
    }
}
