//! `/etc/hrl/shipper.toml`: what `hrl-shipper run --config` reads. Flags
//! override the file; SIGHUP re-reads `upload_rate` and `rpo_warn`.
//!
//! ```toml
//! repo = "az://backups/hrl"          # or file:///srv/hrl
//! key_file = "/etc/hrl/repo.key"
//! spool = "/var/spool/hrl"
//! metrics_listen = "127.0.0.1:9562"  # "" for none
//! rpo_warn = "5m"                     # 0: never
//! upload_rate = "0"                   # bytes/s, e.g. "50MiB"; 0: unlimited
//! lease_period = "30s"                # a disk's lease is taken over after this unrenewed
//! index_file = "/var/lib/hrl/index.redb"  # chunk index; default SPOOL/hrl-shipper.index.redb
//! ```
//!
//! Sizes and durations use the grammar of `hrl_common::units` (MB = MiB).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hrl_common::{ByteSize, HumanDuration};
use serde::Deserialize;

use crate::error::{Result, ShipError};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    repo: Option<String>,
    key_file: Option<PathBuf>,
    spool: Option<PathBuf>,
    metrics_listen: Option<String>,
    rpo_warn: Option<HumanDuration>,
    upload_rate: Option<ByteSize>,
    lease_period: Option<HumanDuration>,
    index_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ShipperConfig {
    pub repo: Option<String>,
    pub key_file: Option<PathBuf>,
    pub spool: Option<PathBuf>,
    pub metrics_listen: String,
    pub rpo_warn: Duration,
    /// Bytes per second; 0: unlimited.
    pub upload_rate: u64,
    /// Disk leases (`repo::lease`): renewed every third of it.
    pub lease_period: Duration,
    /// The chunk index file (`crate::index`); `None`: in the spool.
    pub index_file: Option<PathBuf>,
}

impl Default for ShipperConfig {
    fn default() -> Self {
        ShipperConfig {
            repo: None,
            key_file: None,
            spool: None,
            metrics_listen: "127.0.0.1:9562".into(),
            rpo_warn: Duration::from_secs(300),
            upload_rate: 0,
            lease_period: crate::repo::lease::LeaseOptions::DEFAULT_PERIOD,
            index_file: None,
        }
    }
}

impl ShipperConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ShipError::io(path, "read config", e))?;
        Self::parse(&text).map_err(|e| ShipError::Usage(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let f: FileConfig = toml::from_str(text).map_err(|e| ShipError::Usage(e.to_string()))?;
        let mut c = ShipperConfig {
            repo: f.repo,
            key_file: f.key_file,
            spool: f.spool,
            index_file: f.index_file,
            ..Default::default()
        };
        if let Some(v) = f.metrics_listen {
            c.metrics_listen = v;
        }
        if let Some(v) = f.rpo_warn {
            c.rpo_warn = v.into();
        }
        if let Some(v) = f.upload_rate {
            c.upload_rate = v.bytes();
        }
        if f.lease_period.is_some() {
            c.lease_period = crate::repo::lease::period(f.lease_period.map(Into::into))?;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_file_and_refuses_unknown_keys() {
        let c = ShipperConfig::parse(
            "repo = \"file:///srv/hrl\"\nkey_file = \"/etc/hrl/repo.key\"\nspool = \"/var/spool/hrl\"\nrpo_warn = \"2m\"\nupload_rate = \"50MiB\"\n",
        )
        .unwrap();
        assert_eq!(c.repo.as_deref(), Some("file:///srv/hrl"));
        assert_eq!(c.rpo_warn, Duration::from_secs(120));
        assert_eq!(c.upload_rate, 50 << 20);
        assert_eq!(c.metrics_listen, "127.0.0.1:9562");
        let e = ShipperConfig::parse("repos = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("repos"), "{e}");
        // One grammar with the agent: MB is MiB.
        assert_eq!(
            ShipperConfig::parse("upload_rate = \"20MB\"\n").unwrap().upload_rate,
            20 << 20
        );
        assert!(ShipperConfig::parse("upload_rate = \"5 parsecs\"\n").is_err());
        // Found by the shipper_config fuzz target: an overflow, now an error.
        let e = ShipperConfig::parse("rpo_warn = \" 00006237970878134162066h\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("too long"), "{e}");
        assert!(ShipperConfig::parse("upload_rate = \"99999999999999999GiB\"\n").is_err());
    }
}
