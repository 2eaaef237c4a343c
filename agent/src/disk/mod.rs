//! One tracked disk: the worker thread that owns its tracker, log, capture
//! and points, in modes `initial-sync`, `data`, `bitmap` and `resync`, and
//! the messages other threads send it.
//!
//! Owns: the disk's modes and its spool accounting (promises 1 and 5 of
//! docs/guarantees.md: a loss forces a resync; a full spool switches to
//! bitmap mode). It may not talk to anything but its device, its spool and
//! the trace buffers; the control socket and the group member reach it only
//! through [`Request`].

mod copy;
mod points;
pub mod policy;
mod settings;
pub mod setup;
pub mod state;
pub mod status;
mod stop;
pub mod worker;

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use setup::{prepare_spool, spool_usage, DiskSetup};
pub use status::DiskStatus;
pub use worker::DiskWorker;

use crate::point::group::FreezeJob;
use crate::point::PointReply;

/// What the control socket asks a disk worker.
pub enum Request {
    Point {
        app: bool,
        reply: Sender<PointReply>,
    },
    /// SIGHUP: new capture rate limit (bytes/s, 0 unlimited) and RPO
    /// warning threshold.
    Reload {
        capture_rate: u64,
        rpo_warn: Duration,
    },
    /// Group point, step 1 (outside the freeze).
    GroupPrepare {
        reply: Sender<std::result::Result<(), String>>,
    },
    /// Group point, step 2: freeze and wait for the coordinator's decision.
    GroupFreeze(Box<FreezeJob>),
    /// The process server's policy, applied by the forwarder.
    Policy(policy::PolicyOverride),
}
/// A disk the control socket and the group member can reach.
#[derive(Clone)]
pub struct DiskHandle {
    pub name: String,
    pub requests: Sender<Request>,
    pub status: Arc<Mutex<DiskStatus>>,
}
