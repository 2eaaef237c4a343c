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

/// This machine's host name, as the kernel has it (`uname -n`); empty when
/// it cannot be read. Disks are named `HOST/NAME` with it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
