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
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Result, ShipError};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    repo: Option<String>,
    key_file: Option<PathBuf>,
    spool: Option<PathBuf>,
    metrics_listen: Option<String>,
    rpo_warn: Option<String>,
    upload_rate: Option<String>,
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
            ..Default::default()
        };
        if let Some(v) = f.metrics_listen {
            c.metrics_listen = v;
        }
        if let Some(v) = f.rpo_warn {
            c.rpo_warn = parse_duration(&v)?;
        }
        if let Some(v) = f.upload_rate {
            c.upload_rate = parse_rate(&v)?;
        }
        Ok(c)
    }
}

/// `30s`, `15m`, `24h`, `7d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| ShipError::Usage(format!("{s:?}: expected a duration like 30s, 15m, 24h or 7d")))?;
    let mul: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(ShipError::Usage(format!(
                "{s:?}: unknown duration unit {unit:?} (s, m, h, d)"
            )))
        }
    };
    n.checked_mul(mul)
        .map(Duration::from_secs)
        .ok_or_else(|| ShipError::Usage(format!("{s:?}: duration too large")))
}

/// A rate in bytes per second: `0`, `500KiB`, `50MiB`, `1GiB`, or `20MB`.
pub fn parse_rate(s: &str) -> Result<u64> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| ShipError::Usage(format!("{s:?}: expected a rate like 50MiB (bytes per second)")))?;
    let mul: u64 = match unit.trim_end_matches("/s") {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(ShipError::Usage(format!(
                "{s:?}: unknown unit {u:?} (KiB, MiB, GiB, KB, MB, GB)"
            )))
        }
    };
    n.checked_mul(mul)
        .ok_or_else(|| ShipError::Usage(format!("{s:?}: rate too large")))
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
        assert!(parse_rate("5 parsecs").is_err());
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604800));
        // Found by the shipper_config fuzz target: an overflow, now an error.
        assert!(parse_duration(" 00006237970878134162066h").is_err());
        assert!(parse_rate("99999999999999999GiB").is_err());
    }
}
