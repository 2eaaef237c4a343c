//! The shipper's error type: every variant names the object, chunk, file or
//! setting concerned, so an operator can act on the message alone.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] hrl_format::FormatError),
    #[error("store {url}: {op} {key}: {source}")]
    Store {
        url: String,
        op: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("wrong key: key file {key_file} opens none of the {keys} key(s) of repository {url}")]
    WrongKey {
        key_file: PathBuf,
        url: String,
        keys: usize,
    },
    #[error("key file {path}: {why}")]
    KeyFile { path: PathBuf, why: String },
    #[error("{url}: no hrl repository here (no config object); run `hrl-shipper init` first")]
    NoRepository { url: String },
    #[error("{url}: a repository already exists here; refusing to overwrite it")]
    RepositoryExists { url: String },
    #[error("{url}: repository version {version} is newer than this hrl-shipper (reads version 1); upgrade hrl")]
    NewerRepository { url: String, version: u32 },
    /// A stored object failed authentication, hashing or decoding.
    #[error("{what}: {why}")]
    Corrupt { what: String, why: String },
    #[error("disk {disk}: {why}")]
    Point { disk: String, why: String },
    /// A process server could not be reached or answered nonsense (trying
    /// again may work).
    #[error("gateway {url}: {why}")]
    Gateway { url: String, why: String },
    /// A Blob service request (page blobs, snapshots, copies) failed or
    /// was answered with an error.
    #[error("{what}: {why}")]
    Blob { what: String, why: String },
    /// Bad arguments or configuration: the operator must change something.
    #[error("{0}")]
    Usage(String),
    /// A bug or a broken invariant (a task panicked, a value that cannot
    /// be encoded): report it.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("disk {disk} has failed over at point {point} (recorded {when}); this shipper refuses to publish its points. {hint}")]
    Fenced {
        disk: String,
        point: u64,
        when: String,
        hint: String,
    },
    /// Another shipper took the disk's lease over: this one stops
    /// publishing it (promise: one shipper per disk).
    #[error("disk {disk}: lease generation {generation} lost ({why}); this shipper publishes no more of its points")]
    LeaseLost { disk: String, generation: u64, why: String },
    /// The local chunk index file failed (it is rebuilt from the
    /// repository when it cannot be opened).
    #[error("chunk index {path}: {why}")]
    Index { path: PathBuf, why: String },
    /// Another shipper holds the disk's lease.
    #[error("disk {disk} is being shipped by {holder} (lease generation {generation}); one shipper per disk: stop that one, or wait until its lease expires (docs/operations.md)")]
    Leased {
        disk: String,
        holder: String,
        generation: u64,
    },
}

/// What kind of failure an error is; the kind decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Exit 2: usage or configuration.
    Usage,
    /// Exit 1: damaged data, a failed restore or check, a fenced disk.
    Failed,
    /// Exit 3: the store or the network failed (trying again may work).
    Endpoint,
    /// Exit 4: internal.
    Internal,
}

impl ShipError {
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        ShipError::Io {
            path: path.into(),
            op,
            source,
        }
    }
    pub fn kind(&self) -> ErrorKind {
        match self {
            ShipError::Usage(_)
            | ShipError::NoRepository { .. }
            | ShipError::RepositoryExists { .. }
            | ShipError::WrongKey { .. }
            | ShipError::KeyFile { .. }
            | ShipError::NewerRepository { .. } => ErrorKind::Usage,
            ShipError::Store { .. } | ShipError::Gateway { .. } | ShipError::Blob { .. } => ErrorKind::Endpoint,
            ShipError::Internal(_) => ErrorKind::Internal,
            ShipError::Io { .. }
            | ShipError::Format(_)
            | ShipError::Corrupt { .. }
            | ShipError::Point { .. }
            | ShipError::Fenced { .. }
            | ShipError::LeaseLost { .. }
            | ShipError::Index { .. }
            | ShipError::Leased { .. } => ErrorKind::Failed,
        }
    }

    /// The process exit code of this error (docs/operations.md).
    pub fn exit_code(&self) -> u8 {
        match self.kind() {
            ErrorKind::Failed => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Endpoint => 3,
            ErrorKind::Internal => 4,
        }
    }

    pub fn corrupt(what: impl Into<String>, why: impl Into<String>) -> Self {
        ShipError::Corrupt {
            what: what.into(),
            why: why.into(),
        }
    }
}

pub type Result<T, E = ShipError> = std::result::Result<T, E>;

/// `v` as JSON; an encoding failure (never expected) is an internal error
/// naming `what`, never an empty body written in its place.
pub fn to_json<T: serde::Serialize>(v: &T, what: &str) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| ShipError::Internal(format!("encode {what}: {e}")))
}

/// [`to_json`], pretty-printed (files people read).
pub fn to_json_pretty<T: serde::Serialize>(v: &T, what: &str) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| ShipError::Internal(format!("encode {what}: {e}")))
}
