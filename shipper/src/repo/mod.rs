//! The repository on blob storage: its config and keys, the encryption of
//! everything in it, packs and index objects, point manifests,
//! consistency-group records, failover fences, the prune lock and disk leases. The byte
//! layout is specified in docs/repository-format.md.
//!
//! Owns: every object name and every encoding of the repository, and
//! promise 4 (no silent corruption: AEAD on every object) and promise 7
//! (nothing leaves the machine unencrypted). It never reads a spool or
//! writes a restore target; those are `crate::ship` and `crate::restore`.
//!
//! Leaves first: `crypto` and `pack` (pure formats), `repository` (the
//! store and durable writes), then `manifest`, `disks` (names), `groups`, `fence`, `lock`, `lease`.

pub mod crypto;
pub mod disks;
pub mod fence;
pub mod groups;
mod index_objects;
pub mod lease;
pub mod lock;
pub mod manifest;
pub mod pack;
pub mod repository;

pub use pack::{pack_key, Location};
pub use repository::{create_key_file, parse_az, read_key_file, store_for, Repo, RepoConfig, Store};
