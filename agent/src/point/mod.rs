//! Recovery points: the point protocol, the filesystem freeze with its
//! watchdog, the thaw guardian (a child process that thaws if the agent
//! dies), and hooks.
//!
//! Owns: the order of a point (docs/guarantees.md promises 1 and 3) and
//! the bound on a freeze (promise 5). It may not open the spool or the
//! device itself: it reaches them through [`protocol::PointDisk`], which
//! the disk worker implements.

pub mod freeze;
pub mod group;
pub mod guard;
pub mod hooks;
pub mod protocol;

use serde::Serialize;

pub use protocol::{take_point, Freezer, Frozen, PointDisk};

/// Where a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookPoint {
    /// Before anything else of an app point (databases flush here).
    PreFreeze,
    /// Inside the freeze, within its budget.
    WhileFrozen,
    /// After the thaw of an app point.
    PostThaw,
}

impl HookPoint {
    pub fn name(self) -> &'static str {
        match self {
            HookPoint::PreFreeze => "pre-freeze",
            HookPoint::WhileFrozen => "while-frozen",
            HookPoint::PostThaw => "post-thaw",
        }
    }
}

/// Answer to a point request.
#[derive(Debug, Clone, Serialize)]
pub struct PointReply {
    pub ok: bool,
    pub disk: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<hrl_format::PointKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copied_chunks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Something the operator should know about a point that was taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The label a hook gave the point (`HRL_LABEL=...` on its stdout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl PointReply {
    /// A point not taken, and why.
    pub fn refused(disk: &str, seq: Option<u64>, kind: Option<hrl_format::PointKind>, why: String) -> Self {
        PointReply {
            ok: false,
            disk: disk.to_string(),
            seq,
            kind,
            freeze_ms: None,
            copied_chunks: None,
            error: Some(why),
            note: None,
            label: None,
        }
    }
}

/// The last point of a disk.
#[derive(Debug, Clone, Serialize)]
pub struct LastPoint {
    pub seq: u64,
    pub kind: hrl_format::PointKind,
    pub time_ns: u64,
    pub freeze_ms: f64,
}
