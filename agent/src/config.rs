//! Agent configuration: a TOML file (`hrl-agent run --config`) or the same
//! options as flags for a single disk. Every option is documented in
//! docs/operations.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{AgentError, Result};

/// Parses sizes like `65536`, `64K`, `64KiB`, `1M`, `1MiB`, `2GiB`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| AgentError::Config(format!("bad size {s:?}: expected a number with an optional unit")))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(AgentError::Config(format!("bad size {s:?}: unknown unit {u:?}"))),
    };
    n.checked_mul(mult)
        .ok_or_else(|| AgentError::Config(format!("size {s:?} is too large")))
}

/// Parses durations like `500ms`, `10s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| AgentError::Config(format!("bad duration {s:?}: expected e.g. 500ms, 10s, 2m")))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(AgentError::Config(format!("bad duration {s:?}: unknown unit {u:?}"))),
    };
    if !(0.0..=1e9).contains(&secs) {
        return Err(AgentError::Config(format!("bad duration {s:?}")));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        N(u64),
        S(String),
    }
    match Option::<V>::deserialize(d)? {
        None => Ok(None),
        Some(V::N(n)) => Ok(Some(n)),
        Some(V::S(s)) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

fn de_dur<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => parse_duration(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// One tracked disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Name used by `hrl-agent point --disk NAME`, state files and logs.
    pub name: String,
    pub device: PathBuf,
    /// Mount point to freeze; found in /proc/self/mountinfo when omitted.
    /// A disk with no mounted filesystem gets fuzzy points.
    pub mount: Option<PathBuf>,
    /// Run before the freeze of an app point (applications quiesce here).
    pub pre_freeze: Option<String>,
    /// Run inside the freeze, within max_freeze (storage snapshots, tests).
    pub while_frozen: Option<String>,
    /// Run after the thaw of an app point.
    pub post_thaw: Option<String>,
}

/// Raw file form: every agent-wide option optional.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    spool: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_size")]
    spool_limit: Option<u64>,
    #[serde(default, deserialize_with = "de_dur")]
    point_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_dur")]
    max_freeze: Option<Duration>,
    #[serde(default, deserialize_with = "de_dur")]
    hook_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_dur")]
    hot_delay: Option<Duration>,
    #[serde(default, deserialize_with = "de_size")]
    capture_rate: Option<u64>,
    #[serde(default, deserialize_with = "de_size")]
    chunk_size: Option<u64>,
    #[serde(default, deserialize_with = "de_size")]
    trace_buffer: Option<u64>,
    #[serde(default, deserialize_with = "de_size")]
    segment_size: Option<u64>,
    app_points: Option<bool>,
    metrics_listen: Option<String>,
    #[serde(default, deserialize_with = "de_dur")]
    rpo_warn: Option<Duration>,
    group: Option<crate::group::GroupConfig>,
    #[serde(default)]
    disk: Vec<DiskConfig>,
}

/// The agent's whole configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub spool: PathBuf,
    /// Spool size the agent never exceeds with captured data; above 90% it
    /// stops capturing data (bitmap mode), below 70% it catches up.
    pub spool_limit: u64,
    /// Periodic point interval; zero disables periodic points.
    pub point_interval: Duration,
    /// Longest a filesystem may stay frozen; the watchdog thaws then.
    pub max_freeze: Duration,
    /// Timeout of pre-freeze and post-thaw hooks.
    pub hook_timeout: Duration,
    /// A chunk dirtied more recently than this is not pre-copied yet.
    pub hot_delay: Duration,
    /// Capture read limit in bytes per second (0: unlimited).
    pub capture_rate: u64,
    pub chunk_size: u32,
    pub trace_buffer_kb: u32,
    pub segment_size: u64,
    /// Periodic points are app points (hooks run) rather than crash points.
    pub app_points: bool,
    /// Address of the Prometheus endpoint; empty: none.
    pub metrics_listen: String,
    /// Warn (logs, status, metrics) when the newest point is older than
    /// this; zero: never.
    pub rpo_warn: Duration,
    /// The file this came from (SIGHUP reloads it).
    pub config_path: Option<PathBuf>,
    /// Membership of a consistency group.
    pub group: Option<crate::group::GroupConfig>,
    pub disks: Vec<DiskConfig>,
}

impl AgentConfig {
    /// Defaults with no disks.
    pub fn new(spool: impl Into<PathBuf>) -> Self {
        AgentConfig {
            spool: spool.into(),
            spool_limit: 4 << 30,
            point_interval: Duration::from_secs(10),
            max_freeze: Duration::from_secs(2),
            hook_timeout: Duration::from_secs(60),
            hot_delay: Duration::from_millis(500),
            capture_rate: 0,
            chunk_size: 64 << 10,
            trace_buffer_kb: 4096,
            segment_size: 64 << 20,
            app_points: false,
            metrics_listen: "127.0.0.1:9561".into(),
            rpo_warn: Duration::from_secs(300),
            config_path: None,
            group: None,
            disks: Vec::new(),
        }
    }

    /// Reads a TOML config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, "read config", e))?;
        let mut c = Self::parse(&text).map_err(|e| AgentError::Config(format!("{}: {e}", path.display())))?;
        c.config_path = Some(path.into());
        Ok(c)
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self> {
        let f: FileConfig = toml::from_str(text).map_err(|e| AgentError::Config(e.to_string()))?;
        let spool = f
            .spool
            .ok_or_else(|| AgentError::Config("`spool` is required".into()))?;
        let mut c = AgentConfig::new(spool);
        if let Some(v) = f.spool_limit {
            c.spool_limit = v;
        }
        if let Some(v) = f.point_interval {
            c.point_interval = v;
        }
        if let Some(v) = f.max_freeze {
            c.max_freeze = v;
        }
        if let Some(v) = f.hook_timeout {
            c.hook_timeout = v;
        }
        if let Some(v) = f.hot_delay {
            c.hot_delay = v;
        }
        if let Some(v) = f.capture_rate {
            c.capture_rate = v;
        }
        if let Some(v) = f.chunk_size {
            c.chunk_size = u32::try_from(v).map_err(|_| AgentError::Config("chunk_size too large".into()))?;
        }
        if let Some(v) = f.trace_buffer {
            c.trace_buffer_kb = (v / 1024).max(1) as u32;
        }
        if let Some(v) = f.segment_size {
            c.segment_size = v;
        }
        if let Some(v) = f.app_points {
            c.app_points = v;
        }
        if let Some(v) = f.metrics_listen {
            c.metrics_listen = v;
        }
        if let Some(v) = f.rpo_warn {
            c.rpo_warn = v;
        }
        c.group = f.group;
        c.disks = f.disk;
        c.validate()?;
        Ok(c)
    }

    /// Checks values that would otherwise fail later and less clearly.
    pub fn validate(&self) -> Result<()> {
        if !self.chunk_size.is_power_of_two() || !(4096..=(16 << 20)).contains(&self.chunk_size) {
            return Err(AgentError::Config(format!(
                "chunk_size {} must be a power of two between 4 KiB and 16 MiB",
                self.chunk_size
            )));
        }
        if self.disks.is_empty() {
            return Err(AgentError::Config(
                "no disk configured ([[disk]] in the file, or --device)".into(),
            ));
        }
        let mut names: Vec<&str> = self.disks.iter().map(|d| d.name.as_str()).collect();
        names.sort();
        names.dedup();
        if names.len() != self.disks.len() {
            return Err(AgentError::Config("disk names must be unique".into()));
        }
        for d in &self.disks {
            if d.name.is_empty() || !d.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(AgentError::Config(format!(
                    "disk name {:?}: use letters, digits, '-', '_' or '.'",
                    d.name
                )));
            }
        }
        if self.max_freeze < Duration::from_millis(10) {
            return Err(AgentError::Config("max_freeze must be at least 10ms".into()));
        }
        if self.spool_limit < 4 * self.segment_size.min(64 << 20) {
            return Err(AgentError::Config(format!(
                "spool_limit {} is too small for segments of {} bytes",
                self.spool_limit, self.segment_size
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn parses_a_file() {
        let c = AgentConfig::parse(
            r#"
spool = "/var/spool/hrl"
spool_limit = "2GiB"
point_interval = "5s"
max_freeze = "1500ms"
[[disk]]
name = "data"
device = "/dev/vdb"
mount = "/data"
pre_freeze = "echo pre"
[[disk]]
name = "log"
device = "/dev/vdc"
"#,
        )
        .unwrap();
        assert_eq!(c.spool_limit, 2 << 30);
        assert_eq!(c.point_interval, Duration::from_secs(5));
        assert_eq!(c.max_freeze, Duration::from_millis(1500));
        assert_eq!(c.disks.len(), 2);
        assert_eq!(c.disks[0].mount.as_deref(), Some(Path::new("/data")));
        let e = AgentConfig::parse("spool = \"/x\"\nbogus = 1\n[[disk]]\nname=\"a\"\ndevice=\"/dev/x\"").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = AgentConfig::parse("spool = \"/x\"").unwrap_err();
        assert!(e.to_string().contains("no disk"), "{e}");
    }
}
