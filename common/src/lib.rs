//! Vocabulary every hrl crate shares: byte sizes and durations as people
//! type them in flags and config files. One grammar for both binaries, so
//! `64M` means the same in `agent.toml`, `shipper.toml` and on a command
//! line. It depends on nothing of hrl's.

pub mod units;

pub use units::{ByteSize, HumanDuration, UnitError};
