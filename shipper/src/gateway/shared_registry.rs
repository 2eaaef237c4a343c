//! The machine registry shared by every process server of a repository.
//!
//! Each process server keeps its working copy in `STATE/machines.json`
//! (the `machines` command and the HTTPS handlers change it under its
//! lock). The shared copy is `registry/<generation>` in the repository,
//! sealed with the repository key. Every [`INTERVAL`], and at once when a
//! machine it does not know (or with a secret it does not know) asks, a
//! process server reads the newest generation and merges it into its copy;
//! when its copy holds something the shared one lacks, it creates the next
//! generation (create-if-absent: on a race it reads and merges again).
//! Merging is order-free (`Registry::merge`), so the copies converge: a
//! machine enrolled on one process server is accepted by every other, a
//! revocation reaches them all within one interval.

use std::path::Path;
use std::time::{Duration, Instant};

use super::machines::Registry;
use crate::error::{to_json, Result, ShipError};
use crate::repo::Repo;

/// How often a process server merges the shared registry.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// A refused machine makes a process server look again at most this often.
const ON_DEMAND: Duration = Duration::from_secs(1);
/// Generations kept (a reader that listed an older one may still read it).
const KEEP: usize = 3;

const PREFIX: &str = "registry/";

fn key(generation: u64) -> String {
    format!("{PREFIX}{generation:016}")
}

/// Merges the repository's registry into `state`'s and shares what the
/// shared copy lacks. Returns whether the local copy changed.
pub async fn sync(repo: &Repo, state: &Path) -> Result<bool> {
    for _ in 0..5 {
        let gens = repo.list_numbered(PREFIX).await?;
        let newest = gens.last().copied();
        let shared = match newest {
            Some(g) => read(repo, &key(g)).await?,
            None => Registry::default(),
        };
        let now = hrl_format::now_ns();
        let local = Registry::load(state)?;
        let mut merged = local.clone();
        merged.merge(&shared, now);
        let changed = merged != local;
        if changed {
            merged = Registry::update(state, |r| {
                for (machine, disk) in r.merge(&shared, now) {
                    tracing::warn!(machine = %machine, disk = %disk, "disk claimed by two machines on different process servers: it stays with the machine that claimed it first");
                }
                Ok(r.clone())
            })?;
        }
        let out = merged.shared();
        if out == shared {
            return Ok(changed);
        }
        let g = newest.map_or(1, |g| g + 1);
        let k = key(g);
        let body = repo.keys.seal_meta(k.as_bytes(), &to_json(&out, "machine registry")?);
        if repo.put_new(&k, body).await? {
            for old in gens.iter().rev().skip(KEEP - 1) {
                if let Err(e) = repo.delete(&key(*old)).await {
                    tracing::debug!(generation = old, error = %e, "could not delete an old registry generation");
                }
            }
            tracing::debug!(
                generation = g,
                machines = out.machines.len(),
                "shared the machine registry"
            );
            return Ok(changed);
        }
    }
    Err(ShipError::Internal(
        "the shared machine registry changed five times while merging it; trying again later".into(),
    ))
}

async fn read(repo: &Repo, k: &str) -> Result<Registry> {
    let blob = repo.get(k).await?;
    let plain = repo.keys.open_meta(k, k.as_bytes(), &blob)?;
    serde_json::from_slice(&plain).map_err(|e| ShipError::corrupt(k, e.to_string()))
}

/// When the registry was last merged: on-demand merges are rate limited
/// and serialized with the periodic one.
#[derive(Default)]
pub struct SyncState(tokio::sync::Mutex<Option<Instant>>);

impl SyncState {
    /// Merges now unless a merge ran within `min_gap`; false when skipped
    /// or failed (logged).
    pub async fn run(&self, repo: &Repo, state: &Path, min_gap: Duration) -> bool {
        let mut last = self.0.lock().await;
        if last.is_some_and(|t| t.elapsed() < min_gap) {
            return false;
        }
        *last = Some(Instant::now());
        match sync(repo, state).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not merge the shared machine registry; trying again later");
                false
            }
        }
    }

    /// For a refused machine: look at the shared copy (at most once a
    /// second) in case another process server enrolled it.
    pub async fn on_demand(&self, repo: &Repo, state: &Path) -> bool {
        self.run(repo, state, ON_DEMAND).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::machines::Refusal;
    use super::*;

    #[test]
    fn copies_converge_in_either_order_and_revocation_and_used_tokens_carry_over() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let tok = Registry::update(a.path(), |r| r.add("web01", 10)).unwrap();
        let mut ra = Registry::load(a.path()).unwrap();
        let mut rb = Registry::load(b.path()).unwrap();
        rb.merge(&ra, 11);
        // Enrolled on B with A's token: A learns the secret and that the
        // token is used.
        let (_, secret) = rb.redeem(&tok, 12).unwrap();
        ra.merge(&rb, 13);
        assert_eq!(ra.authenticate("web01", &secret), Ok(()));
        assert!(ra.redeem(&tok, 14).is_err(), "a token used on B is used on A");
        // A revokes; B merges: refused there too, in either merge order.
        ra.revoke("web01", 20).unwrap();
        let mut rb2 = rb.clone();
        rb2.merge(&ra, 21);
        assert_eq!(rb2.authenticate("web01", &secret), Err(Refusal::Revoked));
        let mut ra2 = ra.clone();
        ra2.merge(&rb, 21);
        assert_eq!(ra2.shared(), rb2.shared(), "merging is order-free");
        // Enrolled again after the revocation (a new token on B): accepted
        // everywhere, the old secret is not.
        let tok2 = rb2.add("web01", 30).unwrap();
        let (_, s2) = rb2.redeem(&tok2, 31).unwrap();
        ra2.merge(&rb2, 32);
        assert_eq!(ra2.authenticate("web01", &s2), Ok(()));
        assert_eq!(ra2.authenticate("web01", &secret), Err(Refusal::BadSecret));
    }

    #[test]
    fn a_disk_claimed_twice_stays_with_the_shared_copy() {
        let d = uuid::Uuid::new_v4();
        let mut shared = Registry::default();
        shared.machines.entry("a".into()).or_default().disks.push(d);
        let mut local = Registry::default();
        local.machines.entry("b".into()).or_default().disks.push(d);
        let moved = local.merge(&shared, 1);
        assert_eq!(moved, vec![("b".to_string(), d)]);
        assert_eq!(local.owner(&d), Some("a"));
    }
}
