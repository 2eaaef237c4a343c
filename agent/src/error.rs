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
    /// Bad arguments or configuration: the operator must change something.
    #[error("{0}")]
    Config(String),
    /// A peer (group member, coordinator) or the network failed or
    /// misbehaved; trying again may work.
    #[error("{0}")]
    Peer(String),
    /// A bug or a broken invariant (a worker panicked, state that cannot
    /// be encoded): report it.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What kind of failure an error is; the kind decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Exit 2: usage or configuration.
    Usage,
    /// Exit 1: a runtime failure, damaged data, a failed check.
    Failed,
    /// Exit 3: a peer or the network.
    Peer,
    /// Exit 4: internal.
    Internal,
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

    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::NotBlockDevice { .. }
            | AgentError::SpoolOnTrackedDevice { .. }
            | AgentError::AlreadyTracked { .. }
            | AgentError::Permission { .. }
            | AgentError::Config(_) => ErrorKind::Usage,
            AgentError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => ErrorKind::Usage,
            AgentError::Peer(_) => ErrorKind::Peer,
            AgentError::Internal(_) => ErrorKind::Internal,
            _ => ErrorKind::Failed,
        }
    }

    /// The process exit code of this error (docs/operations.md).
    pub fn exit_code(&self) -> u8 {
        match self.kind() {
            ErrorKind::Failed => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Peer => 3,
            ErrorKind::Internal => 4,
        }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
