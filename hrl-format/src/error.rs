//! The single error type of `hrl_format`.
//!
//! Every variant that concerns file content names the file and, where there
//! is one, the byte offset: an operator reading the message must be able to
//! find the damage with `hrl dump` or a hex editor without guessing.

use std::path::PathBuf;

/// Errors of the `.hrl` format crate.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// An I/O error on a named file or directory.
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the `.hrl` magic bytes.
    #[error("{path}: not an .hrl file (bad magic at offset 0)")]
    BadMagic { path: PathBuf },
    /// The file is an `.hrl` file of a major version this build cannot read.
    #[error(
        "{path}: .hrl format version {major}.{minor} is not supported by this build (reads {supported}.x); upgrade hrl"
    )]
    UnsupportedVersion {
        path: PathBuf,
        major: u16,
        minor: u16,
        supported: u16,
    },
    /// Damage at a known place: a bad checksum, an impossible length, bytes
    /// after the seal, a seal whose counts do not match.
    #[error("{path}: damaged at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    /// A spool directory is missing a segment that must exist between two
    /// others (or before the follower's cursor).
    #[error("{dir}: spool file for disk {disk} seq {seq} is missing ({detail})")]
    MissingSegment {
        dir: PathBuf,
        disk: uuid::Uuid,
        seq: u64,
        detail: String,
    },
    /// An argument or state that the caller got wrong (closed writer, record
    /// too large, ...).
    #[error("{0}")]
    Invalid(String),
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        FormatError::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// The byte offset this error points at, when it points at one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            FormatError::Corrupt { offset, .. } => Some(*offset),
            FormatError::BadMagic { .. } => Some(0),
            _ => None,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
