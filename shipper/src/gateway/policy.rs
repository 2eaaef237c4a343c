//! Replication policies, set in one place: the policy file the gateway
//! watches (`policy_file` in gateway.toml). Named policies set a point
//! interval, an app-point interval, an RPO threshold and retention; each
//! machine (or a glob of machine names) is assigned one, `default`
//! otherwise. A forwarder fetches its machine's policy (`GET /v1/policy`)
//! every [`RENEW`] and applies it to its agent; retention is run by the
//! gateway (`retention`).
//!
//! ```toml
//! retention_interval = "1h"          # how often the gateway prunes by policy
//! retention_grace = "30s"            # wait after the prune lock, as prune --grace
//!
//! [policy.default]
//! point_interval = "10s"
//! app_point_interval = "1h"          # app-consistent points, crash points between
//! rpo_warn = "5m"
//! keep_within = "2d"
//! keep_hourly = 48
//! keep_daily = 14
//! keep_weekly = 8
//!
//! [policy.gold]
//! point_interval = "2s"
//!
//! [assign]
//! "db*" = "gold"                     # exact names first, then the longest pattern
//! ```
//!
//! The file is re-read when it changes; one that no longer parses is
//! logged and the last good one stays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use hrl_common::HumanDuration;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ShipError};

/// How often a forwarder asks for its policy: a change reaches every
/// connected machine within this.
pub const RENEW: Duration = Duration::from_secs(10);

/// One named policy; every key is optional (the agent's own config keeps
/// what the policy does not set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub point_interval: Option<HumanDuration>,
    pub app_point_interval: Option<HumanDuration>,
    pub rpo_warn: Option<HumanDuration>,
    pub keep_within: Option<HumanDuration>,
    pub keep_hourly: Option<u64>,
    pub keep_daily: Option<u64>,
    pub keep_weekly: Option<u64>,
}

impl PolicySpec {
    /// The retention part, for prune (None when it sets no retention).
    pub fn retention(&self) -> Option<crate::prune::Policy> {
        let p = crate::prune::Policy {
            keep_within: self.keep_within.map(Into::into),
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
        };
        (!p.is_empty()).then_some(p)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub policy: BTreeMap<String, PolicySpec>,
    /// Machine name or glob (`*`, `?`) → policy name.
    #[serde(default)]
    pub assign: BTreeMap<String, String>,
    pub retention_interval: Option<HumanDuration>,
    /// Wait after taking the prune lock, for shippers mid-publish [30s].
    pub retention_grace: Option<HumanDuration>,
}

/// `*` any run of characters, `?` one character, anything else itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &n)
}

impl PolicyFile {
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let f: PolicyFile = toml::from_str(text).map_err(|e| ShipError::Usage(format!("{}: {e}", path.display())))?;
        for (pat, name) in &f.assign {
            if !f.policy.contains_key(name) {
                return Err(ShipError::Usage(format!(
                    "{}: [assign] {pat:?} names policy {name:?}, which is not defined",
                    path.display()
                )));
            }
        }
        Ok(f)
    }

    /// The policy of `machine`: its exact name, else the longest matching
    /// pattern, else `default` if there is one.
    pub fn for_machine(&self, machine: &str) -> Option<(String, PolicySpec)> {
        let name = self.assign.get(machine).or_else(|| {
            self.assign
                .iter()
                .filter(|(p, _)| glob(p, machine))
                .max_by_key(|(p, _)| p.len())
                .map(|(_, n)| n)
        });
        let name = name.map(String::as_str).unwrap_or("default");
        self.policy.get(name).map(|p| (name.to_string(), p.clone()))
    }
}

/// The policy file as last read, re-read when it changes.
pub struct Policies {
    path: Option<PathBuf>,
    cached: Mutex<(Option<SystemTime>, PolicyFile)>,
}

impl Policies {
    /// Reads `path` (None: no policies; every agent keeps its own config).
    /// A file that does not parse at start is an error.
    pub fn open(path: Option<PathBuf>) -> Result<Self> {
        let mut cached = (None, PolicyFile::default());
        if let Some(p) = &path {
            let text = std::fs::read_to_string(p).map_err(|e| ShipError::io(p, "read policy file", e))?;
            cached = (mtime(p), PolicyFile::parse(&text, p)?);
        }
        Ok(Policies {
            path,
            cached: Mutex::new(cached),
        })
    }

    /// The file now (re-read when its modification time changed).
    pub fn current(&self) -> PolicyFile {
        let mut g = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &self.path {
            let m = mtime(p);
            if m != g.0 {
                g.0 = m;
                match std::fs::read_to_string(p)
                    .map_err(|e| ShipError::io(p, "read policy file", e))
                    .and_then(|t| PolicyFile::parse(&t, p))
                {
                    Ok(f) => {
                        tracing::info!(file = %p.display(), policies = f.policy.len(), "policy file reloaded");
                        g.1 = f;
                    }
                    Err(e) => tracing::error!(error = %e, "policy file not reloaded: the last good one stays"),
                }
            }
        }
        g.1.clone()
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_get_their_exact_then_longest_glob_then_default_policy() {
        assert!(glob("db*", "db01") && glob("*", "") && glob("w?b*", "web01"));
        assert!(!glob("db*", "web01") && !glob("db?", "db01"));
        let f = PolicyFile::parse(
            "[policy.default]\npoint_interval = \"10s\"\n[policy.gold]\npoint_interval = \"2s\"\n\
             [policy.silver]\nrpo_warn = \"1m\"\nkeep_hourly = 3\n\
             [assign]\n\"db*\" = \"silver\"\n\"db0*\" = \"gold\"\n\"db99\" = \"default\"\n",
            Path::new("p.toml"),
        )
        .unwrap();
        let name = |m: &str| f.for_machine(m).map(|p| p.0);
        assert_eq!(name("db01").as_deref(), Some("gold"));
        assert_eq!(name("db17").as_deref(), Some("silver"));
        assert_eq!(name("db99").as_deref(), Some("default"));
        assert_eq!(name("web01").as_deref(), Some("default"));
        let silver = f.for_machine("db17").unwrap().1;
        assert_eq!(silver.retention().unwrap().keep_hourly, Some(3));
        assert!(f.for_machine("db01").unwrap().1.retention().is_none());
        let e = PolicyFile::parse("[assign]\n\"x\" = \"nope\"\n", Path::new("p.toml")).unwrap_err();
        assert!(e.to_string().contains("not defined"), "{e}");
        assert!(PolicyFile::parse("[policy.a]\npoint_intervl = \"1s\"\n", Path::new("p.toml")).is_err());
        assert!(PolicyFile::default().for_machine("x").is_none());
    }
}
