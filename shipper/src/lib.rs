//! hrl-shipper: ships `.hrl` spools into an encrypted, deduplicated
//! repository on blob storage, and restores from it. It never touches a
//! tracked device except to restore or fail back onto it.
//!
//! The folders, leaves first (no module imports one that imports it back;
//! `scripts/lint.sh` checks): `azure/` (Blob service REST: containers,
//! page blobs), `repo/` (the repository: formats, keys,
//! objects), `ship/` (spool to repository), `restore/` (repository to a
//! target), `prune/` (retention), `commands/` (one file per verb). See
//! docs/architecture.md.

/// Aborts the process at this step when the failpoint `name` is set to
/// `return` (feature `failpoints`, `FAILPOINTS="name=return"`): the crash
/// matrix tests crash here exactly as a kill -9 would. Compiled out
/// without the feature.
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            if fail::eval($name, |_| ()).is_some() {
                eprintln!(concat!("failpoint ", $name, ": aborting"));
                std::process::abort();
            }
        }
    };
}

pub mod azure;
pub mod commands;
pub mod config;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod index;
pub mod plan;
pub mod private_file;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod ship;
pub mod standby;

pub use error::{ErrorKind, Result, ShipError};
