//! The agent's error type. Messages say what is wrong, where, and what to
//! do: an operator reads them when the agent refuses to start.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] hrl_format::FormatError),
    #[error("{path}: not a block device")]
    NotBlockDevice { path: PathBuf },
    #[error("spool directory {spool} is on the tracked device {device}: captured data would dirty the device it describes; put the spool on another disk")]
    SpoolOnTrackedDevice { spool: PathBuf, device: PathBuf },
    #[error("{device} is already tracked by another hrl-agent (lock {lock} held{holder}); stop it first")]
    AlreadyTracked {
        device: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("{what}: permission denied; hrl-agent needs root (CAP_SYS_ADMIN) to use tracefs and freeze filesystems")]
    Permission { what: String },
    #[error("tracefs: {0}")]
    Tracefs(String),
    #[error("trace buffer: {0}")]
    RingBuffer(String),
    #[error("{device}: its size changed from {old} to {new} bytes while tracked (resized, or removed); this disk stopped so nothing is captured against a stale size: restart the agent to resync it at the new size")]
    DeviceChanged { device: PathBuf, old: u64, new: u64 },
    #[error("{0}")]
    Config(String),
}

impl AgentError {
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            return AgentError::Permission {
                what: format!("{} ({op})", path.display()),
            };
        }
        AgentError::Io { path, op, source }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
