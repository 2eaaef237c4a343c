//! hrl-agent: tracks which blocks of Linux disks change and writes them to
//! `.hrl` logs in a spool directory. It never talks to blob storage.
//!
//! The folders, leaves first (no module imports one that imports it back;
//! `scripts/lint.sh` checks): `tracking/` (which blocks change), `capture/`
//! (reading them), `continuity/` (the clean-stop fingerprint), `point/`
//! (the point protocol, freeze, hooks), `disk/`
//! (a disk's worker and modes), `group/` (consistency groups over the
//! network), `daemon/` (threads, sockets, metrics). See docs/architecture.md.

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

pub mod capture;
pub mod config;
pub mod continuity;
pub mod daemon;
pub mod disk;
pub mod error;
pub mod group;
pub mod point;
pub mod tracking;

pub use error::{AgentError, ErrorKind, Result};
