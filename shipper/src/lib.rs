//! hrl-shipper: ships `.hrl` spools into an encrypted, deduplicated
//! repository on blob storage, and restores from it. It never touches a
//! tracked device except to restore or fail back onto it.

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
pub mod config;
pub mod crypto;
pub mod error;
pub mod failover;
#[doc(hidden)]
pub mod fault_proxy;
pub mod group;
pub mod journal;
pub mod manifest;
pub mod pack;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod ship;
pub mod status;
pub mod write;

pub use error::{Result, ShipError};
