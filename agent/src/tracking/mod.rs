//! Change tracking: which blocks of a device change. A private tracefs
//! instance with the block-layer completion tracepoint filtered on the
//! device, the per-CPU ring buffers parsed raw, the dirty map (one bit per
//! chunk) and the device's identity and lock.
//!
//! Owns: promise 1 of docs/guarantees.md (no missed write: every completion
//! dirties its chunks, and a lost event is a `Lost` record). It never
//! reads chunk data (that is `crate::capture`) and never freezes anything.

pub mod device;
pub mod dirty;
pub mod event;
pub mod lock;
pub mod ringbuf;
pub mod tracefs;
pub mod tracker;
