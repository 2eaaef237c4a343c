//! The messages of a group point, typed. Every command carries the
//! coordinator's request number (`req`), echoed in the answer, so a late
//! answer to an earlier request is never taken for the current one; a
//! commit or abort also names its point, and a member ignores one for a
//! point it is not holding frozen.
//!
//! ```text
//! coordinator                          member
//!   Prepare{req}               ──►  syncfs + pre-copy every group disk
//!                              ◄──  Answer{req, ok}
//!   Freeze{req, point}         ──►  FIFREEZE, drain, copy
//!                              ◄──  Answer{req, ok, frozen_ms}     (barrier: all before the deadline)
//!   Commit{req, point, members}──►  Group + Tag records, FITHAW
//!                              ◄──  Answer{req, ok, points}
//!   Abort{req, point, why}     ──►  FITHAW, aborted tag
//! ```
//!
//! After any failure the coordinator drops every connection (a member
//! whose coordinator went away thaws at once) and starts the next round
//! with fresh handshakes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::point::group::GroupPoint;

/// Coordinator to member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Prepare { req: u64 },
    Freeze { req: u64, point: GroupPoint },
    Commit { req: u64, point: Uuid, members: u32 },
    Abort { req: u64, point: Uuid, why: String },
}

impl Command {
    pub fn req(&self) -> u64 {
        match self {
            Command::Prepare { req }
            | Command::Freeze { req, .. }
            | Command::Commit { req, .. }
            | Command::Abort { req, .. } => *req,
        }
    }
}

/// One disk's point in a commit answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberPoint {
    pub disk: String,
    pub seq: Option<u64>,
    pub freeze_ms: Option<f64>,
}

/// Member to coordinator: the answer to request `req`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Answer {
    pub req: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Longest freeze so far of the member's disks (to a freeze).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_ms: Option<f64>,
    /// The points taken (to a commit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<MemberPoint>,
}

impl Answer {
    pub fn ok(req: u64) -> Self {
        Answer {
            req,
            ok: true,
            ..Default::default()
        }
    }

    /// `ok` unless there are errors, which are joined into one.
    pub fn from_errors(req: u64, errs: Vec<String>) -> Self {
        Answer {
            req,
            ok: errs.is_empty(),
            error: (!errs.is_empty()).then(|| errs.join("; ")),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_unknown_ones_are_refused() {
        let p = GroupPoint {
            id: Uuid::new_v4(),
            seq: 3,
            name: "g".into(),
        };
        for c in [
            Command::Prepare { req: 1 },
            Command::Freeze {
                req: 2,
                point: p.clone(),
            },
            Command::Commit {
                req: 3,
                point: p.id,
                members: 2,
            },
            Command::Abort {
                req: 4,
                point: p.id,
                why: "x".into(),
            },
        ] {
            let s = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Command>(&s).unwrap(), c);
        }
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"format","req":1}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"commit","req":1}"#).is_err());
    }
}
