//! The long-running commands and what serves them: `hrl-agent run` (disk
//! worker threads, the control socket, metrics, progress bars, SIGHUP
//! reload) and `hrl-agent track` (tracking only).
//!
//! Owns: threads and sockets. It never reads a device or writes the spool
//! itself: the disk workers do, and this folder talks to them through
//! `crate::disk::Request`.

pub mod control;
pub mod metrics;
pub mod progress;
pub mod registry;
pub mod run;
pub mod track;
