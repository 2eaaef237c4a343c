//! Agent configuration: a TOML file (`hrl-agent run --config`) or the same
//! options as flags for a single disk. Every option is documented in
//! docs/operations.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hrl_common::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};

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

/// The agent-wide options as a config file or `hrl-agent run` flags give
/// them: each one given overrides the default (flags override the file).
/// Sizes and durations use the grammar of `hrl_common::units`.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Spool size never exceeded with captured data: above 90% the agent
    /// logs extents only (bitmap mode), below 70% it catches up [default: 4GiB].
    #[arg(long)]
    pub spool_limit: Option<ByteSize>,
    /// Interval of periodic points; 0 disables them [default: 10s].
    #[arg(long)]
    pub point_interval: Option<HumanDuration>,
    /// Longest a filesystem may stay frozen; the watchdog thaws then and
    /// the point is aborted [default: 2s].
    #[arg(long)]
    pub max_freeze: Option<HumanDuration>,
    /// Time limit of a pre-freeze or post-thaw hook [default: 60s].
    #[arg(long)]
    pub hook_timeout: Option<HumanDuration>,
    /// A chunk written more recently than this is not pre-copied yet [default: 500ms].
    #[arg(long)]
    pub hot_delay: Option<HumanDuration>,
    /// Capture read limit in bytes per second, e.g. 50MiB; 0: unlimited [default: 0].
    #[arg(long)]
    pub capture_rate: Option<ByteSize>,
    /// Chunk size: a power of two from 4KiB to 16MiB; fixed per disk once
    /// tracked [default: 64KiB].
    #[arg(long)]
    pub chunk_size: Option<ByteSize>,
    /// Trace ring buffer per CPU [default: 4MiB].
    #[arg(long)]
    pub trace_buffer: Option<ByteSize>,
    /// Spool segment size before rotation [default: 64MiB].
    #[arg(long)]
    pub segment_size: Option<ByteSize>,
    /// Periodic points are app points (the hooks run) rather than crash points.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub app_points: Option<bool>,
    /// Make the periodic point an app point at most this often (crash
    /// points in between); 0: only as app_points says [default: 0].
    #[arg(long)]
    pub app_point_interval: Option<HumanDuration>,
    /// Prometheus endpoint address; "" for none [default: 127.0.0.1:9561].
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// After a clean stop, continue without a resync when the device's
    /// fingerprint still matches (ext4) [default: true].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub resume_after_clean_stop: Option<bool>,
    /// Warn (log, status, metrics) when the newest point is older than
    /// this; 0: never [default: 5m].
    #[arg(long)]
    pub rpo_warn: Option<HumanDuration>,
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
    /// A periodic point is an app point when this long has passed since
    /// the last app point (zero: never by time).
    pub app_point_interval: Duration,
    /// Address of the Prometheus endpoint; empty: none.
    pub metrics_listen: String,
    /// Trust a clean stop's fingerprint instead of resyncing.
    pub resume_after_clean_stop: bool,
    /// Warn (logs, status, metrics) when the newest point is older than
    /// this; zero: never.
    pub rpo_warn: Duration,
    /// The file this came from (SIGHUP reloads it).
    pub config_path: Option<PathBuf>,
    /// Membership of a consistency group.
    pub group: Option<GroupConfig>,
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
            app_point_interval: Duration::ZERO,
            metrics_listen: "127.0.0.1:9561".into(),
            resume_after_clean_stop: true,
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

    /// Parses TOML text: `spool`, the [`Settings`], `[group]` and `[[disk]]`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut t: toml::Table = toml::from_str(text).map_err(|e| AgentError::Config(e.to_string()))?;
        let spool: PathBuf = take(&mut t, "spool")?.ok_or_else(|| AgentError::Config("`spool` is required".into()))?;
        let group: Option<GroupConfig> = take(&mut t, "group")?;
        let disks: Option<Vec<DiskConfig>> = take(&mut t, "disk")?;
        let settings: Settings = t.try_into().map_err(|e| AgentError::Config(e.to_string()))?;
        let mut c = AgentConfig::new(spool);
        c.apply(&settings)?;
        c.group = group;
        c.disks = disks.unwrap_or_default();
        c.validate()?;
        Ok(c)
    }

    /// Overrides every option `s` sets.
    pub fn apply(&mut self, s: &Settings) -> Result<()> {
        let dur = |v: Option<HumanDuration>, d: &mut Duration| {
            if let Some(v) = v {
                *d = v.into();
            }
        };
        dur(s.point_interval, &mut self.point_interval);
        dur(s.max_freeze, &mut self.max_freeze);
        dur(s.hook_timeout, &mut self.hook_timeout);
        dur(s.hot_delay, &mut self.hot_delay);
        dur(s.rpo_warn, &mut self.rpo_warn);
        dur(s.app_point_interval, &mut self.app_point_interval);
        let size = |v: Option<ByteSize>, d: &mut u64| {
            if let Some(v) = v {
                *d = v.bytes();
            }
        };
        size(s.spool_limit, &mut self.spool_limit);
        size(s.capture_rate, &mut self.capture_rate);
        size(s.segment_size, &mut self.segment_size);
        if let Some(v) = s.chunk_size {
            self.chunk_size = v.to_u32().map_err(|e| AgentError::Config(format!("chunk_size: {e}")))?;
        }
        if let Some(v) = s.trace_buffer {
            self.trace_buffer_kb = u32::try_from((v.bytes() / 1024).max(1))
                .map_err(|_| AgentError::Config(format!("trace_buffer {v} is too large")))?;
        }
        if let Some(v) = s.app_points {
            self.app_points = v;
        }
        if let Some(v) = s.resume_after_clean_stop {
            self.resume_after_clean_stop = v;
        }
        if let Some(v) = &s.metrics_listen {
            self.metrics_listen = v.clone();
        }
        Ok(())
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

/// A member of a group, as configured in the agent.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    /// Address the member endpoint listens on (e.g. 10.0.0.5:7701).
    pub listen: String,
    /// The shared group key: 64 hex characters, mode 0600.
    pub key_file: std::path::PathBuf,
    /// Which of this agent's disks are members (default: all).
    #[serde(default)]
    pub disks: Vec<String>,
}

/// Removes `key` from a parsed file and deserializes it.
fn take<T: serde::de::DeserializeOwned>(t: &mut toml::Table, key: &str) -> Result<Option<T>> {
    t.remove(key)
        .map(|v| v.try_into().map_err(|e| AgentError::Config(format!("`{key}`: {e}"))))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

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
