//! hrl-agent: tracks which blocks of Linux disks change and writes them to
//! `.hrl` logs in a spool directory. It never talks to blob storage.

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
pub mod control;
pub mod device;
pub mod dirty;
pub mod disk;
pub mod error;
pub mod event;
pub mod freeze;
pub mod group;
pub mod guard;
pub mod hashes;
pub mod hooks;
pub mod lock;
pub mod metrics;
pub mod point;
pub mod progress;
pub mod ringbuf;
pub mod run;
pub mod state;
pub mod tracefs;
pub mod track;
pub mod tracker;

pub use error::{AgentError, Result};
