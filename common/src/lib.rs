//! Vocabulary every hrl crate shares: byte sizes and durations as people
//! type them in flags and config files. One grammar for both binaries, so
//! `64M` means the same in `agent.toml`, `shipper.toml` and on a command
//! line; and the name of the device lock both the agent and the shipper
//! honour. It depends on nothing of hrl's.

pub mod devlock;
pub mod pidlock;
pub mod time;
pub mod units;

pub use units::{ByteSize, HumanDuration, UnitError};
