//! `/etc/hrl/gateway.toml`: what `hrl-shipper serve --config` reads. Flags
//! override the file.
//!
//! ```toml
//! listen = "0.0.0.0:9443"
//! repo = "az://backups/hrl"             # or file:///srv/hrl
//! key_file = "/etc/hrl/repo.key"
//! state_dir = "/var/lib/hrl-gateway"    # certificate, key, machines.json
//! cache_dir = "/var/cache/hrl-gateway"  # default: STATE_DIR/cache
//! machine_quota = "20GiB"               # cache per machine; 0: none
//! tls_cert = "/etc/hrl/gateway.crt"     # default: STATE_DIR/gateway.crt,
//! tls_key = "/etc/hrl/gateway.key"      # created self-signed when missing
//! rpo_warn = "5m"                       # fleet alert: newest published point older
//! silent_after = "2m"                   # fleet alert: no contact from a machine
//! stuck_after = "1h"                    # fleet alert: a disk in bitmap or resync
//! webhook = "https://alerts.example/hrl" # optional: alerts POSTed as JSON
//! policy_file = "/etc/hrl/policies.toml" # replication policies (gateway/policy.rs)
//! lease_period = "30s"                  # a disk's lease is taken over after this unrenewed
//! ```

use std::path::{Path, PathBuf};

use hrl_common::{ByteSize, HumanDuration};
use serde::Deserialize;

use super::tls::TlsFiles;
use crate::error::{Result, ShipError};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    pub listen: Option<String>,
    pub repo: Option<String>,
    pub key_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub machine_quota: Option<ByteSize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub rpo_warn: Option<HumanDuration>,
    pub silent_after: Option<HumanDuration>,
    pub stuck_after: Option<HumanDuration>,
    pub webhook: Option<String>,
    pub policy_file: Option<PathBuf>,
    pub lease_period: Option<HumanDuration>,
}

/// Thresholds of the fleet view's alerts, and where alerts are sent.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub rpo_warn: std::time::Duration,
    pub silent_after: std::time::Duration,
    pub stuck_after: std::time::Duration,
    pub webhook: Option<String>,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            rpo_warn: std::time::Duration::from_secs(300),
            silent_after: std::time::Duration::from_secs(120),
            stuck_after: std::time::Duration::from_secs(3600),
            webhook: None,
        }
    }
}

/// Everything `serve` needs, flags and file merged.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: String,
    pub repo: String,
    pub key_file: PathBuf,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub machine_quota: u64,
    pub tls: TlsFiles,
    pub fleet: FleetSettings,
    /// Replication policies, watched (None: agents keep their own config).
    pub policy_file: Option<PathBuf>,
    /// Disk leases: another process server takes a disk over after this
    /// long without a renewal.
    pub lease_period: std::time::Duration,
}

/// The default state directory.
pub const STATE_DIR: &str = "/var/lib/hrl-gateway";

impl GatewayFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ShipError::io(path, "read config", e))?;
        toml::from_str(&text).map_err(|e| ShipError::Usage(format!("{}: {e}", path.display())))
    }

    /// The state directory alone (what `machines` and `--fingerprint` need).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| PathBuf::from(STATE_DIR))
    }

    /// The TLS files: configured, or the pair in the state directory.
    pub fn tls(&self) -> TlsFiles {
        let d = TlsFiles::in_dir(&self.state_dir());
        TlsFiles {
            cert: self.tls_cert.clone().unwrap_or(d.cert),
            key: self.tls_key.clone().unwrap_or(d.key),
        }
    }

    /// The full configuration; names what is missing.
    pub fn resolve(self) -> Result<GatewayConfig> {
        let missing = |k: &str| ShipError::Usage(format!("serve needs {k} (a flag or in gateway.toml)"));
        let state_dir = self.state_dir();
        let tls = self.tls();
        let d = FleetSettings::default();
        let fleet = FleetSettings {
            rpo_warn: self.rpo_warn.map_or(d.rpo_warn, Into::into),
            silent_after: self.silent_after.map_or(d.silent_after, Into::into),
            stuck_after: self.stuck_after.map_or(d.stuck_after, Into::into),
            webhook: self.webhook,
        };
        let policy_file = self.policy_file;
        let lease_period = crate::repo::lease::period(self.lease_period.map(Into::into))?;
        Ok(GatewayConfig {
            listen: self.listen.unwrap_or_else(|| "0.0.0.0:9443".into()),
            repo: self.repo.ok_or_else(|| missing("repo"))?,
            key_file: self.key_file.ok_or_else(|| missing("key_file"))?,
            cache_dir: self.cache_dir.unwrap_or_else(|| state_dir.join("cache")),
            state_dir,
            machine_quota: self.machine_quota.map_or(0, |q| q.bytes()),
            tls,
            fleet,
            policy_file,
            lease_period,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let f: GatewayFile =
            toml::from_str("repo = \"file:///r\"\nkey_file = \"/k\"\nmachine_quota = \"1GiB\"\n").unwrap();
        let c = f.resolve().unwrap();
        assert_eq!(c.listen, "0.0.0.0:9443");
        assert_eq!(c.cache_dir, PathBuf::from(STATE_DIR).join("cache"));
        assert_eq!(c.machine_quota, 1 << 30);
        assert_eq!(c.tls.cert, PathBuf::from(STATE_DIR).join("gateway.crt"));
        assert!(toml::from_str::<GatewayFile>("listn = \"x\"\n").is_err());
        let e = GatewayFile::default().resolve().unwrap_err().to_string();
        assert!(e.contains("repo"), "{e}");
    }
}
