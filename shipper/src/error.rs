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
    #[error("{0}")]
    Usage(String),
    #[error("disk {disk} has failed over at point {point} (recorded {when}); this shipper refuses to publish its points. {hint}")]
    Fenced {
        disk: String,
        point: u64,
        when: String,
        hint: String,
    },
}

impl ShipError {
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        ShipError::Io {
            path: path.into(),
            op,
            source,
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
