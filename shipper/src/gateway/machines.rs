//! The machines a process server accepts: enrollment tokens, per-machine
//! secrets, revocation, and which disks belong to which machine.
//!
//! Kept in `STATE/machines.json` (0600). Only hashes are stored: SHA-256 of
//! each one-time token and of each machine's secret, so a copy of the file
//! lets nobody act as a machine. `machines add/revoke` (another process)
//! and the server change it under an exclusive lock on
//! `STATE/machines.lock`, replacing the file atomically; the server
//! re-reads it when it changes, so a revocation takes effect on the
//! machine's next request.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Result, ShipError};
use crate::private_file::{read_private, replace_private};

/// How long an enrollment token is valid.
pub const TOKEN_LIFETIME_NS: u64 = 24 * 3600 * 1_000_000_000;

/// One machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub created_ns: u64,
    /// SHA-256 (hex) of the secret issued at enrollment; `None` until the
    /// machine enrolls.
    pub secret_sha256: Option<String>,
    pub enrolled_ns: Option<u64>,
    pub revoked_ns: Option<u64>,
    /// Disks this machine has sent; no other machine may send them.
    pub disks: Vec<Uuid>,
    pub last_contact_ns: Option<u64>,
}

impl Machine {
    /// Revoked, and not enrolled again since.
    pub fn revoked(&self) -> bool {
        self.revoked_ns.is_some_and(|r| self.enrolled_ns.is_none_or(|e| r >= e))
    }
}

/// A one-time enrollment token (its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub machine: String,
    pub sha256: String,
    pub expires_ns: u64,
}

/// The whole registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub machines: BTreeMap<String, Machine>,
    pub tokens: Vec<Token>,
}

pub(super) fn sha_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Equal without an early exit, so timing tells nothing about a hash.
pub(super) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A machine name: 1-64 of letters, digits, `.`, `_`, `-`.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(ShipError::Usage(format!(
            "machine name {name:?}: use 1-64 letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(())
}

/// Why a machine's request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    NotEnrolled,
    Revoked,
    BadSecret,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Unknown => "unknown machine",
            Refusal::NotEnrolled => "machine has not enrolled",
            Refusal::Revoked => "machine identity revoked",
            Refusal::BadSecret => "wrong machine secret",
        })
    }
}

impl Registry {
    pub fn path(state: &Path) -> PathBuf {
        state.join("machines.json")
    }

    /// The registry as stored (empty when there is none yet).
    pub fn load(state: &Path) -> Result<Registry> {
        let p = Self::path(state);
        if !p.exists() {
            return Ok(Registry::default());
        }
        let b = read_private(&p)?;
        serde_json::from_slice(&b).map_err(|e| ShipError::corrupt(p.display().to_string(), e.to_string()))
    }

    /// Runs `f` on the registry under the lock and stores the result.
    pub fn update<T>(state: &Path, f: impl FnOnce(&mut Registry) -> Result<T>) -> Result<T> {
        std::fs::create_dir_all(state).map_err(|e| ShipError::io(state, "create state directory", e))?;
        let lp = state.join("machines.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lp)
            .map_err(|e| ShipError::io(&lp, "open", e))?;
        // SAFETY: flock on an owned, open descriptor; released on close.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(ShipError::io(&lp, "lock", std::io::Error::last_os_error()));
        }
        let mut reg = Self::load(state)?;
        let out = f(&mut reg)?;
        let body = crate::error::to_json_pretty(&reg, "machine registry")?;
        replace_private(&Self::path(state), &body)?;
        Ok(out)
    }

    /// A new one-time token for `name` (a new machine, or a new identity
    /// for an enrolled one: its old secret works until the token is used).
    pub fn add(&mut self, name: &str, now_ns: u64) -> Result<String> {
        check_name(name)?;
        let token = hex::encode(crate::repo::crypto::random::<32>());
        self.tokens.retain(|t| t.expires_ns > now_ns && t.machine != name);
        self.tokens.push(Token {
            machine: name.to_string(),
            sha256: sha_hex(&token),
            expires_ns: now_ns + TOKEN_LIFETIME_NS,
        });
        self.machines.entry(name.to_string()).or_insert_with(|| Machine {
            created_ns: now_ns,
            ..Default::default()
        });
        Ok(format!("{name}.{token}"))
    }

    /// Uses a token: the machine gets a new secret (the old one stops
    /// working). Returns the machine's name and its secret.
    pub fn redeem(&mut self, token: &str, now_ns: u64) -> Result<(String, String)> {
        let refuse = || {
            ShipError::Usage("enrollment token unknown, used or expired; run `hrl-shipper machines add NAME` on the gateway for a new one".into())
        };
        let (name, raw) = token.trim().split_once('.').ok_or_else(refuse)?;
        let h = sha_hex(raw);
        let i = self
            .tokens
            .iter()
            .position(|t| t.machine == name && same(&t.sha256, &h) && t.expires_ns > now_ns && !self.superseded(t))
            .ok_or_else(refuse)?;
        self.tokens.remove(i);
        let m = self.machines.get_mut(name).ok_or_else(refuse)?;
        let secret = hex::encode(crate::repo::crypto::random::<32>());
        m.secret_sha256 = Some(sha_hex(&secret));
        m.enrolled_ns = Some(now_ns);
        m.revoked_ns = None;
        Ok((name.to_string(), secret))
    }

    /// Checks a machine's secret.
    pub fn authenticate(&self, name: &str, secret: &str) -> std::result::Result<(), Refusal> {
        let m = self.machines.get(name).ok_or(Refusal::Unknown)?;
        if m.revoked() {
            return Err(Refusal::Revoked);
        }
        let want = m.secret_sha256.as_deref().ok_or(Refusal::NotEnrolled)?;
        if !same(want, &sha_hex(secret)) {
            return Err(Refusal::BadSecret);
        }
        Ok(())
    }

    pub fn revoke(&mut self, name: &str, now_ns: u64) -> Result<()> {
        let m = self
            .machines
            .get_mut(name)
            .ok_or_else(|| ShipError::Usage(format!("no machine {name:?}")))?;
        m.revoked_ns = Some(now_ns);
        m.secret_sha256 = None;
        self.tokens.retain(|t| t.machine != name);
        Ok(())
    }

    /// A token no longer usable: its machine enrolled or was revoked
    /// after it was issued (a token used on one process server is known
    /// used on the others by this, without a list of used tokens).
    fn superseded(&self, t: &Token) -> bool {
        let issued = t.expires_ns.saturating_sub(TOKEN_LIFETIME_NS);
        self.machines
            .get(&t.machine)
            .is_some_and(|m| m.enrolled_ns.is_some_and(|e| e >= issued) || m.revoked_ns.is_some_and(|r| r >= issued))
    }

    /// Merges another process server's copy (the repository's): the
    /// newer enrollment's secret, the newer of enrollment and revocation
    /// wins, disks and tokens are the union, a token superseded on either
    /// side is dropped. Merging is order-free, so copies converge. A disk
    /// claimed by two machines stays with `other`'s (it was shared first).
    /// Returns the disks taken from a machine of this copy.
    pub fn merge(&mut self, other: &Registry, now_ns: u64) -> Vec<(String, Uuid)> {
        let mut moved = Vec::new();
        for (name, o) in &other.machines {
            let m = self.machines.entry(name.clone()).or_insert_with(|| Machine {
                created_ns: o.created_ns,
                ..Default::default()
            });
            m.created_ns = m.created_ns.min(o.created_ns);
            if o.enrolled_ns > m.enrolled_ns {
                m.enrolled_ns = o.enrolled_ns;
                m.secret_sha256 = o.secret_sha256.clone();
            }
            m.revoked_ns = m.revoked_ns.max(o.revoked_ns);
            if m.revoked() {
                m.secret_sha256 = None;
            }
            m.last_contact_ns = m.last_contact_ns.max(o.last_contact_ns);
        }
        for (name, o) in &other.machines {
            for d in &o.disks {
                for (n, m) in self.machines.iter_mut().filter(|(n, _)| *n != name) {
                    if let Some(i) = m.disks.iter().position(|x| x == d) {
                        m.disks.remove(i);
                        moved.push((n.clone(), *d));
                    }
                }
                if let Some(m) = self.machines.get_mut(name) {
                    if !m.disks.contains(d) {
                        m.disks.push(*d);
                    }
                }
            }
        }
        for t in &other.tokens {
            if !self.tokens.contains(t) {
                self.tokens.push(t.clone());
            }
        }
        let tokens = std::mem::take(&mut self.tokens);
        self.tokens = tokens
            .into_iter()
            .filter(|t| t.expires_ns > now_ns && !self.superseded(t))
            .collect();
        self.tokens
            .sort_by(|a, b| (a.expires_ns, &a.sha256).cmp(&(b.expires_ns, &b.sha256)));
        moved
    }

    /// The copy shared through the repository: without last contacts
    /// (each process server keeps its own; sharing them would rewrite the
    /// shared copy every few seconds).
    pub fn shared(&self) -> Registry {
        let mut r = self.clone();
        for m in r.machines.values_mut() {
            m.last_contact_ns = None;
        }
        r
    }

    /// The machine that sent `disk`, if any.
    pub fn owner(&self, disk: &Uuid) -> Option<&str> {
        self.machines
            .iter()
            .find(|(_, m)| m.disks.contains(disk))
            .map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_one_time_secrets_authenticate_and_revocation_ends_them() {
        let d = tempfile::tempdir().unwrap();
        let t = Registry::update(d.path(), |r| r.add("web01", 1)).unwrap();
        assert!(Registry::update(d.path(), |r| r.add("bad/name", 1)).is_err());
        let (name, secret) = Registry::update(d.path(), |r| r.redeem(&t, 2)).unwrap();
        assert_eq!(name, "web01");
        assert!(
            Registry::update(d.path(), |r| r.redeem(&t, 3)).is_err(),
            "a token works once"
        );
        let r = Registry::load(d.path()).unwrap();
        assert_eq!(r.authenticate("web01", &secret), Ok(()));
        assert_eq!(r.authenticate("web01", "x"), Err(Refusal::BadSecret));
        assert_eq!(r.authenticate("web02", &secret), Err(Refusal::Unknown));
        let text = std::fs::read_to_string(Registry::path(d.path())).unwrap();
        assert!(
            !text.contains(&secret) && !text.contains(t.split_once('.').unwrap().1),
            "only hashes are stored"
        );
        Registry::update(d.path(), |r| r.revoke("web01", 4)).unwrap();
        assert_eq!(
            Registry::load(d.path()).unwrap().authenticate("web01", &secret),
            Err(Refusal::Revoked)
        );
        let late = Registry::update(d.path(), |r| r.add("web02", 10)).unwrap();
        assert!(
            Registry::update(d.path(), |r| r.redeem(&late, 10 + TOKEN_LIFETIME_NS)).is_err(),
            "expired"
        );
    }
}
