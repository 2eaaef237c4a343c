//! The forwarder (`hrl-shipper run --gateway`, `hrl-shipper enroll`): on a
//! protected machine, sends the spool to a process server instead of
//! shipping it, so the machine holds neither the storage credentials nor
//! the repository key.
//!
//! Owns: the machine's identity (`identity`), the pinned HTTPS client
//! (`client`), the follow-and-send loop (`run`), the gateway's policy
//! handed to the local agent (`policy`), its status file and metrics
//! (`status`) and restore and failback through the gateway (`restore`,
//! `failback`: the gateway decrypts; only this machine's disks). It reads
//! the spool and deletes a segment only after the gateway holds it whole
//! and durable; it never talks to blob storage and touches no device but
//! the target of a restore or failback.

pub mod client;
pub mod failback;
pub mod identity;
pub mod policy;
pub mod restore;
pub mod run;
pub mod status;

pub use identity::{enroll, Identity};
pub use run::{forward, ForwardOptions, ForwardReport};
