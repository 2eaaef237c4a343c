//! Per-disk agent state kept in the spool: the disk's id (stable across
//! restarts, so the shipper keeps one history per disk), whether the last
//! run ended cleanly and, if it did, the device's fingerprint at that stop
//! (`crate::continuity`). A restart counts as loss unless that fingerprint
//! still matches.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{AgentError, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskState {
    pub name: String,
    pub disk_id: Uuid,
    pub device: PathBuf,
    pub chunk_size: u32,
    /// The previous run stopped cleanly (drained, sealed).
    pub clean_shutdown: bool,
    /// A first full copy finished at some point.
    #[serde(default)]
    pub initial_sync_done: bool,
    /// Sequence of the last point started (taken or aborted): sequences are
    /// never reused.
    #[serde(default)]
    pub last_point_seq: u64,
    /// What the last clean stop recorded of the device, for the next start
    /// (consumed by it: a crash after that start finds none).
    #[serde(default)]
    pub continuity: Option<crate::continuity::Fingerprint>,
}

/// Path of the state file of disk `name` in `spool`.
pub fn state_path(spool: &Path, name: &str) -> PathBuf {
    spool.join(format!("{name}.state.json"))
}

impl DiskState {
    /// Loads the state, or `None` when this disk was never tracked here.
    pub fn load(spool: &Path, name: &str) -> Result<Option<Self>> {
        let p = state_path(spool, name);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| AgentError::Config(format!("{}: unreadable agent state: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::io(p, "read", e)),
        }
    }

    /// Writes the state atomically (temp file, fsync, rename, fsync dir).
    pub fn save(&self, spool: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = state_path(spool, &self.name);
        let tmp = spool.join(format!(".{}.state.json.tmp", self.name));
        let body =
            serde_json::to_vec_pretty(self).map_err(|e| AgentError::Internal(format!("encode agent state: {e}")))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| AgentError::io(&tmp, "create", e))?;
        f.write_all(&body).map_err(|e| AgentError::io(&tmp, "write", e))?;
        f.sync_all().map_err(|e| AgentError::io(&tmp, "fsync", e))?;
        std::fs::rename(&tmp, &p).map_err(|e| AgentError::io(&p, "rename", e))?;
        hrl_format::sync_dir(spool)?;
        Ok(())
    }
}
