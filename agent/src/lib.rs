//! hrl-agent: tracks which blocks of Linux disks change and writes them to
//! `.hrl` logs in a spool directory. It never talks to blob storage.

pub mod device;
pub mod dirty;
pub mod error;
pub mod event;
pub mod lock;
pub mod ringbuf;
pub mod state;
pub mod tracefs;
pub mod track;
pub mod tracker;

pub use error::{AgentError, Result};
