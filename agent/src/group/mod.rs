//! Consistency groups: one recovery point across several disks, of one
//! agent or of several agents on several machines.
//!
//! ```text
//! coordinator                     member agent (per group disk: its worker)
//!   ── connect ──────────────────►  challenge
//!   ◄─ hello + mac ───────────────  (mutual HMAC-SHA256 with the group key)
//!   prepare ─────────────────────►  syncfs + pre-copy          ─► ok
//!   freeze (deadline) ───────────►  FIFREEZE, drain, copy dirty ─► frozen
//!       every member frozen before the deadline? (barrier)
//!   commit (members) ────────────►  Group + Tag records, FITHAW ─► points
//!   otherwise: abort ────────────►  FITHAW, aborted tag
//! ```
//!
//! All filesystems are frozen at one moment (after the barrier, before any
//! commit), so a write that depends on an earlier write to another member
//! can never be in a group point without it. A member that loses its
//! coordinator (connection closed) thaws at once and aborts the point; one
//! that hears nothing thaws at its own `max_freeze` (watchdog). The group
//! point id is in every member's Tag; the Group record before it names the
//! group, its sequence and how many disks it has, so a repository publishes
//! the group point only when every member's point is there.
//!
//! Messages (typed, in `protocol.rs`) are JSON lines, each authenticated with HMAC-SHA256 under a key
//! derived from the shared group key and both sides' random challenges, with
//! a per-direction counter: a peer without the key cannot freeze anyone, and
//! a recorded message cannot be replayed into another session.
//!
//! Owns: the network side of a group point (the channel, the member
//! endpoint, the coordinator). A disk's own part (freeze, wait for the
//! decision, thaw) is `crate::point::group`; this folder never touches a
//! filesystem or the spool.

pub mod channel;
pub mod coordinator;
pub mod member;
pub mod protocol;
#[cfg(test)]
mod tests;

pub use channel::{create_key, new_key_file, read_key};
pub use coordinator::{coordinate, CoordinateOptions, GroupResult};
pub use member::serve;
